"""Tests of normext's InstanceNorm: functional and modules (statistics from normext's GroupNorm op with
one channel per group, running statistics as ATen's instance_norm computes them)."""

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import normext
import normext.functional
from conftest import OpRecorder, assert_close_to_ref, assert_same_error, dtype_id, layout_applies, make_input, make_param


def run_in(fn, x, rm, rv, w, b, use_input_stats, grad, momentum=0.1, eps=1e-5):
    x = x.detach().clone().requires_grad_(True)
    w = None if w is None else w.detach().clone().requires_grad_(True)
    b = None if b is None else b.detach().clone().requires_grad_(True)
    rm = None if rm is None else rm.clone()
    rv = None if rv is None else rv.clone()
    y = fn(x, rm, rv, w, b, use_input_stats, momentum, eps)
    y.backward(grad)
    return y, x.grad, None if w is None else w.grad, None if b is None else b.grad, rm, rv


@pytest.mark.parametrize("shape", [(3, 4, 9), (2, 5, 6, 7), (2, 3, 3, 4, 5), (2, 8, 70, 70)], ids=str)
@pytest.mark.parametrize("dtype,param_dtype", [(torch.float32,) * 2, (torch.float64,) * 2, (torch.bfloat16,) * 2,
                                               (torch.bfloat16, torch.float32)],
                         ids=dtype_id)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("use_input_stats", [True, False])
def test_parity_with_torch(device, shape, dtype, param_dtype, layout, use_input_stats):
    if not layout_applies(layout, len(shape)):
        pytest.skip("layout needs 4D/5D")
    C = shape[1]
    x = make_input(shape, dtype, device, layout, scale=2.0, shift=1.0)
    grad = make_input(shape, dtype, device, layout)
    w = make_param(C, param_dtype, device)
    b = make_param(C, param_dtype, device, kind="bias")
    rm = make_param(C, param_dtype, device, kind="bias")
    rv = make_param(C, param_dtype, device).abs() + 0.1
    ours = run_in(normext.functional.instance_norm, x, rm, rv, w, b, use_input_stats, grad)
    theirs = run_in(F.instance_norm, x, rm, rv, w, b, use_input_stats, grad)
    ref = run_in(F.instance_norm, x.double(), rm.double(), rv.double(), w.double(), b.double(), use_input_stats,
                 grad.double())
    for name, o, t, r in zip(["y", "dx", "dw", "db", "running_mean", "running_var"], ours, theirs, ref):
        assert o.dtype == t.dtype, name
        # NB: the running variance comes from rstd = 1 / sqrt(var + eps), a few float32 ulps.
        assert_close_to_ref(o, t, r, dtype if name in ("y", "dx") else param_dtype, what=name,
                            floor_ulps=8 if name == "running_var" else 1)
    if layout == "channels_last":
        fmt = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
        assert ours[0].is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("shape", [(0, 3, 4), (2, 3, 0)], ids=str)
def test_zero_size_and_running_stats(device, shape):
    x = torch.randn(shape, device=device, requires_grad=True)
    rm, rv = torch.zeros(3, device=device), torch.ones(3, device=device)
    rmt, rvt = rm.clone(), rv.clone()
    y = normext.functional.instance_norm(x, rm, rv)
    yt = F.instance_norm(x, rmt, rvt)
    assert y.shape == yt.shape
    torch.testing.assert_close(rm, rmt, equal_nan=True)
    torch.testing.assert_close(rv, rvt, equal_nan=True)
    y.sum().backward()


def test_gradcheck_gradgradcheck(device):
    x = make_input((2, 3, 4), torch.float64, device, requires_grad=True)
    w = make_param(3, torch.float64, device, requires_grad=True)
    b = make_param(3, torch.float64, device, kind="bias", requires_grad=True)

    def fn(x, w, b):
        return normext.functional.instance_norm(x, weight=w, bias=b)

    assert torch.autograd.gradcheck(fn, (x, w, b))
    assert torch.autograd.gradgradcheck(fn, (x, w, b))


