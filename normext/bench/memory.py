"""Memory report: bytes saved for backward, and peak memory of an inference pass.

(a) Saved-for-backward bytes (torch.autograd.graph.saved_tensors_hooks) of GroupNorm, GN+SiLU and a
    diffusion ResBlock (GN, SiLU, conv, GN, SiLU, conv), normext against torch.
(b) Peak activation memory of an inference pass through the last stage of an SD-VAE-like decoder
    (upsample, conv, two ResBlocks, GN+SiLU, conv_out) at high resolution: normext fused GN+SiLU,
    in place wherever the input is dead afterwards, against torch's GroupNorm then SiLU.
    CUDA: torch.cuda.max_memory_allocated. CPU: LiveTensorBytes, the bytes of the live storages
    created by the ops of the pass (a dispatch mode with weakref finalizers: no custom allocator;
    buffers an op allocates and frees inside its own kernel are not seen, on either side).
"""

import weakref

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from normext.bench.ops import EPS, _has_activation
from normext.bench.runner import SHORT_DTYPE, saved_bytes


class LiveTensorBytes(TorchDispatchMode):
    """Live bytes of the storages created by ops under the mode: current, peak and total."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self.total = 0
        self._tracked = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out

    def _track(self, t):
        # NB: outputs are seen once the op returns, while its inputs are still referenced, so the
        # peak includes inputs and outputs of the op. Views and in-place results share a storage.
        storage = t.untyped_storage()
        key, n = storage.data_ptr(), storage.nbytes()
        if n == 0 or key in self._tracked:
            return
        self._tracked.add(key)
        self.live += n
        self.total += n
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._release, key, n)

    def _release(self, key, n):
        self._tracked.discard(key)
        self.live -= n


def peak_bytes(fn, device):
    """(peak bytes of activations allocated while running fn(), total bytes allocated or None)."""
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        del out
        return peak, None
    with LiveTensorBytes() as mode:
        out = fn()
        peak, total = mode.peak, mode.total
        del out
    return peak, total


# ---- the networks --------------------------------------------------------------------------------


def _conv(cin, cout, k, dtype, device, gen):
    w = torch.randn((cout, cin, k, k), generator=gen) * (1.0 / (cin * k * k) ** 0.5)
    return w.to(dtype=dtype, device=device), torch.zeros(cout, dtype=dtype, device=device)


def _norm(c, dtype, device):
    return torch.ones(c, dtype=dtype, device=device), torch.zeros(c, dtype=dtype, device=device)


def resblock_params(cin, cout, dtype, device, gen):
    p = {"n1": _norm(cin, dtype, device), "c1": _conv(cin, cout, 3, dtype, device, gen),
         "n2": _norm(cout, dtype, device), "c2": _conv(cout, cout, 3, dtype, device, gen)}
    if cin != cout:
        p["sc"] = _conv(cin, cout, 1, dtype, device, gen)
    return p


def resblock_torch(x, p, groups):
    """diffusers' ResnetBlock2D (no time embedding): GroupNorm and SiLU as separate statements."""
    h = F.group_norm(x, groups, *p["n1"], EPS)
    h = F.silu(h)
    h = F.conv2d(h, *p["c1"], padding=1)
    h = F.group_norm(h, groups, *p["n2"], EPS)
    h = F.silu(h)
    h = F.conv2d(h, *p["c2"], padding=1)
    if "sc" in p:
        x = F.conv2d(x, *p["sc"])
    return x + h


def resblock_normext(x, p, groups, inplace):
    """The same block on normext's fused GN+SiLU; in place (inference only) where the input is dead."""
    import normext.functional as nf

    h = nf.group_norm(x, groups, *p["n1"], EPS, activation="silu")  # x is the residual: keep it
    h = F.conv2d(h, *p["c1"], padding=1)
    h = nf.group_norm(h, groups, *p["n2"], EPS, activation="silu", inplace=inplace)
    h = F.conv2d(h, *p["c2"], padding=1)
    if "sc" in p:
        x = F.conv2d(x, *p["sc"])
    return x + h


def decoder_stage_params(c, dtype, device):
    gen = torch.Generator().manual_seed(0)
    return {"up": _conv(2 * c, 2 * c, 3, dtype, device, gen),
            "rb1": resblock_params(2 * c, c, dtype, device, gen),
            "rb2": resblock_params(c, c, dtype, device, gen),
            "n_out": _norm(c, dtype, device), "c_out": _conv(c, 3, 3, dtype, device, gen)}


def decoder_stage(x, p, groups, impl):
    """SD VAE decoder's last stage: Upsample2D (nearest + conv), 2 ResBlocks, norm_out, SiLU, conv_out."""
    x = F.interpolate(x, scale_factor=2.0, mode="nearest")
    x = F.conv2d(x, *p["up"], padding=1)
    if impl == "torch":
        x = resblock_torch(x, p["rb1"], groups)
        x = resblock_torch(x, p["rb2"], groups)
        x = F.group_norm(x, groups, *p["n_out"], EPS)
        x = F.silu(x)
    else:
        import normext.functional as nf

        x = resblock_normext(x, p["rb1"], groups, inplace=True)
        x = resblock_normext(x, p["rb2"], groups, inplace=True)
        x = nf.group_norm(x, groups, *p["n_out"], EPS, activation="silu", inplace=True)
    return F.conv2d(x, *p["c_out"], padding=1)


# ---- the report ------------------------------------------------------------------------------------

# (batch, channels, height, width, groups) of the saved-bytes cases, and (channels, output
# resolution) of the decoder stage: an SD U-Net level and the SD VAE decoder's last stage at
# 256x256 output (the real one runs at 512x512: 4x the bytes, same ratios).
SAVED_SHAPE = {"full": (2, 320, 64, 64, 32), "tiny": (2, 8, 8, 8, 4)}
DECODER = {"full": (128, 256, 32), "tiny": (8, 16, 4)}


