"""GroupNorm benchmark: a thin wrapper of ``python -m normext.bench --op group_norm`` (same options).

Kept so that existing commands keep working; the benchmark itself lives in normext/bench/.
"""
import os
import sys

if __name__ == "__main__":
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    os.execve(sys.executable, [sys.executable, "-m", "normext.bench", "--op", "group_norm"] + sys.argv[1:], env)
