"""``python -m normext.bench``: see normext/bench/cli.py."""
import sys

from normext.bench._env import ensure_tcmalloc


def _run():
    # NB: re-execs the interpreter under LD_PRELOAD=tcmalloc when it is installed and not loaded:
    # under glibc malloc every large output is a fresh mmap whose page faults dominate the timing.
    allocator = ensure_tcmalloc()
    from normext.bench.cli import main

    sys.exit(main(allocator=allocator))


if __name__ == "__main__":
    _run()
