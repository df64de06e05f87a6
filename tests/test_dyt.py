"""Tests of normext's DyT (y = weight * tanh(alpha * x) + bias): ops, functional, module.

Reference: the paper's DynamicTanh written in torch ops, evaluated in float64. normext's error
must be no worse than 2x torch eager's own error at the test dtype, plus a floor of one ulp.
"""

import copy

import pytest
import torch
from torch import nn

import normext
import normext.functional
from conftest import (DTYPES, EVERY_BF16_PRELUDE, assert_close_to_ref, assert_same_error, cuda_sync,
                      dtype_id, make_input, max_abs_err, run_with_cpu_capability)


class DynamicTanh(nn.Module):
    """The paper's module (github.com/jiachenzhu/DyT, dynamic_tanh.py), verbatim but for 5D."""

    def __init__(self, normalized_shape, channels_last, alpha_init_value=0.5):
        super().__init__()
        self.normalized_shape = normalized_shape
        self.alpha_init_value = alpha_init_value
        self.channels_last = channels_last
        self.alpha = nn.Parameter(torch.ones(1) * alpha_init_value)
        self.weight = nn.Parameter(torch.ones(normalized_shape))
        self.bias = nn.Parameter(torch.zeros(normalized_shape))

    def forward(self, x):
        x = torch.tanh(self.alpha * x)
        if self.channels_last:
            x = x * self.weight + self.bias
        else:
            bc = (slice(None),) + (None,) * (x.dim() - 2)
            x = x * self.weight[bc] + self.bias[bc]
        return x


def dyt_torch(x, alpha, w, b, channels_last):
    """Eager torch DyT in x's dtype (parameters cast to it, as a model in that dtype would be)."""
    t = torch.tanh(alpha.to(x.dtype) * x)
    if not channels_last:
        bc = (slice(None),) + (None,) * (x.dim() - 2)
        w = None if w is None else w[bc]
        b = None if b is None else b[bc]
    if w is not None:
        t = t * w.to(x.dtype)
    if b is not None:
        t = t + b.to(x.dtype)
    return t


def _run(fn, x, alpha, w, b, channels_last, go, cast=None):
    leaves = [None if t is None else (t.detach().to(cast) if cast else t.detach().clone()).requires_grad_(True)
              for t in (x, alpha, w, b)]
    if cast is None:
        leaves[0] = x.detach().clone(memory_format=torch.preserve_format).requires_grad_(True)
    y = fn(*leaves, channels_last)
    y.backward(go.to(y.dtype))
    return [y] + [None if t is None else t.grad for t in leaves]


# (id, shape, channels_last, param shape or None, layout)
CASES = [
    ("rows_c64", (4, 33, 64), True, (64,), "contiguous"),
    ("rows_c1000", (3, 1000), True, (1000,), "contiguous"),  # tail vector, C not a multiple of 16
    ("rows_c2304_blocks", (70, 2304), True, (2304,), "contiguous"),  # several channel blocks
    ("rows_many_blocks", (9000, 20), True, (20,), "contiguous"),  # many row blocks
    ("rows_2d_params", (5, 6, 7), True, (6, 7), "contiguous"),
    ("rows_noncontig", (6, 40), True, (40,), "transposed"),
    ("rows_1d_input", (77,), True, (77,), "contiguous"),
    ("planes_nchw", (2, 8, 9, 11), False, (8,), "contiguous"),
    ("planes_big_hw", (1, 3, 130, 130), False, (3,), "contiguous"),  # several blocks per plane
    ("planes_cl", (2, 24, 5, 7), False, (24,), "channels_last"),
    ("planes_cl3d", (2, 20, 3, 4, 5), False, (20,), "channels_last"),
    ("planes_nc", (7, 12), False, (12,), "contiguous"),
    ("planes_ncl", (3, 5, 17), False, (5,), "contiguous"),
    ("no_params", (4, 50), True, None, "contiguous"),
]


def _layout(t, layout):
    if layout == "channels_last":
        fmt = torch.channels_last if t.dim() == 4 else torch.channels_last_3d
        return t.contiguous(memory_format=fmt)
    if layout == "transposed":
        return t.t().contiguous().t()
    return t


