"""Timers: one interface, ``measure(fn) -> Timing``, for the CPU and for CUDA.

CPU: torch.utils.benchmark blocked_autorange (adaptive repetition, median of blocks).
CUDA: CUDA events around blocks of calls after a warm-up, so the time is the GPU's, not the
host's launch loop. Both give the median and IQR of per-call times; the events and the
synchronize function of the CUDA timer are injectable, so its logic is tested on CPU.
"""

import math
import statistics
from dataclasses import dataclass, field
from typing import Callable, List


@dataclass
class Timing:
    """Per-call times of one measurement, in seconds."""

    median: float
    iqr: float
    samples: List[float] = field(default_factory=list)  # one per-call time per block
    number: int = 1  # calls per block

    @property
    def noise(self):
        """IQR / median: the spread of the blocks (0 for a single block)."""
        return self.iqr / self.median if self.median > 0 else 0.0


def summarize(samples, number=1):
    """Timing of per-call ``samples``: median and interquartile range (inclusive quartiles)."""
    if not samples:
        raise ValueError("no samples")
    samples = list(samples)
    median = statistics.median(samples)
    if len(samples) < 2:
        return Timing(median, 0.0, samples, number)
    q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return Timing(median, q3 - q1, samples, number)


class CpuTimer:
    """blocked_autorange: calibrates the calls per block, then repeats blocks for min_run_time."""

    device = "cpu"

    def __init__(self, min_run_time=0.1):
        self.min_run_time = min_run_time

    def measure(self, fn: Callable[[], object]) -> Timing:
        import torch
        from torch.utils import benchmark

        # NB: blocked_autorange's block-size estimate calls fn() before measuring: that is the
        # warm-up (the case's correctness check has already run every callable once).
        # NB: Timer defaults to num_threads=1; pass the process setting so the benchmark measures
        # what the user gets.
        timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
        m = timer.blocked_autorange(min_run_time=self.min_run_time)
        return Timing(m.median, m.iqr, list(m.times), m.number_per_run)


class CudaEventTimer:
    """CUDA events around blocks of ``number`` calls, after ``warmup`` calls and a synchronize.

    The block size is calibrated from one timed call so that a block lasts about ``block_time``
    seconds (events resolve ~0.5 us; launch gaps between blocks are not timed). Blocks repeat
    until ``min_run_time`` of GPU time and at least ``min_blocks`` blocks.

    ``event_factory(enable_timing=True)`` must return objects with ``record()``,
    ``synchronize()`` and ``elapsed_time(end) -> ms`` (torch.cuda.Event); ``synchronize()``
    waits for the device (torch.cuda.synchronize).
    """

    device = "cuda"

    def __init__(self, min_run_time=0.1, *, event_factory=None, synchronize=None, warmup=3,
                 block_time=2e-3, min_blocks=5, max_blocks=200, max_number=1000):
        if event_factory is None or synchronize is None:
            import torch

            event_factory = event_factory or torch.cuda.Event
            synchronize = synchronize or torch.cuda.synchronize
        self.min_run_time = min_run_time
        self.event_factory = event_factory
        self.synchronize = synchronize
        self.warmup = warmup
        self.block_time = block_time
        self.min_blocks = min_blocks
        self.max_blocks = max_blocks
        self.max_number = max_number

    def time_block(self, fn, number):
        """GPU seconds of ``number`` back-to-back calls."""
        start = self.event_factory(enable_timing=True)
        end = self.event_factory(enable_timing=True)
        start.record()
        for _ in range(number):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3

    def calls_per_block(self, one_call):
        """Calls per block so that a block lasts about block_time (1 for slow calls)."""
        if not one_call > 0 or not math.isfinite(one_call):
            return self.max_number
        return max(1, min(self.max_number, int(round(self.block_time / one_call))))

    def measure(self, fn: Callable[[], object]) -> Timing:
        for _ in range(self.warmup):  # lazy init, caching allocator, autotuning
            fn()
        self.synchronize()
        number = self.calls_per_block(self.time_block(fn, 1))
        samples, total = [], 0.0
        while len(samples) < self.min_blocks or (total < self.min_run_time and len(samples) < self.max_blocks):
            block = self.time_block(fn, number)
            samples.append(block / number)
            total += block
        return summarize(samples, number)


def make_timer(device, min_run_time):
    """The timer of ``device`` ('cpu' or 'cuda')."""
    if device == "cuda":
        return CudaEventTimer(min_run_time)
    if device == "cpu":
        return CpuTimer(min_run_time)
    raise ValueError(f"unknown device {device!r}")
