"""Tests of normext's row norms: LayerNorm and RMSNorm (ops, functional, modules) and the fused
residual-add variants add_layer_norm / add_rms_norm.

Correctness is measured against a float64 reference (torch's F.layer_norm / F.rms_norm on inputs
cast to float64); normext's error must be no worse than 2x torch's own error at the test dtype, plus
a floor of one ulp (two for gradients) of the output magnitude.
"""
import copy
import io

import pytest
import torch
import torch.nn.functional as F

import normext
import normext.functional as NF
from conftest import (DTYPES, LOW_PRECISION, assert_close_to_ref, assert_module_matches_torch,
                      assert_same_error, assert_sample_grads_close, cuda_sync, dtype_id, make_param,
                      max_abs_err, run_with_cpu_capability, to_layout, with_cpu_semantics)

pytestmark = pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")

KINDS = ["layer", "rms"]


def ours(kind):
    if kind == "layer":
        return lambda x, shape, w=None, b=None, eps=1e-5: NF.layer_norm(x, shape, w, b, eps)
    return lambda x, shape, w=None, b=None, eps=1e-6: NF.rms_norm(x, shape, w, eps)


def _torch_layer_norm(x, shape, w=None, b=None, eps=1e-5):
    # torch's CUDA layer_norm refuses half/bf16 input with float32 parameters, which its CPU one
    # and normext (on every device) take: those results come from torch's CPU kernel.
    if x.is_cuda and any(p is not None and p.dtype != x.dtype for p in (w, b)):
        return with_cpu_semantics(F.layer_norm, x, shape, w, b, eps)
    return F.layer_norm(x, shape, w, b, eps)


def theirs(kind):
    if kind == "layer":
        return _torch_layer_norm
    return lambda x, shape, w=None, b=None, eps=1e-6: F.rms_norm(x, shape, w, eps)


def make_x(shape, dtype, device, layout="contiguous", shift=0.0, scale=1.0):
    base = torch.randn(shape, dtype=torch.float64) * scale + shift
    return to_layout(base.to(dtype).to(device), layout)


def make_params(shape, affine, dtype, device, kind):
    w = b = None
    if affine in ("both", "weight"):
        w = make_param(shape, dtype, device)
    if affine in ("both", "bias") and kind == "layer":
        b = make_param(shape, dtype, device, kind="bias")
    return w, b


def fwd_bwd(fn, x, shape, w, b, go, cast=None):
    """fn on fresh leaves (cast to ``cast`` if given): (y, dx, dw, db)."""
    def leaf(t):
        if t is None:
            return None
        t = t.detach()
        t = t.to(cast) if cast is not None else t.clone()
        return t.requires_grad_(True)
    xl = x.detach().to(cast) if cast is not None else x.detach().clone(memory_format=torch.preserve_format)
    if cast is None and not x.is_contiguous():
        xl = torch.empty_strided(x.size(), x.stride(), dtype=x.dtype, device=x.device).copy_(x.detach())
    xl.requires_grad_(True)
    wl, bl = leaf(w), leaf(b)
    y = fn(xl, shape, wl, bl)
    y.backward(go.to(y.dtype))
    return y, xl.grad, None if wl is None else wl.grad, None if bl is None else bl.grad


# --------------------------------------------------------------------------------------------------
# Parity with torch: dtypes, mixed parameter dtypes, layouts, shapes (multi-chunk and long rows).
# --------------------------------------------------------------------------------------------------

# (id, input shape, normalized_shape)
CASES = [
    ("small", (2, 3, 4), (4,)),
    ("gpt_row", (4, 768), (768,)),
    ("two_dims", (2, 5, 6, 7), (6, 7)),
    ("odd_d", (5, 33), (33,)),
    ("unbatched", (7,), (7,)),
    ("d1", (6, 1), (1,)),
    ("multi_chunk", (3, 5000), (5000,)),  # two 4096-element chunks merged per row
    ("long_rows", (3, 20000), (20000,)),  # rows split over tasks (> 16384 elements)
]


def _parity_params():
    params = []
    for cid, shape, nshape in CASES:
        for kind in KINDS:
            for dtype in DTYPES:
                pds = ["same"] + (["float32"] if dtype in LOW_PRECISION else [])
                for pd in pds:
                    layouts = ["contiguous"]
                    if cid in ("small", "two_dims", "gpt_row") and pd == "same":
                        layouts += ["strided", "permuted"]
                    for layout in layouts:
                        params.append(pytest.param(kind, shape, nshape, dtype, pd, layout, "both",
                                                   id=f"{kind}-{cid}-{dtype_id(dtype)}-p_{pd}-{layout}"))
        for kind in KINDS:
            if cid not in ("small", "gpt_row", "long_rows"):
                continue
            for affine in (["none", "weight", "bias"] if kind == "layer" else ["none"]):
                params.append(pytest.param(kind, shape, nshape, torch.float32, "same", "contiguous", affine,
                                           id=f"{kind}-{cid}-float32-{affine}"))
    return params


