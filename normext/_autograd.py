"""Autograd formulas of the ops, registered with torch.library.register_autograd (and as
autograd.Functions for eager calls: see register_autograd).

First-order backward calls the fused backward op. When the backward itself must be
differentiable (create_graph=True: gradgradcheck, gradient penalties), it is computed instead by
a composite of torch ops that autograd differentiates again, as ATen does for native_group_norm.
The backward op is differentiable too (its inputs include mean and rstd), through the same
composite.
"""
import torch

from normext._meta import acc_dtype


# Eager calls that need a gradient go through a plain autograd.Function per op (built by
# register_autograd below) instead of the op's Autograd kernel. That kernel, which
# torch.library.register_autograd installs, spends 40-60 us of Python per call before the op runs
# (filling the schema's defaults, binding arguments): more than the kernel itself on a
# 2x1280x16x16 GroupNorm. Both paths run the same setup_context and backward functions.
_EAGER_FUNCTIONS = {}


def register_autograd(overload, backward, setup_context):
    """torch.library.register_autograd(overload, ...), plus the autograd.Function that eager_op
    calls for the same op. setup_context(ctx, inputs, output) and backward(ctx, *grads) see the
    arguments as passed (eager) or with every default filled in (the op's Autograd kernel); each
    backward returns one gradient per schema argument, trailing Nones included, which
    autograd.Function drops for arguments that were not passed."""
    torch.library.register_autograd(overload, backward, setup_context=setup_context)

    def forward(ctx, *args):
        with torch._C._AutoDispatchBelowAutograd():
            output = overload(*args)
        setup_context(ctx, args, output)
        return output

    _EAGER_FUNCTIONS[overload] = type(
        f"{overload._opname}_function", (torch.autograd.Function,),
        {"forward": staticmethod(forward), "backward": staticmethod(backward)})


def calls_ops_as_they_are():
    """True under torch.compile, a torch.func transform or torch.jit.trace: the functional API then
    calls the registered ops themselves, so traced graphs and transforms see them (see eager_op)."""
    return (torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active()
            or torch.jit.is_tracing())


def eager_op(overload):
    """`overload` (the resolved overload, not the packet: no lookup per call) as the functional
    API calls it. Eager, with a gradient to track: the op's autograd.Function (see
    register_autograd). Eager, with none (grad mode off, as in a first-order backward, `no_grad`
    or `inference_mode`, or no input requiring grad): the op below the autograd key, as its
    Autograd kernel would do itself minus that kernel's Python (a LayerNorm call on one 4096-value
    row 24 -> 10 us). Under torch.compile, a torch.func transform or torch.jit.trace the op is
    called as it is, so traced graphs and transforms see the registered op (a jit trace then holds
    normext ops, which a saved trace finds again once normext is imported, not a Python
    autograd.Function, which it could not save)."""

    def call(*args):
        if calls_ops_as_they_are():
            return overload(*args)
        if torch.is_grad_enabled() and torch._C._any_requires_grad(*args):
            function = _EAGER_FUNCTIONS.get(overload)
            return overload(*args) if function is None else function.apply(*args)
        with torch._C._AutoDispatchBelowAutograd():
            return overload(*args)

    return call


# The fused backward ops, as the first-order backwards below call them.
_group_norm_backward = eager_op(torch.ops.normext.group_norm_backward.default)
_layer_norm_backward = eager_op(torch.ops.normext.layer_norm_backward.default)
_rms_norm_backward = eager_op(torch.ops.normext.rms_norm_backward.default)
_batch_norm_backward = eager_op(torch.ops.normext.batch_norm_backward.default)
_dyt_backward = eager_op(torch.ops.normext.dyt_backward.default)


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
    return (~(z <= 0)).to(z.dtype)  # NaN passes the gradient, as in torch's relu backward


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


# ---- Backward of the backward ops: autograd through their composites ---------------------------


def _detached_leaves(saved, needs):
    """Fresh autograd leaves of the saved tensors, requiring grad where the op's input needs it."""
    return [t.detach().requires_grad_(need) if t is not None else None
            for t, need in zip(saved, needs)]