def _params(pshape, dtype, device):
    if pshape is None:
        return None, None
    w = (1 + 0.5 * torch.randn(pshape, dtype=torch.float64)).to(dtype).to(device)
    b = (0.5 * torch.randn(pshape, dtype=torch.float64)).to(dtype).to(device)
    return w, b


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("cid,shape,channels_last,pshape,layout", CASES, ids=[c[0] for c in CASES])
def test_parity_with_torch(device, cid, shape, channels_last, pshape, layout, dtype):
    if dtype in (torch.bfloat16, torch.float16) and shape[0] * (shape[1] if len(shape) > 1 else 1) > 5000:
        pytest.skip("covered in float32")
    x = _layout(make_input(shape, dtype, device, scale=2.0), layout)
    alpha = torch.tensor([0.7], dtype=dtype, device=device)
    w, b = _params(pshape, dtype, device)
    go = torch.randn(shape, dtype=torch.float64).to(dtype).to(device)
    ref = _run(dyt_torch, x, alpha, w, b, channels_last, go, cast=torch.float64)
    tor = _run(dyt_torch, x, alpha, w, b, channels_last, go)
    ours = _run(normext.functional.dyt, x, alpha, w, b, channels_last, go)
    cuda_sync(device)
    assert ours[0].dtype == dtype and ours[0].shape == x.shape
    if layout == "channels_last":
        assert ours[0].is_contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    for name, o, t, r in zip(("y", "dx", "dalpha", "dweight", "dbias"), ours, tor, ref):
        if r is None:
            continue
        assert o.dtype == t.dtype and o.shape == t.shape, name
        # dalpha sums every element: one ulp at its magnitude times sqrt(numel) of rounding noise
        floor = 1.0 if name in ("y", "dx") else 4.0
        assert_close_to_ref(o, t, r, dtype, name, floor_ulps=floor)


@pytest.mark.parametrize("pdtype", [torch.float32])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=dtype_id)
def test_low_precision_input_float32_params(device, dtype, pdtype):
    x = make_input((6, 48), dtype, device, scale=2.0)
    alpha = torch.tensor([0.6], device=device)
    w, b = _params((48,), pdtype, device)
    go = torch.randn(6, 48, device=device).to(dtype)
    ours = _run(normext.functional.dyt, x, alpha, w, b, True, go)
    ref = _run(dyt_torch, x, alpha, w, b, True, go, cast=torch.float64)
    assert ours[0].dtype == dtype
    assert [g.dtype for g in ours[2:]] == [torch.float32] * 3
    # fp32 math throughout, one rounding to dtype at the end: within one ulp of dtype
    for name, o, r in zip(("y", "dx"), ours[:2], ref[:2]):
        assert max_abs_err(o, r) <= torch.finfo(dtype).eps * max(1.0, r.abs().max().item()), name
    for name, o, r in zip(("dalpha", "dweight", "dbias"), ours[2:], ref[2:]):
        assert max_abs_err(o, r) <= 1e-2 * max(1.0, r.abs().max().item()), name


def test_tanh_accuracy_vs_torch():
    """The fp32 tanh inside the kernel: within 2x torch.tanh's own max error vs float64."""
    x = torch.linspace(-12, 12, 2_000_001)
    one = torch.ones(1)
    ours = normext.functional.dyt(x, one)
    ref = torch.tanh(x.double())
    err_ours = max_abs_err(ours, ref)
    err_torch = max_abs_err(torch.tanh(x), ref)
    assert err_ours <= 2 * err_torch, (err_ours, err_torch)
    # relative, near zero too
    small = torch.linspace(-1e-3, 1e-3, 100_001)
    rel = ((normext.functional.dyt(small, one).double() - torch.tanh(small.double())).abs()
           / torch.tanh(small.double()).abs().clamp_min(1e-30)).max().item()
    assert rel <= 2 * torch.finfo(torch.float32).eps


_BF16_TANH_SCRIPT = EVERY_BF16_PRELUDE + """
import normext
x = EVERY_BF16
one = torch.ones((), dtype=torch.bfloat16)
y = normext.functional.dyt(x, one)
ref = torch.tanh(x.double()).bfloat16()
ulp = bf16_step(ref)
err = (y.double() - ref.double()).abs()
special = torch.tensor([float('inf'), float('-inf'), float('nan'), 0.0, -0.0], dtype=torch.bfloat16)
ys, rs = normext.functional.dyt(special, one), torch.tanh(special)
assert torch.equal(ys.isnan(), rs.isnan()) and torch.equal(ys[:2], rs[:2]) and (ys[3:] == 0).all()
print(int((y != ref).sum()), float((err / ulp).max()), x.numel())
"""


