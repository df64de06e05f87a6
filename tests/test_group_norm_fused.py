"""Tests of the fused GroupNorm variants (issue 5): GroupNorm + activation, add + GroupNorm,
in-place inference and convert(fuse=True).

Reference: torch's unfused act(F.group_norm(...)) in float64; normext's error must be no worse
than 2x torch's own error at the test dtype, plus a floor of one or two ulps.
"""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import normext
import normext.functional as NF
from conftest import (DTYPES, EVERY_BF16_PRELUDE, assert_close_to_ref, assert_same_error, cuda_sync,
                      dtype_id, make_input, make_param, run_with_cpu_capability, to_layout)

ACTIVATIONS = {
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_tanh": lambda z: F.gelu(z, approximate="tanh"),
    "relu": F.relu,
}


def torch_fused(x, g, w, b, act, eps=1e-5):
    return ACTIVATIONS[act](F.group_norm(x, g, w, b, eps))


def ours_fused(x, g, w, b, act, eps=1e-5):
    return NF.group_norm(x, g, w, b, eps, activation=act)


def _fwd_bwd(fn, x, g, w, b, act, go, cast=None):
    xl = (x.detach().to(cast) if cast else x.detach().clone(memory_format=torch.preserve_format)).requires_grad_()
    wl = None if w is None else (w.detach().to(cast) if cast else w.detach().clone()).requires_grad_()
    bl = None if b is None else (b.detach().to(cast) if cast else b.detach().clone()).requires_grad_()
    y = fn(xl, g, wl, bl, act)
    y.backward(go.to(y.dtype))
    return [y, xl.grad] + [None if t is None else t.grad for t in (wl, bl)]


# (id, shape, groups): many groups (one task per group), few groups (split reductions), odd sizes
SHAPES = [
    ("nchw", (2, 32, 7, 9), 8),
    ("few_groups", (1, 4, 64, 80), 1),
    ("odd", (3, 15, 5, 3), 5),
    ("ncl", (2, 6, 11), 3),
    ("cl_big_c", (2, 96, 9, 9), 32),
]


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("act", list(ACTIVATIONS))
@pytest.mark.parametrize("sid,shape,g", SHAPES, ids=[s[0] for s in SHAPES])
def test_parity_with_torch(device, sid, shape, g, act, dtype, layout):
    if layout == "channels_last" and len(shape) != 4:
        pytest.skip("4D only")
    if dtype in (torch.bfloat16, torch.float16) and sid == "few_groups" and act != "silu":
        pytest.skip("covered by silu")
    C = shape[1]
    x = make_input(shape, dtype, device, layout, scale=1.5)
    w = make_param(C, dtype, device)
    b = make_param(C, dtype, device, kind="bias")
    go = to_layout(torch.randn(shape, dtype=torch.float64).to(dtype).to(device), layout)
    ref = _fwd_bwd(torch_fused, x, g, w, b, act, go, cast=torch.float64)
    tor = _fwd_bwd(torch_fused, x, g, w, b, act, go)
    ours = _fwd_bwd(ours_fused, x, g, w, b, act, go)
    cuda_sync(device)
    assert ours[0].dtype == dtype
    if layout == "channels_last":
        assert ours[0].is_contiguous(memory_format=torch.channels_last)
    for name, o, t, r in zip(("y", "dx", "dweight", "dbias"), ours, tor, ref):
        assert o.dtype == t.dtype, name
        assert_close_to_ref(o, t, r, dtype, f"{act} {name}", floor_ulps=1.0 if name == "y" else 2.0)


