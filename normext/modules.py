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
