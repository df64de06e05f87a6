"""Drop-in torch.nn modules backed by normext kernels."""
import torch
from torch import Tensor, nn

from normext import functional as F


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
        super().__init__(num_groups, num_channels, eps, affine, device, dtype, bias=bias)
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
