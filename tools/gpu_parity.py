"""GPU parity run: every normext op against torch (same dtype) and a float64 reference, forward
and backward, on shapes that take the CUDA kernels' multi-block paths (batch-1 split reductions,
channels-last row splits, odd C/G, rows up to 65,536 wide), in fp32, bf16 and fp16; a second run of
each case must be bitwise identical; then in-place inference, CUDA graph capture and a large-mean
input. One line per case ("ok" / "FAIL", then normext's / torch's max error per output); exit
status 1 on any FAIL. tools/gpu_check.sh runs it (and the small variant under compute-sanitizer).

usage: python tools/gpu_parity.py [small]    small: tiny shapes, one dtype (for compute-sanitizer)
       PARITY_DEVICE=cpu python tools/gpu_parity.py small    (checks this script itself on a CPU)
"""
import os
import sys
import time
import traceback

import torch
import torch.nn.functional as F

import normext  # noqa: F401  (loads the ops)
import normext.functional as NF

SMALL = len(sys.argv) > 1 and sys.argv[1] == "small"
dev = os.environ.get("PARITY_DEVICE", "cuda")
torch.manual_seed(0)
fails = 0


def maxerr(a, b):
    if a is None or b is None:
        return 0.0
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def format_of(x):
    """x's memory format: channels-last (3d) when its strides say so and it is not also
    contiguous (a tensor whose spatial dims are all 1 is both)."""
    for ndim, fmt in ((4, torch.channels_last), (5, torch.channels_last_3d)):
        if x.dim() == ndim and not x.is_contiguous() and x.is_contiguous(memory_format=fmt):
            return fmt
    return torch.contiguous_format


