"""Tests of the benchmark tool (python -m normext.bench): its logic, not the speed of the ops.

End-to-end runs use the hidden --tiny suite (one tiny shape per op) and --no-compile, so the file
runs in seconds. The CUDA timer is tested with fake events on a fake clock.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import normext.functional as nf
from normext.bench import cli, memory, ops, report, runner, targets, timing

REAL_FUSED = ops._has_activation(nf) is None  # normext's own GN+SiLU (not a stand-in)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- stand-ins for ops that are not in this build ------------------------------------------------


def _gn(orig):
    def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5, activation=None, inplace=False):
        y = orig(input, num_groups, weight, bias, eps)
        if activation == "silu":
            y = F.silu(y)
        if inplace:
            return input.copy_(y)
        return y

    return group_norm


STAND_INS = {
    "add_group_norm": lambda input, residual, num_groups, weight=None, bias=None, eps=1e-5, activation=None: (
        F.group_norm(input + residual, num_groups, weight, bias, eps), input + residual),
    "layer_norm": F.layer_norm,
    "rms_norm": F.rms_norm,
    "add_layer_norm": lambda input, residual, normalized_shape, weight=None, bias=None, eps=1e-5: (
        F.layer_norm(input + residual, normalized_shape, weight, bias, eps), input + residual),
    "add_rms_norm": lambda input, residual, normalized_shape, weight=None, eps=None: (
        F.rms_norm(input + residual, normalized_shape, weight, eps), input + residual),
    "batch_norm": F.batch_norm,
    "instance_norm": F.instance_norm,
    "dyt": lambda input, alpha, weight=None, bias=None, channels_last=True: weight * torch.tanh(alpha * input) + bias,
}


@pytest.fixture
def every_op(monkeypatch):
    """Torch stand-ins for the normext functions this build lacks, so every family runs."""
    for name, fn in STAND_INS.items():
        if not callable(getattr(nf, name, None)):
            monkeypatch.setattr(nf, name, fn, raising=False)
    if ops._has_activation(nf) is not None:
        monkeypatch.setattr(nf, "group_norm", _gn(nf.group_norm))
    yield


# ---- end to end --------------------------------------------------------------------------------


def test_cli_end_to_end_json(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "normext.bench", "--quick", "--op", "group_norm", "--tiny", "--no-compile",
           "--dtype", "float32", "--min-time", "0.005", "--threads", "1", "--json", str(out)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # progress on stderr, one table and the targets on stdout
    assert "[1/4] group_norm (2, 8, 4, 4) fp32 NCHW fwd" in proc.stderr
    assert "[4/4] group_norm (2, 8, 4, 4) fp32 channels_last fwd+bwd" in proc.stderr
    assert proc.stdout.count("vs eager vs comp") == 1
    assert "[issue 2] fwd vs torch eager" in proc.stdout

    data = json.loads(out.read_text())
    assert data["schema"] == report.SCHEMA
    for key in ("cpu", "cores", "torch", "threads", "allocator", "device", "cpu_capability"):
        assert key in data["machine"]
    assert data["device"] == "cpu" and data["machine"]["threads"] == 1 and not data["errors"]
    rows = data["rows"]
    assert {(r["layout"], r["pass"]) for r in rows} == {
        (lay, p) for lay in ("contiguous", "channels_last") for p in ("fwd", "fwdbwd")}
    for r in rows:
        assert r["op"] == "group_norm" and r["shape"] == [2, 8, 4, 4] and r["groups"] == 4
        assert r["dtype"] == "fp32"
        assert r["time_s"]["normext"] > 0 and r["time_s"]["eager"] > 0 and "compile" not in r["time_s"]
        assert r["vs_eager"] == pytest.approx(r["time_s"]["eager"] / r["time_s"]["normext"])
        assert r["vs_compile"] is None
        assert r["bytes_moved"] == {"fwd": 2, "fwdbwd": 5}[r["pass"]] * r["nbytes"] == \
            {"fwd": 2, "fwdbwd": 5}[r["pass"]] * 2 * 8 * 4 * 4 * 4
        assert r["pct_copy"] == pytest.approx(r["gbps"] / r["copy_gbps"])
        assert r["saved_bytes"]["normext"] > 0 and r["saved_bytes"]["eager"] > 0
        if r["pass"] == "fwd":
            assert "bn" in r["time_s"]
    labels = {t["label"]: t for t in data["targets"] if t["op"] == "group_norm"}
    assert labels["fwd vs torch eager"]["n"] == 2 and labels["fwd vs torch eager"]["verdict"] in ("PASS", "MISS")
    assert labels["fwd % of copy BW (> cache)"]["verdict"] == "n/a"  # tiny tensors fit in cache
    assert all(t["device"] == "cpu" for t in data["targets"])


def test_every_op_family_runs(every_op, restore_num_threads, tmp_path, capsys):
    out = tmp_path / "all.json"
    # NB: one thread: tiny ops on a loaded 2-core box otherwise wait on descheduled OpenMP workers
    rc = cli.main(["--tiny", "--no-compile", "--dtype", "fp32", "--min-time", "0.002", "--threads", "1",
                   "--json", str(out)])
    text = capsys.readouterr()
    assert rc == 0, text.out + text.err
    data = json.loads(out.read_text())
    assert not data["skipped"] and not data["errors"]
    by_op = {}
    for r in data["rows"]:
        by_op.setdefault(r["op"], set()).add((r["layout"], r["pass"]))
    assert set(by_op) == {f.name for f in ops.FAMILIES}
    assert by_op["layer_norm"] == {("contiguous", "fwd"), ("contiguous", "fwdbwd")}  # rows: no layouts
    assert ("channels_last", "fwdbwd") in by_op["batch_norm"]
    add = [r for r in data["rows"] if r["op"] == "add_rms_norm" and r["pass"] == "fwdbwd"][0]
    assert add["bytes_moved"] == 8 * add["nbytes"]
    # torch keeps GN's output for SiLU's backward: the unfused baseline saves more
    gs = [r for r in data["rows"] if r["op"] == "group_norm_silu" and r["pass"] == "fwdbwd"][0]
    assert gs["saved_bytes"]["eager"] > 1.5 * gs["nbytes"]
    dyt = {t["pass"]: t for t in data["targets"] if t["op"] == "dyt" and t["metric"] == "vs_ref"}
    assert dyt["fwd"]["n"] == 1 and dyt["fwdbwd"]["n"] == 1


def test_wrong_result_is_reported_not_timed(monkeypatch, capsys):
    monkeypatch.setattr(nf, "group_norm", lambda x, g, w=None, b=None, eps=1e-5: F.group_norm(x, g, w, b, eps) + 1)
    rc = cli.main(["--tiny", "--op", "group_norm", "--no-compile", "--dtype", "fp32", "--layout", "nchw",
                   "--min-time", "0.002"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "FAILED: group_norm (2, 8, 4, 4) fp32 contiguous: normext differs from torch: output 0" in out


def test_missing_op_is_skipped_with_one_line(monkeypatch, capsys):
    monkeypatch.delattr(nf, "rms_norm", raising=False)
    rc = cli.main(["--tiny", "--op", "rms_norm", "--no-compile"])
    out = capsys.readouterr().out
    assert rc == 0
    assert out.count("skip rms_norm: normext.functional.rms_norm is not in this build") == 1
    assert "0 cases (0 ops)" in out


def test_plot_needs_matplotlib(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(SystemExit, match=r"--plot needs matplotlib.*pip install matplotlib"):
        cli.main(["--tiny", "--op", "group_norm", "--plot", str(tmp_path / "p.png")])


def test_plot_written(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [_row("group_norm", p, 1e-3, {"eager": 2e-3}) for p in ("fwd", "fwdbwd")]
    report.plot(rows, str(tmp_path / "p.png"), "t")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_refused_without_gpu():
    with pytest.raises(SystemExit, match=r"--device cuda: no CUDA GPU is available"):
        cli.main(["--device", "cuda", "--tiny", "--op", "group_norm"])


def test_options_parsing():
    a = cli.parse_args(["--op", "group_norm,rms_norm", "--op", "dyt", "--dtype", "bf16,float32",
                        "--layout", "NHWC", "--pass", "fwd+bwd"])
    assert a.op == ["group_norm", "rms_norm", "dyt"]
    assert a.dtypes == [torch.bfloat16, torch.float32]
    assert a.layouts == ["channels_last"] and a.passes == ["fwdbwd"]
    assert cli.parse_args(["--device", "cuda"]).passes == ["fwd", "bwd", "fwdbwd"]
    assert cli.parse_args([]).passes == ["fwd", "fwdbwd"]
    with pytest.raises(SystemExit, match="unknown op 'gn'"):
        cli.parse_args(["--op", "gn"])
    with pytest.raises(SystemExit, match="unknown dtype 'int8'"):
        cli.parse_args(["--dtype", "int8"])


def test_suites():
    fam = ops.BY_NAME["group_norm"]
    full, quick = fam.suite("full"), fam.suite("quick")
    assert 0 < len(quick) < len(full) and set(quick) <= set(full)
    assert any(s.shape[0] == 1 for s in full) and any(s.shape[0] == 8 for s in full)
    assert any(len(s.shape) == 5 for s in full)
    widths = {s.shape[-1] for s in ops.BY_NAME["layer_norm"].suite("full")}
    assert min(widths) == 768 and max(widths) == 8192


# ---- pure logic --------------------------------------------------------------------------------


def _row(op, pass_, t_ne, others, shape=(2, 64, 32, 32), layout="contiguous", dtype="fp32", nbytes=None):
    nbytes = nbytes if nbytes is not None else 4 * 2 * 64 * 32 * 32
    r = {"op": op, "label": "x", "shape": list(shape), "groups": None, "dtype": dtype, "layout": layout,
         "pass": pass_, "nbytes": nbytes, "bytes_moved": 2 * nbytes, "copy_s": 1e-3, "noise": 0.01,
         "time_s": dict(normext=t_ne, **others), "saved_bytes": {"normext": 1e6, "eager": 2e6}}
    return report.derive(r)


def test_derive():
    r = _row("group_norm", "fwd", 1e-3, {"eager": 3e-3, "compile": 2e-3})
    assert r["vs_eager"] == pytest.approx(3.0) and r["vs_compile"] == pytest.approx(2.0)
    assert r["vs_bn"] is None
    assert r["gbps"] == pytest.approx(2 * r["nbytes"] / 1e-3 / 1e9)
    assert r["pct_copy"] == pytest.approx(1.0)  # same bytes, same time as the copy


def test_table_format():
    rows = [_row("group_norm", "fwd", 1e-3, {"eager": 3e-3}),
            _row("group_norm", "fwdbwd", 4e-3, {"eager": 6e-3, "compile": 8e-3}, layout="channels_last"),
            _row("rms_norm", "fwd", 1e-3, {"eager": 1e-3}, shape=(8, 512, 768))]
    lines = report.format_table(rows).splitlines()
    assert lines[0].split()[:5] == ["op", "shape", "dtype", "layout", "pass"]
    assert lines[2].split() == ["group_norm", "2x64x32x32", "fp32", "NCHW", "fwd", "1.000", "3.000", "-",
                                "3.00x", "-", "1.0", "100%", "1%"]  # no saved bytes on fwd rows
    assert "NHWC" in lines[3] and "fwd+bwd" in lines[3] and "2.00x" in lines[3] and "1.0/2.0" in lines[3]
    assert lines[4] == ""  # blank line between ops
    assert "8x512x768" in lines[5] and "rows" in lines[5]


def test_targets_evaluation():
    rows = [
        _row("group_norm", "fwd", 1e-3, {"eager": 2e-3}),  # 2x
        _row("group_norm", "fwd", 1e-3, {"eager": 8e-3}, layout="channels_last"),  # 8x
        _row("group_norm", "fwdbwd", 1e-3, {"eager": 2e-3}, layout="channels_last"),
        _row("group_norm", "fwdbwd", 1e-3, {"eager": 1e-3}),
    ]
    got = {(t["pass"], t["metric"], t["where"]): t for t in targets.evaluate(rows, "cpu", cache_bytes=1 << 18)
           if t["op"] == "group_norm"}
    fwd = got[("fwd", "vs_eager", ())]
    assert fwd["value"] == pytest.approx(4.0) and fwd["n"] == 2 and fwd["verdict"] == "PASS"
    cl = got[("fwdbwd", "vs_eager", ("cl",))]
    assert cl["value"] == pytest.approx(2.0) and cl["n"] == 1 and cl["verdict"] == "MISS"
    assert got[("fwdbwd", "vs_eager", ())]["value"] == pytest.approx(2 ** 0.5)
    assert got[("fwd", "vs_bn", ())]["verdict"] == "n/a"  # no BN timing in these rows
    big = got[("fwd", "pct_copy", ("big",))]
    assert big["n"] == 2 and big["verdict"] == "PASS" and big["value"] == pytest.approx(1.0)
    # the cache filter: rows of 512 KiB count against a 256 KiB cache, not against a 1 GiB one
    small = targets.evaluate(rows, "cpu", cache_bytes=1 << 30)
    assert [t for t in small if t["metric"] == "pct_copy" and t["op"] == "group_norm"][0]["verdict"] == "n/a"
    # a missing op gives n/a, not a failure
    assert all(t["verdict"] == "n/a" for t in targets.evaluate(rows, "cpu", 0) if t["op"] == "rms_norm")
    assert not any(t["device"] == "cuda" for t in targets.evaluate(rows, "cpu", 0))


def test_targets_cuda_and_reference_op():
    rows = [_row("group_norm", "bwd", 1e-3, {"eager": 2e-3}, shape=(1, 32, 64, 64)),
            _row("group_norm", "bwd", 2e-3, {"eager": 2e-3}, shape=(4, 32, 64, 64))]
    cuda = targets.evaluate(rows, "cuda", cache_bytes=0)
    assert {t["issue"] for t in cuda} == {3}
    b1 = [t for t in cuda if t["pass"] == "bwd" and t["where"] == ("batch1",)][0]
    assert b1["n"] == 1 and b1["value"] == pytest.approx(1.0) and b1["verdict"] == "PASS"
    nchw = [t for t in cuda if t["pass"] == "bwd" and t["where"] == ("contig",)][0]
    assert nchw["n"] == 2 and nchw["value"] == pytest.approx(0.5 ** 0.5) and nchw["verdict"] == "MISS"
    # DyT vs normext RMSNorm: matched on shape, dtype, layout and pass
    rows = [_row("rms_norm", "fwd", 2e-3, {"eager": 1e-3}, shape=(2, 8, 768)),
            _row("dyt", "fwd", 1e-3, {"eager": 1e-3}, shape=(2, 8, 768)),
            _row("dyt", "fwd", 1e-3, {"eager": 1e-3}, shape=(2, 8, 4096))]  # no RMSNorm twin
    dyt = [t for t in targets.evaluate(rows, "cpu", 0) if t["op"] == "dyt" and t["metric"] == "vs_ref"
           and t["pass"] == "fwd"][0]
    assert dyt["n"] == 1 and dyt["value"] == pytest.approx(2.0) and dyt["verdict"] == "PASS"
    assert dyt["label"] == "fwd vs normext rms_norm"
    # The machine ran 1.5x slower during the DyT case (its copy too): the drift cancels.
    rows[1]["copy_s"], rows[1]["time_s"]["normext"] = 1.5e-3, 1.5e-3
    dyt = [t for t in targets.evaluate(rows, "cpu", 0) if t["op"] == "dyt" and t["metric"] == "vs_ref"
           and t["pass"] == "fwd"][0]
    assert dyt["value"] == pytest.approx(2.0)


def test_summary_lines():
    rows = [_row("group_norm", "fwd", 1e-3, {"eager": 2e-3})]
    text = report.format_summary(rows, targets.evaluate(rows, "cpu", 0), ["group_norm", "rms_norm"],
                                 {"group_norm": "GroupNorm"})
    assert "GroupNorm (group_norm)" in text
    assert "[issue 2] fwd vs torch eager" in text and "2.00x  (n= 1)  target >= 1.5x  PASS" in text
    assert "[issue 4] fwd+bwd vs torch eager" in text and "n/a" in text


class FakeClock:
    def __init__(self):
        self.now = 0.0


class FakeEvent:
    """torch.cuda.Event on a fake clock (seconds): elapsed_time in ms, like CUDA's."""

    clock = None

    def __init__(self, enable_timing=False):
        assert enable_timing
        self.t = None

    def record(self):
        self.t = self.clock.now

    def synchronize(self):
        assert self.t is not None

    def elapsed_time(self, end):
        return (end.t - self.t) * 1e3