@pytest.mark.parametrize("kind,shape,nshape,dtype,param_dtype,layout,affine", _parity_params())
def test_parity_with_torch(device, kind, shape, nshape, dtype, param_dtype, layout, affine):
    pdt = dtype if param_dtype == "same" else torch.float32
    x = make_x(shape, dtype, device, layout, shift=0.3)
    w, b = make_params(nshape, affine, pdt, device, kind)
    go = torch.randn(shape, dtype=torch.float64).to(dtype).to(device)
    ref = fwd_bwd(theirs(kind), x, nshape, w, b, go, cast=torch.float64)
    tor = fwd_bwd(theirs(kind), x, nshape, w, b, go)
    got = fwd_bwd(ours(kind), x, nshape, w, b, go)
    cuda_sync(device)
    y_o, y_t = got[0], tor[0]
    assert y_o.dtype == y_t.dtype and y_o.shape == y_t.shape and y_o.device == y_t.device
    assert y_o.is_contiguous()
    assert_close_to_ref(y_o, y_t, ref[0], dtype, "output")
    assert got[1].dtype == tor[1].dtype
    assert_close_to_ref(got[1], tor[1], ref[1], dtype, "grad input", floor_ulps=2.0)
    for i, name, p in ((2, "grad weight", w), (3, "grad bias", b)):
        if p is not None:
            assert got[i].dtype == tor[i].dtype == pdt and got[i].shape == p.shape
            assert_close_to_ref(got[i], tor[i], ref[i], pdt, name, floor_ulps=2.0)


@pytest.mark.parametrize("kind", KINDS)
def test_stats_match_aten(device, kind):
    """mean / rstd: ATen's shapes (leading dims, then a 1 per normalized dim), acc dtype, values."""
    x = make_x((2, 3, 4, 5), torch.bfloat16, device, shift=2.0)
    xd = x.double()
    if kind == "layer":
        y, mean, rstd = torch.ops.normext.layer_norm_forward(x, [4, 5], None, None, 1e-5)
        _, mean_ref, rstd_ref = torch.native_layer_norm(xd, [4, 5], None, None, 1e-5)
        assert mean.shape == mean_ref.shape == (2, 3, 1, 1) and mean.dtype == torch.float32
        torch.testing.assert_close(mean.double(), mean_ref, rtol=1e-6, atol=1e-6)
    else:
        y, rstd = torch.ops.normext.rms_norm_forward(x, [4, 5], None, 1e-5)
        rstd_ref = (xd.square().mean((-2, -1), keepdim=True) + 1e-5).rsqrt()
    assert rstd.shape == (2, 3, 1, 1) and rstd.dtype == torch.float32
    torch.testing.assert_close(rstd.double(), rstd_ref, rtol=1e-6, atol=0)


# --------------------------------------------------------------------------------------------------
# Autograd: gradcheck, gradgradcheck, double backward, the backward ops' own gradients.
# --------------------------------------------------------------------------------------------------

GC_CASES = [((3, 5), (5,)), ((2, 3, 2, 4), (2, 4))]


def _gc_fn(kind, shape, has_w, has_b):
    def fn(x, *params):
        params = list(params)
        w = params.pop(0) if has_w else None
        b = params.pop(0) if has_b else None
        return ours(kind)(x, shape, w, b)
    return fn


