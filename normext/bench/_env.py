"""Environment of a benchmark run: allocator (tcmalloc re-exec), machine description, CPU load.

Only the standard library is imported at module level.
"""

import ctypes.util
import math
import os
import platform
import sys
import time

TCMALLOC_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4",
    "/usr/lib64/libtcmalloc_minimal.so.4",
    "/usr/lib/libtcmalloc_minimal.so.4",
)
_REEXEC_MARK = "NORMEXT_BENCH_REEXEC"


def _find_tcmalloc():
    for path in TCMALLOC_CANDIDATES:
        if os.path.exists(path):
            return path
    return ctypes.util.find_library("tcmalloc_minimal") or ctypes.util.find_library("tcmalloc")


def _tcmalloc_loaded():
    try:
        with open("/proc/self/maps") as f:
            return "tcmalloc" in f.read()
    except OSError:
        return "tcmalloc" in os.environ.get("LD_PRELOAD", "")


def ensure_tcmalloc():
    """Return a one-line description of the allocator, re-exec'ing under tcmalloc if possible.

    NB: under glibc malloc every large output (> mmap threshold) is a fresh mmap, so each timed
    call pays its page faults (~14 ms for 32 MB on the 2-core box), more than the kernel itself.
    tcmalloc keeps freed pages, so repeated calls reuse warm memory, like a real training loop.
    TCMALLOC_RELEASE_RATE=0 makes it keep all of them (unless the caller set it).
    """
    if _tcmalloc_loaded():
        rate = os.environ.get("TCMALLOC_RELEASE_RATE")
        return "tcmalloc (preloaded" + ("" if rate is None else f", TCMALLOC_RELEASE_RATE={rate}") + ")"
    lib = _find_tcmalloc()
    if lib and not os.environ.get(_REEXEC_MARK):
        env = dict(os.environ)
        env["LD_PRELOAD"] = (lib + " " + env.get("LD_PRELOAD", "")).strip()
        # NB: by default tcmalloc hands freed pages back to the OS a little at a time, so now and
        # then a large output lands on released pages and a timed call pays their page faults
        # again (seen: RMSNorm 1x2048x8192 fp32 forward 21 ms in a full run, 5.3 ms alone).
        env.setdefault("TCMALLOC_RELEASE_RATE", "0")
        env[_REEXEC_MARK] = "1"
        sys.stdout.flush()
        sys.stderr.flush()
        # NB: orig_argv keeps ``-m normext.bench``; sys.argv[0] would be the path of __main__.py,
        # which breaks the package's imports when run as a script.
        os.execve(sys.executable, list(getattr(sys, "orig_argv", [sys.executable] + sys.argv)), env)
    msg = "glibc malloc — large tensors include page-fault time"
    print("WARNING: allocator: " + msg + " (install libtcmalloc-minimal4)", file=sys.stderr)
    return msg


def l2_cache_bytes(default=2 << 20):
    """Per-core L2 size from sysfs (e.g. '2048K'), else ``default``."""
    try:
        with open("/sys/devices/system/cpu/cpu0/cache/index2/size") as f:
            text = f.read().strip().upper()
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        return int(text.rstrip("KMG")) * scale
    except (OSError, ValueError):
        return default


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(allocator, device="cpu"):
    """What the numbers were measured on: goes into the JSON and the header of the report."""
    import torch

    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "l2_bytes_per_core": l2_cache_bytes(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "allocator": allocator,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        info["gpu"] = props.name
        info["gpu_memory_bytes"] = props.total_memory
        info["gpu_sms"] = props.multi_processor_count
        info["gpu_l2_bytes"] = getattr(props, "L2_cache_size", None)
        info["cuda"] = torch.version.cuda
    return info


def cpu_snapshot():
    """(wall s, CPU-busy s of the whole machine, CPU s of this process) for foreign_cpu()."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait
    own = os.times()
    return time.perf_counter(), busy / os.sysconf("SC_CLK_TCK"), own.user + own.system


def foreign_cpu(before, after):
    """Share of the machine's CPU time used by other processes between two snapshots.

    NB: the box is shared (builds, tests); their load inflates medians in steps of the
    scheduler quantum, so every row reports it instead of silently printing bad numbers.
    """
    wall = after[0] - before[0]
    other = (after[1] - before[1]) - (after[2] - before[2])
    return max(other, 0.0) / (wall * (os.cpu_count() or 1)) if wall > 0 else 0.0


def gbps(nbytes, seconds):
    return nbytes / seconds / 1e9


def geomean(values):
    values = [v for v in values if v is not None and v > 0 and math.isfinite(v)]
    if not values:
        return None
    return math.exp(sum(math.log(v) for v in values) / len(values))
