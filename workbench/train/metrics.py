"""Per-step metrics: tokens/s, MFU (with the source of the peak), memory; written to run_dir/metrics.jsonl.

MFU follows the PaLM / torchtitan convention: ``tokens/s * flops_per_token / peak FLOP/s``, with flops_per_token
from ``workbench.model.accounting`` (6 x active matmul params + the attention term) and the peak from the device
layer (hardware catalog, or a measured GEMM probe on CPUs and unknown chips). The peak's source is reported next to
every MFU, because an MFU against a datasheet and one against a measured probe are different numbers.
``MetricsLogger`` only writes on the main process (the seam for data-parallel runs).
Used by the trainer and notebooks/01_training.ipynb.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from workbench.params import env_flag
from workbench.results import to_jsonable


def mfu(tokens_per_s: float, flops_per_token: float | None, peak_flops: float | None) -> float | None:
    """Model FLOPs utilisation, or None when the peak (or the FLOP count) is unknown; never a guess."""
    if not peak_flops or not flops_per_token or tokens_per_s <= 0:
        return None
    return tokens_per_s * flops_per_token / peak_flops


class MetricsLogger:
    """Appends one JSON object per line to ``path``; each line is flushed so a killed run keeps what it logged."""

    def __init__(self, path: str | Path, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self._file = None

    def truncate_after(self, step: int) -> None:
        """On resume: drop lines logged after checkpoint ``step`` (the crashed run logged steps it never saved)."""
        if not self.enabled or not self.path.exists():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except ValueError:  # a half-written last line from a killed process
                continue
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
        os.replace(tmp, self.path)

    def reset(self) -> None:
        if self.enabled and self.path.exists():
            self.path.unlink()

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")
        self._file.write(json.dumps(to_jsonable(record)) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl (skipping a torn last line)."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def progress_enabled(requested: bool = True) -> bool:
    """Progress bars are on unless asked off, WORKBENCH_NO_PROGRESS=1 is set (the test suite sets it), or nothing
    can show one: in a notebook the bar is a widget; elsewhere it needs a terminal on stderr. Piped into a log
    (`... 2>&1 | tee train.log`) a bar was a single line of carriage returns, and the step lines, printed only
    without a bar, were missing."""
    if not requested or env_flag("WORKBENCH_NO_PROGRESS"):
        return False
    from workbench.viz import in_interactive_kernel

    try:
        terminal = sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        terminal = False
    return terminal or in_interactive_kernel()