def run_memory(dtypes, device, size="full", log=print):
    """Measure (a) and (b) for every dtype; return a JSON-ready dict and print a report."""
    import normext.functional as nf

    fused_missing = _has_activation(nf)
    result = {"saved": [], "peak": [], "skipped": []}
    n, c, h, w, g = SAVED_SHAPE[size]
    for dtype in dtypes:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn((n, c, h, w), generator=gen).to(dtype=dtype, device=device)
        weight, bias = _norm(c, dtype, device)
        p = resblock_params(c, c, dtype, device, gen)
        cases = [("GroupNorm", lambda x, w, b: nf.group_norm(x, g, w, b, EPS),
                  lambda x, w, b: F.group_norm(x, g, w, b, EPS))]
        if fused_missing is None:
            cases += [
                ("GN+SiLU", lambda x, w, b: nf.group_norm(x, g, w, b, EPS, activation="silu"),
                 lambda x, w, b: F.silu(F.group_norm(x, g, w, b, EPS))),
                ("ResBlock (GN,SiLU,conv)x2", lambda x, w, b: resblock_normext(x, p, g, inplace=False),
                 lambda x, w, b: resblock_torch(x, p, g)),
            ]
        for name, ne_fn, torch_fn in cases:
            ne = saved_bytes(ne_fn, [x, weight, bias])
            ref = saved_bytes(torch_fn, [x, weight, bias])
            result["saved"].append({"what": name, "shape": [n, c, h, w], "groups": g,
                                    "dtype": SHORT_DTYPE[dtype], "normext_bytes": ne, "torch_bytes": ref,
                                    "activation_bytes": x.numel() * x.element_size()})
        del x, p

        if fused_missing is not None:
            continue
        ch, res, groups = DECODER[size]
        params = decoder_stage_params(ch, dtype, device)
        z = torch.randn((1, 2 * ch, res // 2, res // 2), generator=gen).to(dtype=dtype, device=device)
        with torch.no_grad():
            out_t = decoder_stage(z, params, groups, "torch")
            out_n = decoder_stage(z, params, groups, "normext")
            err = ((out_n.float() - out_t.float()).abs().max() / out_t.float().abs().max().clamp_min(1e-6)).item()
            del out_t, out_n
            peak_t, total_t = peak_bytes(lambda: decoder_stage(z, params, groups, "torch"), device)
            peak_n, total_n = peak_bytes(lambda: decoder_stage(z, params, groups, "normext"), device)
        result["peak"].append({"what": "SD-VAE decoder last stage", "channels": ch, "resolution": res,
                               "groups": groups, "dtype": SHORT_DTYPE[dtype], "device": device,
                               "normext_peak_bytes": peak_n, "torch_peak_bytes": peak_t,
                               "normext_total_bytes": total_n, "torch_total_bytes": total_t,
                               "activation_bytes": ch * res * res * torch.empty((), dtype=dtype).element_size(),
                               "max_rel_diff": err})
    if fused_missing is not None:
        result["skipped"].append(f"GN+SiLU, ResBlock and decoder rows: {fused_missing}")
    log(format_memory(result))
    return result


def _mb(v):
    return "-" if v is None else f"{v / 1e6:.1f}"


def format_memory(result):
    lines = ["(a) bytes saved for backward (saved_tensors_hooks, distinct storages, inputs included)",
             f"{'what':<28}{'shape':<20}{'dtype':<6}{'normext MB':>11}{'torch MB':>10}{'torch/normext':>14}"]
    for r in result["saved"]:
        ratio = r["torch_bytes"] / r["normext_bytes"] if r["normext_bytes"] else float("nan")
        lines.append(f"{r['what']:<28}{'x'.join(map(str, r['shape'])) + ' G' + str(r['groups']):<20}"
                     f"{r['dtype']:<6}{_mb(r['normext_bytes']):>11}{_mb(r['torch_bytes']):>10}{ratio:>13.2f}x")
    if result["peak"]:
        lines += ["", "(b) peak activation memory of an inference pass (torch.no_grad): SD-VAE decoder last "
                  "stage\n    (upsample 2x + conv, ResBlock 2C->C, ResBlock C->C, GN+SiLU, conv_out); normext "
                  "GN+SiLU in place\n    where its input is dead; 'unit' = one C-channel activation at the "
                  "output resolution",
                  f"{'C, resolution':<20}{'dtype':<6}{'normext MB':>11}{'torch MB':>10}{'units':>13}"
                  f"{'torch/normext':>14}{'allocated MB ne/torch':>23}"]
        for r in result["peak"]:
            ratio = r["torch_peak_bytes"] / r["normext_peak_bytes"] if r["normext_peak_bytes"] else float("nan")
            unit = r["activation_bytes"]
            units = f"{r['normext_peak_bytes'] / unit:.1f}/{r['torch_peak_bytes'] / unit:.1f}"
            alloc = (f"{_mb(r['normext_total_bytes'])}/{_mb(r['torch_total_bytes'])}"
                     if r["normext_total_bytes"] is not None else "-")
            lines.append(f"{str(r['channels']) + ', ' + str(r['resolution']) + 'x' + str(r['resolution']):<20}"
                         f"{r['dtype']:<6}{_mb(r['normext_peak_bytes']):>11}{_mb(r['torch_peak_bytes']):>10}"
                         f"{units:>13}{ratio:>13.2f}x{alloc:>23}")
    for s in result["skipped"]:
        lines.append(f"skipped: {s}")
    return "\n".join(lines)
