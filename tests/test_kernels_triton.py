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


def test_triton_imported_before_the_interpreter_was_asked_for_is_unavailable_on_cpu(monkeypatch):
    """torch.compile imports triton in compiled mode; setting TRITON_INTERPRET=1 afterwards made `kernels list` say
    'ok' for triton on cpu, and every call then failed inside the kernel ('Cannot call @triton.jit'd outside of
    the scope of a kernel': triton's own tl.sum was a compiled JITFunction)."""
    import types

    from workbench.kernels import triton_ops

    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    compiled, interpreted = type("JITFunction", (), {})(), type("InterpretedFunction", (), {})()
    monkeypatch.setitem(sys.modules, "triton.language", types.SimpleNamespace(sum=compiled))
    assert "imported before TRITON_INTERPRET=1" in triton_ops.available("cpu")
    assert triton_ops.available("cuda") is None  # on a GPU the compiled library is the right one
    monkeypatch.setitem(sys.modules, "triton.language", types.SimpleNamespace(sum=interpreted))
    assert triton_ops.available("cpu") is None
