"""Fake (meta) kernels: shapes, dtypes and argument checks of every op, for torch.compile."""
import functools

import torch

_REDUCED = (torch.bfloat16, torch.float16)


def _register_fake(name: str):
    """torch.library.register_fake, plus one check for every op: all its tensors on one device.

    NB: the dispatcher sends a call that mixes meta tensors with real ones to the Meta kernel,
    which is this fake one; without the check it would hand back an uninitialized tensor on the
    real tensors' device instead of torch's "not on the expected device" error.
    """
    def register(fake):
        @functools.wraps(fake)
        def checked(*args, **kwargs):
            tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
            for t in tensors[1:]:
                if t.device != tensors[0].device:
                    raise RuntimeError(f"Tensor on device {t.device} is not on the expected "
                                       f"device {tensors[0].device}!")
            return fake(*args, **kwargs)

        return torch.library.register_fake(name)(checked)

    return register


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype of the saved statistics: float32 for half/bfloat16/float32, float64 for float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_param_dtypes(input: torch.Tensor, *params) -> None:
    """ATen's check_mixed_data_type, with its messages."""
    if not any(p is not None and p.dtype != input.dtype for p in params):
        return
    for p in params:
        if p is not None and p.dtype != torch.float32:
            raise RuntimeError("mixed dtype (CPU): expect parameter to have scalar type of Float")
    if input.dtype not in _REDUCED:
        raise RuntimeError("mixed dtype (CPU): all inputs must share same datatype.")


def check_group_norm_args(input, weight, bias, num_groups: int) -> None:
    """The checks of csrc/ops/group_norm.cpp, with the same messages (torch's)."""
    if input.dim() < 2:
        raise RuntimeError(
            f"Expected at least 2 dimensions for input tensor but received {input.dim()}"
        )
    if not input.dtype.is_floating_point:
        raise NotImplementedError(
            f"normext group_norm: not implemented for '{_c10_name(input.dtype)}' "
            "(expected float32, float64, bfloat16 or float16)"
        )
    C = input.shape[1]
    if C <= 0:
        raise RuntimeError(f"Expected number of channels to be greater than 0, got {C}")
    if num_groups <= 0:
        raise RuntimeError(f"Expected num groups to be greater than 0, got {num_groups}")
    if C % num_groups != 0:
        raise RuntimeError(
            "Expected number of channels in input to be divisible by num_groups, but got input "
            f"of shape {list(input.shape)} and num_groups={num_groups}"
        )
    for name, p in (("weight", weight), ("bias", bias)):
        if p is None:
            continue
        if p.dim() != 1 or p.numel() != C:
            raise RuntimeError(
                f"Expected {name} to be a vector of size equal to the number of channels in "
                f"input, but got {name} of shape {list(p.shape)} and input of shape "
                f"{list(input.shape)}"
            )
        if p.device != input.device:
            raise RuntimeError(
                f"Tensor on device {p.device} is not on the expected device {input.device}!"
            )
    check_param_dtypes(input, weight, bias)
    HxW = 1
    for size in input.shape[2:]:
        HxW *= size
    if HxW == 0:
        raise RuntimeError(f"Expected HxW to be greater than 0, got {HxW}")


def _c10_name(dtype: torch.dtype) -> str:
    names = {torch.float32: "Float", torch.float64: "Double", torch.float16: "Half",
             torch.bfloat16: "BFloat16",torch.int32: "Int", torch.int64: "Long", torch.int16: "Short", torch.int8: "Char",
             torch.uint8: "Byte", torch.bool: "Bool", torch.complex64: "ComplexFloat",
             torch.complex128: "ComplexDouble"}
    return names.get(dtype, str(dtype).replace("torch.", ""))


def group_norm_memory_format(input: torch.Tensor) -> torch.memory_format:
    """Layout of the output: channels_last(_3d) inputs keep it, anything else becomes NCHW."""
    if not input.is_contiguous():
        fmt = torch._prims_common.suggest_memory_format(input)
        if (input.dim() == 4 and fmt == torch.channels_last) or (
            input.dim() == 5 and fmt == torch.channels_last_3d
        ):
            return fmt
    return torch.contiguous_format


