"""Runs tests/test_kernels_triton_cases.py in a fresh process with TRITON_INTERPRET=1.

Triton fixes interpreter-or-compile when it is first imported, and other tests in this pytest process may import
it first (directly or through torch), so the Triton kernel tests get a process of their own. On a GPU host
(WORKBENCH_TEST_DEVICE=cuda) run tests/test_kernels_triton_cases.py directly instead.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

CASES = Path(__file__).with_name("test_kernels_triton_cases.py")


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_triton_kernels_under_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", WORKBENCH_TEST_DEVICE="cpu")
    proc = subprocess.run([sys.executable, "-m", "pytest", str(CASES), "-q", "-p", "no:cacheprovider"],
                          cwd=CASES.parents[1], env=env, capture_output=True, text=True, timeout=600)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert " passed" in summary and "skipped" not in summary, summary
