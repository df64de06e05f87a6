"""Numerical corner cases found by stress tests against float64 and torch: statistics of large
means over many chunks, gradients that must not read x, relu at NaN, InstanceNorm with eps = 0."""
import pytest
import torch
import torch.nn.functional as F

import normext  # noqa: F401  (registers torch.ops.normext)
import normext.functional as NF
from conftest import to_layout


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_statistics_of_a_large_mean_over_many_chunks(layout):
    """1e6 + randn over 262k values per channel (64 chunks): chunk means rounded to fp32 (an ulp
    of 0.06) would put their rounding into every Chan merge, M2 off by 1e-4; torch's CPU
    BatchNorm (double sums) is at 5e-6."""
    g = torch.Generator().manual_seed(0)
    x = to_layout((1e6 + torch.randn(1, 4, 512, 512, generator=g, dtype=torch.float64)).float(), layout)
    xd = x.double()
    var = xd.var((0, 2, 3), unbiased=False)
    mean, m2 = torch.ops.normext.batch_norm_stats(x)
    torch.testing.assert_close(mean, xd.mean((0, 2, 3)), rtol=0, atol=1e-6)
    assert ((m2 / (512 * 512) - var) / var).abs().max() < 1e-6
    rm, rv = torch.zeros(4), torch.ones(4)
    NF.batch_norm(x, rm, rv, None, None, True, 1.0, 1e-5)
    unbiased = xd.var((0, 2, 3), unbiased=True)
    assert ((rv.double() - unbiased) / unbiased).abs().max() < 1e-6
    _, _, rstd = torch.ops.normext.group_norm_forward(x, None, None, 2, 0.0)
    group_var = xd.contiguous().view(1, 2, -1).var(2, unbiased=False)
    assert ((rstd.double().pow(-2) - group_var) / group_var).abs().max() < 1e-6


def test_layer_norm_of_a_large_mean_over_many_chunks():
    g = torch.Generator().manual_seed(0)
    x = (1e6 + torch.randn(2, 2**18, generator=g, dtype=torch.float64)).float()
    _, mean, rstd = torch.ops.normext.layer_norm_forward(x, [2**18], None, None, 0.0)
    var = x.double().var(1, unbiased=False)
    assert ((rstd.double().view(-1).pow(-2) - var) / var).abs().max() < 1e-6


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_batch_norm_eval_dx_does_not_read_x(layout):
    """In evaluation dx = dy * weight / sqrt(running_var + eps): an inf or nan in x stays out of
    dx, as in torch."""
    x = to_layout(torch.randn(4, 8, 6, 5), layout)
    x[0, 0, 0, 0], x[1, 2, 3, 3], x[2, 3, 1, 1] = float("inf"), float("nan"), -float("inf")
    rm, rv, w, b = torch.randn(8) * 0.1, torch.rand(8) + 0.5, torch.randn(8), torch.randn(8)
    dy = torch.randn(4, 8, 6, 5)
    grads = []
    for fn in (NF.batch_norm, F.batch_norm):
        xx = x.clone().requires_grad_()
        fn(xx, rm, rv, w, b, False, 0.1, 1e-5).backward(dy)
        grads.append(xx.grad)
    assert torch.isfinite(grads[0]).all()
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_relu_passes_the_gradient_at_nan_as_torch(layout):
    """torch's relu backward blocks the gradient only where the output is <= 0: a group that an
    inf turned into NaN passes it (the fused activation must do the same)."""
    x = to_layout(torch.randn(2, 8, 6, 5), layout)
    x[0, 0, 0, 0] = float("inf")
    w, b, dy = torch.randn(8), torch.randn(8), torch.randn(2, 8, 6, 5)
    results = []
    for fn in (lambda *a: NF.group_norm(*a, activation="relu"), lambda *a: F.relu(F.group_norm(*a))):
        xx, ww, bb = (t.clone().requires_grad_() for t in (x, w, b))
        fn(xx, 4, ww, bb).backward(dy)
        results.append(bb.grad)
    torch.testing.assert_close(results[0], results[1], equal_nan=True)


@pytest.mark.parametrize("shape", [(2, 3, 5), (2, 3, 4, 4)], ids=str)
def test_instance_norm_eps_zero_on_a_constant_instance(shape):
    """ATen's batch_norm (which torch's instance_norm runs) takes 1/std as 0 where var = eps = 0:
    the output is the bias, not nan."""
    x = torch.randn(shape)
    x[0, 1] = 3.0
    w, b = torch.rand(3) + 0.5, torch.randn(3)
    ys = []
    for fn in (NF.instance_norm, F.instance_norm):
        xx = x.clone().requires_grad_()
        y = fn(xx, None, None, w, b, True, 0.1, 0.0)
        y.sum().backward()
        ys.append((y, xx.grad))
    torch.testing.assert_close(ys[0][0], ys[1][0], equal_nan=True)
    torch.testing.assert_close(ys[0][1], ys[1][1], equal_nan=True)
    assert torch.isfinite(ys[0][0][0, 1]).all()


@pytest.mark.parametrize("width", [64, 48, 72], ids=["pairs", "pair_and_single", "masked_tail"])
def test_bf16_subnormal_outputs_are_kept(width):
    """Outputs below bf16's smallest normal (1.2e-38) round to bf16 subnormals, as c10::BFloat16
    does, not to zero: the native conversion (vcvtneps2bf16) reads subnormal fp32 as zero, so the
    bf16 stores check for them (two vectors at a time, one vector, and a partial vector)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, width, generator=g).bfloat16()
    weight = torch.full((width,), 3e-39).bfloat16()
    assert 0 < weight[0].item() < torch.finfo(torch.bfloat16).tiny
    for ours, theirs in [
        (NF.layer_norm(x, (width,), weight), F.layer_norm(x, (width,), weight)),
        (NF.group_norm(x.view(4, width, 1), 2, weight), F.group_norm(x.view(4, width, 1), 2, weight)),
    ]:
        assert (theirs != 0).sum() > 0.9 * x.numel()
        assert torch.equal(ours != 0, theirs != 0)
        # within one subnormal step (2^-133) of torch's
        assert (ours.float() - theirs.float()).abs().max().item() <= 2.0 ** -133
