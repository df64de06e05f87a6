"""Tests of normext's GroupNorm: ops, functional, module.

Correctness is measured against a float64 reference (torch's F.group_norm on inputs cast to float64);
normext's error must be no worse than 2x torch's own error at the test dtype, plus a floor of one ulp of
the output magnitude.
"""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

import normext
import normext.functional
from conftest import (
    DTYPES,
    LOW_PRECISION,
    OpRecorder,
    LAYOUTS,
    assert_close_to_ref,
    assert_module_matches_torch,
    assert_same_error,
    cuda_sync,
    dtype_id,
    layout_applies,
    make_input,
    make_param,
    max_abs_err,
    TORCH_VERSION,
    takes_bias_argument,
    to_layout,
    with_cpu_semantics,
)


def stats_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def gn_ours(x, g, w=None, b=None, eps=1e-5):
    return normext.functional.group_norm(x, g, w, b, eps)


def gn_torch(x, g, w=None, b=None, eps=1e-5):
    if x.is_cuda and _cuda_semantics_differ(x, w, b):
        return with_cpu_semantics(F.group_norm, x, g, w, b, eps)
    return F.group_norm(x, g, w, b, eps)


def _cuda_semantics_differ(x, *params):
    """torch's CUDA group_norm differs from its CPU one (which normext follows on every device) for
    mixed parameter dtypes and for a channels-last input (see conftest.with_cpu_semantics)."""
    mixed = any(p is not None and p.dtype != x.dtype for p in params)
    channels_last = x.dim() in (4, 5) and not x.is_contiguous() and x.is_contiguous(
        memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    return mixed or channels_last


def memory_formats_for(ndim):
    fmts = [torch.contiguous_format]
    if ndim == 4:
        fmts.append(torch.channels_last)
    if ndim == 5:
        fmts.append(torch.channels_last_3d)
    return fmts


def assert_same_memory_format(ours, theirs):
    for fmt in memory_formats_for(theirs.dim()):
        assert ours.is_contiguous(memory_format=fmt) == theirs.is_contiguous(memory_format=fmt), (
            f"memory format {fmt}: normext strides {ours.stride()}, torch strides {theirs.stride()}"
        )


# --------------------------------------------------------------------------------------------------
# Parity with torch for every dtype / layout / shape family, forward and backward.
# --------------------------------------------------------------------------------------------------

# (id, shape, num_groups, affine) with affine in {"both", "none", "weight", "bias"}
CASES = [
    ("ncl", (2, 6, 5), 3, "both"),
    ("nc_nospatial", (3, 8), 4, "both"),
    ("nchw", (2, 32, 7, 9), 8, "both"),
    ("nchw_g32", (1, 64, 16, 16), 32, "both"),
    ("ncdhw", (2, 12, 3, 4, 5), 4, "both"),
    ("odd_cpg3", (2, 9, 4, 4), 3, "both"),
    ("odd_all", (3, 15, 7, 5), 5, "both"),
    ("g1", (2, 8, 5, 5), 1, "both"),
    ("g_eq_c", (2, 8, 5, 5), 8, "both"),
    ("wide_cpg", (2, 128, 3, 3), 4, "both"),
    ("hw1", (3, 6, 1, 1), 3, "both"),
    ("no_affine", (2, 8, 5, 5), 2, "none"),
    ("bias_only", (2, 8, 5, 5), 2, "bias"),
    ("weight_only", (2, 8, 5, 5), 2, "weight"),
]


def _parity_params():
    params = []
    for cid, shape, g, affine in CASES:
        for dtype in DTYPES:
            param_dtypes = ["same"]
            if dtype in LOW_PRECISION and affine != "none":
                param_dtypes.append("float32")
            for pd in param_dtypes:
                for layout in LAYOUTS:
                    if not layout_applies(layout, len(shape)):
                        continue
                    if layout == "permuted" and cid not in ("nchw", "ncdhw", "ncl", "odd_all"):
                        continue
                    params.append(
                        pytest.param(shape, g, affine, dtype, pd, layout,
                                     id=f"{cid}-{dtype_id(dtype)}-params_{pd}-{layout}")
                    )
    return params


def _make_params(c, affine, param_dtype, device, requires_grad=True):
    w = make_param(c, param_dtype, device, requires_grad=requires_grad) if affine in ("both", "weight") else None
    b = (make_param(c, param_dtype, device, requires_grad=requires_grad, kind="bias")
         if affine in ("both", "bias") else None)
    return w, b


def _leaf_copy(t, dtype=None):
    if t is None:
        return None
    out = t.detach().clone() if dtype is None else t.detach().to(dtype)
    return out.requires_grad_(True)


def _is_dense_fmt(x):
    return any(x.is_contiguous(memory_format=f) for f in memory_formats_for(x.dim()))


def _forward_backward(fn, x, g, w, b, grad_out, eps=1e-5, cast=None):
    """Runs fn on fresh leaves (cast to ``cast`` if given) and returns (y, dx, dw, db)."""
    if cast is None:
        xl = x.detach().clone(memory_format=torch.preserve_format) if _is_dense_fmt(x) else _view_copy(x)
        wl, bl = _leaf_copy(w), _leaf_copy(b)
        go = grad_out
    else:
        xl = x.detach().to(cast)
        wl, bl = _leaf_copy(w, cast), _leaf_copy(b, cast)
        go = grad_out.to(cast)
    xl.requires_grad_(True)
    y = fn(xl, g, wl, bl, eps)
    y.backward(go)
    return y, xl.grad, None if wl is None else wl.grad, None if bl is None else bl.grad


def _view_copy(x):
    """A copy of a non-dense view that keeps the same (non-contiguous) strides, as a leaf."""
    out = torch.empty_strided(x.size(), x.stride(), dtype=x.dtype, device=x.device)
    # empty_strided with gaps allocates a storage big enough; copy the values in.
    out.copy_(x.detach())
    return out


@pytest.mark.parametrize("shape,g,affine,dtype,param_dtype,layout", _parity_params())
def test_parity_with_torch(device, shape, g, affine, dtype, param_dtype, layout):
    c = shape[1]
    pdt = dtype if param_dtype == "same" else torch.float32
    x = make_input(shape, dtype, device, layout)
    w, b = _make_params(c, affine, pdt, device)
    grad_out = to_layout(torch.randn(shape, dtype=torch.float64).to(dtype).to(device),
                         layout if layout == "channels_last" else "contiguous")

    if w is None and b is not None:
        # torch CPU bugs with a bias and no weight: 2.13's backward fails with "tensor does not have
        # a device", 2.14's with bf16/half input and a float32 bias with "expected scalar type Float
        # but found BFloat16". Torch's results come from the same function written with an explicit
        # weight of ones.
        ones = torch.ones(c, dtype=pdt, device=device)
        y_ref, dx_ref, _, db_ref = _forward_backward(gn_torch, x, g, ones, b, grad_out, cast=torch.float64)
    else:
        y_ref, dx_ref, dw_ref, db_ref = _forward_backward(gn_torch, x, g, w, b, grad_out, cast=torch.float64)
    if w is None and b is not None:
        y_t, dx_t, _, db_t = _forward_backward(gn_torch, x, g, ones, b, grad_out)
    else:
        y_t, dx_t, dw_t, db_t = _forward_backward(gn_torch, x, g, w, b, grad_out)
    y_o, dx_o, dw_o, db_o = _forward_backward(gn_ours, x, g, w, b, grad_out)
    cuda_sync(device)

    assert y_o.dtype == y_t.dtype
    assert y_o.shape == y_t.shape
    assert y_o.device == y_t.device
    assert_same_memory_format(y_o, y_t)
    assert_close_to_ref(y_o, y_t, y_ref, dtype, "output")

    assert dx_o.dtype == dx_t.dtype
    assert_close_to_ref(dx_o, dx_t, dx_ref, dtype, "grad input", floor_ulps=2.0)
    if w is not None:
        assert dw_o.dtype == dw_t.dtype == pdt
        assert_close_to_ref(dw_o, dw_t, dw_ref, pdt, "grad weight", floor_ulps=2.0)
    if b is not None:
        assert db_o.dtype == db_t.dtype == pdt
        assert_close_to_ref(db_o, db_t, db_ref, pdt, "grad bias", floor_ulps=2.0)


# Shapes whose reductions the CUDA launch plan (csrc/ops/cuda/group_norm_launch.h) splits over
# several blocks per group (batch 1, few groups, large HxW; channels-last row splits), or whose groups
# and rows start at addresses that are not 16-byte aligned (odd lengths: scalar heads and tails around
# the vectorized loops). A wrong split merge or a skipped head/tail element fails these.
SPLIT_CASES = [
    ("b1_g32_split", (1, 64, 128, 192), 32),  # 2 * 24576 elements per group: 3 splits
    ("b1_g1_many_splits", (1, 4, 512, 512), 1),  # 2^20 elements in one group: 64 splits
    ("odd_len_unaligned", (1, 6, 333, 335), 3),  # odd group and row lengths
    ("cl_row_splits", (2, 40, 150, 200), 8),  # channels-last: ~100 row splits per sample
]


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("shape,g", [pytest.param(s, g, id=i) for i, s, g in SPLIT_CASES])
def test_split_reductions_match_reference(device, shape, g, dtype, layout):
    c = shape[1]
    x = make_input(shape, dtype, device, layout, shift=0.5)
    w, b = _make_params(c, "both", dtype, device)
    go = make_input(shape, dtype, device, layout)
    ref = _forward_backward(gn_torch, x, g, w, b, go, cast=torch.float64)
    tor = _forward_backward(gn_torch, x, g, w, b, go)
    ours = _forward_backward(gn_ours, x, g, w, b, go)
    cuda_sync(device)
    for name, o, t, r in zip(("output", "dx", "dw", "db"), ours, tor, ref):
        assert_close_to_ref(o, t, r, dtype, name, floor_ulps=2.0)
    _, mean, rstd = torch.ops.normext.group_norm_forward(x, w, b, g, 1e-5)
    xg = x.double().reshape(shape[0], g, -1)
    torch.testing.assert_close(mean.double(), xg.mean(-1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(rstd.double(), (xg.var(-1, unbiased=False) + 1e-5).rsqrt(),
                               rtol=1e-5, atol=0)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("grad_layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dtype_id)
def test_grad_layout_differs_from_input(device, layout, grad_layout, dtype):
    """The upstream gradient's layout need not match the input's."""
    shape, g = (2, 16, 6, 5), 4
    x = make_input(shape, dtype, device, layout)
    w, b = _make_params(16, "both", dtype, device)
    grad_out = to_layout(torch.randn(shape, dtype=torch.float64).to(dtype).to(device), grad_layout)
    ref = _forward_backward(gn_torch, x, g, w, b, grad_out, cast=torch.float64)
    tor = _forward_backward(gn_torch, x, g, w, b, grad_out)
    ours = _forward_backward(gn_ours, x, g, w, b, grad_out)
    for name, o, t, r in zip(("output", "dx", "dw", "db"), ours, tor, ref):
        assert_close_to_ref(o, t, r, dtype, name, floor_ulps=2.0)


@pytest.mark.parametrize("eps", [1e-1, 1e-3, 0.0])
def test_eps_is_used(device, eps):
    """Small-variance input so eps dominates: a kernel that drops or misplaces eps fails."""
    shape, g = (2, 8, 4, 4), 4
    x = make_input(shape, torch.float32, device, scale=0.03, shift=0.5)
    w, b = _make_params(8, "both", torch.float32, device)
    go = torch.randn(shape, device=device)
    ref = _forward_backward(gn_torch, x, g, w, b, go, eps=eps, cast=torch.float64)
    tor = _forward_backward(gn_torch, x, g, w, b, go, eps=eps)
    ours = _forward_backward(gn_ours, x, g, w, b, go, eps=eps)
    for name, o, t, r in zip(("output", "dx", "dw", "db"), ours, tor, ref):
        assert_close_to_ref(o, t, r, torch.float32, name, floor_ulps=2.0)


# --------------------------------------------------------------------------------------------------
# The raw ops: shapes, dtypes, mean/rstd.
# --------------------------------------------------------------------------------------------------

STATS_CASES = [
    ("ncl", (2, 6, 5), 3),
    ("nc_nospatial", (3, 8), 4),
    ("nchw", (2, 32, 7, 9), 8),
    ("ncdhw", (2, 12, 3, 4, 5), 4),
    ("odd_cpg3", (2, 9, 4, 4), 3),
    ("g1", (2, 8, 5, 5), 1),
    ("g_eq_c", (2, 8, 5, 5), 8),
]


def _stats_params():
    out = []
    for cid, shape, g in STATS_CASES:
        for dtype in DTYPES:
            for layout in ("contiguous", "channels_last", "strided"):
                if layout_applies(layout, len(shape)):
                    out.append(pytest.param(shape, g, dtype, layout, id=f"{cid}-{dtype_id(dtype)}-{layout}"))
    return out


@pytest.mark.parametrize("shape,g,dtype,layout", _stats_params())
def test_forward_op_mean_rstd(device, shape, g, dtype, layout):
    eps = 1e-5
    n, c = shape[0], shape[1]
    x = make_input(shape, dtype, device, layout, scale=2.0, shift=0.7)
    w = make_param(c, dtype, device)
    b = make_param(c, dtype, device, kind="bias")
    y, mean, rstd = torch.ops.normext.group_norm_forward(x, w, b, g, eps)
    sd = stats_dtype(dtype)
    assert y.dtype == dtype and y.shape == x.shape
    assert mean.shape == (n, g) and rstd.shape == (n, g)
    assert mean.dtype == sd and rstd.dtype == sd
    assert mean.device == x.device and rstd.device == x.device

    xg = x.detach().double().reshape(n, g, -1)
    mean_ref = xg.mean(-1)
    var_ref = xg.var(-1, unbiased=False)
    rstd_ref = 1.0 / torch.sqrt(var_ref + eps)
    tol = 1e-12 if sd == torch.float64 else 2e-6
    scale = mean_ref.abs() + var_ref.sqrt()
    assert ((mean.double().cpu() - mean_ref.cpu()).abs() <= tol * scale.cpu()).all(), "mean"
    assert ((rstd.double().cpu() - rstd_ref.cpu()).abs() <= tol * rstd_ref.cpu()).all(), "rstd"

    # The functional wrapper gives the same output as the op.
    assert torch.equal(gn_ours(x, g, w, b, eps), y)

    # The output follows from the stats: y = (x - mean) * rstd * w + b, checked in float64 from our stats.
    shape_b = (n, g) + (1,) * (xg.dim() - 2)
    y_from_stats = ((xg - mean.double().reshape(shape_b)) * rstd.double().reshape(shape_b)).reshape(shape)
    pshape = (1, c) + (1,) * (len(shape) - 2)
    y_from_stats = y_from_stats * w.double().reshape(pshape) + b.double().reshape(pshape)
    err = max_abs_err(y, y_from_stats)
    assert err <= 2 * torch.finfo(dtype).eps * max(1.0, y_from_stats.abs().max().item())


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("mask", [(True, True, True), (True, False, False), (False, True, True),
                                  (True, False, True), (False, True, False), (False, False, False)],
                         ids=lambda m: "".join("1" if v else "0" for v in m))
@pytest.mark.parametrize("with_weight", [True, False])
def test_backward_op_masks(device, dtype, mask, with_weight):
    """Outputs whose mask is false are empty [0] tensors; dweight is empty when weight is None, but
    dbias (= sum of grad_out, independent of weight) is still computed, in the stats dtype."""
    shape, g = (2, 12, 5, 3), 4
    c = shape[1]
    x = make_input(shape, dtype, device)
    w = make_param(c, dtype, device) if with_weight else None
    b = make_param(c, dtype, device, kind="bias")
    y, mean, rstd = torch.ops.normext.group_norm_forward(x, w, b, g, 1e-5)
    go = make_input(shape, dtype, device)
    dx, dw, db = torch.ops.normext.group_norm_backward(go, x, mean, rstd, w, g, list(mask))
    param_dtype = dtype if with_weight else stats_dtype(dtype)

    # Reference grads from torch's autograd at the test dtype and in float64 (the bias does not change
    # dx or dweight; it is there so torch computes dbias).
    # (torch 2.13's backward fails for a bias without a weight: give it an explicit weight of ones,
    # the same function.)
    w_t = w if with_weight else torch.ones(c, dtype=dtype, device=device)
    ref = _forward_backward(gn_torch, x, g, w_t, b, go, cast=torch.float64)
    tor = _forward_backward(gn_torch, x, g, w_t, b, go)
    if mask[0]:
        assert dx.shape == x.shape and dx.dtype == dtype
        assert_close_to_ref(dx, tor[1], ref[1], dtype, "dx", floor_ulps=2.0)
    else:
        assert dx.shape == (0,)
    if mask[1] and with_weight:
        assert dw.shape == (c,) and dw.dtype == dtype
        assert_close_to_ref(dw, tor[2], ref[2], dtype, "dweight", floor_ulps=2.0)
    else:
        assert dw.shape == (0,)
    if mask[2]:
        assert db.shape == (c,) and db.dtype == param_dtype
        assert_close_to_ref(db, tor[3], ref[3], dtype, "dbias", floor_ulps=2.0)
    else:
        assert db.shape == (0,)


def test_functional_and_module_route_through_normext(device):
    """normext.functional.group_norm / normext.GroupNorm call normext's ops, not aten's group norm."""
    x = make_input((2, 8, 4, 4), torch.float32, device, requires_grad=True)
    m = normext.GroupNorm(4, 8, device=device)
    with OpRecorder() as rec:
        normext.functional.group_norm(x, 4).sum().backward()
        m(x).sum().backward()
    ops = rec.ops
    assert ops.count("normext.group_norm_forward.default") == 2, ops
    assert ops.count("normext.group_norm_backward.default") == 2, ops
    assert not any("native_group_norm" in o for o in ops), ops


# --------------------------------------------------------------------------------------------------
# gradcheck / gradgradcheck in float64.
# --------------------------------------------------------------------------------------------------

GC_CASES = [
    ("nchw", (2, 6, 3, 3), 3, "contiguous"),
    ("nhwc", (2, 6, 3, 3), 3, "channels_last"),
    ("ncl", (2, 6, 5), 2, "contiguous"),
    ("nc", (3, 4), 2, "contiguous"),
    ("ncdhw", (2, 6, 2, 3, 2), 3, "contiguous"),
    ("ndhwc", (2, 6, 2, 3, 2), 3, "channels_last"),
    ("odd_cpg", (2, 9, 2, 3), 3, "contiguous"),
    ("odd_cpg_nhwc", (2, 9, 2, 3), 3, "channels_last"),
    ("strided", (2, 6, 3, 3), 2, "strided"),
]


def _gc_inputs(shape, layout, affine, device):
    x = make_input(shape, torch.float64, device, layout)
    x = x.detach().clone(memory_format=torch.preserve_format) if layout != "strided" else x.detach()
    x.requires_grad_(True)
    c = shape[1]
    w = make_param(c, torch.float64, device, requires_grad=True) if affine in ("both", "weight") else None
    b = make_param(c, torch.float64, device, requires_grad=True, kind="bias") if affine in ("both", "bias") \
        else None
    return x, w, b


def _gc_fn(g, w_present, b_present):
    def fn(x, *params):
        params = list(params)
        w = params.pop(0) if w_present else None
        b = params.pop(0) if b_present else None
        return normext.functional.group_norm(x, g, w, b, 1e-5)
    return fn


@pytest.mark.parametrize("affine", ["both", "none", "weight", "bias"])
@pytest.mark.parametrize("shape,g,layout", [pytest.param(s, g, l, id=i) for i, s, g, l in GC_CASES])
def test_gradcheck(device, shape, g, layout, affine):
    x, w, b = _gc_inputs(shape, layout, affine, device)
    inputs = tuple(t for t in (x, w, b) if t is not None)
    fn = _gc_fn(g, w is not None, b is not None)
    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("affine", ["both", "none"])
@pytest.mark.parametrize("shape,g,layout", [pytest.param(s, g, l, id=i) for i, s, g, l in GC_CASES])
def test_gradgradcheck(device, shape, g, layout, affine):
    x, w, b = _gc_inputs(shape, layout, affine, device)
    inputs = tuple(t for t in (x, w, b) if t is not None)
    fn = _gc_fn(g, w is not None, b is not None)
    assert torch.autograd.gradgradcheck(fn, inputs)


def test_double_backward_matches_torch(device):
    """Second-order grads (e.g. a gradient penalty) equal torch's in float64."""
    shape, g = (2, 8, 3, 4), 4
    results = []
    for fn in (gn_torch, gn_ours):
        torch.manual_seed(1)
        x = make_input(shape, torch.float64, device, "channels_last", requires_grad=True)
        w = make_param(8, torch.float64, device, requires_grad=True)
        b = make_param(8, torch.float64, device, requires_grad=True, kind="bias")
        go = torch.randn(shape, dtype=torch.float64, device=device)
        y = fn(x, g, w, b)
        (gx,) = torch.autograd.grad(y, x, go, create_graph=True)
        (gx.square().sum() + (y * y).sum()).backward()
        results.append((x.grad, w.grad, b.grad))
    for t, o in zip(*results):
        torch.testing.assert_close(o, t, rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------------------------------
# torch.library.opcheck on both ops.
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("affine", ["both", "none", "weight"])
@pytest.mark.parametrize("requires_grad", [True, False])
def test_opcheck_forward(device, layout, affine, requires_grad):
    shape, g = (2, 6, 4, 3), 3
    x = make_input(shape, torch.float32, device, layout, requires_grad=requires_grad)
    w = make_param(6, torch.float32, device, requires_grad=requires_grad) if affine in ("both", "weight") else None
    b = make_param(6, torch.float32, device, requires_grad=requires_grad, kind="bias") if affine == "both" else None
    torch.library.opcheck(torch.ops.normext.group_norm_forward.default, (x, w, b, g, 1e-5))


def test_opcheck_forward_3d_and_5d(device):
    for shape, layout in (((2, 6, 7), "contiguous"), ((2, 6, 2, 3, 2), "channels_last")):
        x = make_input(shape, torch.float32, device, layout, requires_grad=True)
        w = make_param(6, torch.float32, device, requires_grad=True)
        b = make_param(6, torch.float32, device, requires_grad=True, kind="bias")
        torch.library.opcheck(torch.ops.normext.group_norm_forward.default, (x, w, b, 2, 1e-5))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("mask", [(True, True, True), (True, False, False), (False, True, True),
                                  (True, True, False)],
                         ids=lambda m: "".join("1" if v else "0" for v in m))
@pytest.mark.parametrize("with_weight", [True, False])
@pytest.mark.parametrize("requires_grad", [True, False])
# Backpropagating through an op with no autograd kernel "may lead to silently incorrect behavior":
# the backward op must be differentiable (like aten's native_group_norm_backward) or say it is not.
@pytest.mark.filterwarnings("error:.*an autograd kernel was not registered:UserWarning")
def test_opcheck_backward(device, layout, mask, with_weight, requires_grad):
    shape, g = (2, 6, 4, 3), 3
    x = make_input(shape, torch.float32, device, layout)
    w = make_param(6, torch.float32, device) if with_weight else None
    _, mean, rstd = torch.ops.normext.group_norm_forward(x, w, None, g, 1e-5)
    go = make_input(shape, torch.float32, device, layout)
    if requires_grad:
        go.requires_grad_(True)
        x.requires_grad_(True)
        if w is not None:
            w.requires_grad_(True)
    torch.library.opcheck(torch.ops.normext.group_norm_backward.default,
                          (go, x, mean, rstd, w, g, list(mask)))


# --------------------------------------------------------------------------------------------------
# torch.compile
# --------------------------------------------------------------------------------------------------

class SmallNet(torch.nn.Module):
    def __init__(self, gn_cls):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(4, 16, 3, padding=1)
        self.gn = gn_cls(4, 16)
        self.act = torch.nn.SiLU()
        self.conv2 = torch.nn.Conv2d(16, 8, 3, padding=1)

    def forward(self, x):
        return self.conv2(self.act(self.gn(self.conv1(x))))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_compile_model_fullgraph(layout):
    """torch.compile(fullgraph=True) of conv -> normext.GroupNorm -> SiLU -> conv: forward and grads.

    CPU only (compilation is slow); the model's GroupNorm has random affine parameters.
    """
    torch._dynamo.reset()
    eager = SmallNet(normext.GroupNorm)
    with torch.no_grad():
        eager.gn.weight.copy_(1 + 0.5 * torch.randn(16))
        eager.gn.bias.copy_(0.5 * torch.randn(16))
    mf = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    eager = eager.to(memory_format=mf)
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model, fullgraph=True)

    x = torch.randn(2, 4, 12, 10).to(memory_format=mf)
    go = torch.randn(2, 8, 12, 10)
    x1 = x.clone(memory_format=torch.preserve_format).requires_grad_(True)
    x2 = x.clone(memory_format=torch.preserve_format).requires_grad_(True)
    y1 = eager(x1)
    y2 = compiled(x2)
    torch.testing.assert_close(y2, y1, rtol=1e-5, atol=1e-5)
    y1.backward(go)
    y2.backward(go)
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-5, atol=1e-5)
    for (n1, p1), (n2, p2) in zip(eager.named_parameters(), compiled_model.named_parameters()):
        assert n1 == n2
        torch.testing.assert_close(p2.grad, p1.grad, rtol=1e-4, atol=1e-5, msg=f"grad of {n1}")

    # And it matches the same model built from torch.nn.GroupNorm.
    ref = SmallNet(torch.nn.GroupNorm)
    ref.load_state_dict(eager.state_dict())
    ref = ref.to(memory_format=mf)
    x3 = x.clone(memory_format=torch.preserve_format).requires_grad_(True)
    y3 = ref(x3)
    torch.testing.assert_close(y2, y3, rtol=1e-5, atol=1e-5)
    y3.backward(go)
    torch.testing.assert_close(x2.grad, x3.grad, rtol=1e-4, atol=1e-5)
    torch._dynamo.reset()


def test_compile_functional_channels_last(device):
    torch._dynamo.reset()
    fn = torch.compile(normext.functional.group_norm, fullgraph=True)
    x = make_input((2, 16, 6, 5), torch.float32, device, "channels_last", requires_grad=True)
    w = make_param(16, torch.float32, device, requires_grad=True)
    b = make_param(16, torch.float32, device, requires_grad=True, kind="bias")
    go = torch.randn(2, 16, 6, 5, device=device)
    y = fn(x, 4, w, b, 1e-5)
    assert y.is_contiguous(memory_format=torch.channels_last)
    y.backward(go)
    x2, w2, b2 = (t.detach().clone(memory_format=torch.preserve_format).requires_grad_(True) for t in (x, w, b))
    y2 = F.group_norm(x2, 4, w2, b2, 1e-5)
    y2.backward(go)
    torch.testing.assert_close(y, y2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(w.grad, w2.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b.grad, b2.grad, rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()


# --------------------------------------------------------------------------------------------------
# Numerics: large means, inf/nan, huge finite values, fp16 near its range.
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_large_mean_float32(device, layout, affine):
    """1e4 + randn: sum/sum-of-squares in fp32 loses every digit; Welford/Chan does not.

    torch's channels_last CPU path uses sum/sum-of-squares and is off by ~1e3 here, so the "2x torch"
    bound uses torch's error on the same values in NCHW (its Welford path, ~1e-3).
    """
    shape, g = (2, 32, 64, 64), 8
    x = make_input(shape, torch.float32, device, layout, shift=1e4)
    w = make_param(32, torch.float32, device) if affine else None
    b = make_param(32, torch.float32, device, kind="bias") if affine else None
    ref = F.group_norm(x.double(), g, *((w.double(), b.double()) if affine else (None, None)))
    y_t = F.group_norm(x.contiguous(), g, w, b)
    y_o = gn_ours(x, g, w, b)
    err = max_abs_err(y_o, ref)
    if not affine:
        # The fp32 mean alone is off by up to half an ulp of 1e4 (4.9e-4).
        assert err < 1.5e-3, f"error {err:.3e} vs float64 reference"
    assert_close_to_ref(y_o, y_t, ref, torch.float32, "output")
    # The stats themselves: the variance of the group is ~1, not 0 or a few ulps of 1e8.
    _, mean, rstd = torch.ops.normext.group_norm_forward(x, w, b, g, 1e-5)
    xg = x.double().reshape(2, g, -1)
    torch.testing.assert_close(rstd.double(), 1 / torch.sqrt(xg.var(-1, unbiased=False) + 1e-5), rtol=1e-4, atol=0)
    torch.testing.assert_close(mean.double(), xg.mean(-1), rtol=2e-7, atol=0)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_large_mean_float32_backward(device, layout):
    shape, g = (2, 32, 16, 16), 8
    x = make_input(shape, torch.float32, device, layout, shift=1e4)
    w, b = _make_params(32, "both", torch.float32, device)
    go = make_input(shape, torch.float32, device, layout)
    ref = _forward_backward(gn_torch, x, g, w, b, go, cast=torch.float64)
    tor = _forward_backward(gn_torch, x.contiguous(), g, w, b, go.contiguous())  # torch's NCHW (Welford) path
    ours = _forward_backward(gn_ours, x, g, w, b, go)
    for name, o, t, r in zip(("output", "dx", "dw", "db"), ours, tor, ref):
        assert_close_to_ref(o, t, r, torch.float32, name, floor_ulps=2.0)


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=dtype_id)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_large_mean_low_precision(device, dtype, layout):
    shape, g = (2, 32, 16, 16), 8
    x = make_input(shape, dtype, device, layout, shift=1e2)
    w, b = _make_params(32, "both", torch.float32, device)
    go = make_input(shape, dtype, device, layout)
    ref = _forward_backward(gn_torch, x, g, w, b, go, cast=torch.float64)
    tor = _forward_backward(gn_torch, x.contiguous(), g, w, b, go.contiguous())  # torch's NCHW path
    ours = _forward_backward(gn_ours, x, g, w, b, go)
    for name, o, t, r, dt in zip(("output", "dx", "dw", "db"), ours, tor, ref,
                                 (dtype, dtype, torch.float32, torch.float32)):
        assert_close_to_ref(o, t, r, dt, name, floor_ulps=2.0)


def test_float16_near_range_limit(device):
    """fp16 values up to ~6e4: squaring in half overflows (torch gives inf/nan here); normext must not."""
    shape, g = (2, 8, 8, 8), 4
    base = torch.randn(shape, dtype=torch.float64).clamp(-2, 2) * 3e4
    for layout in ("contiguous", "channels_last"):
        x = to_layout(base.half().to(device), layout)
        y = gn_ours(x, g)
        ref = F.group_norm(x.double(), g)
        assert torch.isfinite(y).all()
        err = max_abs_err(y, ref)
        assert err <= 2 * torch.finfo(torch.float16).eps * ref.abs().max().item(), f"{layout}: err {err:.3e}"


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")], ids=["inf", "-inf", "nan"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=dtype_id)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_nonfinite_input_poisons_only_its_group(device, value, dtype, layout):
    shape, g = (2, 8, 4, 4), 4
    base = torch.randn(shape, dtype=torch.float64)
    base[0, 2, 1, 3] = value  # sample 0, group 1 (channels 2..3)
    x = to_layout(base.to(dtype).to(device), layout)
    w = make_param(8, dtype, device)
    b = make_param(8, dtype, device, kind="bias")
    y = gn_ours(x, g, w, b)
    assert not torch.isfinite(y[0, 2:4]).any(), "non-finite input must give non-finite output in its group"
    ref = F.group_norm(x.double(), g, w.double(), b.double())
    mask = torch.ones(shape, dtype=torch.bool)
    mask[0, 2:4] = False
    mask = mask.to(device)
    assert torch.isfinite(y[mask]).all(), "other groups must stay finite"
    y_t = F.group_norm(x, g, w, b)
    assert_close_to_ref(y[mask], y_t[mask], ref[mask], dtype, "finite groups")
    _, mean, rstd = torch.ops.normext.group_norm_forward(x, w, b, g, 1e-5)
    assert torch.isfinite(mean[1]).all() and torch.isfinite(rstd[1]).all()


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("scale", [1e30, 1e-30, 1e19])
def test_huge_and_tiny_finite_float32(device, layout, scale):
    """Exact stats for any finite input: 1e30 * randn squares to 1e60 (overflows fp32 M2)."""
    shape, g = (2, 8, 6, 5), 4
    x = make_input(shape, torch.float32, device, layout, scale=scale)
    w = make_param(8, torch.float32, device)
    b = make_param(8, torch.float32, device, kind="bias")
    y = gn_ours(x, g, w, b)
    ref = F.group_norm(x.double(), g, w.double(), b.double())
    assert torch.isfinite(y).all(), "finite input must give a finite output"
    err = max_abs_err(y, ref)
    assert err <= 1e-4, f"scale {scale}: max abs err {err:.3e}"


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_huge_finite_float32_backward(device, layout):
    shape, g = (2, 8, 6, 5), 4
    x = make_input(shape, torch.float32, device, layout, scale=1e30)
    w, b = _make_params(8, "both", torch.float32, device)
    go = make_input(shape, torch.float32, device, layout)
    ref = _forward_backward(gn_torch, x, g, w, b, go, cast=torch.float64)
    ours = _forward_backward(gn_ours, x, g, w, b, go)
    # dx ~ 1e-30: compare relative to the reference magnitude.
    for name, o, r in zip(("output", "dx", "dw", "db"), ours, ref):
        assert torch.isfinite(o).all(), name
        mag = r.abs().max().item()
        err = max_abs_err(o, r)
        assert err <= 1e-4 * mag, f"{name}: err {err:.3e}, magnitude {mag:.3e}"


# --------------------------------------------------------------------------------------------------
# Determinism: bitwise identical across runs and thread counts.
# --------------------------------------------------------------------------------------------------

DET_CASES = [
    ("1x64x128x128_g32", (1, 64, 128, 128), 32),
    ("1x4x256x256_g1", (1, 4, 256, 256), 1),
    ("8x32x16x16_g8", (8, 32, 16, 16), 8),
]


def _fwd_bwd_bits(x, g, w, b, go):
    xl = x.detach().clone(memory_format=torch.preserve_format).requires_grad_(True)
    wl = w.detach().clone().requires_grad_(True)
    bl = b.detach().clone().requires_grad_(True)
    y = gn_ours(xl, g, wl, bl)
    y.backward(go)
    return y.detach(), xl.grad, wl.grad, bl.grad


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape,g,dtype", [pytest.param(s, g, d, id=f"{i}-{dtype_id(d)}")
                                           for i, s, g in DET_CASES
                                           for d in (torch.float32, torch.bfloat16)
                                           if d == torch.float32 or s[0] == 1])
def test_determinism(device, shape, g, layout, dtype, restore_num_threads):
    c = shape[1]
    x = make_input(shape, dtype, device, layout, shift=0.3)
    w = make_param(c, dtype, device)
    b = make_param(c, dtype, device, kind="bias")
    go = make_input(shape, dtype, device, layout)
    runs = []
    thread_counts = (2, 2, 1) if device == "cpu" else (None, None)
    for nt in thread_counts:
        if nt is not None:
            torch.set_num_threads(nt)
        runs.append(_fwd_bwd_bits(x, g, w, b, go))
    for i, run in enumerate(runs[1:], 1):
        for name, a, bb in zip(("output", "dx", "dweight", "dbias"), runs[0], run):
            assert torch.equal(a, bb), f"{name} differs between run 0 and run {i} (threads {thread_counts})"


# --------------------------------------------------------------------------------------------------
# Errors: same type and message as torch.
# --------------------------------------------------------------------------------------------------

def _err_cases(device):
    x = torch.randn(2, 6, 4, 4, device=device)
    f64 = dict(dtype=torch.float64, device=device)
    return {
        "1d_input": lambda gn: gn(torch.randn(6, device=device), 3),
        "0d_input": lambda gn: gn(torch.tensor(1.0, device=device), 1),
        "channels_not_divisible": lambda gn: gn(x, 4),
        "channels_not_divisible_3d": lambda gn: gn(torch.randn(2, 10, 3, device=device), 3),
        "groups_zero": lambda gn: gn(x, 0),
        "groups_negative": lambda gn: gn(x, -2),
        "weight_wrong_size": lambda gn: gn(x, 3, torch.randn(5, device=device)),
        "bias_wrong_size": lambda gn: gn(x, 3, None, torch.randn(5, device=device)),
        "weight_2d": lambda gn: gn(x, 3, torch.randn(6, 1, device=device)),
        "bias_wrong_size_with_weight": lambda gn: gn(x, 3, torch.randn(6, device=device),
                                                     torch.randn(12, device=device)),
        "weight_float64": lambda gn: gn(x, 3, torch.randn(6, **f64)),
        "bias_float64": lambda gn: gn(x, 3, None, torch.randn(6, **f64)),
        "input_float64_weight_float32": lambda gn: gn(x.double(), 3, torch.randn(6, device=device)),
        "input_float32_weight_bf16": lambda gn: gn(x, 3, torch.randn(6, device=device, dtype=torch.bfloat16)),
        "half_input_bf16_weight": lambda gn: gn(x.half(), 3, torch.randn(6, device=device, dtype=torch.bfloat16)),
        "bf16_input_half_weight": lambda gn: gn(x.bfloat16(), 3, torch.randn(6, device=device, dtype=torch.half)),
        "bf16_input_f32_weight_bf16_bias": lambda gn: gn(x.bfloat16(), 3, torch.randn(6, device=device),
                                                         torch.randn(6, device=device, dtype=torch.bfloat16)),
        "one_value_per_group_4d": lambda gn: gn(torch.randn(1, 6, 1, 1, device=device), 6),
        "one_value_per_group_2d": lambda gn: gn(torch.randn(1, 6, device=device), 6),
        "one_value_per_group_3d": lambda gn: gn(torch.randn(1, 6, 1, device=device), 6),
        "not_divisible_but_single_value": lambda gn: gn(torch.randn(1, 6, 1, 1, device=device), 4),
        "zero_channels": lambda gn: gn(torch.randn(1, 0, 2, device=device), 1),
        "zero_channels_negative_groups": lambda gn: gn(torch.randn(1, 0, 2, device=device), -1),
        "zero_spatial": lambda gn: gn(torch.randn(2, 6, 0, 3, device=device), 3),
        "zero_spatial_3d": lambda gn: gn(torch.randn(2, 6, 0, device=device), 3),
        "zero_spatial_empty_batch": lambda gn: gn(torch.randn(0, 6, 0, device=device), 3),
        "zero_spatial_empty_batch_4d": lambda gn: gn(torch.randn(0, 6, 3, 0, device=device), 3),
        "num_groups_float": lambda gn: gn(torch.randn(2, 6, 3, device=device), 3.0),
        "eps_none": lambda gn: gn(torch.randn(2, 6, 3, device=device), 3, eps=None),
        "weight_on_meta": lambda gn: gn(x, 3, torch.randn(6, device="meta")),
    }


ERROR_CASE_NAMES = list(_err_cases("cpu").keys())


# Torch releases before 2.14 differ from 2.14 (the semantics normext follows) on these: 2.13 names
# the bias shape [0] instead of the bias's shape, accepts zero-size spatial dims and zero channels,
# and checks num_groups before the channels.
_TORCH_BEFORE_2_14 = TORCH_VERSION < (2, 14)
_CHANGED_IN_2_14 = {"bias_wrong_size", "bias_wrong_size_with_weight", "zero_spatial",
                    "zero_spatial_3d", "zero_spatial_empty_batch", "zero_spatial_empty_batch_4d",
                    "zero_channels", "zero_channels_negative_groups"}


@pytest.mark.parametrize("case", ERROR_CASE_NAMES)
def test_errors_match_torch(device, case):
    if _TORCH_BEFORE_2_14 and case in _CHANGED_IN_2_14:
        pytest.skip(f"torch {torch.__version__} behaves differently from 2.14 here")
    fn = _err_cases(device)[case]
    assert_same_error(lambda: fn(gn_ours), lambda: fn(gn_torch))


def test_device_mismatch_matches_torch():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    x = torch.randn(2, 6, 4, 4, device="cuda")
    w = torch.randn(6)
    assert_same_error(lambda: gn_ours(x, 3, w), lambda: gn_torch(x, 3, w))
    assert_same_error(lambda: gn_ours(x, 3, None, w), lambda: gn_torch(x, 3, None, w))
    assert_same_error(lambda: gn_ours(x.cpu(), 3, w.cuda()), lambda: gn_torch(x.cpu(), 3, w.cuda()))


@pytest.mark.parametrize("dtype,name", [(torch.int32, "Int"), (torch.int64, "Long"), (torch.bool, "Bool"),
                                        (torch.uint8, "Byte"), (torch.complex64, "ComplexFloat")])
def test_unsupported_dtype_raises(device, dtype, name):
    """torch raises NotImplementedError('"GroupNormKernelImpl" not implemented for 'Int''); normext raises
    the same type, naming the dtype the same way, from the functional and from the op."""
    x = torch.randn(2, 6, 3, 3, device=device).mul(3).to(dtype)
    with pytest.raises(NotImplementedError) as torch_exc:
        gn_torch(x, 3)
    assert f"not implemented for '{name}'" in str(torch_exc.value)
    expected = (f"normext group_norm: not implemented for '{name}' "
                "(expected float32, float64, bfloat16 or float16)")
    with pytest.raises(NotImplementedError) as exc:
        gn_ours(x, 3)
    assert str(exc.value) == expected
    with pytest.raises(NotImplementedError) as exc:
        torch.ops.normext.group_norm_forward(x, None, None, 3, 1e-5)
    assert str(exc.value) == expected


# --------------------------------------------------------------------------------------------------
# Empty batch.
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape,layout", [pytest.param(s, l, id=f"{s}-{l}")
                                          for s in ((0, 6, 3, 3), (0, 6), (0, 6, 5), (0, 6, 2, 2, 2))
                                          for l in ("contiguous", "channels_last") if layout_applies(l, len(s))])
