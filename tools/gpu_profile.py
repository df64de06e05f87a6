"""Where a CUDA call's time goes: for each case, normext against torch, forward and backward, the
host time to enqueue one call ('host'), the wall time per call when calls run back to back ('wall'),
and the GPU kernel time per call with the kernels by name (torch.profiler). host ~ wall means the
call is bound by its host side (Python, dispatch, launches); kernel ~ wall means by the kernels.

usage: python tools/gpu_profile.py [FILTER]      (cases whose name contains FILTER)
       PROFILE_DEVICE=cpu python tools/gpu_profile.py "(4096, 768) fp32"   (checks the script)
"""
import os
import sys
import time
from collections import defaultdict

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import normext.functional as NF

dev = os.environ.get("PROFILE_DEVICE", "cuda")   # cpu: checks this script itself
sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
ITERS = 30
only = sys.argv[1] if len(sys.argv) > 1 else ""


def t(*shape, dtype=torch.float32, cl=False, grad=True):
    x = torch.randn(*shape, device=dev).to(dtype)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    return x.requires_grad_(grad)


def p(n):
    return (1 + 0.1 * torch.randn(n, device=dev)).requires_grad_(True)


def timed(fn):
    """(host µs to enqueue one call, wall µs per call)"""
    for _ in range(3):
        fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(ITERS):
        fn()
    t1 = time.perf_counter()
    sync()
    t2 = time.perf_counter()
    return (t1 - t0) / ITERS * 1e6, (t2 - t0) / ITERS * 1e6


def kernels(fn):
    """{kernel name: µs per call}, total µs per call, launches per call"""
    fn()
    sync()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            fn()
        sync()
    per = defaultdict(float)
    n = 0
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            per[e.name] += e.time_range.elapsed_us() / 10
            n += 1
    return per, sum(per.values()), n / 10


def short(name):
    name = name.replace("(anonymous namespace)::", "").replace("void ", "")
    return name.split("(")[0].split("<")[0][-70:]


def case(name, make, f_ne, f_t):
    if only not in name:
        return
    for label, f in (("normext", f_ne), ("torch", f_t)):
        args = make()
        grads_of = [a for a in args if torch.is_tensor(a) and a.requires_grad]
        out = f(*args)
        out = out[0] if isinstance(out, tuple) else out
        g = torch.randn_like(out)

        def fwd():
            with torch.no_grad():
                f(*args)

        def fwd_grad():
            f(*args)

        def bwd():
            torch.autograd.grad(out, grads_of, g, retain_graph=True)

        for pas, fn in (("fwd", fwd_grad), ("fwd-nograd", fwd), ("bwd", bwd)):
            host, wall = timed(fn)
            per, ktot, nk = kernels(fn)
            top = sorted(per.items(), key=lambda kv: -kv[1])[:5]
            print(f"{name:34s} {label:7s} {pas:10s} host {host:7.1f} wall {wall:7.1f} kernels {ktot:7.1f} us"
                  f" ({nk:.0f} launches)", flush=True)
            if label == "normext" or pas == "fwd":
                for k, v in top:
                    print(f"      {v:8.1f} us  {short(k)}")


torch.backends.cudnn.benchmark = False
print("torch", torch.__version__, torch.cuda.get_device_name() if dev == "cuda" else "cpu")
for dt, dn in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
    for shape, G in (((2, 1280, 16, 16), 32), ((2, 320, 64, 64), 32), ((1, 256, 256, 256), 32)):
        for cl in (False, True):
            C = shape[1]
            case(f"gn {shape} {'cl' if cl else 'nchw'} {dn}", lambda: [t(*shape, dtype=dt, cl=cl), p(C), p(C)],
                 lambda x, w, b: NF.group_norm(x, G, w, b),
                 lambda x, w, b: F.group_norm(x, G, w.to(x.dtype), b.to(x.dtype)))
    case(f"gn_silu (2, 320, 64, 64) nchw {dn}", lambda: [t(2, 320, 64, 64, dtype=dt), p(320), p(320)],
         lambda x, w, b: NF.group_norm(x, 32, w, b, activation="silu"),
         lambda x, w, b: F.silu(F.group_norm(x, 32, w.to(x.dtype), b.to(x.dtype))))
    for rows, H in ((4096, 768), (4096, 4096)):
        case(f"ln ({rows}, {H}) {dn}", lambda: [t(rows, H, dtype=dt), p(H), p(H)],
             lambda x, w, b: NF.layer_norm(x, [H], w, b),
             lambda x, w, b: F.layer_norm(x, [H], w.to(x.dtype), b.to(x.dtype)))
        case(f"rms ({rows}, {H}) {dn}", lambda: [t(rows, H, dtype=dt), p(H)],
             lambda x, w: NF.rms_norm(x, [H], w, 1e-6),
             lambda x, w: F.rms_norm(x, [H], w.to(x.dtype), 1e-6))
        case(f"dyt ({rows}, {H}) {dn}", lambda: [t(rows, H, dtype=dt), torch.tensor([0.5], device=dev, requires_grad=True), p(H), p(H)],
             lambda x, a, w, b: NF.dyt(x, a, w, b),
             lambda x, a, w, b: w.to(x.dtype) * torch.tanh(a.to(x.dtype) * x) + b.to(x.dtype))
    for shape in ((16, 256, 56, 56), (16, 1024, 14, 14)):
        for cl in (False, True):
            C = shape[1]
            rm, rv = torch.zeros(C, device=dev), torch.ones(C, device=dev)
            case(f"bn {shape} {'cl' if cl else 'nchw'} {dn}", lambda: [t(*shape, dtype=dt, cl=cl), p(C), p(C)],
                 lambda x, w, b: NF.batch_norm(x, rm, rv, w, b, True, 0.1, 1e-5),
                 lambda x, w, b: F.batch_norm(x, rm, rv, w, b, True, 0.1, 1e-5))
print("PROFILE DONE")
