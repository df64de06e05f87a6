"""Tests of normext's BatchNorm: ops, functional, modules, convert.

Correctness against a float64 reference (torch's F.batch_norm on float64 copies): normext's error must
be no worse than 2x torch's own error at the test dtype, plus one ulp of the output magnitude.
"""

import copy
import functools
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import normext
import normext.functional
from conftest import (
    DTYPES,
    assert_close_to_ref,
    assert_same_error,
    dtype_id,
    layout_applies,
    make_input,
    make_param,
    takes_bias_argument,
    to_layout,
    with_cpu_semantics,
)

ops = torch.ops.normext


SHAPES = [
    (4, 3),             # BatchNorm1d on (N, C): channels-last rows
    (5, 7, 9),          # BatchNorm1d on (N, C, L)
    (2, 6, 5, 7),       # 2D
    (3, 20, 70, 70),    # 2D, planes of more than one chunk
    (2, 5, 3, 4, 6),    # 3D
    (1, 33, 1, 1),      # one value per channel per sample (N > 1 would be needed to train)
    (300, 19),          # many rows, C not a multiple of the vector width
    (200, 3, 7, 7),     # small planes in chunks of 83 samples: 83, 83, 34
    (4100, 2, 7, 7),    # the same past the one-sweep size (float32): statistics, then normalize
]


def run_bn(fn, x, rm, rv, w, b, training, momentum=0.1, eps=1e-5, grad=None):
    """y, grads (x, w, b) and the running statistics after one step."""
    x = x.detach().clone().requires_grad_(True)
    w = None if w is None else w.detach().clone().requires_grad_(True)
    b = None if b is None else b.detach().clone().requires_grad_(True)
    rm = None if rm is None else rm.clone()
    rv = None if rv is None else rv.clone()
    y = fn(x, rm, rv, w, b, training, momentum, eps)
    y.backward(grad.to(y.dtype))
    return y, x.grad, None if w is None else w.grad, None if b is None else b.grad, rm, rv


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype,param_dtype", [(d, d) for d in DTYPES] + [(torch.bfloat16, torch.float32)],
                         ids=lambda d: dtype_id(d))
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "permuted"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_parity_with_torch(device, shape, dtype, param_dtype, layout, training):
    if not layout_applies(layout, len(shape)):
        pytest.skip("layout needs 4D/5D")
    if layout == "permuted" and dtype != torch.float32:
        pytest.skip("other strides are copied to NCHW: one dtype is enough")
    if dtype == torch.float16 and layout != "contiguous":
        pytest.skip("float16 shares bfloat16's code paths")
    if training and shape[0] * math.prod(shape[2:]) == 1:
        pytest.skip("training needs more than one value per channel")
    C = shape[1]
    x = make_input(shape, dtype, device, layout, scale=2.0, shift=1.0)
    w = make_param(C, param_dtype, device)
    b = make_param(C, param_dtype, device, kind="bias")
    rm = make_param(C, param_dtype, device, kind="bias")
    rv = make_param(C, param_dtype, device).abs() + 0.1
    grad = make_input(shape, dtype, device, layout)
    ours = run_bn(normext.functional.batch_norm, x, rm, rv, w, b, training, grad=grad)
    theirs = run_bn(F.batch_norm, x, rm, rv, w, b, training, grad=grad)
    ref = run_bn(F.batch_norm, x.double(), rm.double(), rv.double(), w.double(), b.double(), training,
                 grad=grad.double())
    for name, o, t, r in zip(["y", "dx", "dw", "db", "running_mean", "running_var"], ours, theirs, ref):
        assert o.dtype == t.dtype, name
        assert_close_to_ref(o, t, r, dtype if name in ("y", "dx") else param_dtype, what=name)
    if layout == "channels_last":
        fmt = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
        assert ours[0].is_contiguous(memory_format=fmt) and ours[1].is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_large_mean_float32(device, layout):
    x = make_input((4, 8, 33, 35), torch.float32, device, layout, shift=1e4)
    rm, rv = torch.zeros(8, device=device), torch.ones(8, device=device)
    y = normext.functional.batch_norm(x, rm.clone(), rv.clone(), training=True)
    ref = F.batch_norm(x.double(), rm.double(), rv.double(), training=True)
    theirs = F.batch_norm(x, rm.clone(), rv.clone(), training=True)
    assert_close_to_ref(y, theirs, ref, torch.float32, floor_ulps=4)


