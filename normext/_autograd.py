"""Autograd formulas of the ops, registered with torch.library.register_autograd.

First-order backward calls the fused backward op. When the backward itself must be
differentiable (create_graph=True: gradgradcheck, gradient penalties), it is computed instead by
a composite of torch ops that autograd differentiates again, as ATen does for native_group_norm.
The backward op is differentiable too (its inputs include mean and rstd), through the same
composite.
"""
import torch

from normext._meta import acc_dtype


_SQRT_HALF = 0.7071067811865476
_INV_SQRT_2PI = 0.3989422804014327
_SQRT_2_OVER_PI = 0.7978845608028654


def activation_grad(z, activation):
    """act'(z) as differentiable torch ops (activation: 1 silu, 2 gelu, 3 gelu_tanh, 4 relu)."""
    if activation == 1:
        s = torch.sigmoid(z)
        return s * (1 + z * (1 - s))
    if activation == 2:
        return 0.5 * (1 + torch.erf(z * _SQRT_HALF)) + z * torch.exp(-0.5 * z * z) * _INV_SQRT_2PI
    if activation == 3:
        z2 = z * z
        s = torch.sigmoid(2 * _SQRT_2_OVER_PI * (z + 0.044715 * z2 * z))
        return s + 2 * z * s * (1 - s) * _SQRT_2_OVER_PI * (1 + 3 * 0.044715 * z2)
    return (z > 0).to(z.dtype)


def group_norm_backward_math(grad_y, input, mean, rstd, weight, num_groups, bias=None,
                             activation=0):
    """(dx, dweight, dbias) of y = act((x - mean) * rstd * weight + bias), as torch ops.

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
    if activation:
        z = xhat.reshape(input.shape)
        if weight is not None:
            z = z * weight.to(acc).reshape(bcast)
        if bias is not None:
            z = z + bias.to(acc).reshape(bcast)
        dy = dy * activation_grad(z, activation)
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
    input, weight, bias, num_groups, eps = inputs[:5]
    activation = inputs[5] if len(inputs) > 5 else 0
    _, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    # NB: with an activation the backward recomputes its input from x and the (N, G) statistics:
    # input, mean and rstd are all that is saved (plus the parameters).
    ctx.save_for_backward(input, weight, bias if activation else None, mean, rstd)
    ctx.num_groups = num_groups
    ctx.eps = eps
    ctx.activation = activation
    ctx.bias_dtype = None if bias is None else bias.dtype


def _grad_from_group_norm(ctx, grad_y, input, weight, bias, mean, rstd, need):
    """(dx, dweight, dbias) of act(group_norm(input)) for the forward ops' autograd."""
    need_input, need_weight, need_bias = need
    if torch.is_grad_enabled():
        # Double backward: the statistics must depend on x, so recompute them differentiably.
        N = input.shape[0]
        x = input.to(acc_dtype(input.dtype)).reshape(N, ctx.num_groups, -1)
        mean = x.mean(-1)
        rstd = (x.var(-1, unbiased=False) + ctx.eps).rsqrt()
        return group_norm_backward_math(
            grad_y, input, mean, rstd, weight, ctx.num_groups, bias, ctx.activation
        )
    return torch.ops.normext.group_norm_backward(
        grad_y, input, mean, rstd, weight, ctx.num_groups, [need_input, need_weight, need_bias],
        bias, ctx.activation,
    )


