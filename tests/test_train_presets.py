"""The trainer on the real model family (shrunk presets): MoE expert-load metrics and bias updates, Muon,
activation checkpointing, MTP, MFU from the accounting, BPE tokenizer end to end."""

from __future__ import annotations

import pytest
import torch

from workbench.train import TrainConfig, Trainer

SMALL = {
    "glm4-tiny": dict(hidden_size=64, num_layers=2, intermediate_size=128, num_heads=2, num_kv_heads=1, head_dim=32),
    "glm45-tiny": dict(hidden_size=64, num_layers=2, intermediate_size=128, num_heads=2, num_kv_heads=1, head_dim=32,
                       num_experts=4, moe_intermediate_size=32),
    "glm5-tiny": dict(hidden_size=64, num_layers=2, intermediate_size=128, num_heads=2, q_lora_rank=32,
                      kv_lora_rank=16, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, index_head_dim=16,
                      index_topk=8, indexer_types=["full", "shared"], num_experts=4, moe_intermediate_size=32),
}


def _config(tmp_path, preset, **changes):
    base = dict(preset=preset, model_overrides=SMALL[preset], steps=4, batch_size=2, seq_len=16, warmup_steps=1,
                device="cpu", out_dir=str(tmp_path / preset), progress=False, eval_every=0, ckpt_every=0,
                eval_batches=1, sample_tokens=4, log_every=100)
    return TrainConfig(**{**base, **changes})


@pytest.mark.parametrize("preset, optimizer, checkpointing", [
    ("glm4-tiny", "muon", True),
    ("glm45-tiny", "adamw", False),
    ("glm5-tiny", "muon", True),
])
def test_each_preset_trains_and_reports(tmp_path, preset, optimizer, checkpointing):
    trainer = Trainer(_config(tmp_path, preset, optimizer=optimizer, activation_checkpointing=checkpointing),
                      log=lambda m: None)
    assert trainer.model_config.vocab_size == 257  # from the byte tokenizer, not the preset's 2048
    before = {n: b.clone() for n, b in trainer.raw_model.named_buffers() if "expert_bias" in n}
    records = [trainer.train_step() for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    assert records[0]["mfu"] is not None and 0 < records[0]["mfu"] < 1
    if preset == "glm4-tiny":
        assert "expert" not in records[0]
    else:  # aux-loss-free balancing: loads reported, biases moved
        assert records[0]["expert"]["expert_load/max_over_mean"] >= 1.0
        after = dict(trainer.raw_model.named_buffers())
        assert before and any(not torch.equal(after[n], b) for n, b in before.items())
    if optimizer == "muon":
        assert "muon" in trainer.optimizer.optimizers and records[0]["muon_lr"] > 0
    assert trainer.sample(max_new_tokens=4).startswith("Once upon a time")


def test_bpe_run_saves_its_tokenizer_and_resumes_with_it(tmp_path):
    from workbench.data.stories import generate_stories

    data = tmp_path / "stories.txt"
    data.write_text("\n\n".join(generate_stories(400)))
    config = _config(tmp_path, "glm4-tiny", tokenizer="bpe", bpe_vocab_size=320, steps=2, data=str(data))
    summary = Trainer(config, log=lambda m: None).fit()
    assert summary["vocab_size"] <= 320 and summary["tokenizer"].startswith("bpe-")
    assert (tmp_path / "glm4-tiny" / "tokenizer.json").exists()
    resumed = Trainer(config.replace(steps=3, resume=True), log=lambda m: None)
    assert resumed.step == 2 and resumed.tokenizer.identity == summary["tokenizer"]


@pytest.mark.parametrize("preset, checkpointing", [("glm45-tiny", False), ("glm5-tiny", True)])
def test_compiled_training_is_one_graph_and_follows_eager(tmp_path, preset, checkpointing):
    """`--compile` on the MoE presets: the whole model is one graph (any graph break is counted; the MoE's grouped
    GEMMs and the DSA mask check used to break it, so most of a layer ran eagerly between compiled pieces; with
    activation checkpointing, the expert-load and indexer-loss attributes the blocks set broke every block), and
    the first steps' losses match an eager run from the same seed."""
    from torch._dynamo.utils import counters

    eager = Trainer(_config(tmp_path, preset, activation_checkpointing=checkpointing), log=lambda m: None)
    expected = [eager.train_step()["loss"] for _ in range(3)]
    eager.close()
    torch._dynamo.reset()
    counters.clear()
    compiled = Trainer(_config(tmp_path, preset, out_dir=str(tmp_path / "compiled"), compile=True,
                               activation_checkpointing=checkpointing), log=lambda m: None)
    losses = [compiled.train_step()["loss"] for _ in range(3)]
    compiled.close()
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert losses == pytest.approx(expected, rel=1e-4)


def test_a_compile_that_cannot_work_is_one_line(tmp_path, monkeypatch):
    """Without a working C++ compiler `--compile` ended in a 110-line inductor traceback at step 1."""
    import torch._inductor.config as inductor_config

    from workbench.errors import WorkbenchError

    torch._dynamo.reset()
    monkeypatch.setattr(inductor_config.cpp, "cxx", ("/nonexistent/g++",))
    monkeypatch.setattr(inductor_config, "fx_graph_cache", False)
    trainer = Trainer(_config(tmp_path, "glm4-tiny", compile=True), log=lambda m: None)
    with pytest.raises(WorkbenchError, match="torch.compile failed .*C\\+\\+ compiler.*run without --compile"):
        trainer.train_step()
    trainer.close()
    torch._dynamo.reset()