def batch_norm_memory_format(input: torch.Tensor) -> torch.memory_format:
    """GroupNorm's rule, plus ATen batch_norm's: strides that are channels-last except on dims of
    size 1 (is_contiguous(memory_format=...) ignores those) give a channels-last output too."""
    fmt = group_norm_memory_format(input)
    if fmt == torch.contiguous_format and not input.is_contiguous():
        if input.dim() == 4 and input.is_contiguous(memory_format=torch.channels_last):
            return torch.channels_last
        if input.dim() == 5 and input.is_contiguous(memory_format=torch.channels_last_3d):
            return torch.channels_last_3d
    return fmt


def check_activation(activation: int) -> None:
    if not 0 <= activation < 5:
        raise RuntimeError(
            "group_norm: activation must be 0 (none), 1 (silu), 2 (gelu), 3 (gelu_tanh) or 4 "
            f"(relu), but got {activation}"
        )


@_register_fake("normext::group_norm_forward")
def _group_norm_forward_fake(input, weight, bias, num_groups, eps, activation=0):
    check_group_norm_args(input, weight, bias, num_groups)
    check_activation(activation)
    y = torch.empty_like(input, memory_format=group_norm_memory_format(input))
    stats = (input.shape[0], num_groups)
    dtype = acc_dtype(input.dtype)
    return y, input.new_empty(stats, dtype=dtype), input.new_empty(stats, dtype=dtype)


@_register_fake("normext::group_norm_backward")
def _group_norm_backward_fake(grad_out, input, mean, rstd, weight, num_groups, output_mask,
                              bias=None, activation=0):
    check_group_norm_args(input, weight, bias if activation else None, num_groups)
    check_activation(activation)
    acc = acc_dtype(input.dtype)
    param_dtype = weight.dtype if weight is not None else acc
    C = input.shape[1]
    dx = (
        torch.empty_like(input, memory_format=group_norm_memory_format(input))
        if output_mask[0]
        else input.new_empty((0,))
    )
    dweight = input.new_empty((C if output_mask[1] and weight is not None else 0,), dtype=param_dtype)
    dbias = input.new_empty((C if output_mask[2] else 0,), dtype=param_dtype)
    return dx, dweight, dbias


# ---- Row norms: LayerNorm, RMSNorm and the fused residual-add variants -------------------------

_C10_FLOAT_NAMES = {torch.float16: "Half", torch.float32: "Float", torch.float64: "Double",
                    torch.bfloat16: "BFloat16"}


def _scalar_type_name(dtype: torch.dtype) -> str:
    return _C10_FLOAT_NAMES.get(dtype) or _c10_name(dtype)