def _fake_timer(clock, **kw):
    FakeEvent.clock = clock
    syncs = []
    t = timing.CudaEventTimer(event_factory=FakeEvent, synchronize=lambda: syncs.append(1), **kw)
    return t, syncs


def test_cuda_event_timer_logic():
    clock = FakeClock()
    calls = []

    def fn():  # 50 us per call, on the "GPU" clock
        calls.append(1)
        clock.now += 50e-6

    t, syncs = _fake_timer(clock, min_run_time=0.0095, warmup=3, block_time=1e-3, min_blocks=5)
    m = t.measure(fn)
    assert m.median == pytest.approx(50e-6) and m.iqr == pytest.approx(0.0, abs=1e-12)
    assert m.number == 20  # 1 ms blocks of 50 us calls
    assert len(m.samples) == 10  # 10 blocks of 1 ms reach min_run_time = 9.5 ms
    assert syncs == [1]  # one device synchronize after the warm-up
    assert len(calls) == 3 + 1 + 10 * 20  # warm-up, calibration call, blocks

    slow, _ = _fake_timer(clock, min_run_time=0.0, min_blocks=5)
    assert slow.calls_per_block(1.0) == 1 and slow.calls_per_block(0.0) == slow.max_number
    assert len(slow.measure(fn).samples) == 5  # min_blocks even when min_run_time is reached


