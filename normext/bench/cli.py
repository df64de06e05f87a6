"""normext benchmark: every op family against torch eager and torch.compile, in one run.

  python -m normext.bench                         # every op, default suite, CPU
  python -m normext.bench --op group_norm,rms_norm --dtype bf16 --quick
  python -m normext.bench --device cuda --json gpu.json --plot gpu.png
  python -m normext.bench --memory                # saved-for-backward and peak-memory report

For every case (op x real shape x dtype x layout) it checks normext against torch eager, counts the
bytes autograd saves for backward, then times each pass (forward, forward+backward; backward alone
on CUDA) of normext, torch eager and torch.compile (inductor, static shapes, compiled per case), and
a copy of the same tensor (out.copy_(x)) as the bandwidth reference. It prints one table and a
summary per op against the issue targets (PASS/MISS on geometric means).

Timing: medians of ~2 ms blocks of calls (wall clock on CPU, CUDA events on CUDA); the copy and the
implementations of one case are timed interleaved, block by block, so a drift of the machine's
speed cancels out of their ratios. On CPU, tcmalloc is preloaded (re-exec) when installed.
"""

import argparse
import os
import time

import torch

import normext
from normext.bench import memory as memory_report
from normext.bench import ops as op_families
from normext.bench import report, targets
from normext.bench._env import cpu_snapshot, foreign_cpu, l2_cache_bytes, machine_info
from normext.bench.runner import PASS_NAMES, Progress, run_case
from normext.bench.timing import make_timer

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
LAYOUTS = {"contiguous": "contiguous", "nchw": "contiguous", "channels_last": "channels_last",
           "nhwc": "channels_last"}
PASSES = ("fwd", "bwd", "fwdbwd")


def _split(values, allowed, what):
    """Repeatable, comma-separated option values, checked against ``allowed`` (order kept)."""
    out = []
    for v in values or []:
        for item in v.split(","):
            item = item.strip()
            key = item.lower().replace("fwd+bwd", "fwdbwd")
            if not item:
                continue
            if key not in allowed:
                raise SystemExit(f"unknown {what} {item!r}; choose from {', '.join(allowed)}")
            if allowed[key] not in out:
                out.append(allowed[key])
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m normext.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    names = [f.name for f in op_families.FAMILIES]
    p.add_argument("--op", action="append", metavar="OP",
                   help="op families, repeatable or comma list (default: all): " + ", ".join(names))
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--dtype", action="append", metavar="D",
                   help="float32|bfloat16|float16 (fp32, bf16, fp16), repeatable or comma list; "
                        "default float32,bfloat16")
    p.add_argument("--layout", action="append", metavar="L",
                   help="contiguous|channels_last (NCHW, NHWC) for 4D/5D ops; channels_last means "
                        "channels_last_3d for 5D; default both")
    p.add_argument("--pass", dest="passes", action="append", metavar="P",
                   help="fwd|bwd|fwdbwd, repeatable or comma list; default fwd,fwdbwd on CPU and "
                        "fwd,bwd,fwdbwd on CUDA")
    p.add_argument("--quick", action="store_true", help="fewer shapes per op (smoke run)")
    p.add_argument("--no-compile", dest="compile", action="store_false",
                   help="skip the torch.compile baseline (it costs seconds of compilation per case)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--min-time", type=float, default=None,
                   help="seconds of repetition per timing (default 0.06 CPU, 0.1 CUDA)")
    p.add_argument("--json", metavar="FILE", help="write every number and the machine description")
    p.add_argument("--plot", metavar="FILE.png",
                   help="bar chart of the ratio vs torch eager per op and shape (needs matplotlib)")
    p.add_argument("--memory", action="store_true",
                   help="memory report instead of timings: saved-for-backward bytes (GN, GN+SiLU, "
                        "ResBlock) and peak memory of a VAE-decoder inference pass")
    p.add_argument("--list", action="store_true", help="list the op families and their shapes")
    # Hidden: one tiny shape per op, for the tool's own tests.
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.op = _split(args.op, {n: n for n in names}, "op")
    args.dtypes = _split(args.dtype, DTYPES, "dtype") or [torch.float32, torch.bfloat16]
    args.layouts = _split(args.layout, LAYOUTS, "layout") or ["contiguous", "channels_last"]
    default_passes = ["fwd", "bwd", "fwdbwd"] if args.device == "cuda" else ["fwd", "fwdbwd"]
    args.passes = _split(args.passes, {k: k for k in PASSES}, "pass") or default_passes
    args.passes = [x for x in PASSES if x in args.passes]
    if args.min_time is None:
        args.min_time = 0.1 if args.device == "cuda" else 0.06
    return args