def check_row_norm_args(input, normalized_shape, weight, bias, rms: bool) -> None:
    """The checks of csrc/ops/layer_norm.cpp (torch's _check_layer_norm_inputs /
    _check_rms_norm_inputs, mixed dtypes, dtype), with the same messages."""
    shape = list(normalized_shape)
    nd = len(shape)
    if nd < 1:
        raise RuntimeError(
            "Expected normalized_shape to be at least 1-dimensional, i.e., containing at least "
            f"one element, but got normalized_shape = {shape}"
        )
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and list(p.shape) != shape:
            raise RuntimeError(
                f"Expected {name} to be of same shape as normalized_shape, but got {name} of shape "
                f"{list(p.shape)} and normalized_shape = {shape}"
            )
    if rms and input.dim() < nd:
        raise ValueError(f"Input tensor must have at least {nd} dimensions, but got {input.dim()}")
    if input.dim() < nd or list(input.shape[input.dim() - nd:]) != shape:
        dims = ", ".join(str(s) for s in shape)
        raise RuntimeError(
            f"Given normalized_shape={shape}, expected input with shape "
            f"[*{dims if rms else ', ' + dims}], but got input of size{list(input.shape)}"
        )
    for p in (weight, bias):
        if p is not None and p.device != input.device:
            raise RuntimeError(
                f"Tensor on device {p.device} is not on the expected device {input.device}!"
            )
    if not rms:
        first = weight if weight is not None else bias
        if first is not None and first.dtype != input.dtype:
            for p in (weight, bias):
                if p is not None and p.dtype != torch.float32:
                    raise RuntimeError(
                        "mixed dtype (CPU): expect parameter to have scalar type of Float")
            if input.dtype not in _REDUCED:
                raise RuntimeError("mixed dtype (CPU): all inputs must share same datatype.")
        elif first is not None and bias is not None and bias.dtype != input.dtype:
            raise RuntimeError(
                f"expected scalar type {_scalar_type_name(input.dtype)} but found "
                f"{_scalar_type_name(bias.dtype)}"
            )
    if not input.dtype.is_floating_point:
        op = "rms_norm" if rms else "layer_norm"
        raise NotImplementedError(
            f"normext {op}: not implemented for '{_c10_name(input.dtype)}' "
            "(expected float32, float64, bfloat16 or float16)"
        )


def _check_like_input(name, t, input) -> None:
    """`t` (grad_out, residual) must have the input's shape and dtype, as the C++ ops check."""
    if t.shape != input.shape:
        raise RuntimeError(
            f"Expected {name} of shape {list(input.shape)} (the input's), but got {list(t.shape)}"
        )
    if t.dtype != input.dtype:
        raise RuntimeError(
            f"Expected {name} of dtype {_scalar_type_name(input.dtype)} (the input's), but got "
            f"{_scalar_type_name(t.dtype)}"
        )


def _check_residual(input, residual) -> None:
    _check_like_input("residual", residual, input)
    if residual.device != input.device:
        raise RuntimeError(
            f"Tensor on device {residual.device} is not on the expected device {input.device}!"
        )


def _prod(sizes):
    out = 1
    for s in sizes:
        out = out * s
    return out


def row_norm_stat_shape(input, normalized_shape):
    """Shape of mean / rstd: the input's leading dims, then a 1 per normalized dim (as ATen's)."""
    axis = input.dim() - len(normalized_shape)
    return tuple(input.shape[:axis]) + (1,) * len(normalized_shape)


def _row_norm_forward_fake(input, residual, normalized_shape, weight, bias, rms):
    check_row_norm_args(input, normalized_shape, weight, bias, rms)
    if residual is not None:
        _check_residual(input, residual)
    y = torch.empty_like(input, memory_format=torch.contiguous_format)
    stats = row_norm_stat_shape(input, normalized_shape)
    acc = acc_dtype(input.dtype)
    mean = None if rms else input.new_empty(stats, dtype=acc)
    summed = None if residual is None else torch.empty_like(input, memory_format=torch.contiguous_format)
    return y, summed, mean, input.new_empty(stats, dtype=acc)


def _row_norm_backward_fake(grad_out, input, normalized_shape, weight, bias, rms, mask, stats):
    check_row_norm_args(input, normalized_shape, weight, bias, rms)
    _check_like_input("grad_out", grad_out, input)
    rows = _prod(input.shape[: input.dim() - len(normalized_shape)])
    for stat in stats:
        if stat.numel() != rows or stat.dtype != acc_dtype(input.dtype):
            raise RuntimeError(
                f"Expected {'rstd' if rms else 'mean and rstd'} with {rows} elements of dtype "
                f"{_scalar_type_name(acc_dtype(input.dtype))}, but got shape {list(stat.shape)} and "
                f"dtype {_scalar_type_name(stat.dtype)}"
            )
    acc = acc_dtype(input.dtype)
    weight_dtype = weight.dtype if weight is not None else acc
    bias_dtype = bias.dtype if bias is not None else weight_dtype
    shape = list(normalized_shape)
    dx = (torch.empty_like(input, memory_format=torch.contiguous_format) if mask[0]
          else input.new_empty((0,)))
    dweight = input.new_empty(shape if mask[1] and weight is not None else (0,), dtype=weight_dtype)
    dbias = input.new_empty(shape if mask[2] else (0,), dtype=bias_dtype)
    return dx, dweight, dbias


