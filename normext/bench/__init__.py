"""normext's benchmark, as a tool: ``python -m normext.bench --help``.

Modules: cli (options, the run), ops (op families and their shapes), runner (one case: guard,
saved bytes, compile, timings), timing (CPU and CUDA-event timers), targets (the issue targets),
report (table, summary, JSON, plot), memory (saved-for-backward and peak-memory report),
_env (allocator, machine description, CPU load).
"""
