"""Tests of normext.convert(): swaps every torch.nn.GroupNorm for normext.GroupNorm in place."""

import copy

import pytest
import torch
from torch import nn

import normext
from conftest import OpRecorder, cuda_sync, takes_bias_argument


def randomize_norm_params(model, seed=0):
    """Random GroupNorm affine params, so a converted module that ignores them fails."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.GroupNorm) and m.affine:
                m.weight.copy_(1 + 0.5 * torch.randn(m.weight.shape, generator=gen, dtype=torch.float64))
                if m.bias is not None:
                    m.bias.copy_(0.5 * torch.randn(m.bias.shape, generator=gen, dtype=torch.float64))
    return model


def _group_norm_without_bias(num_groups, num_channels):
    """nn.GroupNorm(..., bias=False); torch before 2.14 has no such argument: drop the bias as it
    does."""
    if takes_bias_argument(nn.GroupNorm):
        return nn.GroupNorm(num_groups, num_channels, bias=False)
    gn = nn.GroupNorm(num_groups, num_channels)
    gn.register_parameter("bias", None)
    return gn


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.ReLU())
        self.body = nn.Sequential(
            nn.Sequential(nn.Conv2d(16, 24, 3, padding=1), nn.GroupNorm(8, 24, affine=False), nn.SiLU()),
            nn.ModuleList([nn.Conv2d(24, 24, 1), _group_norm_without_bias(3, 24)]),
            nn.ModuleDict({"conv": nn.Conv2d(24, 12, 3, padding=1), "norm": nn.GroupNorm(1, 12, eps=1e-3)}),
        )
        self.gn_root = nn.GroupNorm(12, 12)
        self.head = nn.Conv2d(12, 5, 3)

    def forward(self, x):
        x = self.stem(x)
        x = self.body[0](x)
        for m in self.body[1]:
            x = m(x)
        x = self.body[2]["norm"](self.body[2]["conv"](x))
        x = self.gn_root(x)
        # NB: no global average pooling right after a GroupNorm: mean(GN(x)) == bias whatever the stats,
        # which would hide a wrong kernel (and zero the gradients flowing back through it).
        return self.head(x)


class ResBlock(nn.Module):
    """A diffusion-UNet-like residual block: GN, SiLU, conv, GN, SiLU, conv, plus a skip."""

    def __init__(self, cin, cout, groups=32):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=1e-6)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, cout, eps=1e-6)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.act = nn.SiLU()
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        h = self.conv1(self.act(self.norm1(x)))
        h = self.conv2(self.act(self.norm2(h)))
        return self.skip(x) + h


class DetectionHead(nn.Module):
    """FCOS/RetinaNet-style head: towers of conv + GN(32, 256) + ReLU for cls and box."""

    def __init__(self, channels=256, depth=2, num_classes=4):
        super().__init__()

        def tower():
            layers = []
            for _ in range(depth):
                layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(32, channels), nn.ReLU()]
            return nn.Sequential(*layers)

        self.cls_tower = tower()
        self.box_tower = tower()
        self.cls_logits = nn.Conv2d(channels, num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(channels, 4, 3, padding=1)

    def forward(self, x):
        return self.cls_logits(self.cls_tower(x)), self.bbox_pred(self.box_tower(x))


class MyGroupNorm(nn.GroupNorm):
    """A user subclass: convert() only replaces modules whose type is exactly nn.GroupNorm."""


def torch_group_norms(model):
    return [(n, m) for n, m in model.named_modules() if type(m) is nn.GroupNorm]


def _outputs_and_grads(model, x, seed=0):
    x = x.detach().clone(memory_format=torch.preserve_format).requires_grad_(True)
    out = model(x)
    outs = out if isinstance(out, tuple) else (out,)
    gen = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype).to(o.device)).sum() for o in outs)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    return [o.detach() for o in outs], x.grad.detach(), grads


def check_convert_matches(model, x, tol):
    """Converts ``model`` and checks types, parameter identity, mode, outputs and gradients."""
    reference = copy.deepcopy(model)
    norms_before = dict(torch_group_norms(model))
    assert norms_before, "test model has no GroupNorm"
    params_before = {n: p for n, p in model.named_parameters()}
    modes_before = {n: m.training for n, m in model.named_modules()}
    keys_before = list(model.state_dict().keys())

    converted = normext.convert(model)
    assert converted is model
    assert torch_group_norms(model) == [], "some torch.nn.GroupNorm left unconverted"
    for name, old in norms_before.items():
        new = model.get_submodule(name)
        assert type(new) is normext.GroupNorm, name
        assert isinstance(new, nn.GroupNorm)
        assert repr(new) == repr(old)
        assert (new.num_groups, new.num_channels, new.eps, new.affine) == (old.num_groups, old.num_channels,
                                                                           old.eps, old.affine)
        assert new.training == old.training, name
        if old.weight is not None:
            assert new.weight is old.weight, f"{name}.weight is not the same Parameter object"
        else:
            assert new.weight is None
        if old.bias is not None:
            assert new.bias is old.bias, f"{name}.bias is not the same Parameter object"
        else:
            assert new.bias is None
    params_after = {n: p for n, p in model.named_parameters()}
    assert params_after.keys() == params_before.keys()
    for n in params_before:
        assert params_after[n] is params_before[n], n
    assert {n: m.training for n, m in model.named_modules()} == modes_before
    assert list(model.state_dict().keys()) == keys_before

    # The converted model really runs normext's kernels.
    with OpRecorder() as rec:
        model(x)
    assert any(o.startswith("normext.group_norm_forward") for o in rec.ops), rec.ops
    assert not any("native_group_norm" in o for o in rec.ops), rec.ops

    model.zero_grad(set_to_none=True)
    outs_o, dx_o, grads_o = _outputs_and_grads(model, x)
    outs_r, dx_r, grads_r = _outputs_and_grads(reference, x)
    cuda_sync(x.device.type)
    for o, r in zip(outs_o, outs_r):
        assert o.dtype == r.dtype and o.shape == r.shape
        assert_close_scaled(o, r, tol, "output")
    assert_close_scaled(dx_o, dx_r, tol, "grad input")
    assert grads_o.keys() == grads_r.keys()
    for n in grads_o:
        assert_close_scaled(grads_o[n], grads_r[n], tol, f"grad of {n}")
    return model


def assert_close_scaled(a, r, tol, what):
    """max |a - r| <= tol * max(1, max |r|): tight relative to the tensor's scale (sums over many terms in a
    different order differ by a few ulps of the largest value, a wrong kernel by O(1))."""
    assert a.shape == r.shape and a.dtype == r.dtype, what
    scale = max(1.0, r.abs().max().item())
    err = (a.double() - r.double()).abs().max().item()
    assert err <= tol * scale, f"{what}: max abs err {err:.3e} > {tol:.1e} * {scale:.3e}"


TOL = {torch.float32: 2e-5, torch.float64: 1e-11}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("mode", ["train", "eval", "mixed"])
def test_convert_small_cnn(device, dtype, mode):
    torch.manual_seed(0)
    model = randomize_norm_params(SmallCNN()).to(device=device, dtype=dtype)
    if mode == "eval":
        model.eval()
    elif mode == "mixed":
        model.stem.eval()
        model.body[1][1].eval()
    x = torch.randn(2, 3, 10, 9, device=device, dtype=dtype)
    check_convert_matches(model, x, TOL[dtype])
    for name, m in model.named_modules():
        if isinstance(m, normext.GroupNorm) and m.weight is not None:
            assert m.weight.device.type == device and m.weight.dtype == dtype, name


def test_convert_root_group_norm(device):
    gn = randomize_norm_params(nn.GroupNorm(4, 8)).to(device)
    gn.eval()
    w, b = gn.weight, gn.bias
    out = normext.convert(gn)
    assert type(out) is normext.GroupNorm
    assert out.weight is w and out.bias is b
    assert not out.training
    assert repr(out) == repr(nn.GroupNorm(4, 8))
    x = torch.randn(3, 8, 5, 5, device=device)
    ref = torch.nn.functional.group_norm(x, 4, w, b)
    torch.testing.assert_close(out(x), ref, rtol=1e-5, atol=1e-5)


def test_convert_root_group_norm_without_affine(device):
    gn = nn.GroupNorm(2, 6, affine=False, eps=1e-2).to(device)
    out = normext.convert(gn)
    assert type(out) is normext.GroupNorm
    assert out.weight is None and out.bias is None and out.eps == 1e-2
    x = torch.randn(2, 6, 7, device=device)
    torch.testing.assert_close(out(x), torch.nn.functional.group_norm(x, 2, eps=1e-2), rtol=1e-5, atol=1e-5)


def test_convert_leaves_subclasses_and_other_modules_alone():
    sub = MyGroupNorm(2, 8)
    # NB: a LayerNorm subclass, not nn.LayerNorm (which convert() swaps since issue 4).
    model = nn.Sequential(nn.Conv2d(3, 8, 1), sub, nn.GroupNorm(2, 8), nn.Identity(),
                          type("MyLayerNorm", (nn.LayerNorm,), {})(4))
    conv, bn, ln = model[0], model[3], model[4]
    normext.convert(model)
    assert model[1] is sub and type(model[1]) is MyGroupNorm
    assert type(model[2]) is normext.GroupNorm
    assert model[0] is conv and model[3] is bn and model[4] is ln


def test_convert_is_idempotent():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.GroupNorm(2, 8))
    normext.convert(model)
    first = model[1]
    normext.convert(model)
    assert model[1] is first
    assert type(model[1]) is normext.GroupNorm


def test_convert_model_without_group_norm():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    before = list(model.modules())
    assert normext.convert(model) is model
    assert list(model.modules()) == before


@pytest.mark.parametrize("memory_format", ["contiguous", "channels_last"])
def test_convert_resblock(device, memory_format):
    torch.manual_seed(1)
    model = nn.Sequential(ResBlock(64, 64), ResBlock(64, 128))
    randomize_norm_params(model)
    model = model.to(device)
    x = torch.randn(2, 64, 12, 12, device=device)
    if memory_format == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    check_convert_matches(model, x, TOL[torch.float32])
    if memory_format == "channels_last":
        y = model(x)
        assert y.is_contiguous(memory_format=torch.channels_last)


def test_convert_detection_head(device):
    torch.manual_seed(2)
    model = randomize_norm_params(DetectionHead()).to(device)
    assert len(torch_group_norms(model)) == 4
    x = torch.randn(2, 256, 10, 12, device=device)
    check_convert_matches(model, x, TOL[torch.float32])


def test_convert_then_optimizer_step_updates_shared_params():
    """The optimizer built before convert() still owns the parameters the converted model uses."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.SiLU(), nn.Conv2d(8, 2, 1))
    randomize_norm_params(model)
    reference = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt_ref = torch.optim.SGD(reference.parameters(), lr=0.1)
    normext.convert(model)
    x = torch.randn(4, 3, 6, 6)
    for _ in range(2):
        for m, o in ((model, opt), (reference, opt_ref)):
            o.zero_grad()
            m(x).square().mean().backward()
            o.step()
    for (n, p), (_, q) in zip(model.named_parameters(), reference.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)