def test_huge_finite_float32_falls_back_to_exact(device):
    x = make_input((3, 4, 50), torch.float32, device, scale=3e37)
    y = normext.functional.batch_norm(x, None, None, training=True)
    ref = F.batch_norm(x.double(), None, None, training=True)
    assert torch.isfinite(y).all()
    assert (y.double() - ref).abs().max() < 1e-5


def test_momentum_and_unbiased_running_var(device):
    x = make_input((6, 3, 4), torch.float64, device)
    rm, rv = torch.full((3,), 0.5, dtype=torch.float64, device=device), torch.full((3,), 2.0, dtype=torch.float64, device=device)
    normext.functional.batch_norm(x, rm, rv, training=True, momentum=0.3)
    mean = x.mean((0, 2))
    var = x.var((0, 2), unbiased=True)
    torch.testing.assert_close(rm, 0.7 * 0.5 + 0.3 * mean)
    torch.testing.assert_close(rv, 0.7 * 2.0 + 0.3 * var)


@pytest.mark.parametrize("shape", [(0, 3, 4), (2, 3, 0), (0, 5), (2, 0, 3)], ids=str)
@pytest.mark.parametrize("training", [True, False])
def test_zero_size(device, shape, training):
    C = shape[1]
    x = torch.randn(shape, device=device, requires_grad=True)
    rm, rv = torch.zeros(C, device=device), torch.ones(C, device=device)
    y = normext.functional.batch_norm(x, rm, rv, training=training)
    yt = F.batch_norm(x, rm.clone(), rv.clone(), training=training)
    assert y.shape == yt.shape == x.shape
    y.sum().backward()
    assert x.grad.shape == x.shape
    assert torch.equal(rm, torch.zeros(C, device=device))


def test_forward_op_outputs(device):
    x = make_input((4, 3, 5), torch.bfloat16, device)
    y, mean, invstd = ops.batch_norm_forward(x, None, None, None, None, True, 0.1, 1e-5)
    _, tmean, tinvstd = torch.native_batch_norm(x.float(), None, None, None, None, True, 0.1, 1e-5)
    assert mean.dtype == invstd.dtype == torch.float32
    torch.testing.assert_close(mean, tmean)
    torch.testing.assert_close(invstd, tinvstd)
    rm, rv = torch.zeros(3, device=device), torch.ones(3, device=device)
    _, m, i = ops.batch_norm_forward(x, None, None, rm, rv, False, 0.1, 1e-5)
    assert m.shape == i.shape == (0,)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("mask", [[True, True, True], [True, False, False], [False, True, True],
                                  [False, False, True]], ids=str)
def test_backward_op_matches_aten(device, train, mask):
    x = make_input((4, 5, 6, 3), torch.float64, device)
    g = make_input((4, 5, 6, 3), torch.float64, device)
    w = make_param(5, torch.float64, device)
    rm, rv = make_param(5, torch.float64, device, kind="bias"), make_param(5, torch.float64, device) + 1
    _, sm, si = torch.native_batch_norm(x, w, None, rm.clone(), rv.clone(), train, 0.1, 1e-5)
    ours = ops.batch_norm_backward(g, x, w, rm, rv, sm if train else None, si if train else None, train,
                                   1e-5, mask)
    theirs = torch.ops.aten.native_batch_norm_backward(g, x, w, rm, rv, sm, si, train, 1e-5, mask)
    for o, t, m in zip(ours, theirs, mask):
        if m:
            torch.testing.assert_close(o, t)
        else:
            assert o.numel() == 0


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_gradcheck_gradgradcheck(device, layout, training, affine):
    x = make_input((3, 2, 3, 2), torch.float64, device, layout, requires_grad=True)
    w = make_param(2, torch.float64, device, requires_grad=True) if affine else None
    b = make_param(2, torch.float64, device, kind="bias", requires_grad=True) if affine else None
    rm, rv = torch.zeros(2, dtype=torch.float64, device=device), torch.ones(2, dtype=torch.float64, device=device)

    def fn(x, w, b):
        return normext.functional.batch_norm(x, rm.clone(), rv.clone(), w, b, training)

    args = (x, w, b)
    assert torch.autograd.gradcheck(fn, args)
    assert torch.autograd.gradgradcheck(fn, args)