def _leaf_grads(leaves, outs, grads, output_mask):
    """Gradients, through the composite's outputs outs, of the leaves that require grad (None for
    the others), given the gradients grads of the backward op's outputs."""
    # Masked-out (empty) outputs carry no gradient. The others are matched by numel and viewed in
    # the composite's shape (dyt's parameter gradients; a no-op for the other ops).
    pairs = [(o, g) for o, g, m in zip(outs, grads, output_mask)
             if m and o is not None and g is not None and g.numel() == o.numel()]
    inputs = [t for t in leaves if t is not None and t.requires_grad]
    result = iter(torch.autograd.grad([o for o, _ in pairs], inputs,
                                      [g.reshape(o.shape) for o, g in pairs],
                                      allow_unused=True, materialize_grads=True)
                  if pairs and inputs else [])
    return [next(result) if t is not None and t.requires_grad else None for t in leaves]


# ---- group_norm_forward ------------------------------------------------------------------------


def _group_norm_forward_setup_context(ctx, inputs, output):
    input, weight, bias, num_groups, eps = inputs[:5]
    activation = inputs[5] if len(inputs) > 5 else 0
    _, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.set_materialize_grads(False)  # no zeros for the statistics' gradients (never used)
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
    return _group_norm_backward(
        grad_y, input, mean, rstd, weight, ctx.num_groups, [need_input, need_weight, need_bias],
        bias, ctx.activation,
    )


def _group_norm_grads(ctx, grad_y, needs):
    """(dx, dweight, dbias) of the saved group_norm forward (add_group_norm's saves summed as its
    input), None where not needed or where there is no such parameter."""
    input, weight, bias, mean, rstd = ctx.saved_tensors
    need_input, need_weight, need_bias = needs
    need_weight = need_weight and weight is not None
    need_bias = need_bias and ctx.bias_dtype is not None
    dx, dweight, dbias = _grad_from_group_norm(ctx, grad_y, input, weight, bias, mean, rstd,
                                               (need_input, need_weight, need_bias))
    return (dx if need_input else None, dweight if need_weight else None,
            dbias.to(ctx.bias_dtype) if need_bias else None)


def _group_norm_forward_backward(ctx, grad_y, grad_mean, grad_rstd):
    if grad_y is None:  # no gradient reached y (set_materialize_grads(False))
        return (None,) * 6
    dx, dweight, dbias = _group_norm_grads(ctx, grad_y, ctx.needs_input_grad[:3])
    return dx, dweight, dbias, None, None, None


