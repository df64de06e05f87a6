"""GroupNorm benchmark: normext vs torch eager, torch.compile and BatchNorm (training), on CPU.

Run:  python bench/bench_group_norm.py [--quick] [--no-compile] [--dtype D] [--layout L]
                                        [--threads N] [--min-time S] [--json FILE]

For every case (shape x dtype x layout) it checks normext against torch, then times forward and
forward+backward (grads w.r.t. input, weight and bias for a fixed upstream grad) with
torch.utils.benchmark medians, and the copy bandwidth of the same tensor (``out.copy_(x)``).
Bytes moved: forward 2*nbytes (read x, write y); forward+backward 5*nbytes (+ read x, read dy,
write dx); parameters are negligible.
"""

import argparse
import json
import os
import sys
import time

from common import ensure_tcmalloc

ALLOCATOR = ensure_tcmalloc()  # may re-exec this script under LD_PRELOAD=tcmalloc

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import normext  # noqa: E402
from common import (cpu_snapshot, foreign_cpu, gbps, geomean, l2_cache_bytes,  # noqa: E402
                    machine_info, measure, measure_copy)

EPS = 1e-5

# (model, shape, num_groups): GroupNorm layers as they run in real models.
SUITE = [
    ("SD U-Net 64x64", (2, 320, 64, 64), 32),
    ("SD U-Net 32x32", (2, 640, 32, 32), 32),
    ("SD U-Net 16x16", (2, 1280, 16, 16), 32),
    ("SD2 U-Net 96x96", (1, 320, 96, 96), 32),
    ("SD VAE dec 64x64", (1, 512, 64, 64), 32),
    ("SD VAE dec 256x256", (1, 256, 256, 256), 32),
    ("SD VAE dec 512x512", (1, 128, 512, 512), 32),
    ("FPN head P3 800x1216", (2, 256, 100, 152), 32),
    ("FPN head P5 b8", (8, 256, 25, 38), 32),
    ("3D U-Net enc1", (1, 32, 64, 128, 128), 8),
    ("3D U-Net enc2", (2, 64, 32, 64, 64), 8),
]
QUICK = ("SD U-Net 64x64", "SD U-Net 16x16", "FPN head P3 800x1216", "3D U-Net enc2")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SHORT_DTYPE = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
# Loose guard against a broken kernel, not a precision test (tests/ do that).
TOL = {torch.float32: 1e-3, torch.bfloat16: 5e-2, torch.float16: 1e-2}

TARGETS = {"fwd_vs_torch": 1.5, "fwd_pct_copy": 0.80, "fwdbwd_vs_torch": 1.5,
           "cl_fwdbwd_vs_torch": 5.0, "fwd_vs_bn": 1.0}


def torch_group_norm(x, num_groups, weight, bias):
    return F.group_norm(x, num_groups, weight, bias, EPS)


def normext_group_norm(x, num_groups, weight, bias):
    return normext.functional.group_norm(x, num_groups, weight, bias, EPS)


def memory_format(ndim, layout):
    if layout == "contiguous":
        return torch.contiguous_format
    return torch.channels_last if ndim == 4 else torch.channels_last_3d


def layout_label(r):
    if r["layout"] == "contiguous":
        return "contig"
    return "cl" if len(r["shape"]) == 4 else "cl3d"


def fmt_shape(shape, groups):
    return "x".join(map(str, shape)) + f" G{groups}"


def check_close(name, case, got, ref, dtype):
    """Abort the run if got != ref: max error relative to the reference's magnitude."""
    tol = TOL[dtype]
    err = (got.float() - ref.float()).abs().max().item()
    scale = max(ref.float().abs().max().item(), 1e-6)
    if not err <= tol * scale:  # also catches nan
        sys.exit(f"\nFATAL: normext {name} is wrong for {case}: max abs err {err:.3g} "
                 f"> {tol:g} * {scale:.3g}. Not benchmarking a wrong kernel.")


def make_inputs(shape, dtype, fmt):
    gen = torch.Generator().manual_seed(0)
    c = shape[1]
    x = (torch.randn(shape, generator=gen) * 2 + 0.5).to(dtype).contiguous(memory_format=fmt)
    dy = torch.randn(shape, generator=gen).to(dtype).contiguous(memory_format=fmt)
    weight = (1 + 0.1 * torch.randn(c, generator=gen)).to(dtype)
    bias = (0.1 * torch.randn(c, generator=gen)).to(dtype)
    return x, dy, weight, bias


