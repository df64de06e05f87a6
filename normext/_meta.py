"""Fake (meta) kernels: shapes, dtypes and argument checks of every op, for torch.compile."""
import torch

_REDUCED = (torch.bfloat16, torch.float16)


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


def check_activation(activation: int) -> None:
    if not 0 <= activation < 5:
        raise RuntimeError(
            "group_norm: activation must be 0 (none), 1 (silu), 2 (gelu), 3 (gelu_tanh) or 4 "
            f"(relu), but got {activation}"
        )


@torch.library.register_fake("normext::group_norm_forward")
def _group_norm_forward_fake(input, weight, bias, num_groups, eps, activation=0):
    check_group_norm_args(input, weight, bias, num_groups)
    check_activation(activation)
    y = torch.empty_like(input, memory_format=group_norm_memory_format(input))
    stats = (input.shape[0], num_groups)
    dtype = acc_dtype(input.dtype)
    return y, input.new_empty(stats, dtype=dtype), input.new_empty(stats, dtype=dtype)


@torch.library.register_fake("normext::group_norm_backward")
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


@torch.library.register_fake("normext::add_group_norm_forward")
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


@torch.library.register_fake("normext::group_norm_inplace")
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


@torch.library.register_fake("normext::dyt_forward")
def _dyt_forward_fake(input, alpha, weight, bias, channels_last):
    check_dyt_args(input, alpha, weight, bias, channels_last)
    return torch.empty_like(input, memory_format=dyt_memory_format(input, channels_last))


@torch.library.register_fake("normext::dyt_backward")
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
