"""Fused GroupNorm (issue 5) and DyT (issue 4) benchmark on CPU, against torch in the same run.

Run:  python bench/bench_fused.py [--quick] [--no-compile] [--min-time S]

GN + SiLU: normext.functional.group_norm(activation="silu") vs torch eager
F.silu(F.group_norm(...)) and torch.compile of that function, forward and forward+backward.
add + GN + SiLU: normext.functional.add_group_norm vs eager (x + r, then GN + SiLU), forward.
DyT: normext.functional.dyt vs the paper's eager module (torch.tanh) and F.rms_norm of the same
width, forward and forward+backward. Ratios are torch time / normext time (above 1: faster).
"""
import argparse
import sys

from common import ensure_tcmalloc

ALLOCATOR = ensure_tcmalloc()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import normext  # noqa: E402
import normext.functional as NF  # noqa: E402
from common import machine_info, measure  # noqa: E402

GN_SUITE = [((1, 512, 64, 64), 32), ((2, 320, 64, 64), 32), ((1, 128, 256, 256), 32)]
DYT_SUITE = [(8192, 1024), (4096, 4096), (65536, 384)]


def gn_silu_torch(x, w, b):
    return F.silu(F.group_norm(x, 32, w, b, 1e-5))


def gn_silu_ours(x, w, b):
    return NF.group_norm(x, 32, w, b, 1e-5, activation="silu")


def fwd_bwd(fn, x, w, b, go):
    def run():
        y = fn(x, w, b)
        torch.autograd.grad(y, (x, w, b), go)
    return run


def row(*cols):
    print(" | ".join(str(c) for c in cols), flush=True)


def bench_gn(args):
    row("case", "dtype", "layout", "fwd ms", "vs eager", "vs compile", "fwd+bwd ms", "vs eager", "vs compile")
    for shape, g in GN_SUITE[: args.shapes or (2 if args.quick else None)]:
        for dtype in (torch.float32, torch.bfloat16):
            for fmt_name, fmt in (("NCHW", torch.contiguous_format), ("NHWC", torch.channels_last)):
                x = torch.randn(shape, dtype=dtype).to(memory_format=fmt).requires_grad_()
                w = torch.randn(shape[1], dtype=dtype, requires_grad=True)
                b = torch.randn(shape[1], dtype=dtype, requires_grad=True)
                go = torch.randn_like(x)
                with torch.no_grad():
                    f_ours = measure(lambda: gn_silu_ours(x, w, b), args.min_time).median
                    f_eager = measure(lambda: gn_silu_torch(x, w, b), args.min_time).median
                fb_ours = measure(fwd_bwd(gn_silu_ours, x, w, b, go), args.min_time).median
                fb_eager = measure(fwd_bwd(gn_silu_torch, x, w, b, go), args.min_time).median
                f_comp = fb_comp = float("nan")
                if not args.no_compile:
                    # NB: one compiled function per grad mode (a switch would recompile)
                    torch._dynamo.reset()
                    compiled_fwd = torch.compile(gn_silu_torch)
                    compiled = torch.compile(gn_silu_torch)
                    with torch.no_grad():
                        f_comp = measure(lambda: compiled_fwd(x, w, b), args.min_time).median
                    fb_comp = measure(fwd_bwd(compiled, x, w, b, go), args.min_time).median
                row("x".join(map(str, shape)), str(dtype)[6:], fmt_name, f"{f_ours * 1e3:.3f}",
                    f"{f_eager / f_ours:.2f}x", f"{f_comp / f_ours:.2f}x", f"{fb_ours * 1e3:.3f}",
                    f"{fb_eager / fb_ours:.2f}x", f"{fb_comp / fb_ours:.2f}x")


def bench_add_gn(args):
    row("add+GN+SiLU case", "dtype", "layout", "fwd ms", "vs eager")
    for shape, g in GN_SUITE[:2]:
        for dtype in (torch.float32, torch.bfloat16):
            for fmt_name, fmt in (("NCHW", torch.contiguous_format), ("NHWC", torch.channels_last)):
                x = torch.randn(shape, dtype=dtype).to(memory_format=fmt)
                r = torch.randn(shape, dtype=dtype).to(memory_format=fmt)
                w, b = torch.randn(shape[1], dtype=dtype), torch.randn(shape[1], dtype=dtype)
                with torch.no_grad():
                    ours = measure(lambda: NF.add_group_norm(x, r, g, w, b, activation="silu"), args.min_time).median
                    eager = measure(lambda: gn_silu_torch(x + r, w, b), args.min_time).median
                row("x".join(map(str, shape)), str(dtype)[6:], fmt_name, f"{ours * 1e3:.3f}", f"{eager / ours:.2f}x")


def bench_dyt(args):
    row("DyT rows x C", "dtype", "fwd ms", "vs eager DyT", "vs F.rms_norm", "fwd+bwd ms", "vs eager DyT",
        "vs F.rms_norm")
    for rows, C in DYT_SUITE[: 2 if args.quick else None]:
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(rows, C, dtype=dtype, requires_grad=True)
            alpha = torch.full((1,), 0.5, dtype=dtype, requires_grad=True)
            w = torch.randn(C, dtype=dtype, requires_grad=True)
            b = torch.randn(C, dtype=dtype, requires_grad=True)
            go = torch.randn_like(x)
            ours = lambda: NF.dyt(x, alpha, w, b)  # noqa: E731
            eager = lambda: w * torch.tanh(alpha * x) + b  # noqa: E731
            rms = lambda: F.rms_norm(x, (C,), w, 1e-6)  # noqa: E731
            with torch.no_grad():
                f = [measure(fn, args.min_time).median for fn in (ours, eager, rms)]

            def fb(fn, params):
                def run():
                    torch.autograd.grad(fn(), (x,) + params, go)
                return run

            t = [measure(fb(ours, (alpha, w, b)), args.min_time).median,
                 measure(fb(eager, (alpha, w, b)), args.min_time).median,
                 measure(fb(rms, (w,)), args.min_time).median]
            row(f"{rows}x{C}", str(dtype)[6:], f"{f[0] * 1e3:.3f}", f"{f[1] / f[0]:.2f}x", f"{f[2] / f[0]:.2f}x",
                f"{t[0] * 1e3:.3f}", f"{t[1] / t[0]:.2f}x", f"{t[2] / t[0]:.2f}x")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--min-time", type=float, default=0.3)
    parser.add_argument("--only", choices=["gn", "add", "dyt"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--shapes", type=int, default=None, help="first N GroupNorm shapes only")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine_info(ALLOCATOR), file=sys.stderr)
    if args.only in (None, "gn"):
        bench_gn(args)
    if args.only in (None, "add"):
        bench_add_gn(args)
    if args.only in (None, "dyt"):
        bench_dyt(args)


if __name__ == "__main__":
    main()
