"""Timers: one interface, ``measure_all({name: fn}) -> {name: Timing}`` (and ``measure(fn)``),
for the CPU and for CUDA.

Both time blocks of back-to-back calls, interleaving the callables of one comparison round by
round, and give the median and IQR of per-call times. CPU blocks are timed with the wall clock;
CUDA blocks with CUDA events, so the time is the GPU's, not the host's launch loop. The events
and the synchronize function of the CUDA timer are injectable, so its logic is tested on CPU.
"""

import abc
import gc
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List


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


class BlockTimer(abc.ABC):
    """Times blocks of back-to-back calls; subclasses say how a block is timed.

    ``measure_all`` interleaves its callables: each round times one block of every callable, in an
    order that rotates from round to round, so a drift of the machine's speed (a shared host's
    turbo or neighbours, seconds long) slows every callable alike instead of whichever happened to
    run then, and the ratios between them stay right. Rounds repeat until every callable has
    ``min_run_time`` of timed blocks and at least ``min_blocks`` blocks. Each callable is called
    ``warmup`` times first, then once to size its blocks to about ``block_time``.
    """

    def __init__(self, min_run_time=0.1, *, warmup=1, block_time=2e-3, min_blocks=5,
                 max_blocks=200, max_number=1000):
        self.min_run_time = min_run_time
        self.warmup = warmup
        self.block_time = block_time
        self.min_blocks = min_blocks
        self.max_blocks = max_blocks
        self.max_number = max_number

    @abc.abstractmethod
    def time_block(self, fn, number):
        """Seconds taken by ``number`` back-to-back calls of ``fn``."""

    def synchronize(self):
        """Waits for the device to finish queued work (nothing to wait for on the CPU)."""

    def calls_per_block(self, one_call):
        """Calls per block so that a block lasts about block_time (1 for slow calls)."""
        if not one_call > 0 or not math.isfinite(one_call):
            return self.max_number
        return max(1, min(self.max_number, int(round(self.block_time / one_call))))

    def measure_all(self, fns: Dict[str, Callable[[], object]]) -> Dict[str, Timing]:
        names = list(fns)
        for name in names:
            for _ in range(self.warmup):  # lazy init, caching allocator, autotuning
                fns[name]()
        self.synchronize()
        number = {name: self.calls_per_block(self.time_block(fns[name], 1)) for name in names}
        samples = {name: [] for name in names}
        total = dict.fromkeys(names, 0.0)
        rounds = 0
        while rounds < self.min_blocks or (
                min(total.values()) < self.min_run_time and rounds < self.max_blocks):
            shift = rounds % len(names)
            for name in names[shift:] + names[:shift]:
                block = self.time_block(fns[name], number[name])
                samples[name].append(block / number[name])
                total[name] += block
            rounds += 1
        return {name: summarize(samples[name], number[name]) for name in names}

    def measure(self, fn: Callable[[], object]) -> Timing:
        return self.measure_all({"fn": fn})["fn"]


class CpuTimer(BlockTimer):
    """Wall-clock blocks (time.perf_counter), with the garbage collector paused while timing."""

    device = "cpu"

    def time_block(self, fn, number):
        enabled = gc.isenabled()
        gc.disable()
        try:
            start = time.perf_counter()
            for _ in range(number):
                fn()
            return time.perf_counter() - start
        finally:
            if enabled:
                gc.enable()


class CudaEventTimer(BlockTimer):
    """CUDA events around blocks of calls, after the warm-up and a synchronize, so the time is
    the GPU's, not the host's launch loop (events resolve ~0.5 us; launch gaps between blocks are
    not timed).

    ``event_factory(enable_timing=True)`` must return objects with ``record()``,
    ``synchronize()`` and ``elapsed_time(end) -> ms`` (torch.cuda.Event); ``synchronize()``
    waits for the device (torch.cuda.synchronize).
    """

    device = "cuda"

    def __init__(self, min_run_time=0.1, *, event_factory=None, synchronize=None, warmup=3,
                 **kw):
        super().__init__(min_run_time, warmup=warmup, **kw)
        if event_factory is None or synchronize is None:
            import torch

            event_factory = event_factory or torch.cuda.Event
            synchronize = synchronize or torch.cuda.synchronize
        self.event_factory = event_factory
        self._synchronize = synchronize

    def synchronize(self):
        self._synchronize()

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


def make_timer(device, min_run_time):
    """The timer of ``device`` ('cpu' or 'cuda')."""
    if device == "cuda":
        return CudaEventTimer(min_run_time)
    if device == "cpu":
        return CpuTimer(min_run_time)
    raise ValueError(f"unknown device {device!r}")