def test_cuda_event_timer_median_and_iqr():
    clock = FakeClock()
    durations = iter([1e-3] + [1e-3, 2e-3, 3e-3, 4e-3, 100e-3])  # calibration, then 5 blocks

    def fn():
        clock.now += next(durations)

    t, _ = _fake_timer(clock, min_run_time=0.0, warmup=0, block_time=1e-3, min_blocks=5)
    m = t.measure(fn)
    assert m.number == 1 and m.median == pytest.approx(3e-3)  # the outlier does not move the median
    assert m.iqr == pytest.approx(4e-3 - 2e-3)
    assert timing.summarize([5.0]).iqr == 0.0
    with pytest.raises(ValueError):
        timing.summarize([])


def test_make_timer():
    assert isinstance(timing.make_timer("cpu", 0.01), timing.CpuTimer)
    with pytest.raises(ValueError):
        timing.make_timer("tpu", 0.01)
    m = timing.CpuTimer(0.005).measure(lambda: torch.ones(4).sum())
    assert m.median > 0 and m.number >= 1 and m.samples


def test_progress_lines(capsys):
    clock = FakeClock()
    p = runner.Progress(4, stream=sys.stdout, clock=lambda: clock.now)
    for i, text in enumerate(["layer_norm (4096, 4096) bf16 fwd", "layer_norm (4096, 4096) bf16 fwd+bwd",
                              "rms_norm (4096, 4096) bf16 fwd", "rms_norm (4096, 4096) bf16 fwd+bwd"]):
        p.step(text)  # printed when the step starts
        if i == 0:
            p.note("skip x")
        clock.now += 60.0  # each step takes a minute
    assert capsys.readouterr().out.splitlines() == [
        "[1/4] layer_norm (4096, 4096) bf16 fwd", "skip x",
        "[2/4] layer_norm (4096, 4096) bf16 fwd+bwd  (~3 min left)",  # 3 steps of 60 s to go
        "[3/4] rms_norm (4096, 4096) bf16 fwd  (~2 min left)",
        "[4/4] rms_norm (4096, 4096) bf16 fwd+bwd"]


