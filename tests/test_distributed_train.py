"""`workbench launch -- train --parallel dp=2` end to end, and fault tolerance: a rank killed mid-run makes torchrun
(--max-restarts 1) restart the group, which resumes from the last checkpoint and ends with the same losses as an
uninterrupted run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from workbench.distributed.launcher import LaunchConfig, launch
from workbench.distributed.train_hooks import resolve_layout
from workbench.errors import ConfigError

TRAIN = ["train", "--preset", "glm4-tiny", "--model", "num_layers=1", "--model", "hidden_size=64", "--model",
         "head_dim=16", "--model", "intermediate_size=128", "--steps", "4", "--batch-size", "2", "--seq-len", "32",
         "--ckpt-every", "2", "--eval-every", "0", "--sample-tokens", "0", "--no-progress", "--parallel", "dp=2"]


def test_trainer_layouts():
    assert resolve_layout("dp=1", 2).dp == 2  # the trainer's default means "every rank data parallel"
    assert resolve_layout("dp=2", 2).dp == 2
    with pytest.raises(ConfigError, match="data parallel layouts"):
        resolve_layout("tp=2", 2)


def test_killed_rank_restarts_and_resumes_to_the_same_loss(tmp_path):
    # the uninterrupted run goes through the CLI: `workbench launch --nproc 2 -- train ...`
    proc = subprocess.run([sys.executable, "-m", "workbench", "launch", "--nproc", "2", "--run-dir",
                           str(tmp_path / "l1"), "--timeout", "200", "--", *TRAIN, "--out", str(tmp_path / "clean")],
                          capture_output=True, text=True, timeout=260)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2/2 rank results" in proc.stdout
    clean = [json.loads((tmp_path / "l1" / "results" / f"rank{r}.json").read_text()) for r in range(2)]
    lines: list[str] = []
    faulty = launch([*TRAIN, "--resume", "--out", str(tmp_path / "faulty")], LaunchConfig(nproc=2, max_restarts=1),
                    run_dir=tmp_path / "l2", on_line=lines.append, timeout_s=250,
                    env={"WORKBENCH_FAULT_STEP": "3", "WORKBENCH_FAULT_RANK": "1"}).check()
    log = "\n".join(lines)
    assert "fault injection: rank 1 kills itself after step 3" in log
    assert "resumed from" in log and "step_0000002" in log, "the restarted group did not resume from step 2"
    for a, b in zip(clean, faulty.results):
        assert a["steps"] == b["steps"] == 4
        assert a["final_train_loss"] == pytest.approx(b["final_train_loss"], abs=1e-6)
        assert a["final_val_loss"] == pytest.approx(b["final_val_loss"], abs=1e-6)
