"""torch.nn.functional-compatible entry points: same signatures, results and errors."""
from typing import List, Optional, Tuple

import torch
from torch import Tensor
from torch.overrides import handle_torch_function, has_torch_function_variadic

from normext import _reference
from normext._autograd import calls_ops_as_they_are, eager_op


_group_norm_forward = eager_op(torch.ops.normext.group_norm_forward.default)


def _verify_batch_size(size: List[int]) -> None:
    # Same check and message as torch.nn.functional._verify_batch_size.
    size_prods = size[0]
    for i in range(len(size) - 2):
        size_prods *= size[i + 2]
    if size_prods == 1:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got input size {size}"
        )


def _type_name(value) -> str:
    """A type's name as torch's argument parser prints it: tp_name, which for a type defined in C
    outside the builtins carries its module ("numpy.bool"), and for a Python class does not."""
    cls = type(value)
    if not cls.__flags__ & (1 << 9) and cls.__module__ != "builtins":  # not Py_TPFLAGS_HEAPTYPE
        return f"{cls.__module__}.{cls.__qualname__}"
    return cls.__name__


def _check_bool(fn: str, name: str, position: int, value) -> None:
    """torch's argument parser's TypeError for a bool argument given anything but a bool."""
    if type(value) is not bool:
        raise TypeError(f"{fn}(): argument '{name}' (position {position}) must be bool, not "
                        f"{_type_name(value)}")


def _check_scalar(fn: str, name: str, position: int, value, kind: str) -> None:
    """torch's argument parser's TypeError for a scalar argument of the wrong type (the
    dispatcher, left to find it, raises a RuntimeError)."""
    if kind == "int":
        ok = isinstance(value, (int, torch.SymInt)) or hasattr(type(value), "__index__")
    else:
        ok = isinstance(value, (int, float, torch.SymInt, torch.SymFloat)) or hasattr(
            type(value), "__float__")
    if not ok:
        raise TypeError(f"{fn}(): argument '{name}' (position {position}) must be {kind}, not "
                        f"{_type_name(value)}")


def _check_running_stats(input: Tensor, running_mean: Optional[Tensor],
                         running_var: Optional[Tensor], training: bool) -> None:
    """The errors ATen's batch_norm (hence instance_norm) adds for the running statistics."""
    if training and input.numel() > 0 and (running_mean is None) != (running_var is None):
        raise ValueError(
            "running_mean and running_var must either both be None or neither be None")
    if torch.is_grad_enabled():
        for name, t in (("running_mean", running_mean), ("running_var", running_var)):
            if t is not None and t.requires_grad:
                raise RuntimeError(
                    f"normext batch_norm is not differentiable with respect to argument "
                    f"'{name}'. This input cannot have requires_grad True.")


# Activation names of the fused GroupNorm -> the ops' `activation` argument.
ACTIVATIONS = {None: 0, "silu": 1, "gelu": 2, "gelu_tanh": 3, "relu": 4}
_add_group_norm_forward = eager_op(
    torch.ops.normext.add_group_norm_forward.default)
_group_norm_inplace = eager_op(torch.ops.normext.group_norm_inplace.default)


def activation_code(activation: Optional[str]) -> int:
    try:
        return ACTIVATIONS[activation]
    except (KeyError, TypeError):
        raise ValueError(
            "activation must be one of None, 'silu', 'gelu', 'gelu_tanh', 'relu', but got "
            f"{activation!r}"
        ) from None


def _under_cuda_autocast(*tensors):
    """The tensors as torch's CUDA autocast hands them to group_norm, layer_norm and rms_norm:
    ATen's fp32 cast policy for these ops (AT_FORALL_FP32 in ATen/autocast_mode.h) casts every
    floating CUDA tensor except double to float32, so they compute and return float32 (a model
    converted to normext keeps its dtypes under torch.autocast). Unchanged outside CUDA autocast;
    CPU autocast leaves these ops alone, as it does torch's."""
    if not torch.is_autocast_enabled("cuda"):
        return tensors
    return tuple(
        t.float() if t is not None and t.is_cuda and t.is_floating_point()
        and t.dtype != torch.float64 else t
        for t in tensors
    )