def test_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), normext.InstanceNorm2d(4, affine=True,
                                                                                 track_running_stats=True))
    model_c = copy.deepcopy(model)
    compiled = torch.compile(model_c, fullgraph=True)
    x = torch.randn(2, 3, 8, 8).to(memory_format=torch.channels_last)
    torch.testing.assert_close(compiled(x), model(x))
    for (n, a), (_, b) in zip(model.named_buffers(), model_c.named_buffers()):
        torch.testing.assert_close(b, a, msg=n)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dtype_id)
def test_determinism_across_threads(dtype, restore_num_threads):
    x = make_input((3, 16, 60, 50), dtype, "cpu", "channels_last")
    outs = []
    for t in (1, 2, 3):
        torch.set_num_threads(t)
        outs.append(normext.functional.instance_norm(x))
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


ERRORS = {
    "one_spatial": lambda: ((torch.randn(4, 3, 1),), {}),
    "no_running_stats_eval": lambda: ((torch.randn(4, 3, 5),), {"use_input_stats": False}),
    "weight_size": lambda: ((torch.randn(4, 3, 5),), {"weight": torch.ones(2)}),
    "mixed_dtypes_first_param_decides": lambda: ((torch.randn(4, 3, 5).bfloat16(),),
                                                 {"weight": torch.ones(3).bfloat16(), "bias": torch.ones(3)}),
    "mixed_dtypes_double_weight": lambda: ((torch.randn(4, 3, 5).bfloat16(),), {"weight": torch.ones(3).double()}),
    "running_mean_size": lambda: ((torch.randn(4, 3, 5),), {"running_mean": torch.ones(2),
                                                           "running_var": torch.ones(3)}),
    "running_mean_only": lambda: ((torch.randn(4, 3, 5),), {"running_mean": torch.zeros(3)}),
    "momentum_none": lambda: ((torch.randn(4, 3, 5),), {"running_mean": torch.zeros(3),
                                                        "running_var": torch.ones(3), "momentum": None}),
    "eps_none": lambda: ((torch.randn(4, 3, 5),), {"eps": None}),
    "use_input_stats_none": lambda: ((torch.randn(4, 3, 5),), {"use_input_stats": None}),
    "use_input_stats_int": lambda: ((torch.randn(4, 3, 5),), {"use_input_stats": 1}),
    "meta_running_stats_eval": lambda: ((torch.randn(4, 3, 5),), {"running_mean": torch.zeros(3, device="meta"),
                                                                  "running_var": torch.ones(3, device="meta"),
                                                                  "use_input_stats": False}),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_errors_match_torch(case):
    args, kwargs = ERRORS[case]()
    assert_same_error(lambda: normext.functional.instance_norm(*args, **kwargs),
                      lambda: F.instance_norm(*args, **kwargs))


@pytest.mark.parametrize("dtype,stats_dtype,param_dtype", [
    (torch.float64, torch.float32, None), (torch.float64, torch.float32, torch.float64),
    (torch.float32, torch.bfloat16, None), (torch.float32, torch.float64, torch.float32),
    (torch.bfloat16, torch.float64, None), (torch.bfloat16, torch.bfloat16, torch.float32),
], ids=str)
@pytest.mark.parametrize("use_input_stats", [True, False])
def test_running_stats_of_another_dtype(dtype, stats_dtype, param_dtype, use_input_stats):
    """ATen normalizes repeated copies of the running statistics and writes their mean back in
    their own dtype: their dtype need not match the input's or the parameters'."""
    x = torch.randn(2, 3, 6, dtype=dtype) + 2
    w = None if param_dtype is None else torch.rand(3, dtype=param_dtype) + 0.5
    outs = []
    for fn in (normext.functional.instance_norm, F.instance_norm):
        rm, rv = torch.full((3,), 0.5, dtype=stats_dtype), torch.full((3,), 2.0, dtype=stats_dtype)
        y = fn(x, rm, rv, w, None, use_input_stats)
        outs.append((y, rm, rv))
    (y, rm, rv), (y_t, rm_t, rv_t) = outs
    assert y.dtype == y_t.dtype == dtype and rm.dtype == stats_dtype
    tol = {"atol": 2e-2, "rtol": 2e-2} if torch.bfloat16 in (dtype, stats_dtype) else {}
    torch.testing.assert_close(y, y_t, **tol)
    torch.testing.assert_close(rm, rm_t, **tol)
    torch.testing.assert_close(rv, rv_t, **tol)


MODULES = [(normext.InstanceNorm1d, nn.InstanceNorm1d, (3, 4, 7)), (normext.InstanceNorm1d, nn.InstanceNorm1d, (4, 7)),
           (normext.InstanceNorm2d, nn.InstanceNorm2d, (2, 4, 5, 6)), (normext.InstanceNorm2d, nn.InstanceNorm2d, (4, 5, 6)),
           (normext.InstanceNorm3d, nn.InstanceNorm3d, (2, 4, 3, 4, 5))]


@pytest.mark.parametrize("classes", MODULES, ids=lambda c: f"{c[0].__name__}-{len(c[2])}d")
@pytest.mark.parametrize("kwargs", [{}, {"affine": True}, {"track_running_stats": True},
                                    {"affine": True, "track_running_stats": True, "momentum": None}], ids=str)
def test_module_matches_torch(classes, kwargs):
    ours_cls, torch_cls, shape = classes
    ours, theirs = ours_cls(4, **kwargs), torch_cls(4, **kwargs)
    assert repr(ours) == repr(theirs) and isinstance(ours, torch_cls)
    for _ in range(2):
        x = torch.randn(shape)
        torch.testing.assert_close(ours(x), theirs(x))
    for (n, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items()):
        torch.testing.assert_close(a, b, msg=n)
    ours.eval()
    theirs.eval()
    x = torch.randn(shape)
    torch.testing.assert_close(ours(x), theirs(x))
    fresh = ours_cls(4, **kwargs)
    fresh.load_state_dict(theirs.state_dict())
    fresh.eval()
    torch.testing.assert_close(fresh(x), theirs(x))


def test_module_warnings_and_errors_match_torch():
    x = torch.randn(2, 3, 5, 6)
    with warnings.catch_warnings(record=True) as w_ours:
        warnings.simplefilter("always")
        normext.InstanceNorm2d(4)(x)
    with warnings.catch_warnings(record=True) as w_torch:
        warnings.simplefilter("always")
        nn.InstanceNorm2d(4)(x)
    assert [str(w.message) for w in w_ours] == [str(w.message) for w in w_torch] != []
    assert_same_error(lambda: normext.InstanceNorm2d(3)(torch.randn(3, 5)),
                      lambda: nn.InstanceNorm2d(3)(torch.randn(3, 5)))
    assert_same_error(lambda: normext.InstanceNorm1d(3, affine=True)(torch.randn(2, 4, 5)),
                      lambda: nn.InstanceNorm1d(3, affine=True)(torch.randn(2, 4, 5)))


def test_routes_through_normext_and_convert():
    x = torch.randn(2, 3, 5, requires_grad=True)
    with OpRecorder() as rec:
        normext.InstanceNorm1d(3, affine=True)(x).sum().backward()
    assert any("normext.group_norm_forward" in op for op in rec.ops)
    assert not any("native_batch_norm" in op for op in rec.ops)
    model = nn.Sequential(nn.InstanceNorm1d(3), nn.Sequential(nn.InstanceNorm2d(3, affine=True)),
                          nn.InstanceNorm3d(2))
    w = model[1][0].weight
    normext.convert(model)
    assert type(model[0]) is normext.InstanceNorm1d and type(model[2]) is normext.InstanceNorm3d
    assert type(model[1][0]) is normext.InstanceNorm2d and model[1][0].weight is w
