"""Drop-in torch.nn modules backed by normext kernels."""
import inspect

import torch
from torch import Tensor, nn

from normext import functional as F


_GROUP_NORM_HAS_BIAS = "bias" in inspect.signature(nn.GroupNorm.__init__).parameters


class GroupNorm(nn.GroupNorm):
    """torch.nn.GroupNorm on normext kernels: same arguments, parameters, state_dict and repr.

    A subclass, so code that checks ``isinstance(m, nn.GroupNorm)`` (weight-decay filters,
    initializers) treats it as the module it replaces.
    """

    # Class-level defaults: modules made by convert() (which copies a torch GroupNorm's
    # attributes) and ones pickled before these options existed read them from here.
    activation = None
    inplace = False

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True,
                 device=None, dtype=None, *, bias: bool = True, activation=None,
                 inplace: bool = False) -> None:
        F.activation_code(activation)  # ValueError for an unknown name
        if _GROUP_NORM_HAS_BIAS:
            super().__init__(num_groups, num_channels, eps, affine, device, dtype, bias=bias)
        else:
            # torch before 2.14 has no `bias` argument: build without it and drop the bias as
            # 2.14 does (a None parameter: the parameters and state_dict of a 2.14 module).
            super().__init__(num_groups, num_channels, eps, affine, device, dtype)
            if not bias and affine:
                self.register_parameter("bias", None)
        if activation is not None:
            self.activation = activation
        if inplace:
            self.inplace = inplace

    def forward(self, input: Tensor) -> Tensor:
        return F.group_norm(input, self.num_groups, self.weight, self.bias, self.eps,
                            self.activation, self.inplace)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.activation is not None:
            s += f", activation={self.activation!r}"
        if self.inplace:
            s += ", inplace=True"
        return s


class LayerNorm(nn.LayerNorm):
    """torch.nn.LayerNorm on normext kernels: same arguments (elementwise_affine, bias),
    parameters, state_dict and repr; a subclass, like normext.GroupNorm."""

    def forward(self, input: Tensor) -> Tensor:
        return F.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)


class RMSNorm(nn.RMSNorm):
    """torch.nn.RMSNorm on normext kernels: same arguments, parameters, state_dict and repr."""

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, self.normalized_shape, self.weight, self.eps)


# ---- BatchNorm / InstanceNorm -------------------------------------------------------------------


class _BatchNormForward:
    """torch.nn.modules.batchnorm._BatchNorm.forward, on normext's F.batch_norm."""

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        if self.momentum is None:
            exponential_average_factor = 0.0
        else:
            exponential_average_factor = self.momentum
        if self.training and self.track_running_stats:
            if self.num_batches_tracked is not None:
                self.num_batches_tracked.add_(1)
                if self.momentum is None:  # cumulative moving average
                    exponential_average_factor = 1.0 / float(self.num_batches_tracked)
                else:  # exponential moving average
                    exponential_average_factor = self.momentum
        # Mini-batch statistics in training, and in eval when there are no running buffers.
        if self.training:
            bn_training = True
        else:
            bn_training = (self.running_mean is None) and (self.running_var is None)
        # Buffers are passed when they are updated (training and tracked) or used (eval).
        return F.batch_norm(
            input,
            self.running_mean if not self.training or self.track_running_stats else None,
            self.running_var if not self.training or self.track_running_stats else None,
            self.weight,
            self.bias,
            bn_training,
            exponential_average_factor,
            self.eps,
        )


class BatchNorm1d(_BatchNormForward, nn.BatchNorm1d):
    """torch.nn.BatchNorm1d on normext kernels (a subclass: same arguments, state_dict, repr)."""


class BatchNorm2d(_BatchNormForward, nn.BatchNorm2d):
    """torch.nn.BatchNorm2d on normext kernels (a subclass: same arguments, state_dict, repr)."""


class BatchNorm3d(_BatchNormForward, nn.BatchNorm3d):
    """torch.nn.BatchNorm3d on normext kernels (a subclass: same arguments, state_dict, repr)."""


class _InstanceNormApply:
    """torch's _InstanceNorm keeps its forward (checks, warnings, unbatched inputs); only the
    functional it calls changes."""

    def _apply_instance_norm(self, input: Tensor) -> Tensor:
        return F.instance_norm(
            input,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            self.training or not self.track_running_stats,
            self.momentum if self.momentum is not None else 0.0,
            self.eps,
        )


class InstanceNorm1d(_InstanceNormApply, nn.InstanceNorm1d):
    """torch.nn.InstanceNorm1d on normext kernels (a subclass: same arguments, state_dict, repr)."""


class InstanceNorm2d(_InstanceNormApply, nn.InstanceNorm2d):
    """torch.nn.InstanceNorm2d on normext kernels (a subclass: same arguments, state_dict, repr)."""


class InstanceNorm3d(_InstanceNormApply, nn.InstanceNorm3d):
    """torch.nn.InstanceNorm3d on normext kernels (a subclass: same arguments, state_dict, repr)."""


class DyT(nn.Module):
    """Dynamic Tanh, ``weight * tanh(alpha * x) + bias``, a drop-in replacement for LayerNorm in
    Transformers (Zhu et al., "Transformers without Normalization", 2025).

    Mirrors the paper's ``DynamicTanh`` module: the same parameters (``alpha`` of shape [1]
    initialised to ``alpha_init_value``, ``weight`` ones and ``bias`` zeros of
    ``normalized_shape``), state_dict keys and repr, on one fused kernel. channels_last=True:
    parameters over the trailing dims; False: over dim 1 of (N, C, *) inputs.
    """

    def __init__(self, normalized_shape, channels_last: bool = True, alpha_init_value: float = 0.5,
                 *, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.normalized_shape = normalized_shape
        self.alpha_init_value = alpha_init_value
        self.channels_last = channels_last
        self.alpha = nn.Parameter(torch.ones(1, **factory) * alpha_init_value)
        self.weight = nn.Parameter(torch.ones(normalized_shape, **factory))
        self.bias = nn.Parameter(torch.zeros(normalized_shape, **factory))

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.alpha.fill_(self.alpha_init_value)
            self.weight.fill_(1.0)
            self.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        return F.dyt(x, self.alpha, self.weight, self.bias, self.channels_last)

    def extra_repr(self) -> str:
        return (f"normalized_shape={self.normalized_shape}, alpha_init_value={self.alpha_init_value}, "
                f"channels_last={self.channels_last}")
