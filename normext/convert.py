"""Swap torch.nn normalization modules in a model for their normext equivalents."""
import copy

from torch import nn

from normext.modules import GroupNorm
from normext.modules import (BatchNorm1d, BatchNorm2d, BatchNorm3d, InstanceNorm1d,
                             InstanceNorm2d, InstanceNorm3d)
from normext.sync_batch_norm import SyncBatchNorm

# torch module type -> normext replacement. Exact types only: a user's subclass may override
# forward, and then it is not the module normext reimplements.
_REPLACEMENTS = {nn.GroupNorm: GroupNorm}
# ---- BatchNorm / InstanceNorm / SyncBatchNorm ----
_REPLACEMENTS.update({
    nn.BatchNorm1d: BatchNorm1d, nn.BatchNorm2d: BatchNorm2d, nn.BatchNorm3d: BatchNorm3d,
    nn.InstanceNorm1d: InstanceNorm1d, nn.InstanceNorm2d: InstanceNorm2d,
    nn.InstanceNorm3d: InstanceNorm3d, nn.SyncBatchNorm: SyncBatchNorm,
})
# With convert(model, sync_batchnorm=True): BatchNorm*d (torch's or normext's) -> SyncBatchNorm.
_SYNC_BATCHNORM_SOURCES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, BatchNorm1d,
                           BatchNorm2d, BatchNorm3d, nn.SyncBatchNorm)

# ---- Row norms (LayerNorm, RMSNorm) ----
from normext.modules import LayerNorm, RMSNorm  # noqa: E402

_REPLACEMENTS.update({nn.LayerNorm: LayerNorm, nn.RMSNorm: RMSNorm})


def _replace(module: nn.Module, sync_batchnorm: bool = False) -> nn.Module:
    """A normext module that shares everything with `module`: the same Parameter and buffer
    objects (so optimizers keep working), hooks, training mode and attributes."""
    cls = _target(module, sync_batchnorm)
    new = cls.__new__(cls)
    new.__dict__.update(
        {k: copy.copy(v) if isinstance(v, dict) else v for k, v in module.__dict__.items()}
    )
    if cls is SyncBatchNorm and not hasattr(new, "process_group"):
        new.process_group = None
    return new


def _target(module: nn.Module, sync_batchnorm: bool):
    if sync_batchnorm and type(module) in _SYNC_BATCHNORM_SOURCES:
        return SyncBatchNorm
    return _REPLACEMENTS.get(type(module))


def convert(model: nn.Module, sync_batchnorm: bool = False) -> nn.Module:
    """Replace every torch.nn.GroupNorm in `model` (recursively, the root included) by
    normext.GroupNorm carrying the same parameters, device and dtype. Returns the model (or the
    replacement when `model` itself is a GroupNorm); the conversion is done in place.

    BatchNorm1d/2d/3d and InstanceNorm1d/2d/3d are swapped the same way; with
    sync_batchnorm=True, BatchNorm*d become normext.SyncBatchNorm (in the default process group)."""
    if _target(model, sync_batchnorm) is not None:
        return _replace(model, sync_batchnorm)
    for name, child in model.named_children():
        new_child = convert(child, sync_batchnorm)
        if new_child is not child:
            setattr(model, name, new_child)
    return model