def test_backward_op_gradgradcheck(device):
    x = make_input((3, 2, 4), torch.float64, device, requires_grad=True)
    g = make_input((3, 2, 4), torch.float64, device, requires_grad=True)
    w = make_param(2, torch.float64, device, requires_grad=True)
    _, sm, si = torch.native_batch_norm(x.detach(), w.detach(), None, None, None, True, 0.1, 1e-5)
    sm.requires_grad_()
    si.requires_grad_()

    def fn(g, x, w, sm, si):
        return ops.batch_norm_backward(g, x, w, None, None, sm, si, True, 1e-5, [True, True, True])

    assert torch.autograd.gradcheck(fn, (g, x, w, sm, si))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_opcheck(device, layout):
    x = make_input((3, 4, 5, 2), torch.float32, device, layout, requires_grad=True)
    w = make_param(4, torch.float32, device, requires_grad=True)
    b = make_param(4, torch.float32, device, kind="bias", requires_grad=True)
    rm, rv = torch.zeros(4, device=device), torch.ones(4, device=device)
    torch.library.opcheck(ops.batch_norm_forward.default, (x, w, b, rm, rv, True, 0.1, 1e-5))
    torch.library.opcheck(ops.batch_norm_forward.default, (x, w, b, rm, rv, False, 0.1, 1e-5))
    torch.library.opcheck(ops.batch_norm_forward_impl.default, (x, w, b, rm, rv, True, 0.1, 1e-5))
    xd, g = x.detach(), torch.randn_like(x)
    _, sm, si = ops.batch_norm_forward(xd, w.detach(), None, None, None, True, 0.1, 1e-5)
    torch.library.opcheck(ops.batch_norm_backward.default,
                          (g, xd, w.detach(), rm, rv, sm, si, True, 1e-5, [True, True, False]))
    torch.library.opcheck(ops.batch_norm_stats.default, (xd,))
    torch.library.opcheck(ops.batch_norm_elemt.default, (xd, w.detach(), None, sm, si))
    torch.library.opcheck(ops.batch_norm_backward_reduce.default, (g, xd, sm))
    torch.library.opcheck(ops.batch_norm_backward_elemt.default,
                          (g, xd, w.detach(), sm, si, sm + 1, si - 1, 30))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_compile_fullgraph_matches_eager(layout):
    torch._dynamo.reset()
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), normext.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 4, 1), normext.BatchNorm2d(4, affine=False))
    model_c = copy.deepcopy(model)
    x = to_layout(torch.randn(4, 3, 8, 8), layout)
    compiled = torch.compile(model_c, fullgraph=True)
    r = torch.randn(4, 4, 8, 8)  # (the plain sum of a normalized output has no gradient)
    for _ in range(2):
        y = model(x)
        yc = compiled(x)
        torch.testing.assert_close(yc, y)
        (y * r).sum().backward()
        (yc * r).sum().backward()
    for (n, p), (_, pc) in zip(model.named_parameters(), model_c.named_parameters()):
        torch.testing.assert_close(pc.grad, p.grad, atol=1e-4, rtol=1e-4, msg=n)  # conv bias: ~0
    for (n, bf), (_, bc) in zip(model.named_buffers(), model_c.named_buffers()):
        torch.testing.assert_close(bc, bf, msg=n)
    model.eval()
    model_c.eval()
    torch.testing.assert_close(compiled(x), model(x))


@pytest.mark.parametrize("shape,layout", [((4, 64, 70, 70), "contiguous"), ((4, 64, 40, 30), "channels_last"),
                                          ((2000, 24), "contiguous"), ((300, 8, 7, 7), "contiguous"),
                                          ((4100, 3, 7, 7), "contiguous")], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dtype_id)
def test_determinism_across_threads(shape, layout, dtype, restore_num_threads):
    x = make_input(shape, dtype, "cpu", layout, shift=3.0)
    g = make_input(shape, dtype, "cpu", layout)
    w = make_param(shape[1], dtype)
    results = []
    for threads in (1, 2, 3):
        torch.set_num_threads(threads)
        rm, rv = torch.zeros(shape[1], dtype=dtype), torch.ones(shape[1], dtype=dtype)
        y, sm, si = ops.batch_norm_forward(x, w, None, rm, rv, True, 0.1, 1e-5)
        grads = ops.batch_norm_backward(g, x, w, None, None, sm, si, True, 1e-5, [True, True, True])
        results.append((y, sm, si, rm, rv) + tuple(grads))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