def _group_norm_forward_backward(ctx, grad_y, grad_mean, grad_rstd):
    input, weight, bias, mean, rstd = ctx.saved_tensors
    need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
    need_weight = need_weight and weight is not None
    need_bias = need_bias and ctx.bias_dtype is not None
    dx, dweight, dbias = _grad_from_group_norm(ctx, grad_y, input, weight, bias, mean, rstd,
                                               (need_input, need_weight, need_bias))
    return (
        dx if need_input else None,
        dweight if need_weight else None,
        dbias.to(ctx.bias_dtype) if need_bias else None,
        None,
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
    grad_out, input, mean, rstd, weight, num_groups, output_mask = inputs[:7]
    bias = inputs[7] if len(inputs) > 7 else None
    activation = inputs[8] if len(inputs) > 8 else 0
    ctx.save_for_backward(grad_out, input, mean, rstd, weight, bias if activation else None)
    ctx.num_groups = num_groups
    ctx.output_mask = list(output_mask)
    ctx.activation = activation


def _group_norm_backward_backward(ctx, grad_dx, grad_dweight, grad_dbias):
    saved = ctx.saved_tensors
    needs = list(ctx.needs_input_grad[:5]) + [len(ctx.needs_input_grad) > 7 and ctx.needs_input_grad[7]]
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(need) if t is not None else None
                  for t, need in zip(saved, needs)]
        outs = group_norm_backward_math(*leaves[:5], ctx.num_groups, leaves[5], ctx.activation)
        # Masked-out (empty) outputs carry no gradient.
        pairs = [(o, g) for o, g, m in zip(outs, (grad_dx, grad_dweight, grad_dbias), ctx.output_mask)
                 if m and g is not None and g.numel() == o.numel()]
        inputs = [t for t in leaves if t is not None and t.requires_grad]
        grads = iter(torch.autograd.grad([o for o, _ in pairs], inputs, [g for _, g in pairs],
                                         allow_unused=True, materialize_grads=True)
                     if pairs and inputs else [])
    result = [next(grads) if t is not None and t.requires_grad else None for t in leaves]
    return (*result[:5], None, None, result[5], None)


torch.library.register_autograd(
    "normext::group_norm_backward",
    _group_norm_backward_backward,
    setup_context=_group_norm_backward_setup_context,
)


# ---- add_group_norm_forward ----------------------------------------------------------------------


def _add_group_norm_setup_context(ctx, inputs, output):
    input, residual, weight, bias, num_groups, eps = inputs[:6]
    activation = inputs[6] if len(inputs) > 6 else 0
    _, summed, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.save_for_backward(summed, weight, bias if activation else None, mean, rstd)
    ctx.num_groups = num_groups
    ctx.eps = eps
    ctx.activation = activation
    ctx.bias_dtype = None if bias is None else bias.dtype


def _add_group_norm_backward(ctx, grad_y, grad_summed, grad_mean, grad_rstd):
    summed, weight, bias, mean, rstd = ctx.saved_tensors
    need_input, need_residual, need_weight, need_bias = ctx.needs_input_grad[:4]
    need_x = need_input or need_residual
    need_weight = need_weight and weight is not None
    need_bias = need_bias and ctx.bias_dtype is not None
    dx, dweight, dbias = _grad_from_group_norm(ctx, grad_y, summed, weight, bias, mean, rstd,
                                               (need_x, need_weight, need_bias))
    if need_x and grad_summed is not None:
        dx = dx + grad_summed
    return (
        dx if need_input else None,
        dx if need_residual else None,
        dweight if need_weight else None,
        dbias.to(ctx.bias_dtype) if need_bias else None,
        None,
        None,
        None,
    )


torch.library.register_autograd(
    "normext::add_group_norm_forward",
    _add_group_norm_backward,
    setup_context=_add_group_norm_setup_context,
)


# ---- DyT ---------------------------------------------------------------------------------------


def dyt_backward_math(grad_y, input, alpha, weight, channels_last):
    """(dx, dalpha, dweight, dbias) of y = weight * tanh(alpha * x) + bias, as torch ops.

    Differentiable in every tensor argument; computed in the accumulation dtype, returned in the
    input's (dx), alpha's (dalpha) and the weight's (dweight, dbias) dtype and shape.
    """
    acc = acc_dtype(input.dtype)
    x = input.to(acc)
    dy = grad_y.to(acc)
    a = alpha.to(acc).reshape(())
    t = torch.tanh(a * x)
    if weight is None:
        w = None
    elif channels_last:
        w = weight.to(acc)
    else:
        w = weight.to(acc).reshape((-1,) + (1,) * (input.dim() - 2))
    gu = dy * (1 - t * t) if w is None else dy * w * (1 - t * t)
    dx = (gu * a).to(input.dtype)
    dalpha = (gu * x).sum().reshape(alpha.shape).to(alpha.dtype)
    if channels_last:
        k = weight.dim() if weight is not None else 1
        dims = list(range(input.dim() - k))
    else:
        dims = [0] + list(range(2, input.dim()))
    dweight = (dy * t).sum(dims) if dims else dy * t
    dbias = dy.sum(dims) if dims else dy
    if weight is not None:
        dweight, dbias = dweight.to(weight.dtype), dbias.to(weight.dtype)
    return dx, dalpha, dweight, dbias