# ---- memory ------------------------------------------------------------------------------------


def test_saved_bytes_counts_storages_once():
    x = torch.randn(64, 32)
    assert runner.saved_bytes(lambda x: (x * x,), [x]) == x.nbytes  # x saved twice, one storage
    # torch's GN+SiLU keeps GN's output for SiLU's backward on top of GN's input
    w, b = torch.ones(32), torch.zeros(32)
    gn = runner.saved_bytes(lambda x, w, b: (F.group_norm(x, 4, w, b),), [x, w, b])
    gn_silu = runner.saved_bytes(lambda x, w, b: (F.silu(F.group_norm(x, 4, w, b)),), [x, w, b])
    assert gn >= x.nbytes and gn_silu == gn + x.nbytes


def test_live_tensor_bytes_peak():
    x = torch.randn(1024)
    n = x.nbytes

    def chain():
        a = x + 1
        b = a * 2
        del a
        c = b + 1  # b and c live: peak 2n, three storages allocated
        del b
        return c

    with memory.LiveTensorBytes() as mode:
        out = chain()
        assert mode.live == n
    assert mode.peak == 2 * n and mode.total == 3 * n
    del out
    assert mode.live == 0
    with memory.LiveTensorBytes() as mode:
        y = x.clone()
        y.add_(1)  # in place: same storage
        y.view(-1)  # view: same storage
    assert mode.total == n