@pytest.mark.parametrize("act", list(ACTIVATIONS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=dtype_id)
def test_low_precision_input_float32_params(device, act, dtype):
    shape, g = (2, 16, 6, 6), 4
    x = make_input(shape, dtype, device)
    w, b = make_param(16, torch.float32, device), make_param(16, torch.float32, device, kind="bias")
    go = torch.randn(shape, device=device).to(dtype)
    ref = _fwd_bwd(torch_fused, x, g, w, b, act, go, cast=torch.float64)
    ours = _fwd_bwd(ours_fused, x, g, w, b, act, go)
    assert ours[0].dtype == dtype and ours[2].dtype == ours[3].dtype == torch.float32
    # CPU: fp32 math, one rounding at the end. CUDA: the backward's first pass writes the
    # activation's gradient dy * act'(z) in the input's dtype (as torch's unfused activation
    # backward does) before the GroupNorm backward sums it: dweight / dbias carry that rounding.
    param_tol = 1e-5 * 2 ** 10 if device == "cpu" else 2.0
    for name, o, r, tol in zip(("y", "dx", "dw", "db"), ours, ref,
                               (1, 2, param_tol, param_tol)):
        err = (o.double() - r).abs().max().item()
        assert err <= tol * torch.finfo(dtype).eps * max(1.0, r.abs().max().item()), (name, err)


@pytest.mark.parametrize("act", list(ACTIVATIONS))
def test_activation_accuracy_vs_torch(act):
    """The fp32 activation math inside the kernel, over a wide range of z: within 2x torch's error."""
    z = torch.linspace(-30, 30, 600_001).reshape(1, 1, -1)
    # GroupNorm with one channel per group and identity statistics: z = x * rstd, rstd ~ 1 - 1e-9
    x = torch.cat([z, -z], 1) * 1.0
    ref_in = F.group_norm(x.double(), 2, eps=0.0)
    ours = NF.group_norm(x, 2, eps=0.0, activation=act)
    ref = ACTIVATIONS[act](ref_in)
    torch_err = (ACTIVATIONS[act](ref_in.float()).double() - ref).abs().max().item()
    err = (ours.double() - ref).abs().max().item()
    assert err <= 2 * torch_err + 1e-6, (err, torch_err)


@pytest.mark.parametrize("act", list(ACTIVATIONS))
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_gradcheck_gradgradcheck(device, act, layout):
    x = make_input((2, 4, 2, 3), torch.float64, device, layout).requires_grad_()
    w = make_param(4, torch.float64, device).requires_grad_()
    b = make_param(4, torch.float64, device, kind="bias").requires_grad_()
    fn = lambda x, w, b: NF.group_norm(x, 2, w, b, activation=act)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, b))
    # relu'' is 0 almost everywhere (its own test below); one channels-last case is enough
    if act != "relu" and (layout == "contiguous" or act == "silu"):
        assert torch.autograd.gradgradcheck(fn, (x, w, b))


def test_gradgradcheck_relu_away_from_kink(device):
    x = make_input((2, 4, 5), torch.float64, device).requires_grad_()
    w = make_param(4, torch.float64, device).requires_grad_()
    b = torch.full((4,), 3.0, dtype=torch.float64, device=device, requires_grad=True)  # z > 0 mostly
    assert torch.autograd.gradgradcheck(lambda x, w, b: NF.group_norm(x, 2, w, b, activation="relu"), (x, w, b))


def test_backward_op_with_activation_is_differentiable(device):
    x = make_input((2, 4, 5), torch.float64, device).requires_grad_()
    w = make_param(4, torch.float64, device).requires_grad_()
    b = make_param(4, torch.float64, device, kind="bias").requires_grad_()
    go = torch.randn(2, 4, 5, dtype=torch.float64, device=device).requires_grad_()
    _, mean, rstd = torch.ops.normext.group_norm_forward(x, w, b, 2, 1e-5, 1)

    def fn(go, x, w, b):
        return torch.ops.normext.group_norm_backward(go, x, mean, rstd, w, 2, [True, True, True], b, 1)

    assert torch.autograd.gradcheck(fn, (go, x, w, b))


