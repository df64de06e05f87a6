"""Shared pytest fixtures and helpers for normext tests.

Every test that takes the ``device`` fixture runs on CPU and, when a GPU is present, on CUDA too
(the CUDA parameter is reported as skipped on machines without one).
"""

import inspect
import os
import subprocess
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import normext  # noqa: F401  (loads the compiled library and registers the ops)

devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# The tests compare models' outputs with torch's; on CUDA, TF32 convolutions and matmuls (cuDNN's
# default) put ~1e-3 relative noise downstream of the norms that no norm tolerance can absorb.
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False

# (major, minor) of the installed torch: some of torch's behaviour that normext follows (2.14's)
# differs in older releases.
TORCH_VERSION = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2])


def takes_bias_argument(module_cls):
    """Whether the installed torch's ``module_cls`` takes ``bias=`` (GroupNorm and BatchNorm do
    from torch 2.14 on)."""
    return "bias" in inspect.signature(module_cls.__init__).parameters


def on_cpu(value):
    """A CUDA tensor's CPU copy (differentiable), anything else unchanged."""
    return value.cpu() if isinstance(value, torch.Tensor) and value.is_cuda else value


def with_cpu_semantics(fn, *args, **kwargs):
    """torch's ``fn`` run on CPU copies of its CUDA arguments, the result moved back.

    normext's CUDA kernels follow torch's CPU semantics where torch's own CUDA kernels differ:
    half/bf16 input with float32 GroupNorm/LayerNorm parameters is accepted (torch CUDA raises
    "expected scalar type"), a channels-last GroupNorm input keeps its memory format (torch CUDA
    returns a contiguous output), and dtype errors carry the CPU messages. Autograd flows through
    the copies, so gradients land on the CUDA leaves.
    """
    device = next((a.device for a in args if isinstance(a, torch.Tensor) and a.is_cuda), None)
    if device is None:
        return fn(*args, **kwargs)
    out = fn(*[on_cpu(a) for a in args], **{k: on_cpu(v) for k, v in kwargs.items()})
    if isinstance(out, tuple):
        return tuple(o.to(device) for o in out)
    return out.to(device)

# Every dtype the kernels take, and the reduced-precision ones among them.
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
LOW_PRECISION = (torch.bfloat16, torch.float16)


def dtype_id(d):
    """A dtype's name in test ids: float32 for torch.float32."""
    return str(d).replace("torch.", "")

DEVICE_PARAMS = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available"),
    ),
]


@pytest.fixture(params=DEVICE_PARAMS)
def device(request):
    return request.param


def cuda_sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


# Layout names used by the tests. "channels_last" means torch.channels_last for 4D inputs and
# torch.channels_last_3d for 5D inputs; "strided" is a non-contiguous view (every other element of the
# last dim); "permuted" is a view whose strides are in reverse order (no standard memory format).
LAYOUTS = ("contiguous", "channels_last", "strided", "permuted")


def layout_applies(layout, ndim):
    if layout == "channels_last":
        return ndim in (4, 5)
    return True


def memory_format_of(layout, ndim):
    """The memory format torch gives the output of group_norm for an input in ``layout``."""
    if layout == "channels_last":
        return torch.channels_last if ndim == 4 else torch.channels_last_3d
    return torch.contiguous_format


def to_layout(t, layout):
    """Return a tensor with the values of ``t`` laid out as ``layout`` (a copy, never ``t`` itself)."""
    if layout == "contiguous":
        return t.clone(memory_format=torch.contiguous_format)
    if layout == "channels_last":
        if t.dim() == 4:
            out = t.clone(memory_format=torch.channels_last)
            assert out.is_contiguous(memory_format=torch.channels_last)
            return out
        if t.dim() == 5:
            out = t.clone(memory_format=torch.channels_last_3d)
            assert out.is_contiguous(memory_format=torch.channels_last_3d)
            return out
        raise ValueError(f"channels_last needs a 4D or 5D tensor, got {t.dim()}D")
    if layout == "strided":
        big_shape = list(t.shape)
        big_shape[-1] *= 2
        big = torch.full(big_shape, float("nan"), dtype=t.dtype, device=t.device)
        view = big[..., ::2]
        view.copy_(t)
        assert not view.is_contiguous()
        return view
    if layout == "permuted":
        dims = list(range(t.dim()))[::-1]
        base = t.permute(dims).contiguous()  # reversed dims, contiguous
        view = base.permute(dims)  # original shape, reversed strides
        assert view.shape == t.shape
        if t.numel() > 1 and t.dim() > 1 and sum(s > 1 for s in t.shape) > 1:
            assert not view.is_contiguous()
        return view
    raise ValueError(layout)


def make_input(shape, dtype=torch.float32, device="cpu", layout="contiguous", *, scale=1.0, shift=0.0,
               generator=None, requires_grad=False):
    """Random normal input of ``shape`` in ``layout`` (values drawn in float64, then rounded to dtype)."""
    base = torch.randn(shape, dtype=torch.float64, generator=generator) * scale + shift
    t = to_layout(base.to(dtype).to(device), layout)
    if requires_grad:
        t.requires_grad_(True)
    return t


