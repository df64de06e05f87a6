"""torch.nn.functional-compatible entry points: same signatures, results and errors."""
from typing import List, Optional

import torch
from torch import Tensor
from torch.overrides import handle_torch_function, has_torch_function_variadic

# NB: the resolved overload, not the packet: skips a lookup on every call.
_group_norm_forward = torch.ops.normext.group_norm_forward.default


def _verify_batch_size(size: List[int]) -> None:
    # Same check and message as torch.nn.functional._verify_batch_size.
    size_prods = size[0]
    for i in range(len(size) - 2):
        size_prods *= size[i + 2]
    if size_prods == 1:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got input size {size}"
        )


def group_norm(
    input: Tensor,
    num_groups: int,
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: float = 1e-5,
) -> Tensor:
    """Group Normalization over groups of channels, as torch.nn.functional.group_norm."""
    if has_torch_function_variadic(input, weight, bias):
        return handle_torch_function(
            group_norm, (input, weight, bias), input, num_groups, weight=weight, bias=bias, eps=eps
        )
    if input.dim() < 2:
        raise RuntimeError(
            f"Expected at least 2 dimensions for input tensor but received {input.dim()}"
        )
    _verify_batch_size(
        [input.size(0) * input.size(1) // num_groups, num_groups] + list(input.size()[2:])
    )
    return _group_norm_forward(input, weight, bias, num_groups, eps)[0]


# ---- DyT ---------------------------------------------------------------------------------------

_dyt_forward = torch.ops.normext.dyt_forward.default


def dyt(
    input: Tensor,
    alpha: Tensor,
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    channels_last: bool = True,
) -> Tensor:
    """Dynamic Tanh (Zhu et al., "Transformers without Normalization"):
    ``weight * tanh(alpha * input) + bias`` in one fused kernel.

    alpha: a one-element tensor. channels_last=True: weight / bias cover the trailing dims of
    ``input`` (like LayerNorm's normalized_shape); False: they are (C,) vectors over dim 1 of an
    (N, C, *) input. The output has the input's dtype.
    """
    if has_torch_function_variadic(input, alpha, weight, bias):
        return handle_torch_function(
            dyt, (input, alpha, weight, bias), input, alpha, weight=weight, bias=bias,
            channels_last=channels_last,
        )
    return _dyt_forward(input, alpha, weight, bias, channels_last)