def fwd_bwd_fn(gn, x, groups, weight, bias, dy):
    """forward + backward w.r.t. input, weight and bias, no .grad accumulation."""
    xr, wr, br = (t.detach().requires_grad_() for t in (x, weight, bias))

    def run():
        y = gn(xr, groups, wr, br)
        return torch.autograd.grad(y, (xr, wr, br), dy)

    return run


def run_case(model, shape, groups, dtype, layout, args):
    fmt = memory_format(len(shape), layout)
    x, dy, weight, bias = make_inputs(shape, dtype, fmt)
    case = f"{fmt_shape(shape, groups)} {SHORT_DTYPE[dtype]} {layout}"

    # Correctness guard: output, layout and all three grads.
    y_ne, y_ref = normext_group_norm(x, groups, weight, bias), torch_group_norm(x, groups, weight, bias)
    check_close("forward", case, y_ne, y_ref, dtype)
    if not y_ne.is_contiguous(memory_format=fmt):
        sys.exit(f"\nFATAL: normext forward for {case} returned strides {y_ne.stride()}, "
                 f"torch keeps {layout} (strides {y_ref.stride()}).")
    grads_ne = fwd_bwd_fn(normext_group_norm, x, groups, weight, bias, dy)()
    grads_ref = fwd_bwd_fn(torch_group_norm, x, groups, weight, bias, dy)()
    for name, g_ne, g_ref in zip(("grad_input", "grad_weight", "grad_bias"), grads_ne, grads_ref):
        check_close(name, case, g_ne, g_ref, dtype)
    del y_ne, y_ref, grads_ne, grads_ref

    r = {"model": model, "shape": list(shape), "groups": groups, "dtype": SHORT_DTYPE[dtype],
         "layout": layout, "nbytes": x.numel() * x.element_size()}
    fns = {"fwd": {"normext": lambda: normext_group_norm(x, groups, weight, bias),
                   "torch": lambda: torch_group_norm(x, groups, weight, bias),
                   "bn": lambda: F.batch_norm(x, None, None, weight, bias, True, 0.1, EPS)},
           "fwdbwd": {"normext": fwd_bwd_fn(normext_group_norm, x, groups, weight, bias, dy),
                      "torch": fwd_bwd_fn(torch_group_norm, x, groups, weight, bias, dy)}}
    if args.compile:
        # Fresh compile per case (dynamic=False: one static graph per shape/dtype/layout, like a
        # real model); reset so dynamo's recompile limit never silently falls back to eager.
        # Compiled before any timing so that compile workers are idle while we measure.
        torch._dynamo.reset()
        compiled = torch.compile(torch_group_norm, dynamic=False)
        fns["fwd"]["compile"] = lambda: compiled(x, groups, weight, bias)
        fns["fwdbwd"]["compile"] = fwd_bwd_fn(compiled, x, groups, weight, bias, dy)
        start = time.perf_counter()
        fns["fwd"]["compile"]()
        fns["fwdbwd"]["compile"]()
        r["compile_s"] = time.perf_counter() - start

    before = cpu_snapshot()
    copy = measure_copy(x, args.min_time)
    r["copy_s"], noise = copy.median, [copy.iqr / copy.median]
    for direction, impls in fns.items():
        r[direction + "_s"] = {}
        for impl, fn in impls.items():
            m = measure(fn, args.min_time)
            r[direction + "_s"][impl] = m.median
            noise.append(m.iqr / m.median)
    r["noise"] = max(noise)  # worst IQR/median of the case's timings
    r["other_cpu"] = foreign_cpu(before, cpu_snapshot())
    return r


def derived(r, direction):
    """Ratios and bandwidth of one direction of one case."""
    times = r["fwd_s"] if direction == "fwd" else r["fwdbwd_s"]
    moved = (2 if direction == "fwd" else 5) * r["nbytes"]
    ne = times["normext"]
    copy_gbps = gbps(2 * r["nbytes"], r["copy_s"])
    d = {
        "vs_torch": times["torch"] / ne,
        "vs_compile": times["compile"] / ne if "compile" in times else None,
        "vs_bn": times["bn"] / ne if "bn" in times else None,
        "gbps": gbps(moved, ne),
        "copy_gbps": copy_gbps,
    }
    d["pct_copy"] = d["gbps"] / copy_gbps
    return d


def fmt_num(v, spec):
    return "-" if v is None else format(v, spec)


