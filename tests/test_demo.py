"""``python -m workbench.demo`` (``make demo``): bad flags are one line, and it starts over only in its own folder.

It deleted whatever --out named that held a config.json (another run, even one still training) before it had
checked its flags; --steps 0 silently meant 300."""

from __future__ import annotations

import pytest

from workbench import demo


@pytest.mark.parametrize("flags, message", [
    (["--steps", "-5"], "--steps must be >= 1"), (["--steps", "0"], "--steps must be >= 1"),
    (["--minutes", "0"], "--minutes must be a positive number"), (["--minutes", "nan"], "positive number"),
    (["--batch-size", "0"], "batch_size must be a positive integer"), (["--seq-len", "0"], "seq_len must be"),
    (["--preset", "glm99"], "unknown preset"),
])
def test_bad_flags_are_one_line_and_delete_nothing(tmp_path, capsys, flags, message):
    out = tmp_path / "demo"
    out.mkdir()
    (out / demo.DEMO_MARKER).write_text("")
    (out / "config.json").write_text("{}")
    assert demo.main([*flags, "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("demo: error: ") and message in err and "Traceback" not in err
    assert (out / "config.json").exists()


def test_a_folder_that_is_not_the_demos_is_never_cleared(tmp_path, capsys):
    other = tmp_path / "my_run"
    (other / "checkpoints").mkdir(parents=True)
    (other / "config.json").write_text("{}")
    assert demo.main(["--out", str(other), "--device", "cpu", "--steps", "1"]) == 2
    assert "not a demo run folder" in capsys.readouterr().err
    assert (other / "config.json").exists() and (other / "checkpoints").is_dir()


def test_a_demo_folder_in_use_by_another_process_is_refused(tmp_path, capsys, lock_in_another_process):
    out = tmp_path / "demo"
    out.mkdir()
    (out / demo.DEMO_MARKER).write_text("")
    (out / "metrics.jsonl").write_text("{}\n")
    lock_in_another_process(out)
    assert demo.main(["--out", str(out), "--device", "cpu", "--steps", "1"]) == 2
    assert "is using the run folder" in capsys.readouterr().err
    assert (out / "metrics.jsonl").exists()


def test_an_unwritable_out_and_ctrl_c_are_one_line(tmp_path, capsys, monkeypatch):
    """An --out that cannot be made (under a file; read-only; /proc) and Ctrl-C printed tracebacks; `workbench
    train` prints one line for both."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert demo.main(["--out", str(blocker / "demo"), "--device", "cpu", "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("demo: error: ") and "Traceback" not in err

    import workbench.train as train_package

    def interrupted(config):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_package, "train", interrupted)
    assert demo.main(["--out", str(tmp_path / "demo"), "--device", "cpu", "--steps", "1"]) == 130
    assert "interrupted" in capsys.readouterr().err


@pytest.mark.parametrize("steps, warmup", [(5, 0), (100, 10), (300, 20)])
def test_a_short_demo_warms_up_for_fewer_steps(tmp_path, monkeypatch, steps, warmup):
    """`--steps 10` kept 20 warm-up steps, and the trainer's warning told the user to set --warmup-steps, a flag the
    demo does not have."""
    import workbench.train as train_package

    seen = []

    def record(config):
        seen.append(config)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_package, "train", record)
    demo.main(["--out", str(tmp_path / "demo"), "--device", "cpu", "--steps", str(steps)])
    assert seen[0].warmup_steps == warmup and seen[0].warmup_steps < steps