ERROR_CASES = {
    "eval_without_running_mean": lambda d: ((torch.randn(4, 3, device=d), None, torch.ones(3, device=d)), {}),
    "eval_without_running_var": lambda d: ((torch.randn(4, 3, device=d), torch.ones(3, device=d), None), {}),
    "running_mean_size": lambda d: ((torch.randn(4, 4, device=d), torch.zeros(3, device=d), torch.ones(4, device=d)), {}),
    "weight_size": lambda d: ((torch.randn(4, 3, device=d), torch.zeros(3, device=d), torch.ones(3, device=d)),
                              {"weight": torch.ones(4, device=d)}),
    "bias_size": lambda d: ((torch.randn(4, 3, device=d), torch.zeros(3, device=d), torch.ones(3, device=d)),
                            {"bias": torch.ones(2, device=d)}),
    "mixed_double_weight": lambda d: ((torch.randn(4, 3, device=d).bfloat16(), torch.zeros(3, device=d),
                                       torch.ones(3, device=d)), {"weight": torch.ones(3, device=d).double()}),
    "mixed_float_input": lambda d: ((torch.randn(4, 3, device=d), torch.zeros(3, device=d).double(),
                                     torch.ones(3, device=d)), {}),
    "mixed_first_param_decides": lambda d: ((torch.randn(4, 3, device=d).bfloat16(),
                                             torch.zeros(3, device=d).bfloat16(), torch.ones(3, device=d)),
                                            {"training": True}),
    "int_input": lambda d: ((torch.ones(4, 3, dtype=torch.int32, device=d), torch.zeros(3, device=d),
                             torch.ones(3, device=d)), {}),
    "one_value_per_channel": lambda d: ((torch.randn(1, 3, device=d), None, None), {"training": True}),
    "one_value_per_channel_3d": lambda d: ((torch.randn(1, 3, 1, device=d), None, None), {"training": True}),
    "train_running_mean_only": lambda d: ((torch.randn(4, 3, device=d), torch.zeros(3, device=d), None),
                                          {"training": True}),
    "train_running_var_only": lambda d: ((torch.randn(4, 3, device=d), None, torch.ones(3, device=d)),
                                         {"training": True}),
    "running_stats_require_grad": lambda d: ((torch.randn(4, 3, device=d), torch.zeros(3, device=d).requires_grad_(),
                                              torch.ones(3, device=d).requires_grad_()), {}),
    "momentum_none": lambda d: ((torch.randn(4, 3, device=d), torch.zeros(3, device=d), torch.ones(3, device=d)),
                                {"training": True, "momentum": None}),
    # torch's argument parser refuses anything but a bool (None, 1, numpy.bool, a tensor).
    "training_none": lambda d: ((torch.randn(4, 3, device=d), None, None), {"training": None}),
    "training_int": lambda d: ((torch.randn(4, 3, device=d), None, None), {"training": 1}),
    "training_numpy_bool": lambda d: ((torch.randn(4, 3, device=d), None, None),
                                      {"training": np.bool_(True)}),
    "training_tensor": lambda d: ((torch.randn(4, 3, device=d), None, None),
                                  {"training": torch.tensor(True)}),
    "one_dim_input_train": lambda d: ((torch.randn(4, device=d), None, None), {"training": True}),
    # Sizes are checked before a missing running statistic is.
    "train_running_mean_only_wrong_weight": lambda d: (
        (torch.randn(4, 3, device=d), torch.zeros(3, device=d), None),
        {"training": True, "weight": torch.ones(2, device=d)}),
    "train_running_var_only_wrong_size": lambda d: (
        (torch.randn(4, 3, device=d), None, torch.ones(5, device=d)), {"training": True}),
    # A meta tensor among real ones sends the call to the fake kernel, which must refuse it.
    "meta_running_stats": lambda d: ((torch.randn(4, 3, device=d), torch.zeros(3, device="meta"),
                                      torch.ones(3, device="meta")), {}),
    "meta_weight": lambda d: ((torch.randn(4, 3, device=d), torch.zeros(3, device=d), torch.ones(3, device=d)),
                              {"weight": torch.ones(3, device="meta"), "training": True}),
}

# Only ATen's message names its own function ('native_batch_norm'); type and the rest agree.
_OWN_MESSAGE = {"running_stats_require_grad"}


# Dtype errors: normext's CUDA kernels take the dtypes torch's CPU kernels take and raise their
# messages (torch's CUDA batch_norm has its own rules and messages): compared with torch on CPU.
_CPU_DTYPE_RULES = {"mixed_double_weight", "mixed_float_input", "mixed_first_param_decides",
                    "int_input"}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_errors_match_torch(device, case):
    args, kwargs = ERROR_CASES[case](device)
    torch_fn = F.batch_norm
    if device == "cuda" and case in _CPU_DTYPE_RULES:
        torch_fn = functools.partial(with_cpu_semantics, F.batch_norm)
    ours, _ = assert_same_error(lambda: normext.functional.batch_norm(*args, **kwargs),
                                lambda: torch_fn(*args, **kwargs),
                                match_message=case not in _OWN_MESSAGE)
    if case in _OWN_MESSAGE:
        assert "not differentiable with respect to argument 'running_mean'" in str(ours)