@pytest.mark.parametrize("affine", ["both", "none", "weight", "bias"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape,nshape", GC_CASES)
def test_gradcheck_and_gradgradcheck(device, kind, shape, nshape, affine):
    if kind == "rms" and affine in ("both", "bias"):
        pytest.skip("RMSNorm has no bias")
    x = make_x(shape, torch.float64, device, shift=0.5).requires_grad_(True)
    w, b = make_params(nshape, affine, torch.float64, device, kind)
    params = [p.requires_grad_(True) for p in (w, b) if p is not None]
    fn = _gc_fn(kind, list(nshape), w is not None, b is not None)
    assert torch.autograd.gradcheck(fn, (x, *params))
    assert torch.autograd.gradgradcheck(fn, (x, *params))


@pytest.mark.parametrize("kind", KINDS)
def test_double_backward_matches_torch(device, kind):
    results = []
    for fn in (theirs(kind), ours(kind)):
        torch.manual_seed(1)
        x = make_x((3, 4, 6), torch.float64, device, shift=0.2).requires_grad_(True)
        w = make_param((6,), torch.float64, device, requires_grad=True)
        b = make_param((6,), torch.float64, device, requires_grad=True, kind="bias") if kind == "layer" else None
        go = torch.randn(3, 4, 6, dtype=torch.float64, device=device)
        y = fn(x, [6], w, b)
        (gx,) = torch.autograd.grad(y, x, go, create_graph=True)
        (gx.square().sum() + (y * y).sum()).backward()
        results.append([t.grad for t in (x, w, b) if t is not None])
    for t, o in zip(*results):
        torch.testing.assert_close(o, t, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", KINDS)
def test_backward_op_gradcheck(device, kind):
    """The backward ops are differentiable themselves (as aten's native_layer_norm_backward)."""
    x = make_x((3, 5), torch.float64, device, shift=0.5)
    w = make_param((5,), torch.float64, device)
    go = torch.randn(3, 5, dtype=torch.float64, device=device)
    if kind == "layer":
        _, mean, rstd = torch.ops.normext.layer_norm_forward(x, [5], w, None, 1e-5)
        fn = lambda go, x, w: torch.ops.normext.layer_norm_backward(go, x, [5], mean, rstd, w, None,  # noqa: E731
                                                                    [True, True, True])
    else:
        _, rstd = torch.ops.normext.rms_norm_forward(x, [5], w, 1e-5)
        fn = lambda go, x, w: torch.ops.normext.rms_norm_backward(go, x, [5], rstd, w, [True, True])  # noqa: E731
    args = tuple(t.requires_grad_(True) for t in (go, x, w))
    assert torch.autograd.gradcheck(fn, args)


# --------------------------------------------------------------------------------------------------
# opcheck, torch.compile
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("requires_grad", [True, False])
@pytest.mark.parametrize("affine", ["both", "none"])
def test_opcheck_forward_ops(device, affine, requires_grad):
    x = make_x((2, 3, 8), torch.float32, device)
    r = make_x((2, 3, 8), torch.float32, device)
    w = make_param((8,), torch.float32, device) if affine == "both" else None
    b = make_param((8,), torch.float32, device, kind="bias") if affine == "both" else None
    for t in (x, r, w, b):
        if t is not None:
            t.requires_grad_(requires_grad)
    ops = torch.ops.normext
    torch.library.opcheck(ops.layer_norm_forward.default, (x, [8], w, b, 1e-5))
    torch.library.opcheck(ops.rms_norm_forward.default, (x, [8], w, None))
    torch.library.opcheck(ops.rms_norm_forward.default, (x, [3, 8], None, 1e-3))
    torch.library.opcheck(ops.add_layer_norm_forward.default, (x, r, [8], w, b, 1e-5))
    torch.library.opcheck(ops.add_rms_norm_forward.default, (x, r, [8], w, 1e-6))


@pytest.mark.filterwarnings("error:.*an autograd kernel was not registered:UserWarning")
@pytest.mark.parametrize("mask", [(True, True, True), (True, False, False), (False, True, True)],
                         ids=lambda m: "".join("1" if v else "0" for v in m))
@pytest.mark.parametrize("requires_grad", [True, False])
def test_opcheck_backward_ops(device, mask, requires_grad):
    x = make_x((2, 3, 8), torch.float32, device)
    w = make_param((8,), torch.float32, device)
    go = make_x((2, 3, 8), torch.float32, device)
    _, mean, rstd = torch.ops.normext.layer_norm_forward(x, [8], w, None, 1e-5)
    _, rrstd = torch.ops.normext.rms_norm_forward(x, [8], w, None)
    for t in (x, w, go):
        t.requires_grad_(requires_grad)
    torch.library.opcheck(torch.ops.normext.layer_norm_backward.default,
                          (go, x, [8], mean, rstd, w, None, list(mask)))
    torch.library.opcheck(torch.ops.normext.rms_norm_backward.default,
                          (go, x, [8], rrstd, w, list(mask[:2])))


class Block(torch.nn.Module):
    """A transformer-ish block: LN -> Linear -> GELU -> RMSNorm -> Linear."""

    def __init__(self, ln, rms):
        super().__init__()
        self.ln = ln(16)
        self.fc1 = torch.nn.Linear(16, 32)
        self.rms = rms(32)
        self.fc2 = torch.nn.Linear(32, 16)

    def forward(self, x):
        return self.fc2(self.rms(torch.nn.functional.gelu(self.fc1(self.ln(x)))))


def test_compile_fullgraph_matches_eager_and_torch():
    torch._dynamo.reset()
    eager = Block(normext.LayerNorm, normext.RMSNorm)
    with torch.no_grad():
        for m in (eager.ln, eager.rms):
            for p in m.parameters():
                p.copy_(1 + 0.5 * torch.randn_like(p))
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model, fullgraph=True)
    ref = Block(torch.nn.LayerNorm, torch.nn.RMSNorm)
    ref.load_state_dict(eager.state_dict())
    x = torch.randn(4, 7, 16)
    go = torch.randn(4, 7, 16)
    outs = []
    for model in (eager, compiled, ref):
        xl = x.clone().requires_grad_(True)
        y = model(xl)
        y.backward(go)
        outs.append((y, xl.grad))
    for y, gx in outs[1:]:
        torch.testing.assert_close(y, outs[0][0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(gx, outs[0][1], rtol=1e-4, atol=1e-5)
    for (n, p1), (_, p2) in zip(eager.named_parameters(), compiled_model.named_parameters()):
        torch.testing.assert_close(p2.grad, p1.grad, rtol=1e-4, atol=1e-5, msg=n)
    torch._dynamo.reset()


def test_compile_add_norms_dynamic():
    torch._dynamo.reset()

    def f(x, r, w, b):
        y, s = NF.add_layer_norm(x, r, [x.shape[-1]], w, b)
        z, s2 = NF.add_rms_norm(y, s, [x.shape[-1]], w)
        return z + s2

    cf = torch.compile(f, fullgraph=True, dynamic=True)
    for n in (3, 5):
        x, r = torch.randn(n, 12), torch.randn(n, 12)
        w, b = torch.randn(12), torch.randn(12)
        torch.testing.assert_close(cf(x, r, w, b), f(x, r, w, b))
    torch._dynamo.reset()


# --------------------------------------------------------------------------------------------------
# Numerics
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(8, 768), (2, 30000)], ids=["row", "long_row"])
def test_large_mean_float32(device, shape):
    """1e4 + randn: LayerNorm's statistics stay exact (Welford/Chan, corrected two-pass)."""
    x = make_x(shape, torch.float32, device, shift=1e4)
    nshape = [shape[-1]]
    _, mean, rstd = torch.ops.normext.layer_norm_forward(x, nshape, None, None, 1e-5)
    xd = x.double()
    torch.testing.assert_close(mean.double(), xd.mean(-1, keepdim=True), rtol=1e-7, atol=0)
    torch.testing.assert_close(rstd.double(), (xd.var(-1, unbiased=False, keepdim=True) + 1e-5).rsqrt(),
                               rtol=1e-4, atol=0)
    go = torch.randn(shape, device=device)
    ref = fwd_bwd(theirs("layer"), x, nshape, None, None, go, cast=torch.float64)
    tor = fwd_bwd(theirs("layer"), x, nshape, None, None, go)
    got = fwd_bwd(ours("layer"), x, nshape, None, None, go)
    for name, o, t, r in zip(("output", "dx"), got, tor, ref):
        assert_close_to_ref(o, t, r, torch.float32, name, floor_ulps=2.0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("scale", [1e30, 1e-30, 1e20])
def test_huge_and_tiny_finite_float32(device, kind, scale):
    """Finite inputs give the right finite output, even where fp32 sums of squares overflow."""
    x = make_x((4, 300), torch.float32, device, scale=scale)
    w = make_param((300,), torch.float32, device)
    y = ours(kind)(x, [300], w, None, 0.0 if kind == "rms" else 1e-5)
    ref = theirs(kind)(x.double(), [300], w.double(), None, 0.0 if kind == "rms" else 1e-5)
    if kind == "layer" and scale == 1e-30:
        ref = F.layer_norm(x.double(), [300], w.double(), None, 1e-5)  # eps dominates: ~0 output
    assert torch.isfinite(y).all()
    assert max_abs_err(y, ref) <= 1e-4 * max(1.0, ref.abs().max().item())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("value", [float("inf"), float("nan")], ids=["inf", "nan"])
def test_nonfinite_input_poisons_only_its_row(device, kind, value):
    x = make_x((4, 50), torch.float32, device)
    x[1, 7] = value
    y = ours(kind)(x, [50])
    # NB: torch's CUDA rms_norm makes the whole row NaN for an inf (its CPU kernel, and normext on
    # every device, only the inf's own element: x * rstd with rstd = 0).
    y_t = with_cpu_semantics(theirs(kind), x, [50])
    assert not torch.isfinite(y[1]).all()
    assert torch.isfinite(y[[0, 2, 3]]).all()
    torch.testing.assert_close(y[[0, 2, 3]], y_t[[0, 2, 3]], rtol=1e-5, atol=1e-5)
    assert torch.equal(torch.isnan(y[1]), torch.isnan(y_t[1]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64], ids=dtype_id)
def test_rms_default_eps_is_torchs(device, dtype):
    """eps=None: the epsilon of the accumulation dtype (torch uses float32's for half/bfloat16)."""
    x = make_x((4, 16), dtype, device, scale=1e-3 if dtype != torch.float64 else 1e-9)
    y = NF.rms_norm(x, [16])
    y_t = F.rms_norm(x, [16])
    eps = torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps
    ref = F.rms_norm(x.double(), [16], None, eps)
    assert_close_to_ref(y, y_t, ref, dtype, "output")
    module = normext.RMSNorm(16, device=device, dtype=dtype)
    assert_close_to_ref(module(x), torch.nn.RMSNorm(16, device=device, dtype=dtype)(x), ref, dtype, "module")


@pytest.mark.parametrize("kind", KINDS)
def test_complex_and_mixed_weight_dtypes_like_torch(device, kind):
    x = make_x((3, 8), torch.float32, device)
    if kind == "rms":
        xc = torch.randn(3, 8, dtype=torch.complex64, device=device)
        torch.testing.assert_close(NF.rms_norm(xc, [8]), F.rms_norm(xc, [8]))
        # torch's rms_norm takes any floating weight dtype and returns the input's dtype
        for wdt in (torch.float64, torch.bfloat16):
            w = make_param((8,), wdt, device, requires_grad=True)
            w2 = w.detach().clone().requires_grad_(True)
            y, y_t = NF.rms_norm(x, [8], w), F.rms_norm(x, [8], w2)
            assert y.dtype == y_t.dtype
            torch.testing.assert_close(y, y_t, rtol=1e-2, atol=1e-2)
            y.sum().backward()
            y_t.sum().backward()
            assert w.grad.dtype == w2.grad.dtype == wdt
            torch.testing.assert_close(w.grad, w2.grad, rtol=2e-2, atol=2e-2)
    else:
        xb = x.bfloat16()
        w, b = make_param((8,), torch.float32, device), make_param((8,), torch.float32, device, kind="bias")
        assert NF.layer_norm(xb, [8], w, b).dtype == _torch_layer_norm(xb, [8], w, b).dtype == torch.bfloat16


# --------------------------------------------------------------------------------------------------
# Determinism: bitwise identical across runs and thread counts.
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(700, 768), (3, 40000)], ids=["many_blocks", "long_rows"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dtype_id)
def test_determinism_across_thread_counts(kind, shape, dtype, restore_num_threads):
    x = make_x(shape, dtype, "cpu", shift=0.3)
    w = make_param((shape[-1],), dtype, "cpu")
    b = make_param((shape[-1],), dtype, "cpu", kind="bias") if kind == "layer" else None
    go = make_x(shape, dtype, "cpu")
    runs = []
    for nt in (2, 2, 1, 3):
        torch.set_num_threads(nt)
        runs.append(fwd_bwd(ours(kind), x, [shape[-1]], w, b, go))
    for run in runs[1:]:
        for a, c in zip(runs[0], run):
            if a is not None:
                assert torch.equal(a, c)


# --------------------------------------------------------------------------------------------------
# Edge cases: zero-size, errors.
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape,nshape", [((0, 5), (5,)), ((2, 0), (0,)), ((0, 3, 4), (3, 4)), ((3, 0, 2), (2,))])
def test_zero_size(device, kind, shape, nshape):
    results = []
    for fn in (theirs(kind), ours(kind)):
        x = torch.randn(shape, device=device, requires_grad=True)
        w = make_param(nshape, torch.float32, device, requires_grad=True)
        b = make_param(nshape, torch.float32, device, requires_grad=True, kind="bias") if kind == "layer" else None
        y = fn(x, list(nshape), w, b)
        y.sum().backward()
        results.append((y, x.grad, w.grad, None if b is None else b.grad))
    for t, o in zip(*results):
        if t is not None:
            assert o.shape == t.shape and o.dtype == t.dtype
            torch.testing.assert_close(o, t)
    if kind == "layer":
        y, mean, rstd = torch.ops.normext.layer_norm_forward(torch.randn(shape, device=device), list(nshape),
                                                             None, None, 1e-5)
        _, mean_t, rstd_t = torch.native_layer_norm(torch.randn(shape, device=device), list(nshape), None, None, 1e-5)
        assert mean.shape == mean_t.shape and rstd.shape == rstd_t.shape
        torch.testing.assert_close(mean, mean_t, equal_nan=True)
        torch.testing.assert_close(rstd, rstd_t, equal_nan=True)


def _error_cases(device):
    x = torch.randn(2, 3, 4, device=device)
    f64 = dict(dtype=torch.float64, device=device)
    cases = {
        "empty_normalized_shape": lambda fn: fn(x, []),
        "shape_mismatch": lambda fn: fn(x, [5]),
        "shape_mismatch_2d": lambda fn: fn(x, [4, 5]),
        "negative_shape": lambda fn: fn(x, [-4]),
        "too_many_dims": lambda fn: fn(x, [2, 3, 4, 5]),
        "scalar_input": lambda fn: fn(torch.tensor(1.0, device=device), [1]),
        "weight_wrong_size": lambda fn: fn(x, [4], torch.randn(5, device=device)),
        "weight_2d": lambda fn: fn(x, [4], torch.randn(1, 4, device=device)),
        "weight_on_meta": lambda fn: fn(x, [4], torch.randn(4, device="meta")),
        "int_input": lambda fn: fn(x.long(), [4]),
        "int_input_bad_shape": lambda fn: fn(x.long(), [5]),
        "int_normalized_shape": lambda fn: fn(x, 4),
        "float_in_normalized_shape": lambda fn: fn(x, [4.0]),
        "weight_float64": lambda fn: fn(x, [4], torch.randn(4, **f64)),
        "half_input_bf16_weight": lambda fn: fn(x.half(), [4], torch.randn(4, device=device).bfloat16()),
    }
    return cases


def _layer_only_cases(device):
    x = torch.randn(2, 3, 4, device=device)
    return {
        "bias_wrong_size": lambda fn: fn(x, [4], None, torch.randn(5, device=device)),
        "bias_wrong_size_with_weight": lambda fn: fn(x, [4], torch.randn(4, device=device), torch.randn(6, device=device)),
        "bias_float64": lambda fn: fn(x, [4], None, torch.randn(4, dtype=torch.float64, device=device)),
        "input_float64_weight_float32": lambda fn: fn(x.double(), [4], torch.randn(4, device=device)),
        "bf16_input_f32_weight_bf16_bias": lambda fn: fn(x.bfloat16(), [4], torch.randn(4, device=device),
                                                         torch.randn(4, device=device).bfloat16()),
        "half_weight_f32_bias": lambda fn: fn(x.half(), [4], torch.randn(4, device=device).half(),
                                              torch.randn(4, device=device)),
        "int_input_float_weight": lambda fn: fn(x.long(), [4], torch.randn(4, device=device)),
        "eps_none": lambda fn: fn(x, [4], eps=None),
    }


def _errors(device):
    out = []
    for name in _error_cases("cpu"):
        out.append(pytest.param("layer", name, id=f"layer-{name}"))
        out.append(pytest.param("rms", name, id=f"rms-{name}"))
    for name in _layer_only_cases("cpu"):
        out.append(pytest.param("layer", name, id=f"layer-{name}"))
    return out


@pytest.mark.parametrize("kind,case", _errors("cpu"))
def test_errors_match_torch(device, kind, case):
    cases = {**_error_cases(device), **_layer_only_cases(device)}
    fn = cases[case]
    if kind == "layer":
        o = lambda x, s, w=None, b=None, **kw: NF.layer_norm(x, s, w, b, **kw)  # noqa: E731
        t = lambda x, s, w=None, b=None, **kw: _torch_layer_norm(x, s, w, b, **kw)  # noqa: E731
    else:
        o = lambda x, s, w=None: NF.rms_norm(x, s, w)  # noqa: E731
        t = lambda x, s, w=None: F.rms_norm(x, s, w)  # noqa: E731
    try:
        fn(t)
    except Exception:
        pass
    else:
        # torch accepts it (rms_norm takes any weight dtype): so must normext
        fn(o)
        return
    if case == "int_input":
        # Same type; the message names normext's op instead of torch's kernel.
        with pytest.raises(NotImplementedError) as e_t:
            fn(t)
        with pytest.raises(NotImplementedError) as e_o:
            fn(o)
        assert "not implemented for 'Long'" in str(e_t.value) and "not implemented for 'Long'" in str(e_o.value)
        return
    # NB: normext raises torch's CPU messages on every device; torch's CUDA kernels word dtype
    # mismatches differently, so on CUDA those compare by type only.
    dtype_case = any(k in case for k in ("float64", "float32", "bf16", "half"))
    assert_same_error(lambda: fn(o), lambda: fn(t), match_message=device == "cpu" or not dtype_case)


@pytest.mark.parametrize("kind", KINDS)
def test_op_and_fake_errors_agree(kind):
    """The compiled op and its fake kernel (what torch.compile sees) raise alike."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    cases = {**_error_cases("cpu"), **(_layer_only_cases("cpu") if kind == "layer" else {})}
    for name, fn in cases.items():
        if name in ("int_normalized_shape", "weight_on_meta"):
            continue

        def op(x, s, w=None, b=None):
            if kind == "layer":
                return torch.ops.normext.layer_norm_forward(x, s, w, b, 1e-5)
            return torch.ops.normext.rms_norm_forward(x, s, w, None)
        try:
            fn(op)
            real = None
        except Exception as e:  # noqa: BLE001
            real = e
        # NB: the cases build their tensors inside the mode: real ones become fake on entry.
        with FakeTensorMode(allow_non_fake_inputs=True):
            try:
                fn(op)
                fake = None
            except Exception as e:  # noqa: BLE001
                fake = e
        assert type(real) is type(fake), (name, real, fake)
        if real is not None:
            assert str(real) == str(fake), name


def test_backward_op_and_fake_errors_agree():
    from torch._subclasses.fake_tensor import FakeTensorMode
    x, go, w = torch.randn(2, 3, 8), torch.randn(2, 3, 8), torch.randn(8)
    _, m, r = torch.ops.normext.layer_norm_forward(x, [8], w, None, 1e-5)
    ln = torch.ops.normext.layer_norm_backward
    rms = torch.ops.normext.rms_norm_backward
    cases = [
        (ln, (go[:1], x, [8], m, r, w, None, [True] * 3)),
        (ln, (go.double(), x, [8], m, r, w, None, [True] * 3)),
        (ln, (go, x, [8], m[:1], r, w, None, [True] * 3)),
        (ln, (go, x, [8], m, r.double(), w, None, [True] * 3)),
        (ln, (go, x, [5], m, r, w, None, [True] * 3)),
        (rms, (go, x, [8], r[:, :1], w, [True, True])),
        (rms, (go, x, [8], r, torch.randn(4), [True, True])),
    ]
    for op, args in cases:
        with pytest.raises(RuntimeError) as real:
            op(*args)
        with FakeTensorMode(allow_non_fake_inputs=True):
            with pytest.raises(RuntimeError) as fake:
                op(*args)
        assert str(real.value).split("\n")[0] == str(fake.value).split("\n")[0]


# --------------------------------------------------------------------------------------------------
# Modules and convert()
# --------------------------------------------------------------------------------------------------

MODULE_CASES = [
    ("layer", {}), ("layer", {"elementwise_affine": False}), ("layer", {"bias": False}),
    ("layer", {"eps": 1e-3}), ("rms", {}), ("rms", {"elementwise_affine": False}), ("rms", {"eps": 1e-4}),
]


@pytest.mark.parametrize("kind,kwargs", MODULE_CASES, ids=lambda v: str(v))
def test_module_matches_torch_module(device, kind, kwargs):
    tcls, ocls = (torch.nn.LayerNorm, normext.LayerNorm) if kind == "layer" else (torch.nn.RMSNorm, normext.RMSNorm)
    tm, om = tcls((3, 8), device=device, **kwargs), ocls((3, 8), device=device, **kwargs)
    assert isinstance(om, tcls)
    assert repr(om) == repr(tm)
    assert list(om.state_dict()) == list(tm.state_dict())
    assert om.normalized_shape == tm.normalized_shape == (3, 8)
    with torch.no_grad():
        for p in tm.parameters():
            p.copy_(torch.randn_like(p))
    om.load_state_dict(tm.state_dict())
    x = make_x((2, 5, 3, 8), torch.float32, device, shift=0.2).requires_grad_(True)
    x2 = x.detach().clone().requires_grad_(True)
    go = torch.randn(2, 5, 3, 8, device=device)
    assert_module_matches_torch(om, tm, x, x2, go)
    # int normalized_shape, as torch's modules accept
    assert ocls(8).normalized_shape == (8,)
    buf = io.BytesIO()
    torch.save(om, buf)
    buf.seek(0)
    om2 = torch.load(buf, weights_only=False)
    assert type(om2) is ocls and torch.equal(om2(x), om(x))


def test_convert_swaps_layer_and_rms_norm():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8), torch.nn.GELU(),
                                torch.nn.Sequential(torch.nn.RMSNorm(8, eps=1e-6), torch.nn.Linear(8, 4)),
                                torch.nn.LayerNorm(4, elementwise_affine=False))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.LayerNorm, torch.nn.RMSNorm)) and m.weight is not None:
                m.weight.copy_(1 + 0.5 * torch.randn_like(m.weight))
    ref = copy.deepcopy(model)
    params = {id(p) for p in model.parameters()}
    out = normext.convert(model)
    assert out is model
    assert type(model[1]) is normext.LayerNorm and type(model[3][0]) is normext.RMSNorm
    assert type(model[4]) is normext.LayerNorm
    assert {id(p) for p in model.parameters()} == params
    assert model[3][0].eps == 1e-6
    x = torch.randn(5, 8)
    torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-5)
    assert type(normext.convert(torch.nn.RMSNorm(4))) is normext.RMSNorm


# --------------------------------------------------------------------------------------------------
# Fused residual add: add_layer_norm / add_rms_norm
# --------------------------------------------------------------------------------------------------

def _add_norm(kind, fused):
    def fn(x, r, shape, w, b):
        if fused:
            if kind == "layer":
                return NF.add_layer_norm(x, r, shape, w, b)
            return NF.add_rms_norm(x, r, shape, w, 1e-6)
        s = x + r
        return (F.layer_norm(s, shape, w, b) if kind == "layer" else F.rms_norm(s, shape, w, 1e-6)), s
    return fn


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shape", [(4, 768), (2, 3, 20000)], ids=["row", "long_row"])
def test_add_norm_matches_unfused(device, kind, dtype, shape):
    x = make_x(shape, dtype, device, shift=0.2)
    r = make_x(shape, dtype, device)
    n = shape[-1]
    w = make_param((n,), dtype, device)
    b = make_param((n,), dtype, device, kind="bias") if kind == "layer" else None
    y, s = _add_norm(kind, True)(x, r, [n], w, b)
    y_t, s_t = _add_norm(kind, False)(x, r, [n], w, b)
    assert torch.equal(s, s_t), "summed must be input + residual rounded to the input dtype"
    ref = (F.layer_norm(s_t.double(), [n], w.double(), b.double()) if kind == "layer"
           else F.rms_norm(s_t.double(), [n], w.double(), 1e-6))
    assert_close_to_ref(y, y_t, ref, dtype, "output")


@pytest.mark.parametrize("kind", KINDS)
def test_add_norm_autograd_both_outputs(device, kind):
    shape, n = (3, 4, 6), 6
    leaves = []
    grads = []
    for fused in (True, False):
        torch.manual_seed(3)
        x = make_x(shape, torch.float64, device).requires_grad_(True)
        r = make_x(shape, torch.float64, device).requires_grad_(True)
        w = make_param((n,), torch.float64, device, requires_grad=True)
        b = make_param((n,), torch.float64, device, requires_grad=True, kind="bias") if kind == "layer" else None
        y, s = _add_norm(kind, fused)(x, r, [n], w, b)
        gy, gs = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
        torch.autograd.backward([y, s], [gy.to(device), gs.to(device)])
        leaves.append([t for t in (x, r, w, b) if t is not None])
        grads.append([t.grad for t in leaves[-1]])
    for a, c in zip(*grads):
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-10)

    x = make_x(shape, torch.float64, device).requires_grad_(True)
    r = make_x(shape, torch.float64, device).requires_grad_(True)
    w = make_param((n,), torch.float64, device, requires_grad=True)
    args = (x, r, w) + ((make_param((n,), torch.float64, device, requires_grad=True, kind="bias"),)
                        if kind == "layer" else ())
    fn = lambda x, r, w, *b: _add_norm(kind, True)(x, r, [n], w, b[0] if b else None)  # noqa: E731
    assert torch.autograd.gradcheck(fn, args)
    assert torch.autograd.gradgradcheck(fn, args)


def test_add_norm_errors():
    x = torch.randn(2, 8)
    with pytest.raises(RuntimeError, match=r"Expected residual of shape \[2, 8\]"):
        NF.add_layer_norm(x, torch.randn(1, 8), [8])
    with pytest.raises(RuntimeError, match="Expected residual of dtype Float"):
        NF.add_rms_norm(x, torch.randn(2, 8, dtype=torch.float64), [8])
    with pytest.raises(RuntimeError, match="Expected weight to be of same shape"):
        NF.add_rms_norm(x, x, [8], torch.randn(4))


# --------------------------------------------------------------------------------------------------
# PyTorch's own samples: OpInfo sample and error inputs, ModuleInfo inputs.
# --------------------------------------------------------------------------------------------------

TOL = {torch.float32: 1e-5, torch.float64: 1e-10, torch.bfloat16: 3e-2, torch.float16: 3e-3}


def _opinfo(name):
    cmi = pytest.importorskip("torch.testing._internal.common_methods_invocations",
                              reason="torch's internal test helpers need expecttest")
    return next(o for o in cmi.op_db if o.name == name)


def _call(fn, sample):
    try:
        return fn(sample.input, *sample.args, **sample.kwargs)
    except Exception as e:  # noqa: BLE001
        return e


@pytest.mark.parametrize("dtype", list(TOL), ids=dtype_id)
@pytest.mark.parametrize("name,fn", [("nn.functional.layer_norm", NF.layer_norm),
                                     ("nn.functional.rms_norm", NF.rms_norm)], ids=["layer", "rms"])
def test_opinfo_samples(device, name, fn, dtype):
    op = _opinfo(name)
    ref_fn = op.op
    grad = dtype in (torch.float32, torch.float64)
    samples = list(op.sample_inputs(device, dtype, requires_grad=grad))
    assert samples
    for sample in samples:
        ref, out = _call(ref_fn, sample), _call(fn, sample)
        assert type(out) is type(ref), (sample, ref, out)
        if isinstance(ref, Exception):
            assert str(out) == str(ref)
            continue
        torch.testing.assert_close(out, ref, atol=TOL[dtype], rtol=TOL[dtype])
        if grad and sample.input.numel() > 0:
            assert_sample_grads_close(out, ref, sample, 10 * TOL[dtype])


@pytest.mark.parametrize("name,fn", [("nn.functional.layer_norm", NF.layer_norm),
                                     ("nn.functional.rms_norm", NF.rms_norm)], ids=["layer", "rms"])
def test_opinfo_error_inputs(device, name, fn):
    op = _opinfo(name)
    if op.error_inputs_func is None:
        pytest.skip(f"{name} has no error inputs in this torch")
    for error in op.error_inputs(device):
        sample = error.sample_input
        ref, out = _call(op.op, sample), _call(fn, sample)
        assert isinstance(ref, Exception)
        assert type(out) is type(ref) and str(out) == str(ref), (sample, ref, out)


@pytest.mark.parametrize("cls", [torch.nn.LayerNorm, torch.nn.RMSNorm], ids=["layer", "rms"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=dtype_id)
def test_moduleinfo_inputs(device, cls, dtype):
    pytest.importorskip("expecttest")
    from torch.testing._internal.common_modules import module_db
    info = next(m for m in module_db if m.module_cls is cls)
    n = 0
    for mi in info.module_inputs_func(info, device=device, dtype=dtype, requires_grad=True, training=True):
        ctor, fwd = mi.constructor_input, mi.forward_input
        if fwd is None:
            continue
        tm = cls(*ctor.args, **ctor.kwargs).to(device=device, dtype=dtype)
        with torch.no_grad():
            for p in tm.parameters():
                p.uniform_(-1, 1)
        om = normext.convert(copy.deepcopy(tm))
        assert type(om).__module__ == "normext.modules"
        x = fwd.args[0]
        ref, out = tm(x), om(x)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        go = torch.randn_like(ref)
        params = [p for p in tm.parameters()]
        if x.requires_grad:
            for a, b in zip(torch.autograd.grad(out, [x, *om.parameters()], go),
                            torch.autograd.grad(ref, [x, *params], go)):
                torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
        n += 1
    assert n > 0


# --------------------------------------------------------------------------------------------------
# Every per-ISA table of leaf loops (NORMEXT_CPU_CAPABILITY caps the choice; one subprocess each).
# --------------------------------------------------------------------------------------------------

_ISA_SCRIPT = r"""
import torch, normext, normext.functional as NF, torch.nn.functional as F
torch.manual_seed(0)
for dt in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
    for D in (37, 5000):  # vector tails; multi-chunk rows
        x = (torch.randn(3, D, dtype=torch.float64) * 3 + 1).to(dt)
        w, b = torch.randn(D, dtype=dt), torch.randn(D, dtype=dt)
        r = torch.randn(3, D, dtype=dt)
        go = torch.randn(3, D, dtype=dt)
        for kind in ("layer", "rms"):
            xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
            if kind == "layer":
                y = NF.layer_norm(xg, [D], wg, b)
                ref = F.layer_norm(x.double(), [D], w.double(), b.double())
                ys, s = NF.add_layer_norm(x, r, [D], w, b)
                refs = F.layer_norm((x + r).double(), [D], w.double(), b.double())
            else:
                y = NF.rms_norm(xg, [D], wg, 1e-6)
                ref = F.rms_norm(x.double(), [D], w.double(), 1e-6)
                ys, s = NF.add_rms_norm(x, r, [D], w, 1e-6)
                refs = F.rms_norm((x + r).double(), [D], w.double(), 1e-6)
            dx, dw = torch.autograd.grad(y, [xg, wg], go)
            xd, wd = x.double().requires_grad_(), w.double().requires_grad_()
            yd = (F.layer_norm(xd, [D], wd, b.double()) if kind == "layer"
                  else F.rms_norm(xd, [D], wd, 1e-6))
            dxd, dwd = torch.autograd.grad(yd, [xd, wd], go.double())
            err = max((y.double() - ref).abs().max().item(), (ys.double() - refs).abs().max().item(),
                      (dx.double() - dxd).abs().max().item() / dxd.abs().max().item(),
                      (dw.double() - dwd).abs().max().item() / dwd.abs().max().item())
            print(str(dt), kind, D, err, bool(torch.equal(s, x + r)))
"""

_ISA_TOL = {"torch.float16": 1e-2, "torch.bfloat16": 8e-2, "torch.float32": 2e-5, "torch.float64": 1e-12}


@pytest.mark.parametrize("capability", ["default", "avx2", "avx512", "avx512_bf16"])
def test_every_cpu_table_matches_reference(capability):
    stdout = run_with_cpu_capability(_ISA_SCRIPT, capability)
    rows = [line.split() for line in stdout.split("\n") if line.startswith("torch.")]
    assert len(rows) == 16
    for dtype, kind, D, err, sum_exact in rows:
        assert float(err) < _ISA_TOL[dtype], (capability, dtype, kind, D, err)
        assert sum_exact == "True", (capability, dtype, kind, D)