def run_case(name, make, f_ne, f_t, dtype):
    global fails
    try:
        args = make(dtype)
        args64 = [a.detach().double().requires_grad_(a.requires_grad) if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
        argsT = [a.detach().clone().requires_grad_(a.requires_grad) if torch.is_tensor(a) else a for a in args]
        out = f_ne(*args)
        out_t = f_t(*argsT)
        ref = f_t(*args64)
        g = torch.randn_like(out)
        grads_ne = torch.autograd.grad(out, [a for a in args if torch.is_tensor(a) and a.requires_grad], g)
        grads_t = torch.autograd.grad(out_t, [a for a in argsT if torch.is_tensor(a) and a.requires_grad], g)
        grads_r = torch.autograd.grad(ref, [a for a in args64 if torch.is_tensor(a) and a.requires_grad], g.double())
        # determinism: a second normext run must be bitwise equal
        out2 = f_ne(*args)
        grads2 = torch.autograd.grad(out2, [a for a in args if torch.is_tensor(a) and a.requires_grad], g)
        det = torch.equal(out, out2) and all(torch.equal(a, b) for a, b in zip(grads_ne, grads2))
        if dev == "cuda":
            torch.cuda.synchronize()
        worst = 0.0
        parts = []
        # normext keeps the input's memory format (channels-last GroupNorm / BatchNorm /
        # InstanceNorm too), which on CUDA is not torch's: compared with the input's, not torch's.
        layout_ok = out.dim() != args[0].dim() or out.is_contiguous(memory_format=format_of(args[0]))
        for label, a, b, r in [("y", out, out_t, ref)] + [
                (f"g{i}", a, b, r) for i, (a, b, r) in enumerate(zip(grads_ne, grads_t, grads_r))]:
            e_ne, e_t = maxerr(a, r), maxerr(b, r)
            scale = r.double().abs().max().item() if r.numel() else 1.0
            # within 2x torch's own error against float64, plus a floor (fp32: 1e-5, else 5e-4
            # of the magnitude)
            floor = (1e-5 if dtype == torch.float32 else 5e-4) * max(scale, 1.0)
            bad = not (e_ne <= 2 * e_t + floor) or a.shape != r.shape
            bad = bad or (label == "y" and not layout_ok)
            parts.append(f"{label}:{e_ne:.1e}/{e_t:.1e}{'!' if bad else ''}")
            worst = max(worst, e_ne / max(e_t, 1e-12) if bad else 0)
            if bad:
                fails += 1
        flag = "FAIL" if worst or not det else "ok  "
        if not det:
            fails += 1
        print(f"{flag} {name:48s} {str(dtype)[6:]:9s} det={int(det)} " + " ".join(parts), flush=True)
    except Exception as exc:  # noqa: BLE001
        fails += 1
        print(f"FAIL {name:48s} {str(dtype)[6:]:9s} EXC {type(exc).__name__}: {str(exc)[:300]}", flush=True)
        traceback.print_exc(limit=3)


def t(*shape, dtype, cl=False, grad=True, scale=1.0, shift=0.0):
    x = torch.randn(*shape, device=dev) * scale + shift
    x = x.to(dtype)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    return x.requires_grad_(grad)


def p(n, dtype=torch.float32):
    return (1 + 0.1 * torch.randn(n, device=dev)).to(dtype).requires_grad_(True)


GN_SHAPES = [(2, 64, 8, 8, 32), (1, 6, 5, 7, 3), (3, 12, 17, 2), (2, 8, 3, 4, 5, 4)] if SMALL else [
    (1, 512, 512, 512, 32),   # batch 1, huge groups: split reduction
    (2, 320, 64, 64, 32), (8, 256, 25, 38, 32), (1, 6, 5, 7, 3), (4, 96, 33, 31, 32),
    (2, 1280, 16, 16, 32), (1, 64, 16, 32, 32, 8), (3, 30, 101, 6), (2, 256, 1, 1, 32),
    (1, 128, 1000, 4),  # 3D input
]


def gn_cases(dtype):
    for sh in GN_SHAPES:
        *shape, G = sh
        C = shape[1]
        for cl in ([False, True] if len(shape) in (4, 5) else [False]):
            for act in (None, "silu"):
                tag = f"gn{tuple(shape)}G{G}{' cl' if cl else ''}{' ' + act if act else ''}"
                def make(d, shape=shape, cl=cl, C=C):
                    return [t(*shape, dtype=d, cl=cl), p(C), p(C)]
                def f_ne(x, w, b, G=G, act=act):
                    return NF.group_norm(x, G, w, b, 1e-5, activation=act)
                def f_t(x, w, b, G=G, act=act):
                    y = F.group_norm(x, G, w.to(x.dtype), b.to(x.dtype), 1e-5)
                    return F.silu(y) if act else y
                run_case(tag, make, f_ne, f_t, dtype)
        # add_group_norm
        if len(shape) == 4:
            def make(d, shape=shape, C=C):
                return [t(*shape, dtype=d), t(*shape, dtype=d), p(C), p(C)]
            run_case(f"add_gn{tuple(shape)}G{G}", make,
                     lambda x, r, w, b, G=G: torch.cat([o.flatten() for o in NF.add_group_norm(x, r, G, w, b)]),
                     lambda x, r, w, b, G=G: torch.cat([F.group_norm(x + r, G, w.to(x.dtype), b.to(x.dtype)).flatten(), (x + r).flatten()]),
                     dtype)


ROW_SHAPES = [(4, 7), (3, 5, 33), (2, 1030)] if SMALL else [
    (8 * 512, 768), (2 * 2048, 4096), (2048, 8192), (3, 5, 1000), (7, 33), (1, 65536), (4096, 127), (2, 3, 20000)]


def row_cases(dtype):
    for sh in ROW_SHAPES:
        H = sh[-1]
        def mk(d, sh=sh, H=H):
            return [t(*sh, dtype=d), p(H), p(H)]
        run_case(f"ln{sh}", mk, lambda x, w, b, H=H: NF.layer_norm(x, [H], w, b),
                 lambda x, w, b, H=H: F.layer_norm(x, [H], w.to(x.dtype), b.to(x.dtype)), dtype)
        def mk2(d, sh=sh, H=H):
            return [t(*sh, dtype=d), p(H)]
        run_case(f"rms{sh}", mk2, lambda x, w, H=H: NF.rms_norm(x, [H], w, 1e-6),
                 lambda x, w, H=H: F.rms_norm(x, [H], w.to(x.dtype), 1e-6), dtype)
        def mk3(d, sh=sh, H=H):
            return [t(*sh, dtype=d), t(*sh, dtype=d), p(H), p(H)]
        run_case(f"add_ln{sh}", mk3,
                 lambda x, r, w, b, H=H: torch.cat([o.flatten() for o in NF.add_layer_norm(x, r, [H], w, b)]),
                 lambda x, r, w, b, H=H: torch.cat([F.layer_norm(x + r, [H], w.to(x.dtype), b.to(x.dtype)).flatten(), (x + r).flatten()]),
                 dtype)
        def mk3r(d, sh=sh, H=H):
            return [t(*sh, dtype=d), t(*sh, dtype=d), p(H)]
        run_case(f"add_rms{sh}", mk3r,
                 lambda x, r, w, H=H: torch.cat([o.flatten() for o in NF.add_rms_norm(x, r, [H], w, 1e-6)]),
                 lambda x, r, w, H=H: torch.cat([F.rms_norm(x + r, [H], w.to(x.dtype), 1e-6).flatten(), (x + r).flatten()]),
                 dtype)
        def mk4(d, sh=sh, H=H):
            return [t(*sh, dtype=d), torch.tensor([0.5], device=dev).requires_grad_(True), p(H), p(H)]
        run_case(f"dyt{sh}", mk4, lambda x, a, w, b: NF.dyt(x, a, w, b),
                 lambda x, a, w, b: w.to(x.dtype) * torch.tanh(a.to(x.dtype) * x) + b.to(x.dtype), dtype)


BN_SHAPES = [(4, 3, 5, 5), (2, 5, 7), (3, 4, 2, 3, 5)] if SMALL else [
    (16, 256, 56, 56), (16, 1024, 14, 14), (2, 64, 32, 56, 56), (1, 512, 7, 7), (512, 3, 10, 10),
    (3, 7, 1001), (4096, 64), (2, 3, 2, 3, 1)]


def bn_cases(dtype):
    for sh in BN_SHAPES:
        C = sh[1]
        for cl in ([False, True] if len(sh) in (4, 5) else [False]):
            for training in (True, False):
                rm0 = torch.randn(C, device=dev) * 0.1
                rv0 = torch.rand(C, device=dev) + 0.5
                def mk(d, sh=sh, cl=cl, C=C):
                    return [t(*sh, dtype=d, cl=cl), p(C), p(C)]
                state = {}
                def f_ne(x, w, b, training=training, rm0=rm0, rv0=rv0):
                    rm, rv = rm0.clone(), rv0.clone()
                    y = NF.batch_norm(x, rm, rv, w, b, training, 0.1, 1e-5)
                    state["ne"] = (rm, rv)
                    return y
                def f_t(x, w, b, training=training, rm0=rm0, rv0=rv0):
                    rm, rv = rm0.clone().to(x.dtype if x.dtype == torch.float64 else torch.float32), rv0.clone().to(x.dtype if x.dtype == torch.float64 else torch.float32)
                    y = F.batch_norm(x, rm, rv, w.to(x.dtype) if x.dtype == torch.float64 else w, b.to(x.dtype) if x.dtype == torch.float64 else b, training, 0.1, 1e-5)
                    state["t" if x.dtype != torch.float64 else "r"] = (rm, rv)
                    return y
                run_case(f"bn{sh}{' cl' if cl else ''}{' train' if training else ' eval'}", mk, f_ne, f_t, dtype)
                if "ne" in state and "r" in state:
                    e = max(maxerr(state["ne"][0], state["r"][0]), maxerr(state["ne"][1], state["r"][1]))
                    et = max(maxerr(state["t"][0], state["r"][0]), maxerr(state["t"][1], state["r"][1]))
                    bad = e > 2 * et + 1e-5
                    print(f"{'FAIL' if bad else 'ok  '}   running stats err {e:.1e} torch {et:.1e}")
        # instance norm
        if len(sh) >= 3:
            def mk(d, sh=sh, C=C):
                return [t(*sh, dtype=d), p(C), p(C)]
            run_case(f"in{sh}", mk, lambda x, w, b: NF.instance_norm(x, None, None, w, b),
                     lambda x, w, b: F.instance_norm(x, None, None, w.to(x.dtype) if x.dtype == torch.float64 else w, b.to(x.dtype) if x.dtype == torch.float64 else b), dtype)


t0 = time.time()
for dtype in [torch.float32, torch.bfloat16] + ([] if SMALL else [torch.float16]):
    gn_cases(dtype)
    row_cases(dtype)
    bn_cases(dtype)
    if SMALL:
        break
# in-place inference, CUDA graph capture, a large mean
try:
    x = torch.randn(2, 64, 32, 32, device=dev)
    w, b = p(64).detach(), p(64).detach()
    ref = F.silu(F.group_norm(x, 32, w, b))
    with torch.no_grad():
        y = NF.group_norm(x.clone(), 32, w, b, activation="silu", inplace=True)
    e = maxerr(y, ref)
    print(f"{'FAIL' if e > 1e-5 else 'ok  '} inplace gn+silu err {e:.1e}")
    fails += e > 1e-5
    if dev == "cuda":
        # capture once (after a warm-up on a side stream), replay on new data in place
        static_x = x.clone()
        graph = torch.cuda.CUDAGraph()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                NF.group_norm(static_x, 32, w, b)
        torch.cuda.current_stream().wait_stream(side)
        with torch.cuda.graph(graph):
            static_y = NF.group_norm(static_x, 32, w, b)
        static_x.copy_(torch.randn_like(x))
        graph.replay()
        torch.cuda.synchronize()
        e = maxerr(static_y, F.group_norm(static_x, 32, w, b))
        print(f"{'FAIL' if e > 1e-5 else 'ok  '} cuda graph replay err {e:.1e}")
        fails += e > 1e-5
    # large mean numerics: normext's error against float64 next to torch's
    x = torch.randn(*((1, 512, 256, 256) if not SMALL else (1, 64, 16, 16)), device=dev) + 1e4
    y = NF.group_norm(x, 32)
    r = F.group_norm(x.double(), 32)
    yt = F.group_norm(x, 32)
    print(f"     large-mean gn err {maxerr(y, r):.1e} torch {maxerr(yt, r):.1e}")
except Exception as exc:  # noqa: BLE001
    fails += 1
    print("FAIL extra checks", type(exc).__name__, exc)
    traceback.print_exc(limit=4)
print(f"PARITY DONE fails={fails} in {time.time() - t0:.1f}s")
sys.exit(1 if fails else 0)