def make_param(c, dtype=torch.float32, device="cpu", *, generator=None, requires_grad=False, kind="weight"):
    """A random (non-trivial) weight around 1 or bias around 0, so a kernel that ignores it fails."""
    t = torch.randn(c, dtype=torch.float64, generator=generator)
    if kind == "weight":
        t = 1.0 + 0.5 * t
    else:
        t = 0.5 * t
    t = t.to(dtype).to(device)
    if requires_grad:
        t.requires_grad_(True)
    return t


def ulp_floor(dtype, ref):
    """One ulp of ``dtype`` at the magnitude of ``ref`` (max abs, at least 1).

    For float64 the reference *is* torch at float64, so torch's own error is 0 and the floor is the whole
    tolerance: use 1e-12 relative (a few thousand ulps; any kernel bug is far above it).
    """
    mag = 1.0
    if ref.numel():
        m = ref.abs().max().item()
        if m == m and m != float("inf"):
            mag = max(mag, m)
    if dtype == torch.float64:
        return 1e-12 * mag
    return torch.finfo(dtype).eps * mag


def max_abs_err(a, ref):
    if a.numel() == 0:
        return 0.0
    return (a.detach().double() - ref.detach().double()).abs().max().item()


def assert_close_to_ref(ours, theirs, ref, dtype, what="", factor=2.0, floor_ulps=1.0):
    """normext's error vs the float64 reference must be <= factor * torch's error + floor.

    floor = floor_ulps ulps of ``dtype`` at the magnitude of the reference.
    """
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    err_ours = max_abs_err(ours, ref)
    err_torch = max_abs_err(theirs, ref)
    floor = floor_ulps * ulp_floor(dtype, ref)
    bound = factor * err_torch + floor
    assert err_ours <= bound, (
        f"{what}: normext max abs err {err_ours:.3e} > {factor}*torch err {err_torch:.3e} + floor {floor:.3e}"
    )


def assert_same_error(fn_ours, fn_torch, match_message=True):
    """Both callables raise; same exception type and (by default) the same message text."""
    with pytest.raises(Exception) as torch_exc:
        fn_torch()
    with pytest.raises(Exception) as our_exc:
        fn_ours()
    assert type(our_exc.value) is type(torch_exc.value), (
        f"normext raised {type(our_exc.value).__name__}({our_exc.value}), "
        f"torch raised {type(torch_exc.value).__name__}({torch_exc.value})"
    )
    if match_message:
        ours = str(our_exc.value)
        theirs = str(torch_exc.value)
        assert ours == theirs, f"message differs:\n normext: {ours!r}\n torch:   {theirs!r}"
    return our_exc.value, torch_exc.value


def assert_module_matches_torch(ours, theirs, x_ours, x_theirs, grad_out):
    """Output, input gradient and parameter gradients of module ``ours`` match torch's ``theirs``
    (float32 tolerances) for equal inputs; returns ours' output."""
    y_o, y_t = ours(x_ours), theirs(x_theirs)
    torch.testing.assert_close(y_o, y_t, rtol=1e-5, atol=1e-5)
    y_o.backward(grad_out)
    y_t.backward(grad_out)
    torch.testing.assert_close(x_ours.grad, x_theirs.grad, rtol=1e-5, atol=1e-5)
    for (n, p_t), (_, p_o) in zip(theirs.named_parameters(), ours.named_parameters()):
        torch.testing.assert_close(p_o.grad, p_t.grad, rtol=1e-4, atol=1e-5, msg=n)
    return y_o


def assert_sample_grads_close(out, ref, sample, tol):
    """Gradients of ``out`` (normext's) and ``ref`` (torch's result on the same OpInfo sample) agree
    w.r.t. the sample's input and every tensor argument that requires grad."""
    inputs = [sample.input] + [a for a in list(sample.args) + list(sample.kwargs.values())
                               if isinstance(a, torch.Tensor) and a.requires_grad]
    go = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(out, inputs, go), torch.autograd.grad(ref, inputs, go)):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol)


# Prelude of the scripts that check a bf16 approximation over every input (run them with
# run_with_cpu_capability): every finite bf16 value, and the bf16 step just above a value.
EVERY_BF16_PRELUDE = """
import torch
EVERY_BF16 = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
EVERY_BF16 = EVERY_BF16[EVERY_BF16.isfinite()]


def bf16_step(ref):
    # int16 bits + 1: the next magnitude, either sign
    return ((ref.view(torch.int16) + 1).view(torch.bfloat16).double() - ref.double()).abs()
"""


def run_with_cpu_capability(script, capability):
    """stdout of ``python -c script`` in a subprocess whose CPU kernels are capped at ``capability``
    (the table is chosen once per process); asserts that it succeeded."""
    env = dict(os.environ, NORMEXT_CPU_CAPABILITY=capability)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture
def restore_num_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


class OpRecorder(TorchDispatchMode):
    """Records the names of the ops that reach the dispatcher (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))