def test_convert_keeps_a_shared_module_shared():
    """A norm registered under two names (or in two parents) stays one module: its running
    statistics stay one set, also after the model is moved to another dtype."""
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm1d(4)
            self.bn_alias = self.bn
            self.ln = nn.LayerNorm(4)
            self.a = nn.Sequential(nn.Linear(4, 4), self.ln)
            self.b = nn.Sequential(nn.Linear(4, 4), self.ln)

        def forward(self, x):
            return self.b(self.a(self.bn_alias(self.bn(x))))

    torch.manual_seed(0)
    ref = Shared()
    model = normext.convert(copy.deepcopy(ref))
    assert type(model.bn) is normext.BatchNorm1d and model.bn is model.bn_alias
    assert type(model.ln) is normext.LayerNorm and model.ln is model.a[1] is model.b[1]
    ref.double()
    model.double()
    for _ in range(3):
        x = torch.randn(5, 4, dtype=torch.float64)
        torch.testing.assert_close(model(x), ref(x))
    torch.testing.assert_close(model.bn.running_mean, ref.bn.running_mean)
    torch.testing.assert_close(model.bn.running_var, ref.bn.running_var)


def test_convert_keeps_hook_handles_working():
    calls = []
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    handles = [model[1].register_forward_hook(lambda m, i, o: calls.append("forward")),
               model[1].register_forward_pre_hook(lambda m, i: calls.append("pre"))]
    normext.convert(model)
    assert type(model[1]) is normext.LayerNorm
    model(torch.randn(2, 4))
    assert calls == ["pre", "forward"]
    for h in handles:
        h.remove()
    calls.clear()
    model(torch.randn(2, 4))
    assert calls == []


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_converted_model_traces_with_torch_jit(tmp_path):
    """torch.jit.trace of a converted model records normext's ops (its sanity check re-traces
    without grad: the same ops), and the saved trace loads, runs and backpropagates as eager."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.SiLU(),
                          nn.BatchNorm2d(8), nn.Flatten(2), nn.LayerNorm(36), nn.RMSNorm(36))
    model = randomize_norm_params(normext.convert(model)).eval()
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    traced = torch.jit.trace(model, x)
    assert {"normext::group_norm_forward", "normext::layer_norm_forward"} <= {
        n.kind() for n in traced.inlined_graph.nodes()}
    torch.jit.save(traced, tmp_path / "traced.pt")
    loaded = torch.jit.load(tmp_path / "traced.pt")
    torch.testing.assert_close(loaded(x), model(x))
    grads = [torch.autograd.grad(m(x).square().sum(), [x, *m.parameters()]) for m in (model, loaded)]
    assert len(grads[0]) == len(grads[1])
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a)
