"""`workbench train` end to end: SIGKILL mid-run + `--resume` gives the uninterrupted loss trajectory bitwise (CPU),
also when the newest checkpoint is corrupt; and bad flags end with one clear line, not a traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from workbench.cli import main
from workbench.train.metrics import read_metrics

REPO = Path(__file__).resolve().parents[1]
# A glm4-tiny-shaped model small enough for a test (~0.1M params); the preset's shape logic is unchanged.
TINY = ["--model", "hidden_size=64", "--model", "num_layers=2", "--model", "intermediate_size=128",
        "--model", "num_heads=2", "--model", "num_kv_heads=1", "--model", "head_dim=32"]
STEPS = 60


def _args(out: Path, *extra: str) -> list[str]:
    return ["train", "--preset", "glm4-tiny", "--steps", str(STEPS), "--device", "cpu", "--batch-size", "4",
            "--seq-len", "32", "--out", str(out), "--ckpt-every", "5", "--keep-last", "2", "--eval-every", "20",
            "--sample-tokens", "16", "--no-progress", "--log-every", "1000", *TINY, *extra]


def _env() -> dict[str, str]:
    # One thread: the same reduction order in every process (bitwise equality) and no spinning on a busy machine.
    return {**os.environ, "OMP_NUM_THREADS": "1", "WORKBENCH_NO_PROGRESS": "1", "PYTHONPATH": str(REPO)}


def _run(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workbench", *_args(out, *extra)], env=_env(), cwd=REPO,
                          capture_output=True, text=True, timeout=170)


def _losses(run: Path, kind: str = "train", key: str = "loss") -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in read_metrics(run / "metrics.jsonl") if r["kind"] == kind]


def test_sigkill_then_resume_matches_an_uninterrupted_run_bitwise(tmp_path):
    whole = tmp_path / "whole"
    done = _run(whole)
    assert done.returncode == 0, done.stderr

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "workbench", *_args(killed)], env=_env(), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for = killed / "checkpoints" / "step_0000010" / "manifest.json"
    deadline = time.time() + 150
    while not wait_for.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL, "the run finished before it could be killed"
    logged = [s for s, _ in _losses(killed)]
    assert 10 <= max(logged) < STEPS

    # Damage the newest checkpoint: the resume must say so and fall back to the previous good one.
    newest = sorted((killed / "checkpoints").glob("step_*"))[-1]
    model_file = newest / "model.safetensors"
    data = bytearray(model_file.read_bytes())
    data[-3] ^= 0xFF
    model_file.write_bytes(bytes(data))

    resumed = _run(killed, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"{newest.name} is corrupt" in resumed.stderr and "falling back" in resumed.stderr
    assert "resumed from" in resumed.stderr

    expected, got = _losses(whole), _losses(killed)
    assert [s for s, _ in got] == list(range(1, STEPS + 1))
    assert got == expected  # bitwise: JSON floats round-trip exactly
    assert _losses(killed, "eval", "val_loss") == _losses(whole, "eval", "val_loss")
    assert (killed / "summary.json").exists()


def test_moe_resume_with_evals_between_checkpoints_is_bitwise(tmp_path):
    """An MoE run stopped and resumed equals the uninterrupted one, weights and expert biases included, with eval
    passes between the checkpoints (they once leaked into the balancing counts that a resume starts without)."""
    from safetensors.torch import load_file

    moe = ["--preset", "glm45-tiny", *TINY, "--model", "moe_intermediate_size=32", "--optimizer", "muon",
           "--device", "cpu", "--batch-size", "2", "--seq-len", "32", "--eval-every", "2", "--ckpt-every", "2",
           "--sample-tokens", "0", "--no-progress"]
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    assert main(["train", *moe, "--steps", "6", "--out", str(whole)]) == 0
    assert main(["train", *moe, "--steps", "4", "--out", str(stopped)]) == 0
    assert main(["train", *moe, "--steps", "6", "--out", str(stopped), "--resume"]) == 0
    assert _losses(stopped) == _losses(whole) and len(_losses(whole)) == 6
    final = "checkpoints/step_0000006/model.safetensors"
    expected, got = load_file(whole / final), load_file(stopped / final)
    assert any("expert_bias" in name for name in expected)
    assert all(torch.equal(expected[name], got[name]) for name in expected)


def _one_line_error(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("change, message", [
    (["--steps", "-5"], "steps must be a positive integer"),
    (["--preset", "glm99-huge"], "unknown preset 'glm99-huge'"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--seq-len", "4096"], "beyond the 2048 positions"),
    (["--data", "MISSING"], "does not exist"),
    (["--data", "EMPTY"], "is empty"),
    (["--data", "LATIN1"], "is not UTF-8"),
    (["--model", "hidden_sizes=3"], "unknown model setting"),
    (["--model", "num_layers=abc"], "num_layers must be an integer (got 'abc')"),
    (["--model", "tie_embeddings=maybe"], "tie_embeddings must be true or false"),
    (["--lr", "inf"], "lr and muon_lr must be finite"),
    (["--out", "A_FILE"], "is a file"),
    (["--tokenizer", "bpe", "--bpe-vocab-size", "18446744073709551616"], "bpe_vocab_size must be in [300, 16777216]"),
])
def test_bad_values_get_one_clear_line(tmp_path, capsys, change, message):
    files = {"MISSING": tmp_path / "nope.txt", "EMPTY": tmp_path / "empty.txt", "LATIN1": tmp_path / "latin1.txt",
             "A_FILE": tmp_path / "a_file"}
    files["EMPTY"].write_text("")
    files["A_FILE"].write_text("not a folder")
    files["LATIN1"].write_bytes("café au lait".encode("latin-1"))
    change = [str(files.get(c, c)) for c in change]
    argv = ["train", "--steps", "2", "--out", str(tmp_path / "run"), "--no-progress", *TINY, *change]
    assert message in _one_line_error(capsys, argv)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_an_unavailable_device_is_one_clear_line(tmp_path, capsys):
    from workbench.device import available_device_types

    missing = next(t for t in ("npu", "cuda", "xpu", "mps") if t not in available_device_types())
    err = _one_line_error(capsys, ["train", "--device", missing, "--out", str(tmp_path / "r")])
    assert f"device {missing!r} is not available" in err


def test_out_of_memory_is_one_clear_line(capsys, monkeypatch):
    """A batch that does not fit ended in a numpy / torch allocation traceback."""
    import numpy as np

    import workbench.train.cli as train_cli

    def allocate(_args):
        np.empty(2**40, dtype=np.int64)  # numpy's _ArrayMemoryError, a MemoryError

    monkeypatch.setattr(train_cli, "run", allocate)
    assert "out of memory (Unable to allocate" in _one_line_error(capsys, ["train"])

    def torch_cpu_oom(_args):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] err == 0. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 6553600000 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(train_cli, "run", torch_cpu_oom)
    err = _one_line_error(capsys, ["train"])
    assert "out of memory (DefaultCPUAllocator: can't allocate memory" in err and "--batch-size" in err

    def a_bug(_args):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(train_cli, "run", a_bug)
    with pytest.raises(RuntimeError, match="shapes"):  # not a user error: the traceback stays
        main(["train"])


def test_a_full_disk_is_one_clear_line(capsys, monkeypatch):
    """ENOSPC while writing a checkpoint ended in a traceback (only some OSErrors were user errors)."""
    import errno

    import workbench.train.cli as train_cli

    def full_disk(_args):
        raise OSError(errno.ENOSPC, "No space left on device", "runs/x/checkpoints/.tmp-step_0000006-1/optimizer.pt")

    monkeypatch.setattr(train_cli, "run", full_disk)
    err = _one_line_error(capsys, ["train"])
    assert "No space left on device" in err and "--resume" in err


def test_a_second_process_cannot_train_in_a_run_folder_in_use(tmp_path):
    """A resume started while the first run still trained pruned the first run's checkpoints (and vice versa)."""
    from workbench.train.run_lock import lock_run_folder, unlock_run_folder

    run = tmp_path / "run"
    lock_run_folder(run)
    lock_run_folder(run)  # this process may take it again (a notebook cell run twice)
    second = subprocess.run([sys.executable, "-m", "workbench", *_args(run, "--resume")], env=_env(), cwd=REPO,
                            capture_output=True, text=True, timeout=170)
    assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr
    assert f"another process (pid {os.getpid()}) is using the run folder {run}" in second.stderr
    unlock_run_folder(run)
    probe = subprocess.run([sys.executable, "-c", "from workbench.train.run_lock import lock_run_folder; "
                            f"lock_run_folder({str(run)!r}); print('locked')"], env=_env(), cwd=REPO,
                           capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == "locked", probe.stderr


def test_the_closing_line_survives_a_run_without_train_records():
    """A finished run resumed after its metrics.jsonl was deleted has no train losses: the print crashed."""
    from workbench.train.cli import summary_line

    line = summary_line({"steps": 5, "first_train_loss": None, "final_train_loss": None, "final_val_loss": 1.5,
                         "tokens_per_s": 0.0, "mfu": None, "peak_source": "measured probe"})
    assert "train loss n/a -> n/a, val loss 1.500" in line


def test_a_checkpoints_folder_that_cannot_be_written_fails_before_training(tmp_path, capsys):
    """`run/checkpoints` as a file was found only at the first save, after the training time was spent."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoints").write_text("not a folder")
    err = _one_line_error(capsys, ["train", "--steps", "3", "--ckpt-every", "2", "--out", str(run), "--no-progress",
                                   *TINY])
    assert "checkpoints" in err and "is a file" in err
    assert not (run / "metrics.jsonl").exists() or "loss" not in (run / "metrics.jsonl").read_text()


def test_checkpoint_folder_check_reports_an_unwritable_folder(tmp_path, monkeypatch):
    from workbench.errors import WorkbenchError
    from workbench.train import checkpoint as ckpt

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(ckpt.tempfile, "mkstemp", read_only)
    with pytest.raises(WorkbenchError, match="cannot write checkpoints to .*: Permission denied"):
        ckpt.check_checkpoint_folder(tmp_path / "checkpoints")


def test_a_run_on_non_ascii_text_finishes_under_an_ascii_locale(tmp_path):
    """Under a locale whose encoding is not UTF-8 (LC_ALL=C with UTF-8 mode off; latin-1 locales; Windows' cp1252)
    the run trained and then failed at its very end writing samples.txt ("'ascii' codec can't encode"), leaving no
    summary.json. Every text file the workbench writes or reads is UTF-8 now."""
    data = tmp_path / "dätä.txt"
    data.write_text("Ünïcödé stories: café, naïve, 東京, emoji 🙂.\n\n" * 200, encoding="utf-8")
    out = tmp_path / "rün"
    env = {**{k: v for k, v in _env().items() if k != "PYTHONIOENCODING"}, "LC_ALL": "C", "LANG": "C",
           "PYTHONUTF8": "0"}
    done = subprocess.run([sys.executable, "-m", "workbench", *_args(out, "--data", str(data)), "--steps", "2",
                           "--warmup-steps", "1"], env=env, cwd=REPO, capture_output=True, text=True,
                          encoding="utf-8", errors="replace", timeout=170)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "summary.json").exists() and (out / "samples.txt").read_text(encoding="utf-8")


def test_a_reader_that_leaves_early_is_not_an_error(capsys, monkeypatch):
    """`workbench models | head -1`: the closed pipe printed "error: [Errno 32] Broken pipe" (or a traceback for
    --help), as if the command had failed. And the disk-full hint about --resume is for training only."""
    import errno

    import workbench.model.cli as models_cli

    def reader_gone(_args):
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    monkeypatch.setattr(models_cli, "run", reader_gone)
    assert main(["models"]) == 141 and capsys.readouterr().err == ""

    def full_disk(_args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(models_cli, "run", full_disk)
    assert main(["models"]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "--resume" not in err


@pytest.mark.parametrize("code, strerror", [("EFBIG", "File too large"), ("EDQUOT", "Disk quota exceeded")])
def test_a_file_size_limit_or_quota_is_one_clear_line_with_the_resume_hint(capsys, monkeypatch, code, strerror):
    """`ulimit -f` or a quota ended a run with a bare "[Errno 27] File too large": the hint to free space and
    continue with --resume came only for ENOSPC."""
    import errno

    import workbench.train.trainer as trainer

    def limited(*_args, **_kwargs):
        raise OSError(getattr(errno, code), strerror, "runs/x/checkpoints/.tmp-step_0000005-1/optimizer.pt")

    monkeypatch.setattr(trainer, "train", limited)
    err = _one_line_error(capsys, ["train", "--device", "cpu"])
    assert strerror in err and "optimizer.pt" in err and "--resume" in err, err
