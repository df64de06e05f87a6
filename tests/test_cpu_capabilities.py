"""Every per-ISA table of CPU leaf loops (csrc/ops/cpu/vec_kernels_*.cpp) gives the same answers.

The library picks the best table for the CPU at load time; NORMEXT_CPU_CAPABILITY caps the choice,
so each table is exercised in its own subprocess (the choice is made once per process).
"""
import re
import shutil
import subprocess

import pytest
import torch

import normext
from conftest import run_with_cpu_capability

CAPABILITIES = ["default", "avx2", "avx512", "avx512_bf16"]

# Runs in a subprocess: prints the max error vs a float64 reference for each dtype and layout, and
# whether inf/nan land exactly where the reference has them.
SCRIPT = r"""
import torch, normext, torch.nn.functional as F
torch.manual_seed(0)
for dt in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
    x = torch.randn(2, 48, 17, 19, dtype=dt) * 3 + 1
    x[0, 0, 0, 0] = float("nan")
    x[1, 5, 2, 2] = float("inf")
    w, b = torch.randn(48, dtype=dt), torch.randn(48, dtype=dt)
    for cl in (False, True):
        xx = x.to(memory_format=torch.channels_last) if cl else x
        xg = xx.detach().requires_grad_()
        y = normext.functional.group_norm(xg, 8, w, b)
        (dx,) = torch.autograd.grad(y, xg, torch.ones_like(y))
        ref = F.group_norm(xx.double(), 8, w.double(), b.double())
        finite = torch.isfinite(ref)
        err = (y.double() - ref)[finite].abs().max().item()
        print(str(dt), int(cl), err, bool((torch.isfinite(y) == finite).all()),
              bool(torch.isfinite(dx[1, 8:]).all()))
"""

TOLERANCE = {"torch.float16": 8e-3, "torch.bfloat16": 6e-2, "torch.float32": 4e-6,
             "torch.float64": 1e-12}


@pytest.mark.parametrize("capability", CAPABILITIES)
def test_every_cpu_table_matches_reference(capability):
    lines = run_with_cpu_capability(SCRIPT, capability).split("\n")
    rows = [line.split() for line in lines if line.startswith("torch.")]
    assert len(rows) == 8
    for dtype, cl, err, nan_match, grad_finite in rows:
        assert float(err) < TOLERANCE[dtype], (capability, dtype, cl, err)
        assert nan_match == "True", (capability, dtype, cl)
        assert grad_finite == "True", (capability, dtype, cl)


# Every bf16 and fp16 value through DyT's forward (its tanh for 16-bit outputs is a rational
# approximation, 3.1e-7 relative): the result must be the fp32 tanh correctly rounded to the
# dtype, but for values within that error of a rounding midpoint (one ulp off, a handful).
# Subnormal outputs included (tanh(x) = x there): the native bf16 conversion would flush them.
DYT_SCRIPT = r"""
import torch, normext
for dt in (torch.bfloat16, torch.float16):
    x = torch.arange(1 << 16, dtype=torch.int32).to(torch.int16).view(dt)
    y = normext.functional.dyt(x, torch.ones(1, dtype=dt))
    ref = torch.tanh(x.double()).to(dt)
    nan = torch.isnan(ref)
    same_nan = bool(torch.equal(torch.isnan(y), nan))
    ok = ~nan
    ulp = torch.finfo(dt).eps * ref[ok].double().abs().clamp_min(torch.finfo(dt).tiny)
    diff = (y[ok].double() - ref[ok].double()).abs()
    print(str(dt), same_nan, int((diff > 0).sum()), float((diff / ulp).max()))
"""


@pytest.mark.parametrize("capability", CAPABILITIES)
def test_every_cpu_table_dyt_16bit_outputs(capability):
    lines = run_with_cpu_capability(DYT_SCRIPT, capability).split("\n")
    rows = [line.split() for line in lines if line.startswith("torch.")]
    assert len(rows) == 2
    for dtype, same_nan, mismatches, max_ulps in rows:
        assert same_nan == "True", (capability, dtype)
        assert int(mismatches) <= 16, (capability, dtype, mismatches)
        assert float(max_ulps) <= 1.0, (capability, dtype, max_ulps)


# No AVX leaf may end in a tail call to a function that takes vector arguments: GCC puts no
# vzeroupper in such a function (its caller's vector registers are live), so the leaf would return
# to the driver code (baseline x86-64, SSE) with the upper halves of the vector registers dirty,
# and every SSE instruction there would wait on them (it happened: GroupNorm forward 8x256x25x38
# bf16 0.97 -> 1.56 ms, LayerNorm 4096x1000 bf16 1.8x slower). vec_kernels_impl.h always inlines
# such helpers (NORMEXT_VEC_INLINE).
def test_no_leaf_tail_calls_a_function_with_vector_arguments():
    objdump = shutil.which("objdump")
    if objdump is None:
        pytest.skip("objdump not installed")
    text = subprocess.run([objdump, "-d", "--no-show-raw-insn", normext._C.__file__],
                          capture_output=True, text=True, check=True, timeout=600).stdout
    # mangled targets: _ZN7normext3cpu<len><isa>12_GLOBAL__N_1...; vector parameters mangle as
    # Dv<lanes>_<type> or, through vacc<T>, as Vec<...>::type
    # (a tail call jumps to the start of a function: no +offset, which a cold block's jump back
    # into its own function has)
    jump = re.compile(r"\sjmp\s+[0-9a-f]+ <(_ZN7normext3cpu\d+(?:avx2|avx512|avx512_bf16)"
                      r"12_GLOBAL__N_1[^>+]*)>")
    def takes_vectors(mangled):
        return "Dv" in mangled or "3VecI" in mangled

    # (a helper that itself takes vectors returns into vector code: its tail calls are harmless)
    tail_calls, function = [], ""
    for line in text.splitlines():
        if (start := re.match(r"[0-9a-f]+ <(.+)>:$", line)) is not None:
            function = start.group(1)
        elif (m := jump.search(line)) and takes_vectors(m.group(1)) and not takes_vectors(function):
            tail_calls.append(f"{function}: {line.strip()}")
    assert not tail_calls, tail_calls[:5]
