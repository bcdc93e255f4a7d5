"""`workbench export`: a run folder from `workbench train` -> a transformers folder with the same logits."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from workbench.cli import main  # noqa: E402
from workbench.interop.cli import export_run  # noqa: E402
from workbench.model import ModelConfig, build_model  # noqa: E402
from workbench.train import TrainConfig, Trainer  # noqa: E402
from workbench.train import checkpoint as ckpt  # noqa: E402


def _train(run_dir, preset, tokenizer="byte", **model):
    config = TrainConfig(preset=preset, steps=2, batch_size=2, seq_len=32, warmup_steps=1, eval_every=0,
                         ckpt_every=1, keep_last=2, sample_tokens=0, progress=False, device="cpu", out_dir=str(run_dir),
                         tokenizer=tokenizer, bpe_vocab_size=300, model_overrides={"num_layers": 2, **model})
    Trainer(config, log=lambda message: None).fit()
    return run_dir


def _trained_model(run_dir, step=None):
    settings = json.loads((run_dir / "config.json").read_text())
    model = build_model(ModelConfig.from_dict(settings["model"])).eval()
    path = ckpt.latest_good_checkpoint(run_dir / "checkpoints") if step is None else \
        run_dir / "checkpoints" / ckpt.step_dir_name(step)
    ckpt.load_checkpoint(path, model)
    return model


def test_the_default_preset_exports_from_its_run_folder(tmp_path, capsys):
    """There was no route from a run folder to transformers, and the default preset (glm4-tiny, interleaved RoPE)
    could not be exported at all."""
    run = _train(tmp_path / "run", "glm4-tiny")
    assert main(["export", str(run), "--out", str(tmp_path / "hf")]) == 0
    assert "workbench_tokenizer.json" in capsys.readouterr().out
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
    assert theirs.config.eos_token_id == 256  # the byte tokenizer's end of text: generate stops there
    x = torch.randint(0, 257, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(theirs(x).logits, _trained_model(run)(x).logits, rtol=0, atol=1e-4)
    # an earlier step on request; a folder that already holds files is refused (nothing overwritten)
    export_run(run, tmp_path / "hf_step1", step=1)
    first = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf_step1", attn_implementation="eager")
    with torch.no_grad():
        torch.testing.assert_close(first.eval()(x).logits, _trained_model(run, step=1)(x).logits, rtol=0, atol=1e-4)
    assert main(["export", str(run), "--out", str(tmp_path / "hf")]) == 2
    assert "already holds files" in capsys.readouterr().err
    (tmp_path / "a_file").write_text("")  # it was told it 'already holds files'
    assert main(["export", str(run), "--out", str(tmp_path / "a_file")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert main(["export", str(run), "--out", str(tmp_path / "x"), "--step", "7"]) == 2
    assert "no checkpoint of step 7; it has: 1, 2" in capsys.readouterr().err
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "y")]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_a_model_transformers_cannot_express_is_refused_before_anything_is_made(tmp_path, capsys):
    """The refusal came after loading the checkpoint and left an empty --out folder behind."""
    run = _train(tmp_path / "run", "glm45-tiny", mtp_layers=0, num_shared_experts=0)
    assert main(["export", str(run), "--out", str(tmp_path / "hf")]) == 2
    assert "shared expert" in capsys.readouterr().err and not (tmp_path / "hf").exists()


def test_a_bpe_run_exports_its_tokenizer_for_transformers(tmp_path):
    run = _train(tmp_path / "run", "glm45-tiny", tokenizer="bpe", mtp_layers=0)
    written = export_run(run, tmp_path / "hf")
    assert written["tokenizer"] == "bpe"
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "hf" / "tokenizer.json"))
    from workbench.data import load_tokenizer

    ours = load_tokenizer(run)
    text = "Once upon a time, a small robot"
    assert fast.encode(text) == list(ours.encode(text))
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["eos_token_id"] == ours.eos_id


def _pruned_while_read(monkeypatch, run, times: int) -> list[str]:
    """Make the first ``times`` checkpoint loads find their checkpoint pruned, as a run still training with
    --keep-last does: a newer checkpoint appears and the one export chose is deleted before it is read."""
    import shutil

    load, loaded = ckpt.load_checkpoint, []

    def racing_load(path, *args, **kwargs):
        loaded.append(path.name)
        if len(loaded) <= times:
            steps = [step for step, _ in ckpt.list_checkpoints(path.parent)]
            shutil.copytree(path, path.parent / ckpt.step_dir_name(max(steps) + 1))
            shutil.rmtree(path)
        return load(path, *args, **kwargs)

    monkeypatch.setattr(ckpt, "load_checkpoint", racing_load)
    return loaded


def test_export_of_a_run_that_prunes_its_checkpoints_meanwhile_takes_the_newest(tmp_path, monkeypatch, capsys):
    """The checkpoint export chose was deleted by the training run's --keep-last pruning while it was read: export
    failed with "checkpoint ... is partial: no manifest.json", telling the user a sound run was damaged."""
    run = _train(tmp_path / "run", "glm4-tiny")
    loaded = _pruned_while_read(monkeypatch, run, times=2)
    assert main(["export", str(run), "--out", str(tmp_path / "hf")]) == 0
    out, err = capsys.readouterr()
    assert loaded == ["step_0000002", "step_0000003", "step_0000004"]
    assert "exported" in out and "step_0000004" in out and "partial" not in out + err, out + err


def test_export_gives_up_on_a_run_that_keeps_pruning_with_a_clear_line(tmp_path, monkeypatch, capsys):
    run = _train(tmp_path / "run", "glm4-tiny")
    _pruned_while_read(monkeypatch, run, times=100)
    assert main(["export", str(run), "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--step" in err and "partial" not in err, err
