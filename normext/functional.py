"""torch.nn.functional-compatible entry points: same signatures, results and errors."""
from typing import List, Optional, Tuple

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


# Activation names of the fused GroupNorm -> the ops' `activation` argument.
ACTIVATIONS = {None: 0, "silu": 1, "gelu": 2, "gelu_tanh": 3, "relu": 4}
_add_group_norm_forward = torch.ops.normext.add_group_norm_forward.default
_group_norm_inplace = torch.ops.normext.group_norm_inplace.default


def activation_code(activation: Optional[str]) -> int:
    try:
        return ACTIVATIONS[activation]
    except (KeyError, TypeError):
        raise ValueError(
            "activation must be one of None, 'silu', 'gelu', 'gelu_tanh', 'relu', but got "
            f"{activation!r}"
        ) from None


def _check_inplace_allowed(*tensors) -> None:
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        raise RuntimeError(
            "normext group_norm(inplace=True) overwrites its input, but autograd needs it to "
            "compute gradients here (the input or a parameter requires grad and grad mode is "
            "on). Use inplace=False for training, or run under torch.no_grad() / "
            "torch.inference_mode()."
        )


def group_norm(
    input: Tensor,
    num_groups: int,
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: float = 1e-5,
    activation: Optional[str] = None,
    inplace: bool = False,
) -> Tensor:
    """Group Normalization over groups of channels, as torch.nn.functional.group_norm.

    activation: None, "silu", "gelu", "gelu_tanh" or "relu", applied by the same kernel
    (``act(group_norm(x))`` with torch's F.silu / F.gelu / F.relu definitions); the backward
    recomputes it, so only the input and the (N, G) statistics are saved.
    inplace: write the result into ``input`` (inference only: a RuntimeError when autograd would
    need the input); returns ``input``.
    """
    if has_torch_function_variadic(input, weight, bias):
        return handle_torch_function(
            group_norm, (input, weight, bias), input, num_groups, weight=weight, bias=bias, eps=eps,
            activation=activation, inplace=inplace,
        )
    act = activation_code(activation)
    if input.dim() < 2:
        raise RuntimeError(
            f"Expected at least 2 dimensions for input tensor but received {input.dim()}"
        )
    _verify_batch_size(
        [input.size(0) * input.size(1) // num_groups, num_groups] + list(input.size()[2:])
    )
    if inplace:
        _check_inplace_allowed(input, weight, bias)
        _group_norm_inplace(input, weight, bias, num_groups, eps, act)
        return input
    return _group_norm_forward(input, weight, bias, num_groups, eps, act)[0]


def add_group_norm(
    input: Tensor,
    residual: Tensor,
    num_groups: int,
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: float = 1e-5,
    activation: Optional[str] = None,
) -> Tuple[Tensor, Tensor]:
    """``summed = input + residual`` and ``act(group_norm(summed))`` in one pass over memory.

    Returns (out, summed); both are differentiable.
    """
    if has_torch_function_variadic(input, residual, weight, bias):
        return handle_torch_function(
            add_group_norm, (input, residual, weight, bias), input, residual, num_groups,
            weight=weight, bias=bias, eps=eps, activation=activation,
        )
    act = activation_code(activation)
    if input.dim() < 2:
        raise RuntimeError(
            f"Expected at least 2 dimensions for input tensor but received {input.dim()}"
        )
    _verify_batch_size(
        [input.size(0) * input.size(1) // num_groups, num_groups] + list(input.size()[2:])
    )
    out, summed, _, _ = _add_group_norm_forward(input, residual, weight, bias, num_groups, eps, act)
    return out, summed


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
