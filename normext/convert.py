"""Swap torch.nn normalization modules in a model for their normext equivalents."""
import copy

from torch import nn

from normext.modules import GroupNorm

# torch module type -> normext replacement. Exact types only: a user's subclass may override
# forward, and then it is not the module normext reimplements.
_REPLACEMENTS = {nn.GroupNorm: GroupNorm}

# ---- Row norms (LayerNorm, RMSNorm) ----
from normext.modules import LayerNorm, RMSNorm  # noqa: E402

_REPLACEMENTS.update({nn.LayerNorm: LayerNorm, nn.RMSNorm: RMSNorm})


def _replace(module: nn.Module) -> nn.Module:
    """A normext module that shares everything with `module`: the same Parameter and buffer
    objects (so optimizers keep working), hooks, training mode and attributes."""
    new = _REPLACEMENTS[type(module)].__new__(_REPLACEMENTS[type(module)])
    new.__dict__.update(
        {k: copy.copy(v) if isinstance(v, dict) else v for k, v in module.__dict__.items()}
    )
    return new


def convert(model: nn.Module) -> nn.Module:
    """Replace every torch.nn.GroupNorm in `model` (recursively, the root included) by
    normext.GroupNorm carrying the same parameters, device and dtype. Returns the model (or the
    replacement when `model` itself is a GroupNorm); the conversion is done in place."""
    if type(model) in _REPLACEMENTS:
        return _replace(model)
    for name, child in model.named_children():
        new_child = convert(child)
        if new_child is not child:
            setattr(model, name, new_child)
    return model