@pytest.mark.parametrize("capability", ["default", "avx2", "avx512", "avx512_bf16"])
def test_bf16_forward_tanh_over_every_bf16_value(capability):
    """bf16 DyT's forward uses a cheaper tanh (vtanh_lowp<true>, about 2^-13 relative): over every
    finite bf16 input it stays within one bf16 ulp of tanh correctly rounded, and equal to it for
    all but a few in 10^4 (torch's own bf16 tanh is the correctly rounded one)."""
    mismatches, worst_ulps, count = run_with_cpu_capability(_BF16_TANH_SCRIPT, capability).split()
    assert float(worst_ulps) <= 1.0
    assert int(mismatches) <= 1e-3 * int(count)


def test_special_values():
    x = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan"), 1e30, -1e-30, 20.0, -9.5])
    y = normext.functional.dyt(x, torch.ones(1))
    ref = torch.tanh(x)
    assert torch.equal(torch.isnan(y), torch.isnan(ref))
    ok = ~torch.isnan(ref)
    assert torch.equal(y[ok], ref[ok])


def test_sech2_keeps_precision_where_tanh_saturates():
    # 1 - t*t in fp32 is 0 at |u| >= 9; the kernel's q(2 - q) is not.
    x = torch.tensor([9.0, 10.0, -11.0], requires_grad=True)
    normext.functional.dyt(x, torch.ones(1)).sum().backward()
    ref = 1 / torch.cosh(x.detach().double()) ** 2
    assert ((x.grad.double() - ref).abs() / ref).max() < 1e-5


@pytest.mark.parametrize("channels_last,shape,pshape", [(True, (3, 4, 5), (5,)), (True, (2, 3, 4), (3, 4)),
                                                        (False, (2, 3, 4, 5), (3,)), (False, (2, 3), (3,))])
@pytest.mark.parametrize("with_params", [True, False])
def test_gradcheck(device, channels_last, shape, pshape, with_params):
    f64 = dict(dtype=torch.float64, device=device)
    x = torch.randn(shape, **f64, requires_grad=True)
    alpha = torch.tensor([0.8], **f64, requires_grad=True)
    w = torch.randn(pshape, **f64, requires_grad=True) if with_params else None
    b = torch.randn(pshape, **f64, requires_grad=True) if with_params else None
    fn = lambda *a: normext.functional.dyt(*a, channels_last=channels_last)  # noqa: E731
    inputs = (x, alpha, w, b)
    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


