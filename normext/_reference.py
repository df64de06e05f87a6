"""torch's own ops for every normext functional, used where normext's kernels cannot serve.

normext's autograd formulas are registered with torch.library.register_autograd. That covers
reverse-mode autograd, double backward and torch.compile, but not the torch.func transforms
(torch.func.grad / jacrev raise, vmap falls back to a per-sample loop) nor forward-mode AD
(torch.func.jvp / jacfwd, torch.autograd.forward_ad): there the op would silently drop the
tangent and jacfwd would return zeros. Inside those, the functionals run the same math with
torch's ops instead, which support them all; everywhere else the kernels run.
"""
import torch
import torch.nn.functional as F
from torch.autograd import forward_ad

from normext._meta import check_dyt_args

_ACTIVATIONS = {
    1: F.silu,
    2: F.gelu,
    3: lambda t: F.gelu(t, approximate="tanh"),
    4: F.relu,
}


def needed() -> bool:
    """True inside a torch.func transform or while a forward-mode AD level is open."""
    # NB: forward_ad._current_level is a plain module global (>= 0 while a dual level is open,
    # torch.func.jvp opens one too): a cheap test that torch.compile folds into a guard.
    return forward_ad._current_level >= 0 or torch._C._functorch.maybe_current_level() is not None


def group_norm(input, num_groups, weight, bias, eps, activation):
    y = F.group_norm(input, num_groups, weight, bias, eps)
    return _ACTIVATIONS[activation](y) if activation else y


def add_group_norm(input, residual, num_groups, weight, bias, eps, activation):
    summed = input + residual
    return group_norm(summed, num_groups, weight, bias, eps, activation), summed


def add_layer_norm(input, residual, normalized_shape, weight, bias, eps):
    summed = input + residual
    return F.layer_norm(summed, normalized_shape, weight, bias, eps), summed


def add_rms_norm(input, residual, normalized_shape, weight, eps):
    summed = input + residual
    return F.rms_norm(summed, normalized_shape, weight, eps), summed


def dyt(input, alpha, weight, bias, channels_last):
    check_dyt_args(input, alpha, weight, bias, channels_last)  # the kernel's errors
    # weight / bias: trailing dims of input (channels_last) or (C,) over dim 1.
    shape = None if channels_last else (-1,) + (1,) * (input.dim() - 2)
    y = torch.tanh(alpha * input)
    if weight is not None:
        y = y * (weight if shape is None else weight.reshape(shape))
    if bias is not None:
        y = y + (bias if shape is None else bias.reshape(shape))
    return y.to(input.dtype)