def print_table(results, direction):
    title = "FORWARD" if direction == "fwd" else "FORWARD + BACKWARD (grad input, weight, bias)"
    print(f"\n=== {title} ===")
    print("median ms; vs X = X_time / normext_time (>1: normext faster); GB/s = bytes moved / "
          "normext time; copy = out.copy_(x) GB/s;\ncl = channels_last, cl3d = channels_last_3d; "
          "IQR = worst IQR/median of the case's timings; other = CPU share of other processes")
    head = (f"{'shape':<24}{'dtype':<6}{'layout':<8}{'normext':>9}{'torch':>9}{'compile':>9}"
            f"{'BN':>9}{'vs torch':>9}{'vs comp':>9}{'vs BN':>7}{'GB/s':>7}{'copy':>7}{'%copy':>7}"
            f"{'IQR':>6}{'other':>7}")
    print(head)
    print("-" * len(head))
    for r in results:
        times = r["fwd_s"] if direction == "fwd" else r["fwdbwd_s"]
        d = derived(r, direction)
        ms = {k: v * 1e3 for k, v in times.items()}
        print(f"{fmt_shape(r['shape'], r['groups']):<24}{r['dtype']:<6}{layout_label(r):<8}"
              f"{ms['normext']:>9.3f}{ms['torch']:>9.3f}{fmt_num(ms.get('compile'), '9.3f'):>9}"
              f"{fmt_num(ms.get('bn'), '9.3f'):>9}{d['vs_torch']:>8.2f}x"
              f"{fmt_num(d['vs_compile'], '8.2f') + ('x' if d['vs_compile'] else ''):>9}"
              f"{fmt_num(d['vs_bn'], '6.2f') + ('x' if d['vs_bn'] else ''):>7}"
              f"{d['gbps']:>7.1f}{d['copy_gbps']:>7.1f}{d['pct_copy'] * 100:>6.0f}%"
              f"{r['noise'] * 100:>5.0f}%{r['other_cpu'] * 100:>6.0f}%")