# Whether torch's CUDA autocast casts rms_norm to float32 (torch 2.14 does; 2.11 lets it run in
# the input's dtype): asked of the dispatcher, so normext follows the installed torch.
_RMS_NORM_AUTOCASTS = torch._C._dispatch_has_kernel_for_dispatch_key("aten::rms_norm",
                                                                      "AutocastCUDA")


def _check_inplace_allowed(*tensors) -> None:
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        raise RuntimeError(
            "normext group_norm(inplace=True) overwrites its input, but autograd needs it to "
            "compute gradients here (the input or a parameter requires grad and grad mode is "
            "on). Use inplace=False for training, or run under torch.no_grad() / "
            "torch.inference_mode()."
        )


def _check_group_norm_args(input: Tensor, num_groups: int, eps: float,
                           activation: Optional[str], fn: str = "group_norm",
                           shift: int = 0) -> int:
    """F.group_norm's checks of the input, with its messages; returns the activation's code.
    shift: positions of the arguments after `input` in fn's signature, beyond group_norm's."""
    _check_scalar(fn, "num_groups", 2 + shift, num_groups, "int")
    _check_scalar(fn, "eps", 5 + shift, eps, "float")
    act = activation_code(activation)
    if input.dim() < 2:
        raise RuntimeError(
            f"Expected at least 2 dimensions for input tensor but received {input.dim()}"
        )
    _verify_batch_size(
        [input.size(0) * input.size(1) // num_groups, num_groups] + list(input.size()[2:])
    )
    return act


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
    act = _check_group_norm_args(input, num_groups, eps, activation)
    if inplace:
        _check_inplace_allowed(input, weight, bias)
    else:
        input, weight, bias = _under_cuda_autocast(input, weight, bias)
    if _reference.needed():
        y = _reference.group_norm(input, num_groups, weight, bias, eps, act)
        return input.copy_(y) if inplace else y
    if inplace:
        _group_norm_inplace(input, weight, bias, num_groups, eps, act)
        return input
    return _group_norm_forward(input, weight, bias, num_groups, eps, act)[0]


# ---- Row norms: LayerNorm, RMSNorm and the fused residual-add variants -------------------------

_layer_norm_forward = eager_op(torch.ops.normext.layer_norm_forward.default)
_rms_norm_forward = eager_op(torch.ops.normext.rms_norm_forward.default)
_add_layer_norm_forward = eager_op(
    torch.ops.normext.add_layer_norm_forward.default)
_add_rms_norm_forward = eager_op(torch.ops.normext.add_rms_norm_forward.default)


def _normalized_shape(normalized_shape, fn: str, position: int) -> List[int]:
    # torch's argument parser rejects a bare int here (nn.LayerNorm, not F.layer_norm, accepts one).
    if isinstance(normalized_shape, (int, torch.SymInt)):
        raise TypeError(
            f"{fn}(): argument 'normalized_shape' (position {position}) must be tuple of ints, "
            f"not {type(normalized_shape).__name__}"
        )
    shape = list(normalized_shape)
    for i, size in enumerate(shape):
        if not (isinstance(size, (int, torch.SymInt)) or hasattr(type(size), "__index__")):
            raise TypeError(
                f"{fn}(): argument 'normalized_shape' (position {position}) must be tuple of "
                f"ints, but found element of type {type(size).__name__} at pos {i}"
            )
    return shape


def layer_norm(
    input: Tensor,
    normalized_shape: List[int],
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: float = 1e-5,
) -> Tensor:
    """Layer Normalization over the last dims, as torch.nn.functional.layer_norm."""
    if has_torch_function_variadic(input, weight, bias):
        return handle_torch_function(
            layer_norm, (input, weight, bias), input, normalized_shape, weight=weight, bias=bias,
            eps=eps,
        )
    shape = _normalized_shape(normalized_shape, "layer_norm", 2)
    _check_scalar("layer_norm", "eps", 5, eps, "float")
    input, weight, bias = _under_cuda_autocast(input, weight, bias)
    if _reference.needed():
        return torch.nn.functional.layer_norm(input, shape, weight, bias, eps)
    return _layer_norm_forward(input, shape, weight, bias, eps)[0]


def rms_norm(
    input: Tensor,
    normalized_shape: List[int],
    weight: Optional[Tensor] = None,
    eps: Optional[float] = None,
) -> Tensor:
    """Root Mean Square Layer Normalization, as torch.nn.functional.rms_norm. eps=None is the
    machine epsilon of the accumulation dtype (float32 for half/bfloat16), as torch's."""
    if has_torch_function_variadic(input, weight):
        return handle_torch_function(
            rms_norm, (input, weight), input, normalized_shape, weight=weight, eps=eps
        )
    shape = _normalized_shape(normalized_shape, "rms_norm", 2)
    if eps is not None:
        _check_scalar("rms_norm", "eps", 4, eps, "float")
    if _RMS_NORM_AUTOCASTS:
        input, weight = _under_cuda_autocast(input, weight)
    if input.is_complex() or _reference.needed():
        # torch's rms_norm also takes complex input; normext's kernels are real, so torch's own
        # composite serves it (and the torch.func transforms, see _reference).
        return torch.rms_norm(input, shape, weight, eps)
    return _rms_norm_forward(input, shape, weight, eps)[0]


def add_layer_norm(
    input: Tensor,
    residual: Tensor,
    normalized_shape: List[int],
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: float = 1e-5,
) -> Tuple[Tensor, Tensor]:
    """(layer_norm(input + residual), input + residual) in one pass: the sum is written once and
    normalized while in cache. input and residual have the same shape and dtype."""
    if has_torch_function_variadic(input, residual, weight, bias):
        return handle_torch_function(
            add_layer_norm, (input, residual, weight, bias), input, residual, normalized_shape,
            weight=weight, bias=bias, eps=eps,
        )
    shape = _normalized_shape(normalized_shape, "add_layer_norm", 3)
    _check_scalar("add_layer_norm", "eps", 6, eps, "float")
    if _reference.needed():
        return _reference.add_layer_norm(input, residual, shape, weight, bias, eps)
    y, summed, _, _ = _add_layer_norm_forward(input, residual, shape, weight, bias, eps)
    return y, summed


def add_rms_norm(
    input: Tensor,
    residual: Tensor,
    normalized_shape: List[int],
    weight: Optional[Tensor] = None,
    eps: Optional[float] = None,
) -> Tuple[Tensor, Tensor]:
    """(rms_norm(input + residual), input + residual) in one pass, as add_layer_norm."""
    if has_torch_function_variadic(input, residual, weight):
        return handle_torch_function(
            add_rms_norm, (input, residual, weight), input, residual, normalized_shape,
            weight=weight, eps=eps,
        )
    shape = _normalized_shape(normalized_shape, "add_rms_norm", 3)
    if eps is not None:
        _check_scalar("add_rms_norm", "eps", 5, eps, "float")
    if _reference.needed():
        return _reference.add_rms_norm(input, residual, shape, weight, eps)
    y, summed, _ = _add_rms_norm_forward(input, residual, shape, weight, eps)
    return y, summed


# ---- batch_norm / instance_norm -----------------------------------------------------------------

_batch_norm_forward_composite = eager_op(torch.ops.normext.batch_norm_forward.default)
_batch_norm_forward_impl = eager_op(torch.ops.normext.batch_norm_forward_impl.default)


def _batch_norm_forward(input, weight, bias, running_mean, running_var, training, momentum, eps):
    """normext::batch_norm_forward, a composite (csrc/ops/batch_norm.cpp): batch_norm_forward_impl,
    which carries the autograd formula, then the new running statistics copied in place. An eager
    call that needs a gradient takes the same two steps here, so that the impl goes through its
    autograd.Function (eager_op) rather than its Autograd kernel's Python."""
    args = (input, weight, bias, running_mean, running_var, training, momentum, eps)
    if calls_ops_as_they_are() or not (torch.is_grad_enabled() and torch._C._any_requires_grad(*args)):
        return _batch_norm_forward_composite(*args)
    y, save_mean, save_invstd, new_mean, new_var = _batch_norm_forward_impl(*args)
    if training:
        with torch.no_grad():
            if running_mean is not None:
                running_mean.copy_(new_mean)
            if running_var is not None:
                running_var.copy_(new_var)
    return y, save_mean, save_invstd
from normext._meta import _bn_param_dtypes  # noqa: E402


def batch_norm(
    input: Tensor,
    running_mean: Optional[Tensor],
    running_var: Optional[Tensor],
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Batch Normalization over N and the spatial dims, as torch.nn.functional.batch_norm
    (running statistics updated in place in training)."""
    if has_torch_function_variadic(input, running_mean, running_var, weight, bias):
        return handle_torch_function(
            batch_norm, (input, running_mean, running_var, weight, bias), input, running_mean,
            running_var, weight=weight, bias=bias, training=training, momentum=momentum, eps=eps,
        )
    if _reference.needed():
        return torch.nn.functional.batch_norm(input, running_mean, running_var, weight, bias,
                                              training, momentum, eps)
    if training:
        _verify_batch_size(input.size())
    # Same checks and messages as torch.nn.functional.batch_norm (torch 2.14).
    if training and eps <= 0.0:
        raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")
    elif eps < 0.0:
        raise ValueError(f"batch_norm eps must be non-negative, but got {eps}")
    _check_bool("batch_norm", "training", 6, training)
    _check_scalar("batch_norm", "momentum", 7, momentum, "float")
    if training and input.dim() == 1 and all(
            t is None for t in (weight, bias, running_mean, running_var)):
        # torch's error, from its kernel's input.size(1) (given parameters, its size checks come
        # first, as normext's op makes them)
        raise IndexError("Dimension out of range (expected to be in range of [-1, 0], but got 1)")
    if training and input.numel() > 0 and (running_mean is None) != (running_var is None):
        # ATen checks the sizes (against input.size(1), read as 0 for a 1-D input) before it
        # finds one running statistic missing.
        features = input.size(1) if input.dim() > 1 else 0
        for name, t in (("running_mean", running_mean), ("running_var", running_var),
                        ("weight", weight), ("bias", bias)):
            if t is not None and t.numel() != features:
                raise RuntimeError(f"{name} should contain {features} elements not {t.numel()}")
    _check_running_stats(input, running_mean, running_var, training)
    if not training and eps == 0:
        # ATen's evaluation formula, x * a + (bias - mean * a) with a = weight / sqrt(var), gives
        # NaN where var == eps == 0 (normext's (x - mean) * a + bias would give +-inf): that
        # corner is torch's own op.
        return torch.nn.functional.batch_norm(input, running_mean, running_var, weight, bias,
                                              training, momentum, eps)
    return _batch_norm_forward(input, weight, bias, running_mean, running_var, training,
                               momentum, eps)[0]


def _verify_spatial_size(size: List[int]) -> None:
    # Same check and message as torch.nn.functional._verify_spatial_size.
    size_prods = 1
    for i in range(2, len(size)):
        size_prods *= size[i]
    if size_prods == 1:
        raise ValueError(
            f"Expected more than 1 spatial element when training, got input size {size}"
        )


def instance_norm(
    input: Tensor,
    running_mean: Optional[Tensor] = None,
    running_var: Optional[Tensor] = None,
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Instance Normalization per sample and channel, as torch.nn.functional.instance_norm.

    Instance statistics are GroupNorm's with one channel per group (normext::group_norm_forward,
    native in channels-last too); with use_input_stats=False the running statistics normalize
    through normext::batch_norm_forward in evaluation mode.
    """
    if has_torch_function_variadic(input, running_mean, running_var, weight, bias):
        return handle_torch_function(
            instance_norm, (input, running_mean, running_var, weight, bias), input,
            running_mean=running_mean, running_var=running_var, weight=weight, bias=bias,
            use_input_stats=use_input_stats, momentum=momentum, eps=eps,
        )
    if _reference.needed():
        return torch.nn.functional.instance_norm(input, running_mean, running_var, weight, bias,
                                                 use_input_stats, momentum, eps)
    if use_input_stats:
        _verify_spatial_size(input.size())
    _check_bool("instance_norm", "use_input_stats", 6, use_input_stats)
    _check_scalar("instance_norm", "momentum", 7, momentum, "float")
    _check_scalar("instance_norm", "eps", 8, eps, "float")
    _check_running_stats(input, running_mean, running_var, use_input_stats)
    if not use_input_stats and (running_mean is None or running_var is None):
        raise RuntimeError(
            "Expected running_mean and running_var to be defined when use_input_stats is false"
        )
    N, C = input.shape[0], input.shape[1]
    # ATen runs batch_norm on the (1, N * C, *) view with parameters repeated N times: its size
    # checks (and messages) count N * C features.
    for name, t in (("weight", weight), ("bias", bias), ("running_mean", running_mean),
                    ("running_var", running_var)):
        if t is not None and t.numel() != C:
            raise RuntimeError(f"{name} should contain {N * C} elements not {N * t.numel()}")
    # ATen's batch_norm dtype rules (the first given parameter decides), before GroupNorm's. The
    # running statistics take no part: ATen passes batch_norm repeated copies of them and writes
    # their mean back into them in their own dtype, so any floating dtype works.
    _bn_param_dtypes(input, weight, bias)
    if not use_input_stats:
        param = weight if weight is not None else bias
        stats_dtype = param.dtype if param is not None else (
            torch.float32 if input.dtype in (torch.bfloat16, torch.float16) else input.dtype)
        return _batch_norm_forward(input, weight, bias, running_mean.to(stats_dtype),
                                   running_var.to(stats_dtype), False, momentum, eps)[0]
    if eps == 0:
        # ATen's batch_norm takes 1/std as 0 where var == eps == 0 (GroupNorm's would be inf):
        # that corner is torch's own op.
        return torch.nn.functional.instance_norm(input, running_mean, running_var, weight, bias,
                                                 use_input_stats, momentum, eps)
    if input.numel() == 0:
        y = _batch_norm_forward(input, weight, bias, None, None, True, momentum, eps)[0]
        mean = var = None
    else:
        y, mean, rstd = _group_norm_forward(input, weight, bias, C, eps)
    if running_mean is not None or running_var is not None:
        _update_instance_running_stats(input, running_mean, running_var, mean,
                                       None if mean is None else rstd, momentum, eps)
    return y


def _update_instance_running_stats(input, running_mean, running_var, mean, rstd, momentum, eps):
    # As ATen: each instance updates its own copy of the running statistics, and the result is
    # their mean over the batch (NaN for an empty batch, as in torch).
    N, C = input.shape[0], input.shape[1]
    with torch.no_grad():
        if mean is None:  # empty input: the copies stay as they were
            if running_mean is not None:
                running_mean.copy_(running_mean.repeat(N).view(N, C).mean(0))
            if running_var is not None:
                running_var.copy_(running_var.repeat(N).view(N, C).mean(0))
            return
        if running_mean is not None:
            batch = mean.reshape(N, C).to(running_mean.dtype)
            running_mean.copy_((running_mean * (1 - momentum) + batch * momentum).mean(0))
        if running_var is not None:
            # Unbiased variance per instance from rstd = 1 / sqrt(var + eps), in double.
            hw = input.numel() // (N * C)
            var = (rstd.double().reshape(N, C).pow(-2) - eps) * (hw / (hw - 1))
            batch = var.to(running_var.dtype)
            running_var.copy_((running_var * (1 - momentum) + batch * momentum).mean(0))


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
    act = _check_group_norm_args(input, num_groups, eps, activation, "add_group_norm", 1)
    if _reference.needed():
        return _reference.add_group_norm(input, residual, num_groups, weight, bias, eps, act)
    out, summed, _, _ = _add_group_norm_forward(input, residual, weight, bias, num_groups, eps, act)
    return out, summed


# ---- DyT ---------------------------------------------------------------------------------------

_dyt_forward = eager_op(torch.ops.normext.dyt_forward.default)


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
    if _reference.needed():
        return _reference.dyt(input, alpha, weight, bias, channels_last)
    return _dyt_forward(input, alpha, weight, bias, channels_last)
