"""Autograd formulas of the ops, registered with torch.library.register_autograd.

First-order backward calls the fused backward op. When the backward itself must be
differentiable (create_graph=True, e.g. gradgradcheck or gradient penalties), it is computed
instead by a composite of torch ops that autograd can differentiate again, as ATen does for
native_group_norm's double backward.
"""
import torch

from normext._meta import acc_dtype


def _group_norm_setup_context(ctx, inputs, output):
    input, weight, bias, num_groups, eps = inputs
    _, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.save_for_backward(input, weight, mean, rstd)
    ctx.num_groups = num_groups
    ctx.eps = eps
    ctx.bias_dtype = None if bias is None else bias.dtype


def _group_norm_backward(ctx, grad_y, grad_mean, grad_rstd):
    input, weight, mean, rstd = ctx.saved_tensors
    need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
    need_weight = need_weight and weight is not None
    need_bias = need_bias and ctx.bias_dtype is not None
    if torch.is_grad_enabled():
        dx, dweight, dbias = group_norm_backward_composite(
            grad_y, input, weight, ctx.num_groups, ctx.eps
        )
    else:
        dx, dweight, dbias = torch.ops.normext.group_norm_backward(
            grad_y, input, mean, rstd, weight, ctx.num_groups, [need_input, need_weight, need_bias]
        )
    return (
        dx if need_input else None,
        dweight if need_weight else None,
        dbias.to(ctx.bias_dtype) if need_bias else None,
        None,
        None,
    )


def group_norm_backward_composite(grad_y, input, weight, num_groups, eps):
    """(dx, dweight, dbias) of group_norm as differentiable torch ops, statistics recomputed."""
    N, C = input.shape[:2]
    acc = acc_dtype(input.dtype)
    x = input.to(acc).reshape(N, num_groups, -1)
    dy = grad_y.to(acc)
    mean = x.mean(-1, keepdim=True)
    rstd = (x.var(-1, unbiased=False, keepdim=True) + eps).rsqrt()
    xhat = (x - mean) * rstd
    bcast = (1, C) + (1,) * (input.dim() - 2)
    g = dy if weight is None else dy * weight.to(acc).reshape(bcast)
    g = g.reshape(N, num_groups, -1)
    dx = rstd * (g - g.mean(-1, keepdim=True) - xhat * (g * xhat).mean(-1, keepdim=True))
    dx = dx.reshape(input.shape).to(input.dtype)
    reduce_dims = [0] + list(range(2, input.dim()))
    dweight = (dy * xhat.reshape(input.shape)).sum(reduce_dims)
    dbias = dy.sum(reduce_dims)
    if weight is not None:
        dweight = dweight.to(weight.dtype)
        dbias = dbias.to(weight.dtype)
    return dx, dweight, dbias


torch.library.register_autograd(
    "normext::group_norm_forward",
    _group_norm_backward,
    setup_context=_group_norm_setup_context,
)