def summarize(results, l2_bytes):
    def gm(direction, key, pred=lambda r: True):
        vals = [derived(r, direction)[key] for r in results if pred(r)]
        return geomean(vals), len([v for v in vals if v is not None])

    big = lambda r: r["nbytes"] > l2_bytes  # noqa: E731
    rows = [  # (label, (value, n), target key or None, is_percent)
        ("fwd vs torch eager, fp32", gm("fwd", "vs_torch", lambda r: r["dtype"] == "fp32"), "fwd_vs_torch", False),
        ("fwd vs torch eager, bf16", gm("fwd", "vs_torch", lambda r: r["dtype"] == "bf16"), "fwd_vs_torch", False),
        ("fwd % of copy BW, > L2, all", gm("fwd", "pct_copy", big), "fwd_pct_copy", True),
        ("fwd % of copy BW, > L2, fp32", gm("fwd", "pct_copy", lambda r: big(r) and r["dtype"] == "fp32"), None, True),
        ("fwd % of copy BW, > L2, bf16", gm("fwd", "pct_copy", lambda r: big(r) and r["dtype"] == "bf16"), None, True),
        ("fwd+bwd vs torch eager", gm("fwdbwd", "vs_torch"), "fwdbwd_vs_torch", False),
        ("fwd+bwd vs torch, channels_last", gm("fwdbwd", "vs_torch", lambda r: r["layout"] != "contiguous"),
         "cl_fwdbwd_vs_torch", False),
        ("fwd+bwd vs torch, contiguous", gm("fwdbwd", "vs_torch", lambda r: r["layout"] == "contiguous"), None, False),
        ("fwd+bwd % of copy BW, > L2", gm("fwdbwd", "pct_copy", big), None, True),
        ("fwd vs BatchNorm training (BN/GN)", gm("fwd", "vs_bn"), "fwd_vs_bn", False),
        ("fwd vs torch.compile", gm("fwd", "vs_compile"), None, False),
        ("fwd+bwd vs torch.compile", gm("fwdbwd", "vs_compile"), None, False),
    ]
    print(f"\n=== SUMMARY (geometric means over the cases; '> L2' = tensors larger than "
          f"{l2_bytes / 2**20:g} MiB) ===")
    summary = {}
    for label, (value, n), target_key, pct in rows:
        shown = "n/a" if value is None else (f"{value * 100:.0f}%" if pct else f"{value:.2f}x")
        line = f"{label:<36}{shown:>8}  (n={n:>2})"
        verdict = None
        if target_key is not None:
            target = TARGETS[target_key]
            verdict = "n/a" if value is None else ("PASS" if value >= target else "MISS")
            line += f"   target >= {f'{target * 100:.0f}%' if pct else f'{target:g}x':<5} {verdict}"
        print(line)
        summary[label] = {"value": value, "n": n, "target": TARGETS.get(target_key), "verdict": verdict}
    return summary


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"only {len(QUICK)} shapes (smoke run)")
    p.add_argument("--dtype", action="append", choices=sorted(DTYPES),
                   help="repeatable; default float32 and bfloat16")
    p.add_argument("--layout", action="append", choices=["contiguous", "channels_last"],
                   help="repeatable; channels_last means channels_last_3d for 5D; default both")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="skip torch.compile")
    p.add_argument("--min-time", type=float, default=0.2, help="blocked_autorange min_run_time (s)")
    p.add_argument("--json", help="write all raw numbers to this file")
    args = p.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    dtypes = [DTYPES[d] for d in (args.dtype or ["float32", "bfloat16"])]
    layouts = args.layout or ["contiguous", "channels_last"]
    suite = [s for s in SUITE if not args.quick or s[0] in QUICK]
    l2_bytes = l2_cache_bytes()
    info = machine_info(ALLOCATOR)

    print("normext GroupNorm benchmark (CPU)")
    print(f"cpu: {info['cpu']} | cores: {info['cores']} | {info['cpu_capability']} | "
          f"L2/core: {l2_bytes / 2**20:g} MiB")
    print(f"torch {info['torch']} | threads: {info['threads']} | allocator: {ALLOCATOR}")
    print(f"normext: {getattr(normext, '__version__', '?')} from {os.path.dirname(normext.__file__)}")
    print(f"timing: torch.utils.benchmark blocked_autorange median, min_run_time={args.min_time}s; "
          f"copy = out.copy_(x) into a preallocated same-layout tensor")
    print("torch.compile: " + ("inductor, dynamic=False, compiled per case for forward and "
                               "forward+backward (compile time excluded, reported below)"
                               if args.compile else "skipped (--no-compile)"))
    print("BN = F.batch_norm(x, None, None, weight, bias, training=True), forward only")
    load = os.getloadavg()
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if load[0] > 0.5:
        print("WARNING: the machine is busy; other processes will inflate the timings")
    print(f"{len(suite)} shapes x {len(dtypes)} dtypes x {len(layouts)} layouts", flush=True)

    start = time.perf_counter()
    results = []
    for model, shape, groups in suite:
        for dtype in dtypes:
            for layout in layouts:
                r = run_case(model, shape, groups, dtype, layout, args)
                results.append(r)
                print(f"  {model:<22}{fmt_shape(shape, groups):<24}{r['dtype']:<6}{layout_label(r):<8}"
                      f"fwd {derived(r, 'fwd')['vs_torch']:5.2f}x  fwd+bwd "
                      f"{derived(r, 'fwdbwd')['vs_torch']:5.2f}x vs torch  (other CPU {r['other_cpu'] * 100:.0f}%)",
                      flush=True)

    print_table(results, "fwd")
    print_table(results, "fwdbwd")
    summary = summarize(results, l2_bytes)
    wall = time.perf_counter() - start
    compile_total = sum(r.get("compile_s", 0.0) for r in results)
    print(f"\ntotal wall time {wall:.0f} s (torch.compile compilation: {compile_total:.0f} s)")
    busy = [r for r in results if r["other_cpu"] > 0.05]
    if busy:
        print(f"WARNING: other processes used > 5% of the CPU during {len(busy)}/{len(results)} cases "
              f"(max {max(r['other_cpu'] for r in busy) * 100:.0f}%): those timings are not trustworthy; "
              "rerun on an idle machine.")

    if args.json:
        for r in results:
            r["fwd"], r["fwdbwd"] = derived(r, "fwd"), derived(r, "fwdbwd")
        with open(args.json, "w") as f:
            json.dump({"machine": info, "args": vars(args), "l2_bytes": l2_bytes, "eps": EPS,
                       "cases": results, "summary": summary, "targets": TARGETS,
                       "wall_s": wall, "compile_s": compile_total}, f, indent=1)
        print(f"raw numbers: {args.json}")


if __name__ == "__main__":
    main()
