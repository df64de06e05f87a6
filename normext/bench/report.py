"""Derived metrics, the results table, the per-op summary against the targets, JSON and plot."""

import json

from normext.bench._env import gbps, geomean

PASS_LABEL = {"fwd": "fwd", "bwd": "bwd", "fwdbwd": "fwd+bwd"}
LAYOUT_LABEL = {"contiguous": "NCHW", "channels_last": "NHWC"}
SCHEMA = "normext-bench/1"


def derive(row):
    """Add ratios and bandwidth to a timed row (in place) and return it.

    vs_X = X's time / normext's time (> 1: normext faster); gbps = bytes normext must move / its
    time; copy_gbps = 2 * nbytes / time of out.copy_(x) on the same tensor; pct_copy = their ratio.
    """
    t = row["time_s"]
    ne = t["normext"]
    row["vs_eager"] = t["eager"] / ne if "eager" in t else None
    row["vs_compile"] = t["compile"] / ne if "compile" in t else None
    row["vs_bn"] = t["bn"] / ne if "bn" in t else None
    row["gbps"] = gbps(row["bytes_moved"], ne)
    row["copy_gbps"] = gbps(2 * row["nbytes"], row["copy_s"])
    row["pct_copy"] = row["gbps"] / row["copy_gbps"]
    return row


def layout_label(row, ndim=None):
    ndim = ndim or len(row["shape"])
    if ndim < 4:
        return "rows"
    if row["layout"] == "contiguous":
        return "NCHW" if ndim == 4 else "NCDHW"
    return "NHWC" if ndim == 4 else "NDHWC"


def shape_label(row):
    s = "x".join(map(str, row["shape"]))
    return s + (f" G{row['groups']}" if row.get("groups") else "")


def _ms(v):
    return "-" if v is None else f"{v * 1e3:.3f}"


def _ratio(v):
    return "-" if v is None else f"{v:.2f}x"


def _mb(v):
    return "-" if v is None else f"{v / 1e6:.1f}"


COLUMNS = [  # (header, width, align, getter)
    ("op", 16, "<", lambda r: r["op"]),
    ("shape", 21, "<", shape_label),
    ("dtype", 6, "<", lambda r: r["dtype"]),
    ("layout", 7, "<", layout_label),
    ("pass", 8, "<", lambda r: PASS_LABEL[r["pass"]]),
    ("normext", 9, ">", lambda r: _ms(r["time_s"].get("normext"))),
    ("eager", 9, ">", lambda r: _ms(r["time_s"].get("eager"))),
    ("compile", 9, ">", lambda r: _ms(r["time_s"].get("compile"))),
    ("vs eager", 9, ">", lambda r: _ratio(r.get("vs_eager"))),
    ("vs comp", 8, ">", lambda r: _ratio(r.get("vs_compile"))),
    ("GB/s", 7, ">", lambda r: f"{r['gbps']:.1f}"),
    ("%copy", 6, ">", lambda r: f"{r['pct_copy'] * 100:.0f}%"),
    ("saved MB ne/torch", 18, ">", lambda r: (f"{_mb(r['saved_bytes']['normext'])}/"
                                              f"{_mb(r['saved_bytes']['eager'])}") if r["pass"] != "fwd" else ""),
    ("IQR", 6, ">", lambda r: f"{min(r['noise'], 9.99) * 100:.0f}%"),
]


def format_table(rows):
    """One table of every timed row, ops separated by a blank line."""
    head = "".join(f"{h:{a}{w}}" for h, w, a, _ in COLUMNS)
    lines = [head, "-" * len(head)]
    last_op = None
    for r in rows:
        if "error" in r:
            continue
        if last_op is not None and r["op"] != last_op:
            lines.append("")
        last_op = r["op"]
        cells = []
        for _, w, a, get in COLUMNS:
            text = str(get(r))
            cells.append(f"{text:{a}{w}}" if len(text) < w else text[: w - 1] + " ")
        lines.append("".join(cells).rstrip())
    return "\n".join(lines)


def table_legend(device):
    copy = "out.copy_(x) on the same tensor" + (", timed with CUDA events" if device == "cuda" else "")
    return ("times: median ms per call; vs X = X time / normext time (> 1: normext faster); "
            "GB/s = minimum bytes\nthe op moves / normext time; %copy = that bandwidth / " + copy +
            ";\nsaved = bytes autograd keeps for backward (saved_tensors_hooks), normext/torch eager; "
            "IQR = worst\nIQR/median of the row's timings; NHWC = channels_last(_3d); rows = (batch, tokens, hidden)")


