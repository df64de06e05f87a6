"""Drop-in torch.nn modules backed by normext kernels."""
from torch import Tensor, nn

from normext import functional as F


class GroupNorm(nn.GroupNorm):
    """torch.nn.GroupNorm on normext kernels: same arguments, parameters, state_dict and repr.

    A subclass, so code that checks ``isinstance(m, nn.GroupNorm)`` (weight-decay filters,
    initializers) treats it as the module it replaces.
    """

    def forward(self, input: Tensor) -> Tensor:
        return F.group_norm(input, self.num_groups, self.weight, self.bias, self.eps)


class LayerNorm(nn.LayerNorm):
    """torch.nn.LayerNorm on normext kernels: same arguments (elementwise_affine, bias),
    parameters, state_dict and repr; a subclass, like normext.GroupNorm."""

    def forward(self, input: Tensor) -> Tensor:
        return F.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)


class RMSNorm(nn.RMSNorm):
    """torch.nn.RMSNorm on normext kernels: same arguments, parameters, state_dict and repr."""

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, self.normalized_shape, self.weight, self.eps)