@pytest.mark.parametrize("act", [1, 2, 3, 4])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_opcheck(device, act, layout):
    if layout == "channels_last" and act != 1:
        pytest.skip("one channels-last activation is enough")
    x = make_input((2, 8, 5, 5), torch.float32, device, layout, requires_grad=True)
    w = make_param(8, device=device, requires_grad=True)
    b = make_param(8, device=device, requires_grad=True, kind="bias")
    torch.library.opcheck(torch.ops.normext.group_norm_forward.default, (x, w, b, 4, 1e-5, act))
    _, mean, rstd = torch.ops.normext.group_norm_forward(x, w, b, 4, 1e-5, act)
    go = torch.randn_like(x)
    for mask in ([True, True, True], [True, False, True]):
        torch.library.opcheck(torch.ops.normext.group_norm_backward.default,
                              (go, x.detach(), mean, rstd, w.detach(), 4, mask, b.detach(), act))
    r = torch.randn_like(x).requires_grad_()
    torch.library.opcheck(torch.ops.normext.add_group_norm_forward.default, (x, r, w, b, 4, 1e-5, act))
    with torch.no_grad():
        torch.library.opcheck(torch.ops.normext.group_norm_inplace.default,
                              (x.detach().clone(), w.detach(), b.detach(), 4, 1e-5, act))


def test_saved_tensors_bytes():
    """Fused GN + SiLU saves only the input, the parameters and the (N, G) statistics."""

    def saved_bytes(fn):
        total = []

        def pack(t):
            total.append(t.numel() * t.element_size())
            return t

        x = torch.randn(2, 64, 32, 32, requires_grad=True)
        w = torch.randn(64, requires_grad=True)
        b = torch.randn(64, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(x, w, b)
        return sum(total)

    ours = saved_bytes(lambda x, w, b: NF.group_norm(x, 32, w, b, activation="silu"))
    theirs = saved_bytes(lambda x, w, b: F.silu(F.group_norm(x, 32, w, b)))
    assert ours <= 0.55 * theirs, (ours, theirs)
    # and no more than the plain GroupNorm + bias
    plain = saved_bytes(lambda x, w, b: NF.group_norm(x, 32, w, b))
    assert ours <= plain + 64 * 4


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("act", [None, "silu"])
def test_compile_fullgraph(layout, act):
    model = nn.Sequential(nn.Conv2d(4, 16, 3, padding=1),
                          normext.GroupNorm(4, 16, activation=act), nn.Conv2d(16, 4, 1))
    x = make_input((2, 4, 8, 8), layout=layout, requires_grad=True)
    eager = model(x)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")(x)
    torch.testing.assert_close(compiled, eager)
    ge = torch.autograd.grad(eager.sum(), [x] + list(model.parameters()))
    gc = torch.autograd.grad(compiled.sum(), [x] + list(model.parameters()))
    for a, b in zip(ge, gc):
        torch.testing.assert_close(a, b)

    def fn(x, r, w, b):
        out, s = NF.add_group_norm(x, r, 4, w, b, activation="gelu")
        return out * 2 + s

    w, b = make_param(16), make_param(16, kind="bias")
    x16, r16 = torch.randn(2, 16, 4, 4), torch.randn(2, 16, 4, 4)
    torch.testing.assert_close(torch.compile(fn, fullgraph=True, backend="aot_eager")(x16, r16, w, b),
                               fn(x16, r16, w, b))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_determinism_across_threads(device, layout, restore_num_threads):
    for shape, g in (((1, 64, 64, 64), 32), ((1, 4, 128, 128), 1)):
        x = make_input(shape, torch.float32, device, layout)
        w, b = make_param(shape[1], device=device), make_param(shape[1], device=device, kind="bias")
        go = make_input(shape, torch.float32, device, layout)
        runs = []
        for nt in ((2, 1) if device == "cpu" else (None, None)):
            if nt:
                torch.set_num_threads(nt)
            runs.append(_fwd_bwd(ours_fused, x, g, w, b, "silu", go))
        for a, bb in zip(*runs):
            assert torch.equal(a, bb)


# ---- add_group_norm -------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("act", [None, "silu"])
@pytest.mark.parametrize("shape,g", [((2, 32, 7, 9), 8), ((1, 4, 64, 64), 1)])
def test_add_group_norm_parity(device, layout, dtype, act, shape, g):
    x = make_input(shape, dtype, device, layout)
    r = make_input(shape, dtype, device, layout)
    w, b = make_param(shape[1], dtype, device), make_param(shape[1], dtype, device, kind="bias")
    go_out = to_layout(torch.randn(shape, device=device).to(dtype), layout)
    go_sum = to_layout(torch.randn(shape, device=device).to(dtype), layout)

    def run(fn, cast=None):
        leaves = [(t.detach().to(cast) if cast else t.detach().clone(memory_format=torch.preserve_format)).requires_grad_()
                  for t in (x, r, w, b)]
        out, s = fn(*leaves)
        torch.autograd.backward([out, s], [go_out.to(out.dtype), go_sum.to(s.dtype)])
        return [out, s] + [t.grad for t in leaves]

    def unfused(x, r, w, b):
        s = x + r
        out = F.group_norm(s, g, w, b)
        return (ACTIVATIONS[act](out) if act else out), s

    ours = run(lambda x, r, w, b: NF.add_group_norm(x, r, g, w, b, activation=act))
    tor = run(unfused)
    ref = run(unfused, torch.float64)
    assert torch.equal(ours[1], tor[1]), "summed is input + residual, rounded once"
    if layout == "channels_last":
        assert ours[0].is_contiguous(memory_format=torch.channels_last)
        assert ours[1].is_contiguous(memory_format=torch.channels_last)
    for name, o, t, rr in zip(("out", "summed", "dx", "dres", "dw", "db"), ours, tor, ref):
        assert_close_to_ref(o, t, rr, dtype, name, floor_ulps=2.0)


def test_add_group_norm_gradcheck(device):
    f64 = dict(dtype=torch.float64, device=device, requires_grad=True)
    x, r = torch.randn(2, 6, 4, **f64), torch.randn(2, 6, 4, **f64)
    w, b = torch.randn(6, **f64), torch.randn(6, **f64)
    fn = lambda *a: NF.add_group_norm(*a[:2], 3, *a[2:], activation="silu")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, r, w, b))
    assert torch.autograd.gradgradcheck(fn, (x, r, w, b))
    # only one output used
    assert torch.autograd.gradcheck(lambda *a: fn(*a)[1], (x, r, w, b))
    assert torch.autograd.gradcheck(lambda *a: fn(*a)[0], (x, r, w, b))