def _dyt_forward_setup_context(ctx, inputs, output):
    input, alpha, weight, bias, channels_last = inputs
    ctx.save_for_backward(input, alpha, weight)
    ctx.channels_last = channels_last
    ctx.bias_shape = None if bias is None else bias.shape
    ctx.bias_dtype = None if bias is None else bias.dtype


def _dyt_forward_backward(ctx, grad_y):
    input, alpha, weight = ctx.saved_tensors
    need_input, need_alpha, need_weight, need_bias = ctx.needs_input_grad[:4]
    need_weight = need_weight and weight is not None
    need_bias = need_bias and ctx.bias_shape is not None
    if torch.is_grad_enabled():
        dx, dalpha, dweight, dbias = dyt_backward_math(grad_y, input, alpha, weight, ctx.channels_last)
    elif ctx.channels_last:
        # NB: rows of C = the parameters' numel, so a multi-dim bias without a weight (whose
        # shape the op cannot see) is reduced over the right dims.
        shape = weight.shape if weight is not None else (ctx.bias_shape or input.shape[-1:])
        C = 1
        for s in shape:
            C *= s
        x2 = input.reshape(-1, C)
        dx, dalpha, dweight, dbias = torch.ops.normext.dyt_backward(
            grad_y.reshape(x2.shape), x2, alpha, None if weight is None else weight.reshape(C),
            True, [need_input, need_alpha, need_weight, need_bias])
        dx = dx.reshape(input.shape) if need_input else dx
        dweight = dweight.reshape(shape) if need_weight else dweight
        dbias = dbias.reshape(shape) if need_bias else dbias
    else:
        dx, dalpha, dweight, dbias = torch.ops.normext.dyt_backward(
            grad_y, input, alpha, weight, False, [need_input, need_alpha, need_weight, need_bias])
    return (
        dx if need_input else None,
        dalpha if need_alpha else None,
        dweight if need_weight else None,
        dbias.to(ctx.bias_dtype).reshape(ctx.bias_shape) if need_bias else None,
        None,
    )


torch.library.register_autograd(
    "normext::dyt_forward", _dyt_forward_backward, setup_context=_dyt_forward_setup_context
)


def _dyt_backward_setup_context(ctx, inputs, output):
    grad_out, input, alpha, weight, channels_last, output_mask = inputs
    ctx.save_for_backward(grad_out, input, alpha, weight)
    ctx.channels_last = channels_last
    ctx.output_mask = list(output_mask)


def _dyt_backward_backward(ctx, *grads):
    saved = ctx.saved_tensors
    needs = ctx.needs_input_grad[:4]
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(need) if t is not None else None
                  for t, need in zip(saved, needs)]
        outs = dyt_backward_math(*leaves, ctx.channels_last)
        pairs = [(o, g) for o, g, m in zip(outs, grads, ctx.output_mask)
                 if m and g is not None and g.numel() == o.numel()]
        inputs = [t for t in leaves if t is not None and t.requires_grad]
        result_grads = iter(torch.autograd.grad([o for o, _ in pairs], inputs,
                                                [g.reshape(o.shape) for o, g in pairs],
                                                allow_unused=True, materialize_grads=True)
                            if pairs and inputs else [])
    result = [next(result_grads) if t is not None and t.requires_grad else None for t in leaves]
    return (*result, None, None)


torch.library.register_autograd(
    "normext::dyt_backward", _dyt_backward_backward, setup_context=_dyt_backward_setup_context
)
