"""Autograd formulas of the ops, registered with torch.library.register_autograd.

First-order backward calls the fused backward op. When the backward itself must be
differentiable (create_graph=True: gradgradcheck, gradient penalties), it is computed instead by
a composite of torch ops that autograd differentiates again, as ATen does for native_group_norm.
The backward op is differentiable too (its inputs include mean and rstd), through the same
composite.
"""
import torch

from normext._meta import acc_dtype


def group_norm_backward_math(grad_y, input, mean, rstd, weight, num_groups):
    """(dx, dweight, dbias) of y = (x - mean) * rstd * weight + bias, as torch ops.

    mean / rstd: (N, num_groups). Differentiable in every tensor argument; computed in the
    accumulation dtype and returned in the input's (dx) and the weight's (dweight, dbias) dtype.
    """
    N, C = input.shape[:2]
    acc = acc_dtype(input.dtype)
    x = input.to(acc).reshape(N, num_groups, -1)
    mean = mean.to(acc).reshape(N, num_groups, 1)
    rstd = rstd.to(acc).reshape(N, num_groups, 1)
    dy = grad_y.to(acc)
    xhat = (x - mean) * rstd
    bcast = (1, C) + (1,) * (input.dim() - 2)
    g = (dy if weight is None else dy * weight.to(acc).reshape(bcast)).reshape(N, num_groups, -1)
    dx = rstd * (g - g.mean(-1, keepdim=True) - xhat * (g * xhat).mean(-1, keepdim=True))
    dx = dx.reshape(input.shape).to(input.dtype)
    reduce_dims = [0] + list(range(2, input.dim()))
    dweight = (dy * xhat.reshape(input.shape)).sum(reduce_dims)
    dbias = dy.sum(reduce_dims)
    if weight is not None:
        dweight, dbias = dweight.to(weight.dtype), dbias.to(weight.dtype)
    return dx, dweight, dbias


# ---- group_norm_forward ------------------------------------------------------------------------


def _group_norm_forward_setup_context(ctx, inputs, output):
    input, weight, bias, num_groups, eps = inputs
    _, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.save_for_backward(input, weight, mean, rstd)
    ctx.num_groups = num_groups
    ctx.eps = eps
    ctx.bias_dtype = None if bias is None else bias.dtype


def _group_norm_forward_backward(ctx, grad_y, grad_mean, grad_rstd):
    input, weight, mean, rstd = ctx.saved_tensors
    need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
    need_weight = need_weight and weight is not None
    need_bias = need_bias and ctx.bias_dtype is not None
    if torch.is_grad_enabled():
        # Double backward: the statistics must depend on x, so recompute them differentiably.
        N = input.shape[0]
        x = input.to(acc_dtype(input.dtype)).reshape(N, ctx.num_groups, -1)
        mean = x.mean(-1)
        rstd = (x.var(-1, unbiased=False) + ctx.eps).rsqrt()
        dx, dweight, dbias = group_norm_backward_math(
            grad_y, input, mean, rstd, weight, ctx.num_groups
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


torch.library.register_autograd(
    "normext::group_norm_forward",
    _group_norm_forward_backward,
    setup_context=_group_norm_forward_setup_context,
)


# ---- group_norm_backward -----------------------------------------------------------------------


def _group_norm_backward_setup_context(ctx, inputs, output):
    grad_out, input, mean, rstd, weight, num_groups, output_mask = inputs
    ctx.save_for_backward(grad_out, input, mean, rstd, weight)
    ctx.num_groups = num_groups
    ctx.output_mask = list(output_mask)


def _group_norm_backward_backward(ctx, grad_dx, grad_dweight, grad_dbias):
    saved = ctx.saved_tensors
    needs = ctx.needs_input_grad[:5]
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(need) if t is not None else None
                  for t, need in zip(saved, needs)]
        outs = group_norm_backward_math(*leaves, ctx.num_groups)
        # Masked-out (empty) outputs carry no gradient.
        pairs = [(o, g) for o, g, m in zip(outs, (grad_dx, grad_dweight, grad_dbias), ctx.output_mask)
                 if m and g is not None and g.numel() == o.numel()]
        inputs = [t for t in leaves if t is not None and t.requires_grad]
        grads = iter(torch.autograd.grad([o for o, _ in pairs], inputs, [g for _, g in pairs],
                                         allow_unused=True, materialize_grads=True)
                     if pairs and inputs else [])
    result = [next(grads) if t is not None and t.requires_grad else None for t in leaves]
    return (*result, None, None)


torch.library.register_autograd(
    "normext::group_norm_backward",
    _group_norm_backward_backward,
    setup_context=_group_norm_backward_setup_context,
)