def test_add_group_norm_errors(device):
    x = torch.randn(2, 6, 4, device=device)
    with pytest.raises(RuntimeError, match="residual of shape"):
        NF.add_group_norm(x, torch.randn(2, 6, 5, device=device), 3)
    with pytest.raises(RuntimeError, match="residual of dtype"):
        NF.add_group_norm(x, x.double(), 3)
    assert_same_error(lambda: NF.add_group_norm(x, x, 4), lambda: F.group_norm(x + x, 4))
    with pytest.raises(ValueError, match="activation must be one of"):
        NF.add_group_norm(x, x, 3, activation="tanh")


# ---- in-place ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("act", [None, "silu", "gelu"])
def test_inplace_matches_out_of_place(device, layout, act):
    x = make_input((2, 16, 9, 10), torch.float32, device, layout)
    w, b = make_param(16, device=device), make_param(16, device=device, kind="bias")
    expected = NF.group_norm(x, 4, w, b, activation=act)
    ptr, strides = x.data_ptr(), x.stride()
    with torch.no_grad():
        out = NF.group_norm(x, 4, w, b, activation=act, inplace=True)
    assert out is x and x.data_ptr() == ptr and x.stride() == strides
    assert torch.equal(x, expected)


def test_inplace_with_trainable_params_under_no_grad_and_inference_mode():
    m = normext.GroupNorm(4, 16, activation="silu", inplace=True)
    x = torch.randn(2, 16, 5, 5)
    expected = F.silu(F.group_norm(x, 4, m.weight, m.bias))
    with torch.inference_mode():
        y = m(x.clone())
    torch.testing.assert_close(y, expected)
    with torch.no_grad():
        xc = x.clone()
        assert m(xc) is xc
    torch.testing.assert_close(xc, expected)


def test_inplace_errors_when_autograd_needs_the_input():
    x = torch.randn(2, 8, 4, 4, requires_grad=True)
    with pytest.raises(RuntimeError, match="inplace=True"):
        NF.group_norm(x, 4, inplace=True)
    m = normext.GroupNorm(4, 8, inplace=True)  # parameters require grad
    with pytest.raises(RuntimeError, match="autograd needs it"):
        m(torch.randn(2, 8, 4, 4))