def test_empty_batch(device, shape, layout):
    g = 3
    results = []
    for fn in (gn_torch, gn_ours):
        x = to_layout(torch.randn(shape, device=device), layout).requires_grad_(True)
        w = make_param(6, torch.float32, device, requires_grad=True)
        b = make_param(6, torch.float32, device, requires_grad=True, kind="bias")
        y = fn(x, g, w, b)
        y.sum().backward()
        results.append((y, x.grad, w.grad, b.grad))
    (y_t, dx_t, dw_t, db_t), (y_o, dx_o, dw_o, db_o) = results
    assert y_o.shape == y_t.shape == shape and y_o.dtype == y_t.dtype
    assert dx_o.shape == shape
    torch.testing.assert_close(dw_o, dw_t)  # zeros
    torch.testing.assert_close(db_o, db_t)
    y, mean, rstd = torch.ops.normext.group_norm_forward(torch.randn(shape, device=device), None, None, g, 1e-5)
    assert y.shape == shape and mean.shape == (0, g) and rstd.shape == (0, g)


# --------------------------------------------------------------------------------------------------
# The module.
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [{}, {"affine": False}, {"bias": False}, {"eps": 1e-3}],
                         ids=["default", "affine_false", "bias_false", "eps"])
def test_module_matches_torch_module(device, kwargs):
    if "bias" in kwargs and not takes_bias_argument(torch.nn.GroupNorm):
        pytest.skip(f"torch {torch.__version__}'s GroupNorm has no bias argument")
    tm = torch.nn.GroupNorm(4, 16, device=device, **kwargs)
    nm = normext.GroupNorm(4, 16, device=device, **kwargs)
    assert isinstance(nm, torch.nn.GroupNorm)
    assert repr(nm) == repr(tm)
    assert list(nm.state_dict().keys()) == list(tm.state_dict().keys())
    assert [n for n, _ in nm.named_parameters()] == [n for n, _ in tm.named_parameters()]
    assert (nm.num_groups, nm.num_channels, nm.eps, nm.affine) == (tm.num_groups, tm.num_channels, tm.eps,
                                                                   tm.affine)
    # Default init like torch (ones/zeros), then random values loaded from the torch module.
    for (n, p_t), (_, p_o) in zip(tm.named_parameters(), nm.named_parameters()):
        assert torch.equal(p_o, p_t), n
        assert p_o.dtype == p_t.dtype and p_o.device == p_t.device
    with torch.no_grad():
        for p in tm.parameters():
            p.copy_(torch.randn_like(p))
    nm.load_state_dict(tm.state_dict())
    x = make_input((2, 16, 5, 6), torch.float32, device, "channels_last", requires_grad=True)
    x2 = x.detach().clone(memory_format=torch.preserve_format).requires_grad_(True)
    go = torch.randn(2, 16, 5, 6, device=device)
    y_o = assert_module_matches_torch(nm, tm, x, x2, go)
    assert y_o.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=dtype_id)
