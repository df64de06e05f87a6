"""The issue targets and their evaluation: geometric mean of a metric over matching rows.

A row is one (case, pass) of the run, with its derived metrics (see report.derive):
``vs_eager``, ``vs_compile``, ``vs_bn``, ``pct_copy``. ``vs_ref`` compares normext with another
normext op on the same shape/dtype/layout/pass (DyT against RMSNorm of the same width), each timed
relative to the copy of its own case.
"""

from dataclasses import asdict, dataclass
from typing import Tuple

from normext.bench._env import geomean


@dataclass(frozen=True)
class Target:
    issue: int
    device: str  # "cpu" or "cuda"
    op: str
    pass_: str  # "fwd", "bwd" or "fwdbwd"
    metric: str  # "vs_eager", "vs_compile", "vs_bn", "pct_copy" or "vs_ref"
    threshold: float
    where: Tuple[str, ...] = ()  # row filters, see FILTERS
    ref_op: str = ""  # for vs_ref: the op whose normext time is the reference

    @property
    def is_pct(self):
        return self.metric == "pct_copy"

    def label(self):
        what = {"vs_eager": "vs torch eager", "vs_compile": "vs torch.compile", "vs_bn":
                "vs BatchNorm train", "pct_copy": "% of copy BW", "vs_ref": f"vs normext {self.ref_op}"}
        passes = {"fwd": "fwd", "bwd": "bwd", "fwdbwd": "fwd+bwd"}
        text = f"{passes[self.pass_]} {what[self.metric]}"
        if self.where:
            text += " (" + ", ".join(FILTER_LABELS[w] for w in self.where) + ")"
        return text

    def shown_threshold(self):
        return f"{self.threshold * 100:.0f}%" if self.is_pct else f"{self.threshold:g}x"


FILTER_LABELS = {"contig": "NCHW", "cl": "channels_last", "batch1": "batch 1",
                 "big": "> cache", "fp32": "fp32", "bf16": "bf16"}


def _filters(cache_bytes):
    return {
        "contig": lambda r: r["layout"] == "contiguous",
        "cl": lambda r: r["layout"] == "channels_last",
        "batch1": lambda r: r["shape"][0] == 1,
        # NB: a tensor that fits in cache runs from cache on CPU while a copy of it does too, but
        # per-call overheads dominate there; the bandwidth targets are about memory-bound sizes.
        "big": lambda r: r["nbytes"] > cache_bytes,
        "fp32": lambda r: r["dtype"] == "fp32",
        "bf16": lambda r: r["dtype"] == "bf16",
    }


def _t(issue, device, op, pass_, metric, threshold, *where, ref_op=""):
    return Target(issue, device, op, pass_, metric, threshold, tuple(where), ref_op)


TARGETS = [
    # issue 2: GroupNorm on CPU
    _t(2, "cpu", "group_norm", "fwd", "vs_eager", 1.5),
    _t(2, "cpu", "group_norm", "fwd", "pct_copy", 0.80, "big"),
    _t(2, "cpu", "group_norm", "fwdbwd", "vs_eager", 1.5),
    _t(2, "cpu", "group_norm", "fwdbwd", "vs_eager", 5.0, "cl"),
    _t(2, "cpu", "group_norm", "fwd", "vs_bn", 1.0),
    # issue 3: GroupNorm on CUDA
    _t(3, "cuda", "group_norm", "fwd", "pct_copy", 0.85, "contig"),
    _t(3, "cuda", "group_norm", "fwd", "pct_copy", 0.85, "cl"),
    _t(3, "cuda", "group_norm", "fwd", "pct_copy", 0.85, "batch1"),
    _t(3, "cuda", "group_norm", "bwd", "pct_copy", 0.75, "contig"),
    _t(3, "cuda", "group_norm", "bwd", "pct_copy", 0.75, "cl"),
    _t(3, "cuda", "group_norm", "bwd", "pct_copy", 0.75, "batch1"),
    _t(3, "cuda", "group_norm", "fwd", "vs_eager", 1.5),
    _t(3, "cuda", "group_norm", "fwdbwd", "vs_eager", 1.5),
    # issue 4: the rest of the family on CPU
    _t(4, "cpu", "rms_norm", "fwdbwd", "vs_eager", 3.0),
    _t(4, "cpu", "layer_norm", "fwdbwd", "vs_eager", 1.3),
    _t(4, "cpu", "batch_norm", "fwdbwd", "vs_eager", 1.5),
    _t(4, "cpu", "instance_norm", "fwdbwd", "vs_eager", 1.5),
    *[_t(4, "cpu", op, "fwd", "pct_copy", 0.75, "big")
      for op in ("layer_norm", "rms_norm", "batch_norm", "instance_norm", "dyt")],
    _t(4, "cpu", "dyt", "fwd", "vs_ref", 1.0, ref_op="rms_norm"),
    _t(4, "cpu", "dyt", "fwdbwd", "vs_ref", 1.0, ref_op="rms_norm"),
    # issue 5: fused ops on CPU
    _t(5, "cpu", "group_norm_silu", "fwd", "vs_eager", 2.5),
    _t(5, "cpu", "group_norm_silu", "fwdbwd", "vs_eager", 2.0),
    _t(5, "cpu", "group_norm_silu", "fwdbwd", "vs_compile", 1.5),
    _t(5, "cpu", "add_group_norm", "fwd", "vs_eager", 2.0),
    _t(5, "cpu", "add_group_norm", "fwdbwd", "vs_eager", 2.0),
    _t(5, "cpu", "add_rms_norm", "fwd", "vs_eager", 2.0),
    _t(5, "cpu", "add_rms_norm", "fwdbwd", "vs_eager", 2.0),
]


def _key(r):
    return (tuple(r["shape"]), r["dtype"], r["layout"], r["pass"])


def metric_values(target, rows, cache_bytes):
    """The target's metric on every row it applies to (None where the row lacks it)."""
    filters = _filters(cache_bytes)
    mine = [r for r in rows if r["op"] == target.op and r["pass"] == target.pass_
            and all(filters[w](r) for w in target.where)]
    if target.metric != "vs_ref":
        return [r.get(target.metric) for r in mine]
    ref = {_key(r): r for r in rows if r["op"] == target.ref_op}
    values = []
    for r in mine:
        other = ref.get(_key(r))
        # NB: the two ops are timed in different cases, minutes apart, and the machine's speed
        # drifts between them (10-30% on a shared VM). Each time is taken relative to the copy of
        # the same tensor timed interleaved with it in its own case, so the drift cancels, as it
        # does for the other metrics.
        values.append((other["time_s"]["normext"] / other["copy_s"])
                      / (r["time_s"]["normext"] / r["copy_s"]) if other else None)
    return values


def evaluate(rows, device, cache_bytes, targets=TARGETS):
    """Verdict of every target of ``device``: PASS / MISS on the geometric mean, n/a without data.

    Returns dicts (JSON-ready): the target's fields, label, value, n, verdict.
    """
    out = []
    for t in targets:
        if t.device != device:
            continue
        values = [v for v in metric_values(t, rows, cache_bytes) if v is not None]
        value = geomean(values)
        verdict = "n/a" if value is None else ("PASS" if value >= t.threshold else "MISS")
        d = asdict(t)
        d["pass"] = d.pop("pass_")
        d.update(label=t.label(), value=value, n=len(values), verdict=verdict,
                 shown_threshold=t.shown_threshold(), is_pct=t.is_pct)
        out.append(d)
    return out
