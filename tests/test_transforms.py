"""torch.func transforms (grad, jacrev, jacfwd, vmap) and forward-mode AD through every functional
and a model: the same results as torch's ops (normext routes them to torch's math, see
normext/_reference.py), never an error or a dropped tangent."""
import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch.func import functional_call, grad, jacfwd, jacrev, vmap

import normext
import normext.functional as NF

D = torch.float64


def _t(*shape):
    return torch.randn(*shape, dtype=D)


W4, B4, W3, RES = _t(4), _t(4), _t(3), _t(2, 4, 3, 3)
ALPHA = torch.tensor([0.7], dtype=D)

# name -> (normext function of x, torch reference of x)
CASES = {
    "group_norm": (lambda x: NF.group_norm(x, 2, W4, B4), lambda x: F.group_norm(x, 2, W4, B4)),
    "group_norm_silu": (lambda x: NF.group_norm(x, 2, W4, B4, activation="silu"),
                        lambda x: F.silu(F.group_norm(x, 2, W4, B4))),
    "add_group_norm": (lambda x: NF.add_group_norm(x, RES, 2, W4, B4, activation="gelu")[0],
                       lambda x: F.gelu(F.group_norm(x + RES, 2, W4, B4))),
    "layer_norm": (lambda x: NF.layer_norm(x, (3, 3)), lambda x: F.layer_norm(x, (3, 3))),
    "rms_norm": (lambda x: NF.rms_norm(x, (3,), W3), lambda x: F.rms_norm(x, (3,), W3)),
    "add_layer_norm": (lambda x: NF.add_layer_norm(x, RES, (3,), W3)[0],
                       lambda x: F.layer_norm(x + RES, (3,), W3)),
    "add_rms_norm": (lambda x: NF.add_rms_norm(x, RES, (3,))[0], lambda x: F.rms_norm(x + RES, (3,))),
    "batch_norm": (lambda x: NF.batch_norm(x, None, None, W4, B4, True),
                   lambda x: F.batch_norm(x, None, None, W4, B4, True)),
    "instance_norm": (lambda x: NF.instance_norm(x), lambda x: F.instance_norm(x)),
    "dyt": (lambda x: NF.dyt(x, ALPHA, W3, None),
            lambda x: torch.tanh(ALPHA * x) * W3),
}
TRANSFORMS = {
    "grad": lambda f, x: grad(lambda x: (f(x) * torch.cos(x)).sum())(x),
    "jacrev": lambda f, x: jacrev(f)(x),
    "jacfwd": lambda f, x: jacfwd(f)(x),
    "vmap": lambda f, x: vmap(f)(x.unsqueeze(0).expand(3, *x.shape) * torch.arange(1., 4., dtype=D).view(3, 1, 1, 1, 1)),
}


@pytest.mark.parametrize("transform", list(TRANSFORMS))
@pytest.mark.parametrize("name", list(CASES))
def test_func_transforms_match_torch(name, transform):
    ours, ref = CASES[name]
    x = _t(2, 4, 3, 3)
    torch.testing.assert_close(TRANSFORMS[transform](ours, x), TRANSFORMS[transform](ref, x))


@pytest.mark.parametrize("name", list(CASES))
def test_forward_ad_tangent_matches_torch(name):
    ours, ref = CASES[name]
    x, t = _t(2, 4, 3, 3), _t(2, 4, 3, 3)
    with fwAD.dual_level():
        out = fwAD.unpack_dual(ours(fwAD.make_dual(x, t)))
        expected = fwAD.unpack_dual(ref(fwAD.make_dual(x, t)))
    assert out.tangent is not None
    torch.testing.assert_close(out.primal, expected.primal)
    torch.testing.assert_close(out.tangent, expected.tangent)


def test_per_sample_grads_of_a_converted_model():
    # The documented torch.func recipe for per-sample gradients (as in differential privacy,
    # which swaps BatchNorm for GroupNorm), on a model converted to normext.
    torch.manual_seed(0)
    ref = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.GroupNorm(4, 8), torch.nn.SiLU(),
                              torch.nn.Flatten(), torch.nn.LazyLinear(2)).double()
    x, target = _t(5, 3, 6, 6), torch.randint(0, 2, (5,))
    ref(x)  # materialize the lazy layer
    model = normext.convert(ref.__class__(*[m for m in ref]), fuse=True)
    assert isinstance(model[1], normext.GroupNorm)

    def per_sample(m):
        params = {k: v.detach() for k, v in m.named_parameters()}

        def loss(p, xi, ti):
            out = functional_call(m, p, (xi.unsqueeze(0),))
            return F.cross_entropy(out, ti.unsqueeze(0))
        return vmap(grad(loss), in_dims=(None, 0, 0))(params, x, target)

    ours, expected = per_sample(model), per_sample(ref)
    assert ours.keys() == expected.keys()
    for k in expected:
        torch.testing.assert_close(ours[k], expected[k])


def test_kernels_run_outside_transforms():
    # The fallback is only for transforms: a plain call runs normext's op (seen by the profiler).
    x = _t(2, 4, 3, 3)
    with torch.profiler.profile() as prof:
        NF.group_norm(x, 2)
    assert any(e.name == "normext::group_norm_forward" for e in prof.events())
    with fwAD.dual_level():
        assert normext._reference.needed()
    assert not normext._reference.needed()