def test_module_dtype_and_load_torch_state_dict(device, dtype):
    tm = torch.nn.GroupNorm(8, 32, device=device, dtype=dtype)
    with torch.no_grad():
        tm.weight.copy_(torch.randn(32))
        tm.bias.copy_(torch.randn(32))
    nm = normext.GroupNorm(8, 32, device=device, dtype=dtype)
    assert nm.weight.dtype == dtype and nm.bias.dtype == dtype
    nm.load_state_dict(tm.state_dict())
    assert torch.equal(nm.weight, tm.weight) and torch.equal(nm.bias, tm.bias)
    x = make_input((2, 32, 4, 4), dtype, device)
    ref = F.group_norm(x.double(), 8, tm.weight.double(), tm.bias.double())
    assert_close_to_ref(nm(x), tm(x), ref, dtype, "module output")


def test_module_errors_match_torch():
    assert_same_error(lambda: normext.GroupNorm(4, 6), lambda: torch.nn.GroupNorm(4, 6))
    assert_same_error(lambda: normext.GroupNorm(0, 6), lambda: torch.nn.GroupNorm(0, 6))
    m_t, m_o = torch.nn.GroupNorm(3, 6), normext.GroupNorm(3, 6)
    x = torch.randn(2, 12, 3, 3)
    assert_same_error(lambda: m_o(x), lambda: m_t(x))
    x1 = torch.randn(1, 6, 1, 1)
    m_t, m_o = torch.nn.GroupNorm(6, 6), normext.GroupNorm(6, 6)
    assert_same_error(lambda: m_o(x1), lambda: m_t(x1))