def check_device(device):
    """Refuse clearly when the device cannot run normext's kernels."""
    if device != "cuda":
        return
    if not torch.cuda.is_available():
        built = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA support"
        raise SystemExit(f"--device cuda: no CUDA GPU is available (torch {torch.__version__}, "
                         f"built with {built}, sees {torch.cuda.device_count()} devices)")
    from normext import _build_info

    if not getattr(_build_info, "WITH_CUDA", False):
        raise SystemExit("--device cuda: this normext build has no CUDA kernels (CPU-only build); "
                         "rebuild with NORMEXT_CUDA=1 where nvcc is installed")


def plan_cases(families, args):
    suite = "tiny" if args.tiny else ("quick" if args.quick else "full")
    cases = []
    for fam in families:
        layouts = args.layouts if fam.spatial else (["contiguous"] if "contiguous" in args.layouts else [])
        for spec in fam.suite(suite):
            for dtype in args.dtypes:
                for layout in layouts:
                    cases.append((fam, spec, dtype, layout))
    return cases


def available_families(args, log):
    import normext.functional as nf

    families, skipped = [], []
    for fam in op_families.select(args.op):
        why = fam.needs(nf)
        if why:
            log(f"skip {fam.name}: {why}")
            skipped.append({"op": fam.name, "reason": why})
        else:
            families.append(fam)
    return families, skipped


def print_header(info, args, log):
    log(f"normext benchmark ({args.device}) | normext from {os.path.dirname(normext.__file__)}")
    log(f"cpu: {info['cpu']} | cores: {info['cores']} | {info['cpu_capability']} | L2/core: "
        f"{info['l2_bytes_per_core'] / 2**20:g} MiB | threads: {info['threads']} | allocator: {info['allocator']}")
    if args.device == "cuda":
        log(f"gpu: {info['gpu']} | {info['gpu_sms']} SMs | {info['gpu_memory_bytes'] / 2**30:.0f} GiB | "
            f"CUDA {info['cuda']}")
    log(f"torch {info['torch']} | python {info['python']}")
    if not args.memory:
        clock = "CUDA events" if args.device == "cuda" else "wall clock"
        log(f"timing: median of ~2 ms blocks of calls ({clock}), min_run_time={args.min_time}s each; "
            "copy (out.copy_(x)) and every implementation timed interleaved, block by block")
        log("torch.compile: " + ("inductor, dynamic=False, compiled per case (compile time excluded)"
                                 if args.compile else "skipped (--no-compile)"))
    if args.device == "cpu":
        load = os.getloadavg()
        log(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
            + ("  (busy machine: other processes inflate timings)" if load[0] > 0.5 else ""))