@_register_fake("normext::layer_norm_forward")
def _layer_norm_forward_fake(input, normalized_shape, weight, bias, eps):
    y, _, mean, rstd = _row_norm_forward_fake(input, None, normalized_shape, weight, bias, False)
    return y, mean, rstd


@_register_fake("normext::layer_norm_backward")
def _layer_norm_backward_fake(grad_out, input, normalized_shape, mean, rstd, weight, bias,
                              output_mask):
    return _row_norm_backward_fake(grad_out, input, normalized_shape, weight, bias, False,
                                   output_mask, (mean, rstd))


@_register_fake("normext::rms_norm_forward")
def _rms_norm_forward_fake(input, normalized_shape, weight, eps):
    y, _, _, rstd = _row_norm_forward_fake(input, None, normalized_shape, weight, None, True)
    return y, rstd


@_register_fake("normext::rms_norm_backward")
def _rms_norm_backward_fake(grad_out, input, normalized_shape, rstd, weight, output_mask):
    dx, dweight, _ = _row_norm_backward_fake(grad_out, input, normalized_shape, weight, None, True,
                                             list(output_mask) + [False], (rstd,))
    return dx, dweight


@_register_fake("normext::add_layer_norm_forward")
def _add_layer_norm_forward_fake(input, residual, normalized_shape, weight, bias, eps):
    return _row_norm_forward_fake(input, residual, normalized_shape, weight, bias, False)


@_register_fake("normext::add_rms_norm_forward")
def _add_rms_norm_forward_fake(input, residual, normalized_shape, weight, eps):
    y, summed, _, rstd = _row_norm_forward_fake(input, residual, normalized_shape, weight, None,
                                                True)
    return y, summed, rstd


# ---- batch_norm ---------------------------------------------------------------------------------


def _scalar_type_name(dtype: torch.dtype) -> str:
    """c10's ScalarType name (as printed in ATen's messages)."""
    names = {torch.float32: "Float", torch.float64: "Double", torch.bfloat16: "BFloat16",
             torch.float16: "Half"}
    return names.get(dtype) or _c10_name(dtype)


def _bn_param_dtypes(input, *params) -> None:
    """ATen CPU's is_mixed_type / check_mixed_data_type: the first given parameter decides."""
    first = next((p.dtype for p in params if p is not None), None)
    if first is None:
        return
    if first == input.dtype:
        for p in params:
            if p is not None and p.dtype != input.dtype:
                raise RuntimeError(
                    f"expected scalar type {_scalar_type_name(input.dtype)} but found "
                    f"{_scalar_type_name(p.dtype)}"
                )
        return
    check_param_dtypes(input, *params)


def check_batch_norm_args(input, weight, bias, running_mean, running_var, training) -> None:
    """The checks of csrc/ops/batch_norm.cpp (batch_norm_forward_impl), with torch's messages."""
    if not input.dtype.is_floating_point:
        raise NotImplementedError(f'"batch_norm" not implemented for \'{_c10_name(input.dtype)}\'')
    C = input.shape[1] if input.dim() >= 2 else 0
    if input.numel() == 0:
        return
    for name, t in (("running_mean", running_mean), ("running_var", running_var)):
        if t is not None and t.numel() != C:
            raise RuntimeError(f"{name} should contain {C} elements not {t.numel()}")
        if t is None and not training:
            raise RuntimeError(f"{name} must be defined in evaluation mode")
    if (running_mean is None) != (running_var is None):
        raise ValueError(
            "running_mean and running_var must either both be None or neither be None")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.numel() != C:
            raise RuntimeError(f"{name} should contain {C} elements not {t.numel()}")
    if input.dim() < 2:
        raise RuntimeError(
            f"Expected at least 2 dimensions for input tensor but received {input.dim()}"
        )
    _bn_param_dtypes(input, weight, bias, running_mean, running_var)