def test_error_order_over_parameter_sizes_matches_torch():
    # Every mix of missing, right-size and wrong-size weight, bias and running statistics, in
    # training and eval, for 2-D, 3-D, 1-D and empty inputs: the same result or the same error.
    def outcome(fn, *args, **kwargs):
        try:
            fn(*args, **kwargs)
            return "ok"
        except Exception as e:  # noqa: BLE001  (the error itself is what is compared)
            return f"{type(e).__name__}: {e}"

    for x in (torch.randn(3, 4), torch.randn(2, 4, 3), torch.randn(4), torch.randn(0, 4)):
        for sizes in itertools.product([None, 4, 5], repeat=4):
            w, b, rm, rv = (torch.ones(n) if n else None for n in sizes)
            for training in (True, False):
                ours = outcome(normext.functional.batch_norm, x, rm, rv, w, b, training)
                theirs = outcome(F.batch_norm, x, rm, rv, w, b, training)
                assert ours == theirs, (tuple(x.shape), sizes, training)


def test_eval_with_zero_variance_and_zero_eps_matches_torch():
    # var == eps == 0: ATen's x * a + (bias - mean * a) is NaN there, for x == mean or not.
    x = torch.tensor([[1.0, 2.0], [0.0, 2.0]])
    rm, rv = torch.zeros(2), torch.tensor([0.0, 1.0])
    torch.testing.assert_close(normext.functional.batch_norm(x, rm, rv, eps=0.0),
                               F.batch_norm(x, rm, rv, eps=0.0), equal_nan=True)
    assert normext.functional.batch_norm(x, rm, rv, eps=0.0)[:, 0].isnan().all()


def test_running_stats_that_require_grad_are_fine_without_grad_mode():
    x = torch.randn(4, 3)
    rm, rv = torch.zeros(3, requires_grad=True), torch.ones(3, requires_grad=True)
    with torch.no_grad():
        torch.testing.assert_close(normext.functional.batch_norm(x, rm, rv, training=True),
                                   F.batch_norm(x, rm.clone(), rv.clone(), training=True))


@pytest.mark.parametrize("shape", [(1, 3, 2, 1), (2, 3, 1, 4), (1, 4, 2, 1, 1)], ids=str)
@pytest.mark.parametrize("training", [False, True])
def test_channels_last_with_odd_strides_on_size_one_dims(shape, training):
    """ATen's batch_norm returns a channels-last output for an input whose strides are
    channels-last except on size-1 dims (PyTorch's test_batchnorm_non_contig_cpu)."""
    perm = (0, 2, 1, 3) if len(shape) == 4 else (0, 2, 1, 3, 4)
    x = torch.arange(float(torch.Size(shape).numel())).reshape(shape).permute(perm)
    C = x.shape[1]
    w = torch.rand(C)
    y_ours = normext.functional.batch_norm(x, torch.zeros(C), torch.ones(C), w, None, training=training)
    y_torch = F.batch_norm(x, torch.zeros(C), torch.ones(C), w, None, training=training)
    assert y_ours.stride() == y_torch.stride()
    torch.testing.assert_close(y_ours, y_torch)
    fake = torch.ops.normext.batch_norm_forward(x.to("meta"), None, None, torch.zeros(C, device="meta"),
                                                torch.ones(C, device="meta"), training, 0.1, 1e-5)[0]
    assert fake.stride() == y_torch.stride()


MODULES = [(normext.BatchNorm1d, nn.BatchNorm1d, (6, 5, 7)), (normext.BatchNorm1d, nn.BatchNorm1d, (6, 5)),
           (normext.BatchNorm2d, nn.BatchNorm2d, (3, 5, 4, 6)),
           (normext.BatchNorm3d, nn.BatchNorm3d, (2, 5, 3, 4, 3))]
MODULE_KWARGS = [{}, {"momentum": None}, {"affine": False}, {"track_running_stats": False},
                 {"bias": False}, {"eps": 1e-3, "momentum": 0.5}]