def main(argv=None, allocator="default (not re-exec'd)"):
    args = parse_args(argv)
    log = print
    if args.list:
        for fam in op_families.FAMILIES:
            log(f"{fam.name:<16} baseline {fam.baseline}")
            for s in fam.shapes:
                log(f"    {s.label:<24}{s.short():<22}{'quick' if s.quick else ''}")
        return 0
    check_device(args.device)
    if args.plot:
        report.check_plot_available()
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info(allocator, args.device)
    print_header(info, args, log)
    start = time.perf_counter()
    payload = {"machine": info, "device": args.device,
               "args": {k: (v if not isinstance(v, list) else [str(x) for x in v]) for k, v in vars(args).items()}}

    if args.memory:
        log("")
        payload["memory"] = memory_report.run_memory(args.dtypes, args.device,
                                                     size="tiny" if args.tiny else "full", log=log)
        payload["wall_s"] = time.perf_counter() - start
        if args.json:
            report.to_json(args.json, payload)
            log(f"\nJSON: {args.json}")
        return 0

    families, skipped = available_families(args, log)
    cases = plan_cases(families, args)
    log(f"{len(cases)} cases ({len(families)} ops) x passes {', '.join(PASS_NAMES[p] for p in args.passes)}\n")
    timer = make_timer(args.device, args.min_time)
    progress = Progress(len(cases) * len(args.passes))
    rows, errors = [], []
    before = cpu_snapshot()
    for fam, spec, dtype, layout in cases:
        try:
            case_rows = run_case(fam, spec, dtype, layout, args.device, timer, args.passes, args.compile, progress)
        except Exception as e:  # noqa: BLE001  (one broken case must not lose the whole run)
            case_rows = [{"op": fam.name, "label": spec.label, "shape": list(spec.shape), "groups": spec.groups,
                          "dtype": str(dtype).replace("torch.", ""), "layout": layout,
                          "error": f"{type(e).__name__}: {e}"}]
        for r in case_rows:
            if "error" in r:
                progress.note(f"FAILED {r['op']} {tuple(r['shape'])} {r['dtype']} {r['layout']}: {r['error']}")
                errors.append(r)
            else:
                rows.append(report.derive(r))
    progress.close()
    other = foreign_cpu(before, cpu_snapshot()) if args.device == "cpu" else None
    wall = time.perf_counter() - start

    cache = l2_cache_bytes() if args.device == "cpu" else 0
    evaluated = targets.evaluate(rows, args.device, cache)
    titles = {f.name: f.title for f in op_families.FAMILIES}
    log(report.table_legend(args.device))
    log(report.format_table(rows))
    log("\n=== SUMMARY per op: geometric means; targets of the issues, '> cache' = tensors larger than "
        f"{cache / 2**20:g} MiB ===" if args.device == "cpu" else "\n=== SUMMARY per op: geometric means ===")
    log(report.format_summary(rows, evaluated, [f.name for f in families], titles))
    compile_total = sum(r.get("compile_s", 0.0) for r in rows if r["pass"] == args.passes[0])
    log(f"\n{len(rows)} rows in {wall:.0f} s (torch.compile compilation {compile_total:.0f} s)"
        + (f"; other processes used {other * 100:.0f}% of the CPU meanwhile" if other is not None else ""))
    if other is not None and other > 0.05:
        log("WARNING: the machine was shared during the run: compare ratios within this run only"
            + ("; OpenMP regions wait for descheduled workers on a busy box, --threads 1 is steadier."
               if torch.get_num_threads() > 1 and other > 0.25 else "."))
    for e in errors:
        log(f"FAILED: {e['op']} {tuple(e['shape'])} {e['dtype']} {e['layout']}: {e['error']}")

    payload.update(rows=rows, errors=errors, skipped=skipped, targets=evaluated, wall_s=wall,
                   compile_s=compile_total, other_cpu=other,
                   cache_bytes=cache, eps=op_families.EPS)
    if args.json:
        report.to_json(args.json, payload)
        log(f"JSON: {args.json}")
    if args.plot:
        where = info["cpu"] if args.device == "cpu" else info["gpu"]
        report.plot(rows, args.plot, f"normext vs torch eager ({args.device}: {where}, torch {info['torch']})")
        log(f"plot: {args.plot}")
    return 1 if errors else 0
