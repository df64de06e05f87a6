"""Swap torch.nn normalization modules in a model for their normext equivalents."""
import copy

from torch import nn

from normext.modules import (
    BatchNorm1d, BatchNorm2d, BatchNorm3d, GroupNorm, InstanceNorm1d, InstanceNorm2d,
    InstanceNorm3d, LayerNorm, RMSNorm,
)
from normext.sync_batch_norm import SyncBatchNorm

# torch module type -> normext replacement. Exact types only: a user's subclass may override
# forward, and then it is not the module normext reimplements.
_REPLACEMENTS = {
    nn.GroupNorm: GroupNorm,
    nn.LayerNorm: LayerNorm,
    nn.RMSNorm: RMSNorm,
    nn.BatchNorm1d: BatchNorm1d,
    nn.BatchNorm2d: BatchNorm2d,
    nn.BatchNorm3d: BatchNorm3d,
    nn.InstanceNorm1d: InstanceNorm1d,
    nn.InstanceNorm2d: InstanceNorm2d,
    nn.InstanceNorm3d: InstanceNorm3d,
    nn.SyncBatchNorm: SyncBatchNorm,
}
# With convert(model, sync_batchnorm=True): BatchNorm*d (torch's or normext's) -> SyncBatchNorm.
_SYNC_BATCHNORM_SOURCES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, BatchNorm1d,
                           BatchNorm2d, BatchNorm3d, nn.SyncBatchNorm)


def _replace(module: nn.Module, cls) -> nn.Module:
    """A `cls` module that shares everything with `module`: the same Parameter and buffer
    objects (so optimizers keep working), hooks, training mode and attributes."""
    new = cls.__new__(cls)
    # NB: the hook dicts are shared, not copied: a hook's RemovableHandle removes it from the dicts
    # it was registered in, so handles taken before convert() keep working on the replacement.
    new.__dict__.update(
        {k: copy.copy(v) if isinstance(v, dict) and "hook" not in k else v
         for k, v in module.__dict__.items()}
    )
    if cls is SyncBatchNorm and not hasattr(new, "process_group"):
        new.process_group = None
    return new


def _target(module: nn.Module, sync_batchnorm: bool):
    if sync_batchnorm and type(module) in _SYNC_BATCHNORM_SOURCES:
        return SyncBatchNorm
    return _REPLACEMENTS.get(type(module))


def _convert(model: nn.Module, sync_batchnorm: bool, done: dict) -> nn.Module:
    """`model` converted; done maps id(module) -> its conversion, so a module registered under
    several names or parents gets one replacement, shared by all of them, as the original was."""
    if id(model) in done:
        return done[id(model)]
    cls = _target(model, sync_batchnorm)
    if cls is not None:
        done[id(model)] = _replace(model, cls)
        return done[id(model)]
    done[id(model)] = model
    # NB: _modules, not named_children(), which yields a module registered twice only once.
    for name, child in list(model._modules.items()):
        if child is not None:
            new_child = _convert(child, sync_batchnorm, done)
            if new_child is not child:
                model._modules[name] = new_child
    return model


def convert(model: nn.Module, fuse: bool = False, sync_batchnorm: bool = False) -> nn.Module:
    """Replace every torch.nn normalization module normext implements (GroupNorm, LayerNorm,
    RMSNorm, BatchNorm1d/2d/3d, InstanceNorm1d/2d/3d, SyncBatchNorm) in `model`, recursively and
    the root included, by its normext equivalent carrying the same parameters, buffers, device and
    dtype. Returns the model (or the replacement when `model` itself is such a module); the
    conversion is done in place.

    sync_batchnorm=True turns BatchNorm*d into normext.SyncBatchNorm (default process group).

    fuse=True also folds an activation module (exactly nn.SiLU, nn.GELU or nn.ReLU) that only ever
    consumes a GroupNorm's output into that GroupNorm (normext.GroupNorm(activation=...)), and
    replaces the activation by nn.Identity, so module names, indices and state_dict keys stay the
    same. It finds such pairs in every nn.Sequential and, where the model traces with torch.fx, in
    forward() code too; a pair is left alone if either module has forward hooks or the GroupNorm's
    output is also used elsewhere.
    """
    model = _convert(model, sync_batchnorm, {})
    if fuse:
        _fuse_sequentials(model)
        _fuse_traced(model)
    return model


# ---- fusion (fuse=True) ---------------------------------------------------------------------------


def _activation_name(module: nn.Module):
    """The fused-kernel activation of an activation module, or None if it has no exact match."""
    if type(module) is nn.SiLU:
        return "silu"
    if type(module) is nn.ReLU:
        return "relu"
    if type(module) is nn.GELU:
        return {"none": "gelu", "tanh": "gelu_tanh"}.get(module.approximate)
    return None


def _has_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or getattr(module, "_backward_pre_hooks", None))


def _fusable_norm(module: nn.Module) -> bool:
    return (type(module) is GroupNorm and module.activation is None and not module.inplace
            and not _has_hooks(module))


def _fused(norm: GroupNorm, activation: str) -> GroupNorm:
    new = _replace(norm, GroupNorm)
    new.activation = activation
    return new