@pytest.mark.parametrize("classes", MODULES, ids=lambda c: f"{c[0].__name__}-{len(c[2])}d")
@pytest.mark.parametrize("kwargs", MODULE_KWARGS, ids=str)
def test_module_matches_torch(device, classes, kwargs):
    ours_cls, torch_cls, shape = classes
    if "bias" in kwargs and not takes_bias_argument(torch_cls):
        pytest.skip(f"torch {torch.__version__}'s {torch_cls.__name__} has no bias argument")
    ours = ours_cls(shape[1], device=device, **kwargs)
    theirs = torch_cls(shape[1], device=device, **kwargs)
    assert repr(ours) == repr(theirs)
    assert isinstance(ours, torch_cls)
    if ours.weight is not None:
        with torch.no_grad():
            ours.weight.normal_()
        theirs.weight.data.copy_(ours.weight)
    for step in range(3):
        x = make_input(shape, torch.float32, device)
        torch.testing.assert_close(ours(x), theirs(x))
    for (n, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items()):
        torch.testing.assert_close(a, b, msg=n)
    ours.eval()
    theirs.eval()
    x = make_input(shape, torch.float32, device)
    torch.testing.assert_close(ours(x), theirs(x))
    # state_dict round trip with the torch module
    fresh = ours_cls(shape[1], device=device, **kwargs)
    fresh.load_state_dict(theirs.state_dict())
    fresh.eval()
    torch.testing.assert_close(fresh(x), theirs(x))


def test_module_errors_match_torch():
    for ours_cls, torch_cls, x in [(normext.BatchNorm2d, nn.BatchNorm2d, torch.randn(4, 3, 5)),
                                   (normext.BatchNorm1d, nn.BatchNorm1d, torch.randn(2, 3, 4, 5)),
                                   (normext.BatchNorm3d, nn.BatchNorm3d, torch.randn(2, 3, 4, 5)),
                                   (normext.BatchNorm1d, nn.BatchNorm1d, torch.randn(1, 3))]:
        assert_same_error(lambda: ours_cls(3)(x), lambda: torch_cls(3)(x))


def test_convert_swaps_batchnorm():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm1d(4)),
                          nn.BatchNorm3d(2))
    bn = model[1]
    w = bn.weight
    model[1](torch.randn(2, 4, 3, 3))
    converted = normext.convert(model)
    assert type(converted[1]) is normext.BatchNorm2d
    assert type(converted[2][0]) is normext.BatchNorm1d
    assert type(converted[3]) is normext.BatchNorm3d
    assert converted[1].weight is w and converted[1].running_mean is bn.running_mean
    assert int(converted[1].num_batches_tracked) == 1


def test_convert_keeps_subclasses():
    class MyBN(nn.BatchNorm2d):
        pass

    model = nn.Sequential(MyBN(3))
    assert type(normext.convert(model)[0]) is MyBN


def test_functional_routes_through_normext():
    from conftest import OpRecorder
    x = torch.randn(4, 3, 5, requires_grad=True)
    with OpRecorder() as rec:
        normext.functional.batch_norm(x, torch.zeros(3), torch.ones(3), training=True).sum().backward()
    assert any("normext.batch_norm_forward_impl" in op for op in rec.ops)
    assert any("normext.batch_norm_backward" in op for op in rec.ops)
    assert not any("aten.native_batch_norm" in op for op in rec.ops)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("shape", [(2, 3, 300, 400), (2, 3, 30, 40)], ids=str)
def test_both_nchw_paths(device, dtype, shape, restore_num_threads):
    """NCHW training runs in one sweep per channel when a channel fits in cache ((2, 3, 30, 40)),
    else as statistics then apply ((2, 3, 300, 400)): both match the reference and are
    deterministic across thread counts."""
    x = make_input(shape, dtype, device, scale=2.0, shift=1.0)
    w = make_param(3, dtype, device)
    b = make_param(3, dtype, device, kind="bias")
    grad = make_input(shape, dtype, device)
    ours = run_bn(normext.functional.batch_norm, x, None, None, w, b, True, grad=grad)
    theirs = run_bn(F.batch_norm, x, None, None, w, b, True, grad=grad)
    ref = run_bn(F.batch_norm, x.double(), None, None, w.double(), b.double(), True, grad=grad.double())
    for name, o, t, r in list(zip(["y", "dx", "dw", "db"], ours, theirs, ref)):
        assert_close_to_ref(o, t, r, dtype, what=name)
    if device == "cpu":
        torch.set_num_threads(1)
        again = run_bn(normext.functional.batch_norm, x, None, None, w, b, True, grad=grad)
        for a, c in zip(ours[:4], again[:4]):
            assert torch.equal(a, c)