@_register_fake("normext::batch_norm_forward_impl")
def _batch_norm_forward_impl_fake(input, weight, bias, running_mean, running_var, training,
                                  momentum, eps):
    check_batch_norm_args(input, weight, bias, running_mean, running_var, training)
    y = torch.empty_like(input, memory_format=batch_norm_memory_format(input))
    acc = acc_dtype(input.dtype)
    C = input.shape[1] if input.dim() >= 2 else 0
    n = C if training or input.numel() == 0 else 0

    def new_running(t):
        return torch.empty_like(t) if training and t is not None else input.new_empty((0,), dtype=acc)

    return (y, input.new_empty((n,), dtype=acc), input.new_empty((n,), dtype=acc),
            new_running(running_mean), new_running(running_var))


@_register_fake("normext::batch_norm_backward")
def _batch_norm_backward_fake(grad_out, input, weight, running_mean, running_var, save_mean,
                              save_invstd, train, eps, output_mask):
    C = input.shape[1] if input.dim() >= 2 else 0
    param_dtype = weight.dtype if weight is not None else input.dtype
    dx = (torch.empty_like(input, memory_format=batch_norm_memory_format(input))
          if output_mask[0] else input.new_empty((0,)))
    dweight = input.new_empty((C if output_mask[1] else 0,), dtype=param_dtype)
    dbias = input.new_empty((C if output_mask[2] else 0,), dtype=param_dtype)
    return dx, dweight, dbias


@_register_fake("normext::batch_norm_stats")
def _batch_norm_stats_fake(input):
    C = input.shape[1]
    return input.new_empty((C,), dtype=torch.float64), input.new_empty((C,), dtype=torch.float64)


@_register_fake("normext::batch_norm_elemt")
def _batch_norm_elemt_fake(input, weight, bias, mean, invstd):
    _bn_param_dtypes(input, weight, bias)
    return torch.empty_like(input, memory_format=batch_norm_memory_format(input))


@_register_fake("normext::batch_norm_backward_reduce")
def _batch_norm_backward_reduce_fake(grad_out, input, mean):
    acc = acc_dtype(input.dtype)
    C = input.shape[1]
    return input.new_empty((C,), dtype=acc), input.new_empty((C,), dtype=acc)


@_register_fake("normext::batch_norm_backward_elemt")
def _batch_norm_backward_elemt_fake(grad_out, input, weight, mean, invstd, sum_dy, sum_dy_xmu,
                                    count):
    return torch.empty_like(input, memory_format=batch_norm_memory_format(input))


@_register_fake("normext::add_group_norm_forward")
def _add_group_norm_forward_fake(input, residual, weight, bias, num_groups, eps, activation=0):
    check_group_norm_args(input, weight, bias, num_groups)
    check_activation(activation)
    if residual.shape != input.shape:
        raise RuntimeError(
            f"add_group_norm: expected residual of shape {list(input.shape)} (the input's), but "
            f"got {list(residual.shape)}"
        )
    if residual.dtype != input.dtype:
        raise RuntimeError(
            f"add_group_norm: expected residual of dtype {_c10_name(input.dtype)} (the input's), "
            f"but got {_c10_name(residual.dtype)}"
        )
    fmt = group_norm_memory_format(input)
    stats = (input.shape[0], num_groups)
    dtype = acc_dtype(input.dtype)
    return (torch.empty_like(input, memory_format=fmt), torch.empty_like(input, memory_format=fmt),
            input.new_empty(stats, dtype=dtype), input.new_empty(stats, dtype=dtype))


@_register_fake("normext::group_norm_inplace")
def _group_norm_inplace_fake(input, weight, bias, num_groups, eps, activation=0):
    check_group_norm_args(input, weight, bias, num_groups)
    check_activation(activation)