def test_memory_report_tiny(every_op, capsys):
    result = memory.run_memory([torch.float32], "cpu", size="tiny")
    out = capsys.readouterr().out
    saved = {r["what"]: r for r in result["saved"]}
    assert set(saved) == {"GroupNorm", "GN+SiLU", "ResBlock (GN,SiLU,conv)x2"}
    res = saved["ResBlock (GN,SiLU,conv)x2"]
    assert res["torch_bytes"] > saved["GN+SiLU"]["torch_bytes"]
    (peak,) = result["peak"]
    assert peak["max_rel_diff"] < 1e-4  # both decoder stages compute the same thing
    assert 0 < peak["normext_peak_bytes"] <= peak["torch_peak_bytes"]
    if REAL_FUSED:  # the stand-in's "in place" allocates like torch
        assert peak["normext_total_bytes"] < peak["torch_total_bytes"]
    assert "(a) bytes saved for backward" in out and "(b) peak activation memory" in out


def test_memory_cli_json(tmp_path, capsys):
    out = tmp_path / "mem.json"
    assert cli.main(["--memory", "--tiny", "--dtype", "fp32", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["schema"] == report.SCHEMA and data["memory"]["saved"][0]["what"] == "GroupNorm"
    if ops._has_activation(nf) is not None:
        assert data["memory"]["skipped"] and not data["memory"]["peak"]
        assert "skipped: GN+SiLU, ResBlock and decoder rows" in capsys.readouterr().out


def test_measure_all_interleaves_so_drift_cancels():
    # The machine slows down 3x halfway through: timed one after the other, f would see only the
    # fast half and g only the slow half; interleaved, both see both and g / f stays 2.
    clock = FakeClock()
    order = []

    def cost(base):
        return base * (3.0 if clock.now > 0.02 else 1.0)

    def f():
        order.append("f")
        clock.now += cost(50e-6)

    def g():
        order.append("g")
        clock.now += cost(100e-6)

    t, _ = _fake_timer(clock, min_run_time=0.02, warmup=0, block_time=1e-3, min_blocks=5)
    m = t.measure_all({"f": f, "g": g})
    assert m["g"].median / m["f"].median == pytest.approx(2.0, rel=0.05)
    assert m["f"].number == 20 and m["g"].number == 10  # 1 ms blocks
    # after the two calibration calls, rounds of one block each, the first of a round rotating
    assert order[2:2 + 20 + 10] == ["f"] * 20 + ["g"] * 10
    assert order[32:32 + 10 + 20] == ["g"] * 10 + ["f"] * 20
    assert order.count("f") - 1 == 20 * len(m["f"].samples) and len(m["f"].samples) == len(m["g"].samples)


def test_cpu_timer_measure_all():
    m = timing.CpuTimer(0.005).measure_all({"a": lambda: torch.ones(4).sum(), "b": lambda: None})
    assert set(m) == {"a", "b"} and all(t.median > 0 and len(t.samples) >= 5 for t in m.values())
