"""Packaging guards: a build made for one torch refuses, with a clear error, to load into another."""
import subprocess
import sys

import torch

import normext._build_info as build_info

SCRIPT = r"""
import sys, types
import torch
fake = types.ModuleType("normext._build_info")
fake.TORCH_VERSION = "1.0.0+other"
sys.modules["normext._build_info"] = fake
try:
    import normext
except ImportError as e:
    print("ImportError:", e)
else:
    print("imported")
"""


def test_build_info_matches_running_torch():
    assert build_info.TORCH_VERSION == torch.__version__


def test_mismatched_torch_is_a_clear_import_error():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ImportError: normext was compiled against torch 1.0.0+other"), out.stdout
    assert f"but torch {torch.__version__} is installed" in out.stdout
    assert "pip install --no-build-isolation" in out.stdout