# ---- module and convert(fuse=True) ------------------------------------------------------------------


def test_module_repr_state_dict_and_options():
    ref = nn.GroupNorm(4, 16)
    m = normext.GroupNorm(4, 16)
    assert repr(m) == repr(ref)
    m = normext.GroupNorm(4, 16, activation="silu")
    assert repr(m) == repr(ref)[:-1] + ", activation='silu')"
    assert list(m.state_dict()) == list(ref.state_dict())
    m.load_state_dict(ref.state_dict())
    assert isinstance(m, nn.GroupNorm)
    with pytest.raises(ValueError, match="activation must be one of"):
        normext.GroupNorm(4, 16, activation="swish")
    m = normext.GroupNorm(4, 16, bias=False, activation="gelu_tanh", inplace=True)
    assert m.bias is None and "inplace=True" in repr(m)
    m2 = copy.deepcopy(m)
    assert m2.activation == "gelu_tanh" and m2.inplace


def _make_models():
    seq = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.SiLU(),
                        nn.Conv2d(16, 16, 1), nn.GroupNorm(8, 16), nn.GELU(approximate="tanh"),
                        nn.GroupNorm(2, 16), nn.ReLU(inplace=True), nn.GroupNorm(2, 16), nn.Tanh())
    return seq


def test_convert_fuse_sequential():
    torch.manual_seed(0)
    model = _make_models()
    keys = list(model.state_dict())
    x = torch.randn(2, 3, 8, 8)
    expected = model(x)
    params = list(model.parameters())
    normext.convert(model, fuse=True)
    assert list(model.state_dict()) == keys
    assert all(a is b for a, b in zip(model.parameters(), params))
    assert [type(m).__name__ for m in model] == ["Conv2d", "GroupNorm", "Identity", "Conv2d", "GroupNorm",
                                                 "Identity", "GroupNorm", "Identity", "GroupNorm", "Tanh"]
    assert [m.activation for m in model if isinstance(m, normext.GroupNorm)] == ["silu", "gelu_tanh", "relu", None]
    torch.testing.assert_close(model(x), expected)


def test_convert_fuse_is_conservative():
    class MySiLU(nn.SiLU):
        pass

    seen = []
    hooked = nn.GroupNorm(2, 8)
    hooked.register_forward_hook(lambda m, i, o: seen.append(o))
    model = nn.Sequential(nn.GroupNorm(2, 8), MySiLU(), hooked, nn.SiLU(), nn.GroupNorm(2, 8), nn.Sigmoid())
    normext.convert(model, fuse=True)
    assert all(getattr(m, "activation", None) is None for m in model)
    assert not any(isinstance(m, nn.Identity) for m in model)
    # fuse=False never fuses
    model = nn.Sequential(nn.GroupNorm(2, 8), nn.SiLU())
    normext.convert(model)
    assert type(model[1]) is nn.SiLU and model[0].activation is None


class Block(nn.Module):
    """Diffusers-style: one nn.SiLU instance used after two GroupNorms, and a GN output reused."""

    def __init__(self):
        super().__init__()
        self.norm1 = nn.GroupNorm(4, 16)
        self.conv1 = nn.Conv2d(16, 16, 3, padding=1)
        self.norm2 = nn.GroupNorm(4, 16)
        self.act = nn.SiLU()
        self.norm3 = nn.GroupNorm(4, 16)
        self.act3 = nn.SiLU()

    def forward(self, x):
        h = self.conv1(self.act(self.norm1(x)))
        h = self.act(self.norm2(h))
        n3 = self.norm3(h)
        return self.act3(n3) + n3  # norm3's output is used twice: not fusable


def test_convert_fuse_traced_forward():
    torch.manual_seed(0)
    model = Block()
    x = torch.randn(2, 16, 6, 6)
    expected = model(x)
    keys = list(model.state_dict())
    normext.convert(model, fuse=True)
    assert model.norm1.activation == model.norm2.activation == "silu"
    assert type(model.act) is nn.Identity
    assert model.norm3.activation is None and type(model.act3) is nn.SiLU
    assert list(model.state_dict()) == keys
    torch.testing.assert_close(model(x), expected)