def test_bias_without_weight_2d(device):
    x = torch.randn(3, 4, 5, dtype=torch.float64, device=device, requires_grad=True)
    alpha = torch.tensor([0.3], dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(4, 5, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, a, b: normext.functional.dyt(x, a, None, b), (x, alpha, b))


def _opcheck_args(device, requires_grad):
    x = torch.randn(3, 7, 40, device=device, requires_grad=requires_grad)
    a = torch.tensor([0.5], device=device, requires_grad=requires_grad)
    w = torch.randn(40, device=device, requires_grad=requires_grad)
    b = torch.randn(40, device=device, requires_grad=requires_grad)
    x2 = torch.randn(2, 6, 5, 5, device=device, requires_grad=requires_grad).to(memory_format=torch.channels_last)
    w2 = torch.randn(6, device=device, requires_grad=requires_grad)
    return [(x, a, w, b, True), (x, a, None, None, True), (x2, a, w2, w2.detach().clone(), False),
            (x2.contiguous(), a, w2, None, False)]


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(device, requires_grad):
    for args in _opcheck_args(device, requires_grad):
        torch.library.opcheck(torch.ops.normext.dyt_forward.default, args)
    x = torch.randn(3, 7, 40, device=device)
    for mask in ([True, True, True, True], [False, True, False, True], [True, False, False, False]):
        for w in (torch.randn(40, device=device), None):
            torch.library.opcheck(torch.ops.normext.dyt_backward.default,
                                  (torch.randn_like(x), x, torch.tensor([0.5], device=device), w, True, mask))


def test_compile_fullgraph(device):
    m = normext.DyT(32).to(device)
    with torch.no_grad():
        m.weight.normal_()
        m.bias.normal_()
    x = torch.randn(4, 10, 32, device=device, requires_grad=True)
    eager = m(x)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")(x)
    assert torch.equal(eager, compiled)
    g_e = torch.autograd.grad(eager.sum(), [x, m.alpha])
    g_c = torch.autograd.grad(compiled.sum(), [x, m.alpha])
    for a, b in zip(g_e, g_c):
        assert torch.equal(a, b)


@pytest.mark.parametrize("case", ["rows", "planes"])
def test_determinism_across_threads(device, case, restore_num_threads):
    if case == "rows":
        x, cl, C = torch.randn(4096, 96, device=device), True, 96
    else:
        x, cl, C = torch.randn(2, 16, 64, 64, device=device), False, 16
    alpha = torch.tensor([0.5], device=device)
    w, b = torch.randn(C, device=device), torch.randn(C, device=device)
    go = torch.randn_like(x)
    runs = []
    for nt in ((2, 1, 2) if device == "cpu" else (None, None)):
        if nt:
            torch.set_num_threads(nt)
        runs.append(torch.ops.normext.dyt_backward(go, x, alpha, w, cl, [True] * 4))
    for run in runs[1:]:
        for a, bb in zip(runs[0], run):
            assert torch.equal(a, bb)


def test_zero_size(device):
    for shape, cl, C in (((0, 8), True, 8), ((2, 0, 3), False, 0), ((0, 4, 3, 3), False, 4)):
        x = torch.randn(shape, device=device, requires_grad=True)
        a = torch.tensor([0.5], device=device, requires_grad=True)
        w = torch.randn(C, device=device, requires_grad=True)
        y = normext.functional.dyt(x, a, w, w.detach().clone().requires_grad_(), cl)
        assert y.shape == x.shape
        y.sum().backward()
        assert x.grad.shape == x.shape and a.grad.item() == 0 and torch.all(w.grad == 0)


def test_errors(device):
    """Bad arguments: the op and its fake kernel (torch.compile) raise the same error."""
    x = torch.randn(2, 3, 4, device=device)
    a = torch.ones(1, device=device)
    ones = lambda *s, **kw: torch.ones(*s, device=device, **kw)  # noqa: E731
    cases = [
        (x, ones(2), None, None, True),
        (x, a, ones(3), None, True),
        (x, a, ones(4), None, False),
        (x, a, ones(4), ones(3, 4), True),
        (torch.tensor(1.0, device=device), a, None, None, True),
        (ones(3), a, None, None, False),
        (x, a.double(), None, None, True),
        (x.double(), a, None, None, True),
        (x.bfloat16(), a, ones(4, dtype=torch.float16), None, True),
        (ones(2, 3, dtype=torch.int64), a, None, None, True),
    ]
    for args in cases:
        with pytest.raises((RuntimeError, NotImplementedError)) as real:
            normext.functional.dyt(*args)
        with pytest.raises(type(real.value)) as fake:
            normext._meta._dyt_forward_fake(*args)
        assert str(fake.value) == str(real.value)
    with pytest.raises(RuntimeError, match="exactly one element"):
        normext.functional.dyt(x, torch.ones(2, device=device))


def test_module_matches_paper_module(device):
    for ns, cl, shape in ((64, True, (2, 5, 64)), (12, False, (2, 12, 4, 4)), ((3, 8), True, (2, 3, 8))):
        paper = DynamicTanh(ns, cl, alpha_init_value=0.8).to(device)
        with torch.no_grad():
            paper.weight.normal_()
            paper.bias.normal_()
        ours = normext.DyT(ns, channels_last=cl, alpha_init_value=0.8).to(device)
        assert list(ours.state_dict()) == list(paper.state_dict()) == ["alpha", "weight", "bias"]
        ours.load_state_dict(paper.state_dict())
        assert repr(ours) == repr(paper).replace("DynamicTanh", "DyT") or "alpha_init_value=0.8" in repr(ours)
        x = torch.randn(shape, device=device)
        y_o, y_p = ours(x), paper(x)
        assert max_abs_err(y_o, y_p) <= 4 * torch.finfo(torch.float32).eps * y_p.abs().max().item()
        paper2 = DynamicTanh(ns, cl, alpha_init_value=0.8).to(device)
        paper2.load_state_dict(ours.state_dict())


def test_module_defaults_and_factory_kwargs():
    m = normext.DyT(16)
    assert m.channels_last is True and m.alpha_init_value == 0.5
    assert m.alpha.shape == (1,) and m.alpha.item() == 0.5
    assert torch.equal(m.weight, torch.ones(16)) and torch.equal(m.bias, torch.zeros(16))
    assert repr(m) == "DyT(normalized_shape=16, alpha_init_value=0.5, channels_last=True)"
    m = normext.DyT(8, dtype=torch.bfloat16)
    assert m.weight.dtype == m.alpha.dtype == torch.bfloat16
    m2 = copy.deepcopy(m)
    with torch.no_grad():
        m2.alpha.fill_(3)
    m2.reset_parameters()
    assert m2.alpha.item() == 0.5