def _fuse_sequentials(model: nn.Module) -> None:
    for module in list(model.modules()):
        if type(module) is not nn.Sequential:
            continue  # NB: a Sequential subclass may override forward
        keys = list(module._modules)
        for first, second in zip(keys, keys[1:]):
            norm, act = module._modules[first], module._modules[second]
            name = _activation_name(act) if act is not None else None
            if name is None or norm is None or not _fusable_norm(norm) or _has_hooks(act):
                continue
            module._modules[first] = _fused(norm, name)
            module._modules[second] = nn.Identity()


class _Tracer:
    """torch.fx tracer that keeps torch.nn modules and normext modules as leaves."""

    @staticmethod
    def trace(model: nn.Module):
        import torch.fx

        class Tracer(torch.fx.Tracer):
            def is_leaf_module(self, m, qualname):
                return type(m).__module__.startswith("normext") or super().is_leaf_module(m, qualname)

        return Tracer().trace(model)


def _fuse_traced(model: nn.Module) -> None:
    # NB: tracing runs forward()'s Python code, so it runs on a copy: a forward may update buffers
    # in place (a step counter, a data-dependent initialization) or Python attributes. The copy
    # shares the parameters (a trace only reads them, through proxies) and copies the rest.
    try:
        traced = copy.deepcopy(model, {id(p): p for p in model.parameters()})
    except Exception:  # noqa: BLE001  (a model that cannot be copied keeps the Sequential fusions)
        return
    # NB: a trace follows one path through Python control flow; `if self.training:` branches are
    # the common case, so the model is traced in both modes and only pairs found in both fused.
    plans = []
    try:
        for mode in (True, False):
            traced.train(mode)
            plans.append(_fusion_plan(traced, _Tracer.trace(traced)))
    except Exception:  # noqa: BLE001  (models that do not trace keep the Sequential fusions only)
        return
    (norms_a, acts_a), (norms_b, acts_b) = plans
    if norms_a != norms_b or acts_a != acts_b or not acts_a:
        return
    # The copy's modules -> the model's, by name (the copy has the same module tree).
    original = {}
    for name, m in traced.named_modules(remove_duplicate=False):
        original.setdefault(id(m), model.get_submodule(name))
    # Swap every reference (a module registered under several names is swapped under all).
    replacements = {id(original[nid]): _fused(original[nid], name) for nid, name in norms_a.items()}
    for mid in acts_a:
        replacements[id(original[mid])] = nn.Identity()
    for parent in list(model.modules()):
        for key, child in list(parent._modules.items()):
            if child is not None and id(child) in replacements:
                parent._modules[key] = replacements[id(child)]


def _fusion_plan(model: nn.Module, graph):
    """({norm id: activation name}, {activation id: name}) of the pairs safe to fuse in `graph`."""
    modules = dict(model.named_modules(remove_duplicate=False))
    calls = {}  # module object id -> call_module nodes
    for node in graph.nodes:
        if node.op == "call_module":
            calls.setdefault(id(modules[node.target]), []).append(node)
    by_id = {id(m): m for m in modules.values()}

    # A leaf module other than a norm / activation hides the calls it makes: anything inside one
    # is off limits.
    hidden = set()
    for mid, nodes in calls.items():
        m = by_id[mid]
        if _activation_name(m) is None and type(m) is not GroupNorm:
            hidden.update(id(sub) for sub in m.modules() if sub is not m)

    fuse_acts = {}  # activation id -> name
    fuse_norms = {}  # norm id -> activation name
    for mid, nodes in calls.items():
        act = by_id[mid]
        name = _activation_name(act)
        if name is None or mid in hidden or _has_hooks(act):
            continue
        norms = []
        for node in nodes:
            src = node.args[0] if len(node.args) == 1 and not node.kwargs else None
            if not (hasattr(src, "op") and src.op == "call_module" and len(src.users) == 1):
                break
            norm = modules[src.target]
            if not _fusable_norm(norm) or id(norm) in hidden:
                break
            norms.append(norm)
        else:
            fuse_acts[mid] = name
            for norm in norms:
                fuse_norms.setdefault(id(norm), set()).add(name)
    # Every call of a fused norm must feed a fused activation of the same kind.
    ok_norms = {}
    for nid, names in fuse_norms.items():
        if len(names) != 1:
            continue
        name = next(iter(names))
        if all(len(n.users) == 1 and next(iter(n.users)).op == "call_module"
               and fuse_acts.get(id(modules[next(iter(n.users)).target])) == name
               for n in calls[nid]):
            ok_norms[nid] = name
    # An activation is fused only if every norm feeding it is, and a norm only if every call of it
    # still feeds a fused activation. Dropping one side can break the other (a norm feeding two
    # activations loses one of them, and with it the other), so both rules are applied until
    # neither removes anything.
    changed = True
    while changed:
        changed = False
        for mid in list(fuse_acts):
            if not {id(modules[n.args[0].target]) for n in calls[mid]} <= set(ok_norms):
                del fuse_acts[mid]
                changed = True
        for nid in list(ok_norms):
            if not all(id(modules[next(iter(n.users)).target]) in fuse_acts for n in calls[nid]):
                del ok_norms[nid]
                changed = True
    return ok_norms, fuse_acts