register_autograd(
    torch.ops.normext.group_norm_forward.default, _group_norm_forward_backward,
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
        leaves = _detached_leaves(saved, needs)
        outs = group_norm_backward_math(*leaves[:5], ctx.num_groups, leaves[5], ctx.activation)
        result = _leaf_grads(leaves, outs, (grad_dx, grad_dweight, grad_dbias), ctx.output_mask)
    return (*result[:5], None, None, result[5], None)


register_autograd(
    torch.ops.normext.group_norm_backward.default, _group_norm_backward_backward,
    setup_context=_group_norm_backward_setup_context,
)


# ---- Row norms: LayerNorm, RMSNorm and the fused residual-add variants -------------------------


def _row_dims(input, normalized_shape):
    axis = input.dim() - len(normalized_shape)
    return list(range(axis, input.dim())), list(range(axis))


def _sum_over(t, dims):
    # NB: Tensor.sum([]) would reduce every dim; no leading dims means nothing to reduce.
    return t.sum(dims) if dims else t


def rms_norm_eps(input, eps):
    """torch.rms_norm's default: the machine epsilon of the accumulation dtype."""
    return torch.finfo(acc_dtype(input.dtype)).eps if eps is None else eps


def row_norm_stats_math(input, normalized_shape, eps, rms):
    """(mean, rstd) of each row as differentiable torch ops, in the accumulation dtype."""
    dims, _ = _row_dims(input, normalized_shape)
    x = input.to(acc_dtype(input.dtype))
    if rms:
        return None, (x.square().mean(dims, keepdim=True) + eps).rsqrt()
    return x.mean(dims, keepdim=True), (x.var(dims, unbiased=False, keepdim=True) + eps).rsqrt()


def row_norm_backward_math(grad_y, input, normalized_shape, mean, rstd, weight, bias_dtype=None):
    """(dx, dweight, dbias) of y = (x - mean) * rstd * weight + bias (mean None: RMSNorm), as
    torch ops, differentiable in every tensor argument. dweight is None without a weight."""
    dims, lead = _row_dims(input, normalized_shape)
    acc = acc_dtype(input.dtype)
    stat_shape = tuple(input.shape[: len(lead)]) + (1,) * len(dims)
    x = input.to(acc)
    rstd = rstd.to(acc).reshape(stat_shape)
    xhat = x * rstd if mean is None else (x - mean.to(acc).reshape(stat_shape)) * rstd
    dy = grad_y.to(acc)
    g = dy if weight is None else dy * weight.to(acc)
    proj = xhat * (g * xhat).mean(dims, keepdim=True)
    dx = rstd * (g - proj if mean is None else g - g.mean(dims, keepdim=True) - proj)
    dx = dx.to(input.dtype)
    dweight = None if weight is None else _sum_over(dy * xhat, lead).to(weight.dtype)
    dbias = _sum_over(dy, lead)
    dbias = dbias.to(bias_dtype or (weight.dtype if weight is not None else acc))
    return dx, dweight, dbias


def _row_norm_input_grads(ctx, grad_y, input, weight, mean, rstd, needs):
    """(dx, dweight, dbias) for the forward ops: the fused backward op, or the composite (with
    statistics recomputed from the input) when the backward itself must be differentiable."""
    need_input, need_weight, need_bias = needs
    if torch.is_grad_enabled():
        mean, rstd = row_norm_stats_math(input, ctx.normalized_shape, ctx.eps, ctx.rms)
        return row_norm_backward_math(grad_y, input, ctx.normalized_shape, mean, rstd, weight,
                                      ctx.bias_dtype)
    if ctx.rms:
        dx, dweight = _rms_norm_backward(
            grad_y, input, ctx.normalized_shape, rstd, weight, [need_input, need_weight])
        return dx, dweight, None
    # NB: no bias argument: only its dtype would matter, and dbias is cast to it by the caller.
    return _layer_norm_backward(
        grad_y, input, ctx.normalized_shape, mean, rstd, weight, None,
        [need_input, need_weight, need_bias])


def _row_norm_setup(ctx, input, normalized_shape, weight, bias, eps, rms, mean, rstd):
    ctx.normalized_shape = list(normalized_shape)
    ctx.rms = rms
    ctx.eps = rms_norm_eps(input, eps) if rms else eps
    ctx.bias_dtype = None if bias is None else bias.dtype
    ctx.save_for_backward(input, weight, mean, rstd)


def _row_norm_grads(ctx, grad_y, needs):
    input, weight, mean, rstd = ctx.saved_tensors
    need_input, need_weight, need_bias = needs
    need_weight = need_weight and weight is not None
    need_bias = need_bias and ctx.bias_dtype is not None
    dx, dweight, dbias = _row_norm_input_grads(ctx, grad_y, input, weight, mean, rstd,
                                               (need_input, need_weight, need_bias))
    return (dx if need_input else None, dweight if need_weight else None,
            dbias.to(ctx.bias_dtype) if need_bias else None)


def _layer_norm_forward_setup_context(ctx, inputs, output):
    input, normalized_shape, weight, bias, eps = inputs
    _, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.set_materialize_grads(False)  # no zeros for the statistics' gradients (never used)
    _row_norm_setup(ctx, input, normalized_shape, weight, bias, eps, False, mean, rstd)


def _layer_norm_forward_backward(ctx, grad_y, grad_mean, grad_rstd):
    if grad_y is None:  # no gradient reached y (set_materialize_grads(False))
        return (None,) * 5
    n = ctx.needs_input_grad
    dx, dweight, dbias = _row_norm_grads(ctx, grad_y, (n[0], n[2], n[3]))
    return dx, None, dweight, dbias, None


register_autograd(
    torch.ops.normext.layer_norm_forward.default, _layer_norm_forward_backward,
    setup_context=_layer_norm_forward_setup_context,
)


def _rms_norm_forward_setup_context(ctx, inputs, output):
    input, normalized_shape, weight, eps = inputs
    _, rstd = output
    ctx.mark_non_differentiable(rstd)
    ctx.set_materialize_grads(False)  # no zeros for the statistics' gradients (never used)
    _row_norm_setup(ctx, input, normalized_shape, weight, None, eps, True, None, rstd)


def _rms_norm_forward_backward(ctx, grad_y, grad_rstd):
    if grad_y is None:  # no gradient reached y (set_materialize_grads(False))
        return (None,) * 4
    needs = ctx.needs_input_grad
    dx, dweight, _ = _row_norm_grads(ctx, grad_y, (needs[0], needs[2], False))
    return dx, None, dweight, None


register_autograd(
    torch.ops.normext.rms_norm_forward.default, _rms_norm_forward_backward,
    setup_context=_rms_norm_forward_setup_context,
)


def _add_row_norm_grads(ctx, grad_y, grad_summed, needs):
    """Gradients of (y, summed) = (norm(input + residual), input + residual): the norm's backward
    on summed, plus summed's own gradient; input and residual get the same."""
    need_sum = needs[0] or needs[1]
    dsum, dweight, dbias = _row_norm_grads(ctx, grad_y, (need_sum, needs[2], needs[3]))
    if need_sum and grad_summed is not None:
        dsum = dsum + grad_summed
    return (dsum if needs[0] else None, dsum if needs[1] else None, dweight, dbias)


def _add_layer_norm_forward_setup_context(ctx, inputs, output):
    input, residual, normalized_shape, weight, bias, eps = inputs
    _, summed, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    _row_norm_setup(ctx, summed, normalized_shape, weight, bias, eps, False, mean, rstd)


def _add_layer_norm_forward_backward(ctx, grad_y, grad_summed, grad_mean, grad_rstd):
    needs = ctx.needs_input_grad
    dinput, dresidual, dweight, dbias = _add_row_norm_grads(
        ctx, grad_y, grad_summed, (needs[0], needs[1], needs[3], needs[4]))
    return dinput, dresidual, None, dweight, dbias, None


register_autograd(
    torch.ops.normext.add_layer_norm_forward.default, _add_layer_norm_forward_backward,
    setup_context=_add_layer_norm_forward_setup_context,
)


def _add_rms_norm_forward_setup_context(ctx, inputs, output):
    input, residual, normalized_shape, weight, eps = inputs
    _, summed, rstd = output
    ctx.mark_non_differentiable(rstd)
    _row_norm_setup(ctx, summed, normalized_shape, weight, None, eps, True, None, rstd)


def _add_rms_norm_forward_backward(ctx, grad_y, grad_summed, grad_rstd):
    needs = ctx.needs_input_grad
    dinput, dresidual, dweight, _ = _add_row_norm_grads(
        ctx, grad_y, grad_summed, (needs[0], needs[1], needs[3], False))
    return dinput, dresidual, None, dweight, None


register_autograd(
    torch.ops.normext.add_rms_norm_forward.default, _add_rms_norm_forward_backward,
    setup_context=_add_rms_norm_forward_setup_context,
)


# ---- layer_norm_backward / rms_norm_backward: differentiable through the composite ---------------


def _row_norm_backward_backward(ctx, saved, needs, grads, rms):
    with torch.enable_grad():
        leaves = _detached_leaves(saved, needs)
        grad_y, input, mean, rstd, weight = leaves
        outs = row_norm_backward_math(grad_y, input, ctx.normalized_shape, None if rms else mean,
                                      rstd, weight, ctx.bias_dtype)
        return _leaf_grads(leaves, outs, grads, ctx.output_mask)


def _layer_norm_backward_setup_context(ctx, inputs, output):
    grad_out, input, normalized_shape, mean, rstd, weight, bias, output_mask = inputs
    ctx.save_for_backward(grad_out, input, mean, rstd, weight)
    ctx.normalized_shape = list(normalized_shape)
    ctx.output_mask = list(output_mask)
    ctx.bias_dtype = None if bias is None else bias.dtype


def _layer_norm_backward_backward(ctx, grad_dx, grad_dweight, grad_dbias):
    n = ctx.needs_input_grad
    g_out, g_in, g_mean, g_rstd, g_w = _row_norm_backward_backward(
        ctx, ctx.saved_tensors, (n[0], n[1], n[3], n[4], n[5]),
        (grad_dx, grad_dweight, grad_dbias), rms=False)
    return g_out, g_in, None, g_mean, g_rstd, g_w, None, None


register_autograd(
    torch.ops.normext.layer_norm_backward.default, _layer_norm_backward_backward,
    setup_context=_layer_norm_backward_setup_context,
)


def _rms_norm_backward_setup_context(ctx, inputs, output):
    grad_out, input, normalized_shape, rstd, weight, output_mask = inputs
    ctx.save_for_backward(grad_out, input, None, rstd, weight)
    ctx.normalized_shape = list(normalized_shape)
    ctx.output_mask = list(output_mask)
    ctx.bias_dtype = None


def _rms_norm_backward_backward(ctx, grad_dx, grad_dweight):
    n = ctx.needs_input_grad
    g_out, g_in, _, g_rstd, g_w = _row_norm_backward_backward(
        ctx, ctx.saved_tensors, (n[0], n[1], False, n[3], n[4]), (grad_dx, grad_dweight),
        rms=True)
    return g_out, g_in, None, g_rstd, g_w, None


register_autograd(
    torch.ops.normext.rms_norm_backward.default, _rms_norm_backward_backward,
    setup_context=_rms_norm_backward_setup_context,
)


# ---- batch_norm ---------------------------------------------------------------------------------


def _bn_bcast(input):
    return (1, input.shape[1]) + (1,) * (input.dim() - 2)


def _bn_reduce_dims(input):
    return [0] + list(range(2, input.dim()))


def batch_norm_backward_math(grad_y, input, weight, mean, invstd, train):
    """(dx, dweight, dbias) of y = (x - mean) * invstd * weight + bias, as torch ops.

    mean / invstd: (C,), the batch statistics in training (then dx includes their dependence on
    x) or the running ones in evaluation. Differentiable in every tensor argument.
    """
    acc = acc_dtype(input.dtype)
    bcast, dims = _bn_bcast(input), _bn_reduce_dims(input)
    x = input.to(acc)
    dy = grad_y.to(acc)
    mean = mean.to(acc).reshape(bcast)
    invstd = invstd.to(acc).reshape(bcast)
    xhat = (x - mean) * invstd
    g = dy if weight is None else dy * weight.to(acc).reshape(bcast)
    if train:
        dx = invstd * (g - g.mean(dims, keepdim=True) - xhat * (g * xhat).mean(dims, keepdim=True))
    else:
        dx = g * invstd
    dweight = (dy * xhat).sum(dims)
    dbias = dy.sum(dims)
    if weight is not None:
        dweight, dbias = dweight.to(weight.dtype), dbias.to(weight.dtype)
    return dx.to(input.dtype), dweight, dbias


def _bn_statistics(input, running_mean, running_var, save_mean, save_invstd, train, eps):
    if train:
        return save_mean, save_invstd
    acc = acc_dtype(input.dtype)
    return running_mean.to(acc), (running_var.to(acc) + eps).rsqrt()


def _batch_norm_forward_impl_setup_context(ctx, inputs, output):
    input, weight, bias, running_mean, running_var, training, momentum, eps = inputs
    _, save_mean, save_invstd, new_mean, new_var = output
    ctx.mark_non_differentiable(save_mean, save_invstd, new_mean, new_var)
    ctx.set_materialize_grads(False)  # no zeros for the statistics' gradients (never used)
    if training:
        ctx.save_for_backward(input, weight, None, None, save_mean, save_invstd)
    else:
        ctx.save_for_backward(input, weight, running_mean, running_var, None, None)
    ctx.training = training
    ctx.eps = eps
    ctx.bias_dtype = None if bias is None else bias.dtype


def _batch_norm_forward_impl_backward(ctx, grad_y, grad_mean, grad_invstd, grad_new_mean,
                                      grad_new_var):
    if grad_y is None:  # no gradient reached y (set_materialize_grads(False))
        return (None,) * 8
    input, weight, running_mean, running_var, save_mean, save_invstd = ctx.saved_tensors
    need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
    need_weight = need_weight and weight is not None
    need_bias = need_bias and ctx.bias_dtype is not None
    if torch.is_grad_enabled():
        # Double backward: in training the statistics must depend on x, so recompute them.
        if ctx.training and input.numel() > 0:
            x = input.to(acc_dtype(input.dtype))
            dims = _bn_reduce_dims(input)
            mean = x.mean(dims)
            invstd = (x.var(dims, unbiased=False) + ctx.eps).rsqrt()
        else:
            mean, invstd = _bn_statistics(input, running_mean, running_var, save_mean, save_invstd,
                                          ctx.training, ctx.eps)
        dx, dweight, dbias = batch_norm_backward_math(grad_y, input, weight, mean, invstd,
                                                      ctx.training)
    else:
        dx, dweight, dbias = _batch_norm_backward(
            grad_y, input, weight, running_mean, running_var, save_mean, save_invstd,
            ctx.training, ctx.eps, [need_input, need_weight, need_bias])
    return (
        dx if need_input else None,
        dweight if need_weight else None,
        dbias.to(ctx.bias_dtype) if need_bias else None,
        None, None, None, None, None,
    )


register_autograd(
    torch.ops.normext.batch_norm_forward_impl.default, _batch_norm_forward_impl_backward,
    setup_context=_batch_norm_forward_impl_setup_context,
)


def _batch_norm_backward_setup_context(ctx, inputs, output):
    (grad_out, input, weight, running_mean, running_var, save_mean, save_invstd, train, eps,
     output_mask) = inputs
    ctx.save_for_backward(grad_out, input, weight, running_mean, running_var, save_mean,
                          save_invstd)
    ctx.train = train
    ctx.eps = eps
    ctx.output_mask = list(output_mask)


def _batch_norm_backward_backward(ctx, grad_dx, grad_dweight, grad_dbias):
    saved = ctx.saved_tensors
    needs = ctx.needs_input_grad[:7]
    with torch.enable_grad():
        leaves = _detached_leaves(saved, needs)
        grad_out, input, weight, rm, rv, sm, si = leaves
        mean, invstd = _bn_statistics(input, rm, rv, sm, si, ctx.train, ctx.eps)
        outs = batch_norm_backward_math(grad_out, input, weight, mean, invstd, ctx.train)
        result = _leaf_grads(leaves, outs, (grad_dx, grad_dweight, grad_dbias), ctx.output_mask)
    return (*result, None, None, None)


register_autograd(
    torch.ops.normext.batch_norm_backward.default, _batch_norm_backward_backward,
    setup_context=_batch_norm_backward_setup_context,
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
    need_input, need_residual, need_weight, need_bias = ctx.needs_input_grad[:4]
    need_x = need_input or need_residual
    dx, dweight, dbias = _group_norm_grads(ctx, grad_y, (need_x, need_weight, need_bias))
    if need_x and grad_summed is not None:
        dx = dx + grad_summed
    return (dx if need_input else None, dx if need_residual else None, dweight, dbias,
            None, None, None)


register_autograd(
    torch.ops.normext.add_group_norm_forward.default, _add_group_norm_backward,
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
        dx, dalpha, dweight, dbias = _dyt_backward(
            grad_y.reshape(x2.shape), x2, alpha, None if weight is None else weight.reshape(C),
            True, [need_input, need_alpha, need_weight, need_bias])
        dx = dx.reshape(input.shape) if need_input else dx
        dweight = dweight.reshape(shape) if need_weight else dweight
        dbias = dbias.reshape(shape) if need_bias else dbias
    else:
        dx, dalpha, dweight, dbias = _dyt_backward(
            grad_y, input, alpha, weight, False, [need_input, need_alpha, need_weight, need_bias])
    return (
        dx if need_input else None,
        dalpha if need_alpha else None,
        dweight if need_weight else None,
        dbias.to(ctx.bias_dtype).reshape(ctx.bias_shape) if need_bias else None,
        None,
    )


register_autograd(
    torch.ops.normext.dyt_forward.default, _dyt_forward_backward,
    setup_context=_dyt_forward_setup_context,
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
        leaves = _detached_leaves(saved, needs)
        outs = dyt_backward_math(*leaves, ctx.channels_last)
        result = _leaf_grads(leaves, outs, grads, ctx.output_mask)
    return (*result, None, None)


register_autograd(
    torch.ops.normext.dyt_backward.default, _dyt_backward_backward,
    setup_context=_dyt_backward_setup_context,
)
