"""Running one case: correctness guard, saved-tensor bytes, torch.compile baseline, timings."""

import sys
import time

import torch

from normext.bench._env import cpu_snapshot, foreign_cpu
from normext.bench.ops import memory_format

PASS_NAMES = {"fwd": "fwd", "bwd": "bwd", "fwdbwd": "fwd+bwd"}
SHORT_DTYPE = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
# Loose guard against a broken kernel, not a precision test (tests/ do that): max abs error
# relative to the reference's magnitude.
TOL = {torch.float32: 1e-3, torch.bfloat16: 5e-2, torch.float16: 1e-2}


class Progress:
    """``[12/88] layer_norm (4096, 4096) bf16 fwd`` on stderr: one updating line on a terminal."""

    def __init__(self, total, stream=None, clock=time.perf_counter):
        self.total = total
        self.done = 0
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.clock = clock
        self.start = clock()

    def eta(self):
        """Estimated seconds left (from the average so far), None before the first step ends."""
        if self.done < 2 or self.done >= self.total:
            return None
        return (self.clock() - self.start) / (self.done - 1) * (self.total - self.done + 1)

    def step(self, text):
        self.done += 1
        line = f"[{self.done}/{self.total}] {text}"
        eta = self.eta()
        if eta is not None:
            line += f"  (~{eta / 60:.0f} min left)" if eta >= 90 else f"  (~{eta:.0f} s left)"
        if self.tty:
            self.stream.write("\r\033[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def note(self, text):
        """A line that stays (skips, failures), above the progress line."""
        self.stream.write(("\r\033[K" if self.tty else "") + text + "\n")
        self.stream.flush()

    def close(self):
        if self.tty and self.done:
            self.stream.write("\r\033[K")
            self.stream.flush()


def saved_bytes(fn, inputs):
    """Bytes of the distinct storages autograd saves for backward in ``fn(*inputs)``.

    Counted with torch.autograd.graph.saved_tensors_hooks, so it is what the graph keeps alive
    between forward and backward (inputs that are saved count too, once per storage).
    """
    req = [t.detach().requires_grad_() for t in inputs]
    seen = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.nbytes():
            seen[(storage.device.type, storage.data_ptr())] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        outs = fn(*req)
    del outs
    return sum(seen.values())


def pass_fn(pass_, fn, inputs, grads):
    """The callable timed for one pass of ``fn``."""
    if pass_ == "fwd":
        plain = [t.detach() for t in inputs]
        return lambda: fn(*plain)
    req = [t.detach().requires_grad_() for t in inputs]
    if pass_ == "fwdbwd":
        def run():
            return torch.autograd.grad(fn(*req), req, grads)

        return run
    if pass_ == "bwd":
        outs = fn(*req)  # one graph, backward repeated through it
        return lambda: torch.autograd.grad(outs, req, grads, retain_graph=True)
    raise ValueError(pass_)


def _max_rel_err(got, ref):
    err = (got.float() - ref.float()).abs().max().item() if got.numel() else 0.0
    scale = max(ref.float().abs().max().item() if ref.numel() else 0.0, 1e-6)
    return err / scale


def _float64_reference(built, grads):
    """Outputs and input gradients of torch eager run in float64: the judge when normext and torch
    disagree (torch's own low-precision result can be the less accurate one, e.g. its bf16
    LayerNorm weight gradient), or None when the eager code cannot run in float64."""
    try:
        ins = [t.detach().double().requires_grad_() for t in built.inputs]
        outs = built.eager(*ins)
        g = torch.autograd.grad(outs, ins, [t.double() for t in grads])
    except (RuntimeError, TypeError):
        return None
    return [o.detach() for o in outs], list(g)


def check(built, dtype, layout, spatial, grads):
    """None if normext matches torch eager (outputs, layout, every gradient), else why not.

    A result further than the dtype's tolerance from torch's still passes when it is no further
    from the float64 result than 2x torch's own error (the test suite's rule)."""
    tol = TOL[dtype]
    reference = []  # computed on first need

    def mismatch(i, a, b, what):
        rel = _max_rel_err(a, b)
        if rel <= tol:  # also catches nan
            return None
        if not reference:
            reference.append(_float64_reference(built, grads))
        ref = reference[0]
        if ref is not None:
            r = ref[0][i] if what == "output" else ref[1][i]
            ours, theirs = _max_rel_err(a.double(), r), _max_rel_err(b.double(), r)
            if ours <= max(2 * theirs, tol):
                return None
            return (f"{what} {i}: max error {ours:.3g} of its magnitude vs float64 "
                    f"(torch: {theirs:.3g})")
        return f"{what} {i}: max error {rel:.3g} of its magnitude > {tol:g}"

    outs_ne, outs_ref = built.normext(*built.inputs), built.eager(*built.inputs)
    for i, (a, b) in enumerate(zip(outs_ne, outs_ref)):
        if a.shape != b.shape:
            return f"output {i}: shape {tuple(a.shape)}, torch {tuple(b.shape)}"
        error = mismatch(i, a, b, "output")
        if error:
            return error
    if spatial:
        # NB: a layout torch keeps and normext loses is a copy in every next layer (an error
        # here); torch itself returns contiguous outputs for some ops (instance_norm).
        fmt = memory_format(built.x.dim(), layout)
        if outs_ref[0].is_contiguous(memory_format=fmt) and not outs_ne[0].is_contiguous(memory_format=fmt):
            return f"output strides {outs_ne[0].stride()}: torch keeps {layout} ({outs_ref[0].stride()})"
    g_ne = pass_fn("fwdbwd", built.normext, built.inputs, grads)()
    g_ref = pass_fn("fwdbwd", built.eager, built.inputs, grads)()
    for i, (a, b) in enumerate(zip(g_ne, g_ref)):
        error = mismatch(i, a, b, "gradient of input")
        if error:
            return error
    return None


def make_grads(built, fn=None):
    """Upstream gradients of the outputs of ``fn`` (default torch eager), in those outputs'
    layouts, as in a real backward: the layer after a norm hands its gradient back laid out as the
    norm's output. The values are the same for every ``fn``; only the layout follows it (an
    InstanceNorm output is NCHW from torch, channels-last from normext on a channels-last input)."""
    gen = torch.Generator().manual_seed(1)
    outs = (fn or built.eager)(*[t.detach() for t in built.inputs])
    return tuple(torch.empty_like(o).copy_(torch.randn(o.shape, generator=gen)) for o in outs)


def run_case(family, spec, dtype, layout, device, timer, passes, use_compile, progress):
    """Rows (one per pass) of one case; a case that fails the guard gives one row with 'error'."""
    case = {"op": family.name, "label": spec.label, "shape": list(spec.shape), "groups": spec.groups,
            "dtype": SHORT_DTYPE[dtype], "layout": layout, "device": device}
    start = time.perf_counter()
    desc = f"{family.name} {tuple(spec.shape)} {case['dtype']}" + (
        f" {'NCHW' if layout == 'contiguous' else 'channels_last'}" if family.spatial else "")
    built = family.build(spec, dtype, layout, device)
    grads = make_grads(built)
    normext_grads = make_grads(built, built.normext)
    error = check(built, dtype, layout, family.spatial, grads)
    if error:
        for p in passes:
            progress.step(f"{desc} {PASS_NAMES[p]} (wrong result: skipped)")
        return [dict(case, error=f"normext differs from torch: {error}")]

    case["nbytes"] = built.x.numel() * built.x.element_size()
    case["saved_bytes"] = {"normext": saved_bytes(built.normext, built.inputs),
                           "eager": saved_bytes(built.eager, built.inputs)}
    impls = {"normext": built.normext, "eager": built.eager}
    compile_error = None
    if use_compile:
        # Fresh compile per case (dynamic=False: one static graph per shape/dtype/layout, like a
        # real model); reset so dynamo's recompile limit never silently falls back to eager.
        # Compiled before any timing, so compile workers are idle while we measure.
        torch._dynamo.reset()
        compiled = torch.compile(built.eager, dynamic=False)
        compile_start = time.perf_counter()
        try:
            for p in passes:
                pass_fn(p, compiled, built.inputs, grads)()
            impls["compile"] = compiled
        except Exception as e:  # noqa: BLE001  (a baseline that fails is reported, not fatal)
            compile_error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            progress.note(f"torch.compile failed for {desc}: {compile_error}")
        case["compile_s"] = time.perf_counter() - compile_start

    before = cpu_snapshot()
    out = torch.empty_like(built.x, memory_format=torch.preserve_format)
    src = built.x
    rows = []
    for p in passes:
        progress.step(f"{desc} {PASS_NAMES[p]}")
        row = dict(case, **{"pass": p, "bytes_moved": built.traffic[p] * case["nbytes"]})
        fns = {"copy": lambda: out.copy_(src)}
        candidates = dict(impls)
        if p == "fwd":
            candidates.update(built.extra)
        for impl, fn in candidates.items():
            call = pass_fn(p, fn, built.inputs, normext_grads if impl == "normext" else grads)
            try:
                call()
            except Exception as e:  # noqa: BLE001  (e.g. a compiled graph that cannot retain_graph)
                if impl == "normext":
                    raise
                progress.note(f"{impl} {PASS_NAMES[p]} failed for {desc}: {type(e).__name__}: {e}")
                continue
            fns[impl] = call
        # NB: copy and every implementation are timed interleaved, block by block, so their
        # ratios hold even when the machine's speed drifts during the case.
        timings = timer.measure_all(fns)
        copy = timings.pop("copy")
        row["copy_s"] = copy.median
        row["time_s"] = {impl: m.median for impl, m in timings.items()}
        noise = [copy.noise] + [m.noise for m in timings.values()]
        row["noise"] = max(noise)
        if compile_error:
            row["compile_error"] = compile_error
        rows.append(row)
    del out
    after = cpu_snapshot()
    for row in rows:
        row["other_cpu"] = foreign_cpu(before, after) if device == "cpu" else None
        row["case_wall_s"] = time.perf_counter() - start
    return rows
