"""Streaming (non-temporal) output stores: large outputs are written around the cache
(cpu::stream_output, NORMEXT_STREAM_MIN_BYTES). They change how results are stored, never what
they are: every op's outputs and gradients must be bitwise identical with them forced on
(threshold 0) and off (-1), on every table that has them, at odd sizes and offsets where rows
start unaligned."""
import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import hashlib, torch, normext
import normext.functional as NF

def digest(*ts):
    h = hashlib.sha256()
    for t in ts:
        if t is not None:
            h.update(t.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]

def run(name, fn, *inputs):
    inputs = [t.detach().requires_grad_() if t is not None and t.is_floating_point() else t
              for t in inputs]
    out = fn(*inputs)
    outs = out if isinstance(out, tuple) else (out,)
    grads = torch.autograd.grad(sum(o.float().sum() * (i + 1) for i, o in enumerate(outs)),
                                [t for t in inputs if t is not None and t.requires_grad],
                                allow_unused=True)
    print(name, digest(*outs, *grads))

torch.manual_seed(0)
for dt in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
    acc = torch.float64 if dt == torch.float64 else torch.float32
    alpha = torch.tensor([0.6], dtype=acc)
    for cl in (False, True):
        fmt = torch.channels_last if cl else torch.contiguous_format
        x = torch.randn(3, 12, 7, 9, dtype=dt).to(memory_format=fmt)
        r = torch.randn(3, 12, 7, 9, dtype=dt).to(memory_format=fmt)
        w, b = torch.randn(12, dtype=dt), torch.randn(12, dtype=dt)
        tag = f"{dt} cl={int(cl)}"
        run(f"group_norm {tag}", lambda x, w, b: NF.group_norm(x, 3, w, b), x, w, b)
        run(f"group_norm_silu {tag}", lambda x, w, b: NF.group_norm(x, 4, w, b, activation="silu"), x, w, b)
        run(f"add_group_norm {tag}", lambda x, r, w, b: NF.add_group_norm(x, r, 6, w, b, activation="gelu"), x, r, w, b)
        run(f"batch_norm {tag}", lambda x, w, b: NF.batch_norm(x, None, None, w, b, True), x, w, b)
        run(f"instance_norm {tag}", lambda x, w, b: NF.instance_norm(x, weight=w, bias=b), x, w, b)
        run(f"dyt planes {tag}", lambda x, w, b: NF.dyt(x, alpha, w.to(acc), b.to(acc), channels_last=False), x, w, b)
    rows, rr = torch.randn(5, 7, 37, dtype=dt), torch.randn(5, 7, 37, dtype=dt)
    g, be = torch.randn(37, dtype=dt), torch.randn(37, dtype=dt)
    run(f"layer_norm {dt}", lambda x, g, be: NF.layer_norm(x, (37,), g, be), rows, g, be)
    run(f"rms_norm {dt}", lambda x, g: NF.rms_norm(x, (37,), g), rows, g)
    run(f"add_layer_norm {dt}", lambda x, r, g, be: NF.add_layer_norm(x, r, (37,), g, be), rows, rr, g, be)
    run(f"add_rms_norm {dt}", lambda x, r, g: NF.add_rms_norm(x, r, (37,), g), rows, rr, g)
    run(f"dyt rows {dt}", lambda x, g, be: NF.dyt(x, alpha, g.to(acc), be.to(acc)), rows, g, be)
"""


def _digests(capability, min_bytes):
    env = dict(os.environ, NORMEXT_CPU_CAPABILITY=capability, NORMEXT_STREAM_MIN_BYTES=min_bytes)
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    return [line for line in out.stdout.splitlines() if line.strip()]


@pytest.mark.parametrize("capability", ["avx512_bf16", "avx512", "avx2"])
def test_streaming_stores_change_no_bit(capability):
    plain, streamed = _digests(capability, "-1"), _digests(capability, "0")
    assert len(plain) == 4 * 2 * 6 + 4 * 5
    assert streamed == plain