def test_module_train_eval_same_output():
    """GroupNorm has no running stats: eval and train give the same output (like torch)."""
    m = normext.GroupNorm(2, 8)
    with torch.no_grad():
        m.weight.copy_(torch.randn(8))
        m.bias.copy_(torch.randn(8))
    x = torch.randn(3, 8, 4, 4)
    y_train = m(x)
    m.eval()
    assert not m.training
    assert torch.equal(m(x), y_train)


def test_module_inference_mode_and_no_grad(device):
    m = normext.GroupNorm(4, 16, device=device)
    x = make_input((2, 16, 4, 4), torch.float32, device)
    with torch.inference_mode():
        y1 = m(x)
    with torch.no_grad():
        y2 = m(x)
    assert torch.equal(y1, y2)
    torch.testing.assert_close(y1, F.group_norm(x, 4, m.weight, m.bias), rtol=1e-5, atol=1e-5)


def test_module_pickle_roundtrip():
    import io
    m = normext.GroupNorm(2, 4)
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    m2 = torch.load(buf, weights_only=False)
    assert type(m2) is normext.GroupNorm
    assert repr(m2) == repr(m)
    x = torch.randn(2, 4, 3)
    assert torch.equal(m2(x), m(x))
    assert math.isclose(m2.eps, m.eps)