# ---- DyT ---------------------------------------------------------------------------------------


def check_dyt_args(input, alpha, weight, bias, channels_last: bool) -> None:
    """The checks of csrc/ops/dyt.cpp, with the same messages."""
    if not input.dtype.is_floating_point:
        raise NotImplementedError(
            f"normext dyt: not implemented for '{_c10_name(input.dtype)}' "
            "(expected float32, float64, bfloat16 or float16)"
        )
    if channels_last and input.dim() < 1:
        raise RuntimeError(
            "dyt: expected an input with at least 1 dimension (channels_last=True), but got a "
            "0-dimensional tensor"
        )
    if not channels_last and input.dim() < 2:
        raise RuntimeError(
            "dyt: expected an input with at least 2 dimensions (N, C, *) (channels_last=False), "
            f"but got input of shape {list(input.shape)}"
        )
    if alpha.numel() != 1:
        raise RuntimeError(
            f"dyt: expected alpha with exactly one element, but got alpha of shape {list(alpha.shape)}"
        )
    for name, p in (("weight", weight), ("bias", bias)):
        if p is None:
            continue
        if channels_last:
            k = p.dim()
            if not (1 <= k <= input.dim() and tuple(p.shape) == tuple(input.shape[input.dim() - k:])):
                raise RuntimeError(
                    f"dyt: expected {name} of the shape of the trailing dimensions of input "
                    f"(channels_last=True), but got {name} of shape {list(p.shape)} and input of "
                    f"shape {list(input.shape)}"
                )
        elif p.dim() != 1 or p.shape[0] != input.shape[1]:
            raise RuntimeError(
                f"dyt: expected {name} to be a vector of size equal to the number of channels in "
                f"input (dim 1, channels_last=False), but got {name} of shape {list(p.shape)} and "
                f"input of shape {list(input.shape)}"
            )
    if weight is not None and bias is not None and weight.shape != bias.shape:
        raise RuntimeError(
            f"dyt: expected weight and bias of the same shape, but got {list(weight.shape)} and "
            f"{list(bias.shape)}"
        )
    for t in (alpha, weight, bias):
        if t is not None and t.device != input.device:
            raise RuntimeError(
                f"Tensor on device {t.device} is not on the expected device {input.device}!"
            )
    check_param_dtypes(input, alpha, weight, bias)


def dyt_memory_format(input: torch.Tensor, channels_last: bool) -> torch.memory_format:
    """channels_last=False keeps a channels-last(_3d) input's layout; all else is contiguous."""
    if channels_last or input.dim() < 4:
        return torch.contiguous_format
    return group_norm_memory_format(input)


@_register_fake("normext::dyt_forward")
def _dyt_forward_fake(input, alpha, weight, bias, channels_last):
    check_dyt_args(input, alpha, weight, bias, channels_last)
    return torch.empty_like(input, memory_format=dyt_memory_format(input, channels_last))


@_register_fake("normext::dyt_backward")
def _dyt_backward_fake(grad_out, input, alpha, weight, channels_last, output_mask):
    check_dyt_args(input, alpha, weight, None, channels_last)
    if weight is not None:
        c_shape = tuple(weight.shape)
    else:
        c_shape = (input.shape[-1] if channels_last else input.shape[1],)
    param_dtype = weight.dtype if weight is not None else acc_dtype(input.dtype)
    dx = (
        torch.empty_like(input, memory_format=dyt_memory_format(input, channels_last))
        if output_mask[0]
        else input.new_empty((0,))
    )
    dalpha = alpha.new_empty(alpha.shape) if output_mask[1] else alpha.new_empty((0,))
    dweight = (input.new_empty(c_shape, dtype=param_dtype) if output_mask[2] and weight is not None
               else input.new_empty((0,), dtype=param_dtype))
    dbias = (input.new_empty(c_shape, dtype=param_dtype) if output_mask[3]
             else input.new_empty((0,), dtype=param_dtype))
    return dx, dalpha, dweight, dbias