def op_summary(rows, op):
    """Untargeted geomeans of one op: {pass: {vs_eager, vs_compile, pct_copy, n}}."""
    out = {}
    for p in ("fwd", "bwd", "fwdbwd"):
        mine = [r for r in rows if r["op"] == op and r.get("pass") == p and "error" not in r]
        if mine:
            out[p] = {k: geomean([r.get(k) for r in mine]) for k in ("vs_eager", "vs_compile", "pct_copy")}
            out[p]["n"] = len(mine)
    return out


def format_summary(rows, evaluated, ops_in_order, titles):
    lines = []
    for op in ops_in_order:
        summary = op_summary(rows, op)
        targets = [t for t in evaluated if t["op"] == op]
        if not summary and not targets:
            continue
        lines.append(f"{titles.get(op, op)} ({op})")
        for p, s in summary.items():
            lines.append(f"  {PASS_LABEL[p] + ':':<9}{_ratio(s['vs_eager']):>7} vs eager, "
                         f"{_ratio(s['vs_compile']):>6} vs compile, {s['pct_copy'] * 100:4.0f}% of copy BW"
                         f"  (geomean of {s['n']})")
        for t in targets:
            value = "n/a" if t["value"] is None else (
                f"{t['value'] * 100:.0f}%" if t["is_pct"] else f"{t['value']:.2f}x")
            lines.append(f"  [issue {t['issue']}] {t['label']:<44}{value:>7}  (n={t['n']:>2})  "
                         f"target >= {t['shown_threshold']:<5} {t['verdict']}")
    return "\n".join(lines)


def to_json(path, payload):
    payload = dict(payload, schema=SCHEMA)
    with open(path, "w") as f:
        json.dump(payload, f, indent=1, default=str)


def check_plot_available():
    """Raise a clear error before the run when --plot cannot be honoured."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise SystemExit("--plot needs matplotlib, which is not installed: "
                         "pip install matplotlib (or pip install 'normext[bench]')") from None


def plot(rows, path, title):
    """Bars of the ratio vs torch eager (log scale), one panel per op, one bar per case and pass."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401  (matplotlib.ticker.FuncFormatter below)

    timed = [r for r in rows if "error" not in r and r.get("vs_eager")]
    ops = list(dict.fromkeys(r["op"] for r in timed))
    passes = [p for p in ("fwd", "bwd", "fwdbwd") if any(r["pass"] == p for r in timed)]
    if not ops:
        raise SystemExit("--plot: no timed rows to plot")
    cases = {op: list(dict.fromkeys((shape_label(r), r["dtype"], layout_label(r)) for r in timed if r["op"] == op))
             for op in ops}
    ncols = 1 if len(ops) == 1 else 2
    nrows = math.ceil(len(ops) / ncols)
    per_row = [max(len(cases[op]) for op in ops[i * ncols:(i + 1) * ncols]) for i in range(nrows)]
    bar_in = 0.13 * max(1, len(passes))
    fig, axes = plt.subplots(nrows, ncols, squeeze=False, figsize=(7.5 * ncols, sum(bar_in * n + 0.9 for n in per_row)),
                             gridspec_kw={"height_ratios": [n + 2 for n in per_row]})
    lo = min(r["vs_eager"] for r in timed)
    hi = max(r["vs_eager"] for r in timed)
    height = 0.8 / max(1, len(passes))
    for i, op in enumerate(ops):
        ax = axes[i // ncols][i % ncols]
        for j, p in enumerate(passes):
            vals = {(shape_label(r), r["dtype"], layout_label(r)): r["vs_eager"]
                    for r in timed if r["op"] == op and r["pass"] == p}
            ys = [k + j * height for k, c in enumerate(cases[op]) if c in vals]
            ax.barh(ys, [vals[c] for c in cases[op] if c in vals], height=height, label=PASS_LABEL[p],
                    color=f"C{j}")
        ax.set_yticks([k + height * (len(passes) - 1) / 2 for k in range(len(cases[op]))])
        ax.set_yticklabels([" ".join(c) for c in cases[op]], fontsize=7)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlim(min(lo, 0.5) / 1.2, max(hi, 2.0) * 1.2)
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_title(op, fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    for k in range(len(ops), nrows * ncols):
        axes[k // ncols][k % ncols].axis("off")
    axes[0][0].legend(loc="lower right", fontsize=7)
    fig.suptitle(title + "\ntorch eager time / normext time (log scale; > 1: normext faster)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