OP_ERROR_CASES = {
    "1d_input": lambda dev: (torch.randn(6, device=dev), None, None, 3),
    "channels_not_divisible": lambda dev: (torch.randn(2, 6, 4, device=dev), None, None, 4),
    "groups_negative": lambda dev: (torch.randn(2, 6, 4, device=dev), None, None, -2),
    "weight_wrong_size": lambda dev: (torch.randn(2, 6, 4, device=dev), torch.randn(5, device=dev), None, 3),
    "bias_wrong_size": lambda dev: (torch.randn(2, 6, 4, device=dev), None, torch.randn(7, device=dev), 3),
    "weight_float64": lambda dev: (torch.randn(2, 6, 4, device=dev),
                                   torch.randn(6, dtype=torch.float64, device=dev), None, 3),
    "input_float64_weight_float32": lambda dev: (torch.randn(2, 6, 4, dtype=torch.float64, device=dev),
                                                 torch.randn(6, device=dev), None, 3),
}


@pytest.mark.parametrize("case", list(OP_ERROR_CASES))
def test_op_errors_match_functional_and_fake(device, case):
    """The compiled op, its fake kernel (what torch.compile sees) and the functional raise alike."""
    x, w, b, g = OP_ERROR_CASES[case](device)
    with pytest.raises(Exception) as func_exc:
        gn_ours(x, g, w, b)
    with pytest.raises(Exception) as op_exc:
        torch.ops.normext.group_norm_forward(x, w, b, g, 1e-5)
    assert type(op_exc.value) is type(func_exc.value)
    assert str(op_exc.value) == str(func_exc.value)
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode() as mode:
        fx, fw, fb = (None if t is None else mode.from_tensor(t) for t in (x, w, b))
        with pytest.raises(Exception) as fake_exc:
            torch.ops.normext.group_norm_forward(fx, fw, fb, g, 1e-5)
    assert type(fake_exc.value) is type(op_exc.value)
    assert str(fake_exc.value) == str(op_exc.value)