def test_convert_fuse_keeps_an_activation_whose_norm_is_not_fused():
    """n feeds two SiLUs, one of which is also fed by p, whose output is used elsewhere: neither
    norm can fuse, so both activations must stay (dropping one would change the output)."""
    class Tangled(nn.Module):
        def __init__(self):
            super().__init__()
            self.n = nn.GroupNorm(2, 4)
            self.p = nn.GroupNorm(2, 4)
            self.b = nn.SiLU()
            self.a = nn.SiLU()

        def forward(self, x):
            return (self.b(self.n(x)) + self.a(self.n(x * 2)) + self.a(self.p(x * 3))
                    + self.p(x * 4))

    torch.manual_seed(0)
    model = Tangled()
    x = torch.randn(2, 4, 3, 3)
    expected = model(x)
    normext.convert(model, fuse=True)
    assert model.n.activation is None and model.p.activation is None
    assert type(model.a) is nn.SiLU and type(model.b) is nn.SiLU
    torch.testing.assert_close(model(x), expected)


def test_convert_fuse_does_not_run_the_models_side_effects():
    """fuse=True traces forward() on a copy: buffers updated in place by forward (a step counter,
    a data-dependent initialization) and Python attributes are left as they were."""
    class Counter(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("steps", torch.zeros((), dtype=torch.long))
            self.calls = 0
            self.norm = nn.GroupNorm(2, 4)
            self.act = nn.SiLU()

        def forward(self, x):
            self.steps += 1
            self.calls += 1
            return self.act(self.norm(x))

    model = Counter()
    normext.convert(model, fuse=True)
    assert model.steps.item() == 0 and model.calls == 0
    assert model.norm.activation == "silu" and type(model.act) is nn.Identity
    x = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(model(x), F.silu(F.group_norm(x, 2, model.norm.weight, model.norm.bias)))
    assert model.steps.item() == 1 and model.calls == 1


def test_convert_fuse_untraceable_model_keeps_sequential_fusions():
    class Dynamic(nn.Module):
        def __init__(self):
            super().__init__()
            self.seq = nn.Sequential(nn.GroupNorm(2, 8), nn.SiLU())
            self.norm = nn.GroupNorm(2, 8)
            self.act = nn.SiLU()

        def forward(self, x):
            if x.sum() > 0:  # data-dependent: fx cannot trace it
                return self.act(self.norm(self.seq(x)))
            return self.seq(x)

    model = Dynamic()
    x = torch.randn(2, 8, 3, 3).abs()
    expected = model(x)
    normext.convert(model, fuse=True)
    assert model.seq[0].activation == "silu" and type(model.act) is nn.SiLU
    torch.testing.assert_close(model(x), expected)


# ---- every per-ISA table of leaf loops (the transcendentals differ per ISA) ---------------------------

ISA_SCRIPT = r"""
import torch, normext, torch.nn.functional as F
torch.manual_seed(0)
acts = {"silu": F.silu, "gelu": F.gelu, "gelu_tanh": lambda z: F.gelu(z, approximate="tanh"), "relu": F.relu}
for cl in (False, True):
    x = torch.randn(2, 48, 7, 9) * 3
    x = x.to(memory_format=torch.channels_last) if cl else x
    w, b = torch.randn(48), torch.randn(48)
    for name, fn in acts.items():
        xg = x.detach().requires_grad_()
        y = normext.functional.group_norm(xg, 8, w, b, activation=name)
        (dx,) = torch.autograd.grad(y, xg, torch.ones_like(y))
        xd = x.double().requires_grad_()
        ref = fn(F.group_norm(xd, 8, w.double(), b.double()))
        (dref,) = torch.autograd.grad(ref, xd, torch.ones_like(ref))
        print("gn", name, int(cl), (y.double() - ref).abs().max().item(), (dx.double() - dref).abs().max().item())
x = torch.cat([torch.linspace(-30, 30, 9001), torch.tensor([float("inf"), -float("inf"), 0.0])]).reshape(-1, 1)
x = x.repeat(1, 33)
a = torch.tensor([0.7], requires_grad=True)
xg = x.detach().requires_grad_()
y = normext.functional.dyt(xg, a)
dx, da = torch.autograd.grad(y, (xg, a), torch.ones_like(y))
ref = torch.tanh(0.7 * x.double())
sech2 = 1 / torch.cosh(0.7 * x.double()) ** 2
print("dyt", "tanh", 0, (y.double() - ref).abs().max().item(),
      ((dx.double() - 0.7 * sech2).abs() / sech2.clamp_min(1e-30)).nan_to_num(0).max().item())
"""


@pytest.mark.parametrize("capability", ["default", "avx2", "avx512", "avx512_bf16"])
def test_every_cpu_table(capability):
    stdout = run_with_cpu_capability(ISA_SCRIPT, capability)
    rows = [line.split() for line in stdout.splitlines() if line.startswith(("gn", "dyt"))]
    assert len(rows) == 9
    for kind, name, cl, err, grad_err in rows:
        # fp32: a few ulps of outputs of magnitude ~10 (GN) or 1 (DyT); dyt's dx relative to sech^2
        assert float(err) < (2e-5 if kind == "gn" else 2.5e-7), (capability, kind, name, cl, err)
        assert float(grad_err) < (2e-5 if kind == "gn" else 1e-5), (capability, kind, name, cl, grad_err)


def test_convert_fuse_skips_pairs_on_a_mode_dependent_path():
    class ModeDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.GroupNorm(2, 8)
            self.act = nn.SiLU()
            self.other = nn.GroupNorm(2, 8)

        def forward(self, x):
            if self.training:
                return self.act(self.norm(x))
            n = self.other(x)
            return self.act(n) + n  # eval: act is applied to a non-fusable output too

    model = ModeDependent()
    normext.convert(model, fuse=True)
    assert type(model.act) is nn.SiLU and model.norm.activation is None
    assert model.training


_BF16_SILU_SCRIPT = EVERY_BF16_PRELUDE + """
import normext, torch.nn.functional as F
v = EVERY_BF16[EVERY_BF16.float().abs() < 88].float()  # beyond, torch's fp32 exp(-z) overflows too
C = v.numel()
ref = F.silu(v.double()).bfloat16()
s = torch.sigmoid(v.double())
for fmt in (torch.contiguous_format, torch.channels_last):
    # weight 0, bias v: z = v exactly, whatever the normalized input (here +-1 per channel)
    x = torch.tensor([1.0, -1.0], dtype=torch.bfloat16).repeat(1, C, 1).view(1, C, 1, 2)
    b = v.clone().requires_grad_()
    out = normext.functional.group_norm(x.contiguous(memory_format=fmt), C, torch.zeros(C), b,
                                        activation="silu")
    y = out.detach()[0, :, 0, 0]
    ulps = (y.double() - ref.double()).abs() / bf16_step(ref)
    # the backward's silu'(z): dbias = sum of dy * silu'(z) over the channel's 2 values
    out.backward(torch.ones_like(out))
    grad_err = (b.grad.double() - 2 * s * (1 + v.double() * (1 - s))).abs().max()
    print(int((y != ref).sum()), float(ulps.max()), C, float(grad_err))
"""


@pytest.mark.parametrize("capability", ["default", "avx2", "avx512", "avx512_bf16"])
def test_bf16_silu_over_every_bf16_value(capability):
    """bf16 outputs of the fused SiLU use a cheaper exp and (AVX-512) a reciprocal estimate, about
    2^-13 relative: over every bf16 z (|z| < 88) within one bf16 ulp of silu(z) correctly
    rounded, and equal to it for all but a few in 10^4, NCHW and channels-last. The backward's
    silu'(z) (peak 1.1) is within 1e-4 of it per value: torch's own bf16 backward rounds it to
    bf16 (2e-3)."""
    for line in run_with_cpu_capability(_BF16_SILU_SCRIPT, capability).splitlines():
        mismatches, worst_ulps, count, grad_err = line.split()
        assert float(worst_ulps) <= 1.0
        assert int(mismatches) <= 1e-3 * int(count)
        assert float(grad_err) <= 2 * 1.5e-4  # two values per channel
