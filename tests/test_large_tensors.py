"""Tensors of more than 2**31 elements: every index is 64-bit (a 32-bit offset would wrap and read
or write the wrong memory). Each case needs about 9 GB of memory and tens of seconds on two
cores, so they run only when NORMEXT_TEST_LARGE=1 is set:

    NORMEXT_TEST_LARGE=1 python -m pytest -q tests/test_large_tensors.py
"""
import os

import pytest
import torch

import normext.functional as NF

pytestmark = pytest.mark.skipif(os.environ.get("NORMEXT_TEST_LARGE") != "1",
                                reason="set NORMEXT_TEST_LARGE=1 (needs ~9 GB of memory)")

# 2**31 + 2 * 64 bf16 values: the last elements sit past every 32-bit offset.
PLANE = 2**30 + 64


def _stats(t):
    """Mean and 1/std of all of t in float64, slice by slice (t.double() would need 17 GB)."""
    flat = t.reshape(-1)
    total = sum(s.double().sum().item() for s in flat.split(1 << 26))
    mean = total / flat.numel()
    m2 = sum(((s.double() - mean) ** 2).sum().item() for s in flat.split(1 << 26))
    return mean, (m2 / flat.numel() + 1e-5) ** -0.5


def _check(y, x, mean, rstd, positions):
    for i in positions:
        ref = (x.reshape(-1)[i].double().item() - mean) * rstd
        got = y.reshape(-1)[i].double().item()
        assert abs(got - ref) <= 1e-2 * abs(ref) + 1e-2, (i, got, ref)


def _input():
    x = torch.empty(2, PLANE, dtype=torch.bfloat16)
    x[0].uniform_(-1, 3)
    x[1].uniform_(5, 6)
    x[1, -8:] = 40.0  # a distinct tail, at offsets above 2**31
    return x


@torch.no_grad()
def test_group_norm_one_group_over_2_31_values():
    x = _input().view(1, 2, PLANE)
    y, mean, rstd = torch.ops.normext.group_norm_forward(x, None, None, 1, 1e-5)
    ref_mean, ref_rstd = _stats(x)
    assert mean.item() == pytest.approx(ref_mean, rel=1e-5)
    assert rstd.item() == pytest.approx(ref_rstd, rel=1e-5)
    n = x.numel()
    _check(y, x, ref_mean, ref_rstd, [0, PLANE - 1, PLANE, n - 9, n - 1])


@torch.no_grad()
def test_batch_norm_channel_past_2_31():
    # (1, 2, PLANE): channel 1 ends past 2**31 elements.
    x = _input().view(1, 2, PLANE)
    y = NF.batch_norm(x, None, None, training=True)
    ref_mean, ref_rstd = _stats(x[:, 1])
    n = x.numel()
    _check(y, x, ref_mean, ref_rstd, [PLANE, n - 9, n - 1])


@torch.no_grad()
def test_layer_norm_rows_past_2_31():
    x = _input().view(-1, 128 * 257)  # 2**31 + 128 = 128 * 257 * 65281: rows start past 2**31
    y = NF.layer_norm(x, (x.shape[1],))
    last = x[-1]
    mean = last.double().mean().item()
    rstd = ((last.double() - mean).pow(2).mean().item() + 1e-5) ** -0.5
    _check(y[-1], last, mean, rstd, [0, last.numel() - 9, last.numel() - 1])
