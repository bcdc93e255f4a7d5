"""Trainer parts on a tiny stand-in model: schedule, Muon, optimizer groups, config validation, the loop, resume."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from workbench.errors import ConfigError, WorkbenchError
from workbench.train import (Muon, TrainConfig, Trainer, build_optimizer, lr_multiplier,
                             newton_schulz_orthogonalize)
from workbench.train.metrics import mfu, read_metrics


@dataclass
class _Out:
    loss: torch.Tensor
    logits: torch.Tensor
    lm_loss: torch.Tensor | None = None


class StandIn(nn.Module):
    """A 2-block MLP language model with the workbench model's call signature (labels already shifted)."""

    def __init__(self, vocab: int = 257, d: int = 32, n: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
                                    for _ in range(n))
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.bias_updates = 0

    def forward(self, x, labels=None):
        h = self.embed(x)
        for layer in self.layers:
            h = h + layer(h)
        logits = self.lm_head(h)
        loss = None if labels is None else nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())
        return _Out(loss, logits, loss)

    def update_expert_bias(self, rate=None):
        self.bias_updates += 1
        return {"max_violation": 0.0}


def tiny_config(tmp_path, **changes) -> TrainConfig:
    base = dict(steps=8, batch_size=4, seq_len=32, warmup_steps=2, eval_every=4, eval_batches=2, ckpt_every=4,
                out_dir=str(tmp_path / "run"), device="cpu", progress=False, sample_tokens=8, log_every=100)
    return TrainConfig(**{**base, **changes})


def quiet(_message: str) -> None:
    pass


# ---- schedule -------------------------------------------------------------------------------------------------
def test_warmup_then_cosine_to_min():
    m = [lr_multiplier(s, total_steps=100, warmup_steps=10, min_lr_ratio=0.1) for s in range(100)]
    assert m[0] == pytest.approx(0.1) and m[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(m[:10], m[1:10]))  # warmup rises
    assert all(a >= b for a, b in zip(m[10:], m[11:]))  # cosine falls
    assert m[10] == pytest.approx(1.0) and lr_multiplier(100, 100, 10, 0.1) == pytest.approx(0.1)
    assert m[55] == pytest.approx(0.1 + 0.9 * 0.5, abs=1e-9)  # halfway through decay


# ---- Muon -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(64, 16), (16, 64), (3, 24, 40)])
def test_newton_schulz_makes_singular_values_near_one(shape):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    s = torch.linalg.svdvals(newton_schulz_orthogonalize(g))
    assert s.min() > 0.5 and s.max() < 1.3, s


def test_muon_trains_a_matrix_and_rejects_vectors():
    torch.manual_seed(0)
    target = torch.randn(16, 32)
    w = nn.Parameter(torch.zeros(16, 32))
    opt = Muon([w], lr=0.3)
    x = torch.randn(256, 32)
    losses = []
    for i in range(60):
        opt.param_groups[0]["lr"] = 0.3 * (1 - i / 60)  # Muon's step has a fixed size: decay it to converge
        loss = ((x @ w.T - x @ target.T) ** 2).mean()
        losses.append(loss.item())
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert losses[-1] < 0.05 * losses[0]
    with pytest.raises(ValueError, match="ndim >= 2"):
        Muon([nn.Parameter(torch.zeros(4))])


def test_muon_leaves_embeddings_head_and_vectors_to_adamw():
    model = StandIn()
    opt = build_optimizer(model, "muon", lr=1e-3)
    muon_ids = {id(p) for g in opt.optimizers["muon"].param_groups for p in g["params"]}
    adam_ids = {id(p) for g in opt.optimizers["adamw"].param_groups for p in g["params"]}
    assert id(model.embed.weight) in adam_ids and id(model.lm_head.weight) in adam_ids
    assert id(model.layers[0][1].weight) in muon_ids and id(model.layers[0][1].bias) in adam_ids
    assert muon_ids.isdisjoint(adam_ids)
    assert len(muon_ids | adam_ids) == len(list(model.parameters()))
    adamw_only = build_optimizer(model, "adamw")
    assert list(adamw_only.optimizers) == ["adamw"]


def test_fused_adamw_only_where_the_device_supports_it():
    class NoFused:
        def supports_fused_adamw(self):
            return False

    assert build_optimizer(StandIn(), device=NoFused()).implementation == "foreach"
    from workbench.device import get_device

    assert build_optimizer(StandIn(), device=get_device("cpu")).implementation == "fused"


# ---- config ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("changes, message", [
    (dict(steps=-1), "steps must be a positive integer"),
    (dict(batch_size=0), "batch_size"),
    (dict(optimizer="sgd"), "optimizer must be one of"),
    (dict(parallel=2), "parallel must be a string"),
    (dict(lr=0.0), "lr and muon_lr must be finite and > 0"),
    (dict(seed=2**64), r"seed must be below 2\*\*63"),
    # wrong types are named (sample_prompt=None crashed fit() after training; "no" was a true progress flag)
    (dict(sample_prompt=None), "sample_prompt must be a string"),
    (dict(progress="no"), "progress must be true or false"),
    (dict(min_lr_ratio="0.1"), "min_lr_ratio must be a number"),
    (dict(time_limit_s="10"), "time_limit_s must be a number or None"),
])
def test_config_rejects_bad_values(changes, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**changes)


def test_mfu_is_none_without_a_peak():
    assert mfu(1000.0, 6e6, None) is None and mfu(1000.0, None, 1e12) is None
    assert mfu(1000.0, 6e6, 1e12) == pytest.approx(6e-3)


# ---- the loop -------------------------------------------------------------------------------------------------
def test_fit_logs_metrics_writes_run_folder_and_learns(tmp_path):
    config = tiny_config(tmp_path, steps=30, lr=1e-2, eval_every=10, ckpt_every=10, keep_last=2)
    seen = []
    trainer = Trainer(config, model=StandIn(), callbacks=[seen.append], log=quiet)
    summary = trainer.fit()
    run = tmp_path / "run"
    records = read_metrics(run / "metrics.jsonl")
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 31))
    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "mfu", "peak_source", "step_time_s", "memory_bytes",
                "expert"):
        assert key in train[0], key
    assert [r["step"] for r in records if r["kind"] == "eval"] == [10, 20, 30]
    assert summary["final_train_loss"] < summary["first_train_loss"] - 0.5
    assert summary["final_val_loss"] < 5.0
    assert summary["params"] == sum(p.numel() for p in trainer.raw_model.parameters())
    assert "peak_source" in summary and summary["tokens_per_s"] > 0
    assert json.loads((run / "summary.json").read_text())["steps"] == 30
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_0000020", "step_0000030"]
    assert (run / "figures" / "loss.html").exists() and (run / "samples.txt").read_text().startswith("Once")
    assert (run / "tokenizer.json").exists() and json.loads((run / "config.json").read_text())["train"]["steps"] == 30
    assert trainer.raw_model.bias_updates == 30  # expert-bias update after every optimizer step
    assert len(seen) == 31 and seen[-1]["kind"] == "eval"


def test_a_given_glm_model_keeps_its_config_in_the_run(tmp_path):
    """Trainer(config, model=from_hf(path)), the fine-tuning route: the model's own ModelConfig was dropped, so the
    run had no MFU, config.json and the checkpoints said model null, and summary.json named TrainConfig's default
    preset (glm4-tiny) for a GLM-4.5 MoE."""
    from workbench.model import build_model, get_preset

    cfg = get_preset("glm45-tiny").replace(vocab_size=300, num_layers=2, mtp_layers=0, name="my-finetune")
    summary = Trainer(tiny_config(tmp_path, steps=2, ckpt_every=2, eval_every=2, sample_tokens=0),
                      model=build_model(cfg), log=quiet).fit()
    run = tmp_path / "run"
    assert summary["preset"] == "my-finetune" and summary["flops_per_token"] > 0 and summary["mfu"] is not None
    assert json.loads((run / "config.json").read_text())["model"]["num_experts"] == cfg.num_experts
    state = json.loads((run / "checkpoints" / "step_0000002" / "trainer_state.json").read_text())
    assert state["model_config"]["name"] == "my-finetune"
    with pytest.raises(WorkbenchError, match="beyond the model's positions"):
        Trainer(tiny_config(tmp_path / "long", seq_len=64), model=build_model(cfg.replace(max_position_embeddings=32)),
                log=quiet)


def test_grad_accumulation_counts_tokens_and_clipping_caps_the_norm(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, grad_accum=3, grad_clip=1e-3), model=StandIn(), log=quiet)
    before = [p.detach().clone() for p in trainer.params]
    record = trainer.train_step()
    assert record["tokens_seen"] == 3 * 4 * 32
    assert record["grad_norm"] > 1e-3  # reported before clipping
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.params))


def test_in_process_resume_is_bitwise_identical(tmp_path):
    torch.manual_seed(0)  # the stand-in is built before the Trainer seeds: give both runs the same initial weights
    whole = Trainer(tiny_config(tmp_path / "a", steps=8, ckpt_every=4), model=StandIn(), log=quiet)
    whole.fit()
    # a second run stopped after its step-4 checkpoint, then resumed by a fresh Trainer
    torch.manual_seed(0)
    first = Trainer(tiny_config(tmp_path / "b", steps=8, ckpt_every=4), model=StandIn(), log=quiet)
    for _ in range(6):  # steps 5 and 6 are logged but never checkpointed: resume must drop them
        first.train_step()
        if first.step == 4:
            first.save_checkpoint()
    torch.manual_seed(999)  # disturb global RNG: the resume must restore it
    resumed = Trainer(tiny_config(tmp_path / "b", steps=8, ckpt_every=4, resume=True), model=StandIn(), log=quiet)
    assert resumed.step == 4
    resumed.fit()
    a = [r for r in read_metrics(tmp_path / "a" / "run" / "metrics.jsonl") if r["kind"] == "train"]
    b = [r for r in read_metrics(tmp_path / "b" / "run" / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["step"] for r in b] == list(range(1, 9))
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert [r["grad_norm"] for r in a] == [r["grad_norm"] for r in b]


def test_resume_with_different_settings_is_refused(tmp_path):
    Trainer(tiny_config(tmp_path, steps=4), model=StandIn(), log=quiet).fit()
    with pytest.raises(ValueError, match=r"settings \['batch_size'\] differ"):
        Trainer(tiny_config(tmp_path, steps=4, batch_size=2, resume=True), model=StandIn(), log=quiet)
    with pytest.raises(ValueError, match="already holds checkpoints"):
        Trainer(tiny_config(tmp_path, steps=4), model=StandIn(), log=quiet)


def test_a_folder_that_is_not_a_run_is_never_written_into(tmp_path):
    """--out naming an existing folder of something else (`--out .` in a project, an exported transformers folder)
    had its config.json, tokenizer.json and samples.txt overwritten without a word."""
    foreign = tmp_path / "run"
    foreign.mkdir()
    (foreign / "config.json").write_text('{"model_type": "glm4_moe"}')
    (foreign / "tokenizer.json").write_text('{"mine": true}')
    for resume in (False, True):
        with pytest.raises(ValueError, match="holds files of something other than a training run"):
            Trainer(tiny_config(tmp_path, steps=2, resume=resume), model=StandIn(), log=quiet)
    assert sorted(p.name for p in foreign.iterdir()) == ["config.json", "tokenizer.json"]  # no lock file either
    assert (foreign / "tokenizer.json").read_text() == '{"mine": true}'
    # an earlier run's folder (no checkpoint kept) is still a run: a new run may write there
    earlier = tmp_path / "earlier"
    Trainer(tiny_config(earlier, steps=2, ckpt_every=0, keep_last=1), model=StandIn(), log=quiet)
    Trainer(tiny_config(earlier, steps=2), model=StandIn(), log=quiet)


def test_resume_checks_the_data_by_content_not_by_its_spelling(tmp_path, monkeypatch):
    """An edited file behind the same path resumed silently onto other tokens; the same file given by another
    path was refused as "settings ['data'] differ"."""
    text = tmp_path / "corpus.txt"
    text.write_text("\n\n".join(f"story {i}: the cat sat on the mat and looked at the sun." for i in range(300)))
    monkeypatch.chdir(tmp_path)
    Trainer(tiny_config(tmp_path, steps=4, data="corpus.txt"), model=StandIn(), log=quiet).fit()
    resumed = Trainer(tiny_config(tmp_path, steps=6, data=str(text), resume=True), model=StandIn(), log=quiet)
    assert resumed.step == 4  # the same file by its absolute path
    text.write_text(text.read_text().upper())
    with pytest.raises(ValueError, match="not the corpus the checkpoint"):
        Trainer(tiny_config(tmp_path, steps=6, data="corpus.txt", resume=True), model=StandIn(), log=quiet)


def test_resume_refuses_another_model_or_data_loader(tmp_path):
    """A preset changed since the checkpoint gave a raw load_state_dict traceback; a checkpoint from a loader that
    drew other batches (before the off-by-one fix) resumed silently onto another data stream."""
    import json as json_module

    from workbench.train import checkpoint as ckpt

    config = tiny_config(tmp_path, steps=4, model_overrides={"hidden_size": 64, "num_layers": 1,
                                                             "intermediate_size": 128, "num_heads": 2,
                                                             "num_kv_heads": 1, "head_dim": 32})
    Trainer(config, log=quiet).fit()
    wider = dict(config.model_overrides, intermediate_size=256)
    with pytest.raises(ValueError, match=r"--resume: the model differs from the checkpoint's in "
                                         r"\['intermediate_size'\]"):
        Trainer(config.replace(model_overrides=wider, resume=True), log=quiet)
    newest = ckpt.list_checkpoints(tmp_path / "run" / "checkpoints")[-1][1]
    state_file = newest / ckpt.STATE_FILE

    def rewrite(change):  # edit the trainer state and re-seal the manifest, as an older version would have written
        state = json_module.loads(state_file.read_text())
        change(state)
        state_file.write_text(json_module.dumps(state))
        manifest = json_module.loads((newest / ckpt.MANIFEST_FILE).read_text())
        manifest["files"][ckpt.STATE_FILE] = {"sha256": ckpt._sha256(state_file), "bytes": state_file.stat().st_size}
        (newest / ckpt.MANIFEST_FILE).write_text(json_module.dumps(manifest))

    rewrite(lambda state: state["model_config"].update(intermediate_size=96))  # as if the preset had changed
    with pytest.raises(ValueError, match=r"the model differs from the checkpoint's in \['intermediate_size'\]"):
        Trainer(config.replace(resume=True), log=quiet)
    # a preset default that moved without changing any weight's shape (as glm45-tiny's bias_update_rate did): the
    # message says how to set it back, and following it resumes, since what is compared is the model the overrides
    # build, not how they are spelled
    theta = json_module.loads(state_file.read_text())["model_config"]["rope_theta"]
    rewrite(lambda state: state["model_config"].update(intermediate_size=128, rope_theta=5000.0))
    with pytest.raises(ValueError, match=r"to continue it, add --model 'rope_theta=5000.0'"):
        Trainer(config.replace(resume=True), log=quiet)
    resumed = Trainer(config.replace(model_overrides=dict(config.model_overrides, rope_theta=5000.0),
                                     resume=True), log=quiet)
    assert resumed.step > 0
    resumed.close()
    # a run trained (before such overrides were refused) with a field this dense model never reads resumes without
    # it: the message asked for `--model aux_loss_coef=0.01`, which the override check then refused
    rewrite(lambda state: state["model_config"].update(rope_theta=theta, aux_loss_coef=0.01))
    resumed = Trainer(config.replace(resume=True), log=quiet)
    assert resumed.step > 0
    resumed.close()
    rewrite(lambda state: (state["model_config"].update(intermediate_size=128, rope_theta=theta),
                           state["data"].update(loader="random-windows-v1")))
    with pytest.raises(ValueError, match="data loader 'random-windows-v1'"):
        Trainer(config.replace(resume=True), log=quiet)
    from workbench.train.trainer import LOADER_VERSION

    # a checkpoint from before the length-prefixed corpus hash: the same data (by the old hash) resumes, other
    # data is refused
    from workbench.data import load_corpus
    from workbench.data.corpus import pre_v2_hash

    old_sha = pre_v2_hash(load_corpus(config.data).documents, "byte")

    def as_before(state, sha):
        state["data"].update(loader=LOADER_VERSION)
        state["data"]["pack"].pop("corpus_hash", None)
        state["data"]["pack"]["corpus_sha256"] = sha

    rewrite(lambda state: as_before(state, old_sha))
    assert Trainer(config.replace(resume=True), log=quiet).step == 4
    rewrite(lambda state: as_before(state, "0" * 64))
    with pytest.raises(ValueError, match="written by an earlier workbench and its data does not give the same"):
        Trainer(config.replace(resume=True), log=quiet)
    assert pre_v2_hash(["a\x00b"], "byte") is None and pre_v2_hash(["<|endoftext|> x"], "bpe") is None
    assert pre_v2_hash(["<|endoftext|> x"], "byte") is not None


def test_a_byte_run_resumes_whatever_bpe_vocab_size_says(tmp_path):
    """--bpe-vocab-size does nothing in a byte-tokenizer run, yet a different value refused the resume."""
    Trainer(tiny_config(tmp_path, steps=2), model=StandIn(), log=quiet).fit()
    resumed = Trainer(tiny_config(tmp_path, steps=3, bpe_vocab_size=4096, resume=True), model=StandIn(), log=quiet)
    assert resumed.step == 2
    assert TrainConfig(tokenizer="bpe").trajectory_mismatch(TrainConfig(tokenizer="bpe", bpe_vocab_size=4096)) == \
        ["bpe_vocab_size"]
    # likewise --muon-lr in an AdamW run, which refused the resume; it still counts where Muon runs
    assert TrainConfig(optimizer="adamw").trajectory_mismatch(TrainConfig(optimizer="adamw", muon_lr=0.05)) == []
    assert TrainConfig(optimizer="muon").trajectory_mismatch(TrainConfig(optimizer="muon", muon_lr=0.05)) == \
        ["muon_lr"]


def test_a_damaged_tokenizer_file_is_named(tmp_path):
    from workbench.data import load_tokenizer

    for text in ("", '{"workbench_tokenizer": "bpe"}'):
        (tmp_path / "tokenizer.json").write_text(text)
        with pytest.raises(ValueError, match="tokenizer.json is damaged"):
            load_tokenizer(tmp_path)


def test_sampling_zero_tokens_an_empty_prompt_and_bad_temperatures(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, sample_tokens=5), model=StandIn(), log=quiet)
    assert trainer.sample("abc", max_new_tokens=0) == "abc"  # 0 gave sample_tokens new tokens
    assert trainer.sample("abc").startswith("abc")
    assert isinstance(trainer.sample(""), str)  # starts from end-of-text (was token 0, a NUL byte)
    from workbench.train.sampling import generate

    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="temperature must be a finite number"):
            generate(trainer.raw_model, [1, 2], 2, context=8, temperature=bad)


def test_a_time_limit_right_after_an_eval_logs_it_once(tmp_path):
    seen = []

    def slow_after_step_2(record):
        seen.append(record)
        if record.get("kind") == "train" and record["step"] == 2:
            time.sleep(0.3)

    # eval after every step: wherever the limit stops the run (timing varies on a busy machine), that step's eval
    # is already done
    trainer = Trainer(tiny_config(tmp_path, steps=10, eval_every=1, time_limit_s=0.2), model=StandIn(), log=quiet,
                      callbacks=[slow_after_step_2])
    trainer.fit()
    evals = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "eval"]
    assert trainer.step < 10 and [r["step"] for r in evals] == list(range(1, trainer.step + 1))
    assert sum(1 for r in seen if r.get("kind") == "eval") == 0  # the in-loop eval reached callbacks with its record


def test_resume_refuses_steps_below_the_checkpoint(tmp_path):
    Trainer(tiny_config(tmp_path, steps=4), model=StandIn(), log=quiet).fit()
    with pytest.raises(ValueError, match="at step 4, beyond --steps 2"):
        Trainer(tiny_config(tmp_path, steps=2, resume=True), model=StandIn(), log=quiet)


def test_resuming_a_finished_run_neither_re_evaluates_nor_rewrites_it(tmp_path):
    summary = Trainer(tiny_config(tmp_path, steps=4), model=StandIn(), log=quiet).fit()
    run = tmp_path / "run"
    ckpt_file = run / "checkpoints" / "step_0000004" / "model.safetensors"
    written = ckpt_file.stat().st_mtime_ns
    again = Trainer(tiny_config(tmp_path, steps=4, resume=True), model=StandIn(), log=quiet).fit()
    evals = [r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [4]  # eval_every=4 == steps: only the final eval, once
    assert again["final_val_loss"] == summary["final_val_loss"]
    assert ckpt_file.stat().st_mtime_ns == written


def test_a_model_too_big_for_the_device_is_refused_before_allocating(tmp_path):
    from workbench.train.trainer import check_fits_in_memory

    class SmallDevice:
        name = "a 1 GiB device"

        def total_memory_bytes(self):
            return 2**30

    from workbench.model import get_preset

    with pytest.raises(ValueError, match=r"glm-5: 75\d\.\dB parameters need"):
        check_fits_in_memory(get_preset("glm-5"), SmallDevice())
    check_fits_in_memory(get_preset("glm4-tiny"), SmallDevice())  # 18M parameters: ~0.3 GiB
    with pytest.raises(ValueError, match="need ~"):
        Trainer(tiny_config(tmp_path, preset="glm-4.5-air"), log=quiet)
    assert not (tmp_path / "run" / "tokenizer.json").exists()  # a refused run leaves no half-made run folder


def test_non_finite_loss_stops_with_a_clear_error(tmp_path):
    trainer = Trainer(tiny_config(tmp_path), model=StandIn(), log=quiet)
    with torch.no_grad():
        trainer.raw_model.lm_head.weight.fill_(math.nan)
    with pytest.raises(ValueError, match="loss became nan"):
        trainer.train_step()


def test_activation_checkpointing_gives_the_same_gradients(tmp_path):
    from workbench.train.trainer import apply_activation_checkpointing

    torch.manual_seed(0)
    plain = StandIn()
    wrapped = StandIn()
    wrapped.load_state_dict(plain.state_dict())
    assert apply_activation_checkpointing(wrapped) == 2
    x = torch.randint(0, 257, (2, 16))
    for m in (plain, wrapped):
        m(x, labels=x).loss.backward()
    for a, b in zip(plain.parameters(), wrapped.parameters()):
        torch.testing.assert_close(a.grad, b.grad)


def test_moe_under_activation_checkpointing_from_a_cold_start(monkeypatch):
    """The first MoE forward of a process probes torch._grouped_mm once (cached). Under non-reentrant activation
    checkpointing that probe must not count as the layer's saved tensors, or the recomputation in backward finds
    fewer of them and fails ("a different number of tensors was saved") on the very first training step."""
    from torch.utils.checkpoint import checkpoint

    from workbench.kernels import torch_ops
    from workbench.model import build_model, get_preset

    torch.manual_seed(0)
    model = build_model(get_preset("glm45-tiny").replace(vocab_size=64, mtp_layers=0, num_layers=2)).train()
    layer = model.layers[1]  # an MoE layer
    x = torch.randn(2, 16, model.config.hidden_size, requires_grad=True)
    monkeypatch.setattr(torch_ops, "_GROUPED_MM_WORKS", {})  # a cold start, as in a fresh training process
    checkpointed = checkpoint(lambda h: layer.mlp(h), x, use_reentrant=False)
    (grad_checkpointed,) = torch.autograd.grad(checkpointed.sum(), x)
    (grad_plain,) = torch.autograd.grad(layer.mlp(x).sum(), x)
    torch.testing.assert_close(grad_checkpointed, grad_plain)


def test_model_overrides_parse_and_progress_switch(monkeypatch):
    from workbench.train.metrics import progress_enabled

    assert TrainConfig.parse_overrides("num_layers=2, ffn_act=gelu,tie_embeddings=true") == {
        "num_layers": 2, "ffn_act": "gelu", "tie_embeddings": True}
    assert TrainConfig.parse_overrides("") == {} and TrainConfig.parse_overrides(None) == {}
    # Python spellings, None, and lists (commas inside brackets do not split settings)
    assert TrainConfig.parse_overrides("tie_embeddings=False,indexer_types=None,head_dim=null") == {
        "tie_embeddings": False, "indexer_types": None, "head_dim": None}
    assert TrainConfig.parse_overrides('num_layers=2,indexer_types=[full,shared]') == {
        "num_layers": 2, "indexer_types": ["full", "shared"]}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        TrainConfig.parse_overrides("num_layers")
    class Terminal:
        def __init__(self, tty):
            self.tty = tty

        def isatty(self):
            return self.tty

        def write(self, text):
            return len(text)

    monkeypatch.setattr("sys.stderr", Terminal(True))
    for off in ("1", "TRUE", "on", " yes "):  # "TRUE" and "on" left the bar on
        monkeypatch.setenv("WORKBENCH_NO_PROGRESS", off)
        assert not progress_enabled(True)
    monkeypatch.setenv("WORKBENCH_NO_PROGRESS", "0")
    assert progress_enabled(True) and not progress_enabled(False)
    # stderr piped into a log: no bar (it was one line of carriage returns, and the step lines were missing)
    monkeypatch.setattr("sys.stderr", Terminal(False))
    assert not progress_enabled(True)


def test_yes_no_environment_variables_read_alike(monkeypatch, tmp_path):
    """WORKBENCH_PLOTLY_CDN=0 switched the CDN on (the saved figure was blank offline), WORKBENCH_HEADLESS=0 meant
    headless: any non-empty text counted as yes."""
    import plotly.graph_objects as go

    from workbench.params import env_flag
    from workbench.viz import save_figure

    for text, expected in (("1", True), ("On", True), ("yes", True), ("0", False), ("off", False), ("", False)):
        monkeypatch.setenv("WORKBENCH_X", text)
        assert env_flag("WORKBENCH_X") is expected
    monkeypatch.setenv("WORKBENCH_PLOTLY_CDN", "0")
    html = Path(save_figure(go.Figure(), tmp_path / "fig")["html"]).read_text(encoding="utf-8")
    assert "src=\"https://cdn.plot.ly" not in html  # plotly.js embedded: the figure renders offline


def test_mfu_is_per_device_under_data_parallelism(tmp_path, monkeypatch):
    """tokens/s counts every rank's tokens, but MFU divided it by one device's peak: N ranks reported N x the MFU."""
    import workbench.train.trainer as trainer_module
    from workbench.profiling.trainer_profile import trainer_tokens_per_step

    monkeypatch.setattr(trainer_module, "dist_rank_world", lambda: (0, 2))  # rank 0 of 2, without a process group
    trainer = Trainer(tiny_config(tmp_path, steps=1), model=StandIn(), log=quiet)
    trainer.flops_per_token = 1e6
    record = trainer.train_step()
    assert record["tokens_per_s"] == pytest.approx(2 * 4 * 32 / record["step_time_s"])  # both ranks' tokens
    assert record["mfu"] == pytest.approx(record["tokens_per_s"] * 1e6 / (2 * trainer.peak.value))
    assert trainer_tokens_per_step(trainer) == 4 * 32  # a profile times one rank's step against one device


def test_top_p_sampling_and_bad_sampling_settings(tmp_path):
    """There was no top-p; context <= 0 fed the whole growing sequence (or dropped the prompt's first tokens)."""
    from workbench.train.sampling import _keep_nucleus, generate

    logits = torch.log(torch.tensor([[0.05, 0.5, 0.3, 0.15]]))
    kept = lambda p: torch.isfinite(_keep_nucleus(logits, p)).squeeze(0).tolist()  # noqa: E731
    assert kept(0.4) == [False, True, False, False]   # the most likely token alone reaches 0.4
    assert kept(0.7) == [False, True, True, False]    # 0.5 + 0.3
    assert kept(0.9) == [False, True, True, True]
    assert kept(1.0) == [True, True, True, True]
    trainer = Trainer(tiny_config(tmp_path), model=StandIn(), log=quiet)
    model = trainer.raw_model
    greedy = generate(model, [1, 2, 3], 6, context=8, temperature=0)
    assert generate(model, [1, 2, 3], 6, context=8, temperature=1.0, top_k=None, top_p=1e-6, seed=5) == greedy
    # a vanishing temperature is greedy too: logits / 1e-40 overflowed to inf - inf = nan in the softmax
    assert generate(model, [1, 2, 3], 6, context=8, temperature=1e-40, top_k=None, seed=5) == greedy
    assert trainer.sample("ab", max_new_tokens=4, top_p=0.9, top_k=0).startswith("ab")
    for bad, message in ((dict(context=0), "context must be a positive"), (dict(top_p=0.0), "top_p must be in"),
                         (dict(top_p=1.5), "top_p must be in"), (dict(top_k=-1), "top_k must be an integer")):
        with pytest.raises(ValueError, match=message):
            generate(model, [1, 2], 2, **{"context": 8, **bad})


def test_a_warmup_as_long_as_the_run_is_warned_about_and_memory_names_its_source(tmp_path):
    """--steps 5 with the default --warmup-steps 20 trained at 5-25% of --lr without a word."""
    said = []
    trainer = Trainer(tiny_config(tmp_path, steps=5, warmup_steps=20, eval_every=0, ckpt_every=0), model=StandIn(),
                      log=said.append)
    assert any("warmup_steps (20) >= steps (5): the lr rises to 25% of --lr at the last step" in line for line in said)
    summary = trainer.fit()
    assert summary["memory_source"] == trainer.device.memory_stats()["source"]
    said.clear()
    Trainer(tiny_config(tmp_path / "b", steps=5, warmup_steps=2), model=StandIn(), log=said.append)
    assert not any("warmup_steps" in line for line in said)
    # a one-step run: the suggestion was "e.g. 1", the value that had just been warned about
    Trainer(tiny_config(tmp_path / "c", steps=1, warmup_steps=1), model=StandIn(), log=said.append)
    assert any("below steps, e.g. 0" in line for line in said)


def test_a_new_depth_repeats_glm5s_indexer_pattern(tmp_path):
    """--model num_layers=2 on glm5-tiny failed: 'indexer_types has 4 entries; need one per layer (2): pass a new
    tuple', and a tuple cannot be written in an override."""
    from workbench.train.trainer import build_model_config

    config = tiny_config(tmp_path, preset="glm5-tiny", model_overrides={"num_layers": 3})
    assert build_model_config(config, 300).indexer_types == ("full", "shared", "full")
    explicit = tiny_config(tmp_path, preset="glm5-tiny", model_overrides={"num_layers": 1, "indexer_types": ["full"]})
    assert build_model_config(explicit, 300).indexer_types == ("full",)
    # vocab_size was recorded in config.json and then replaced by the tokenizer's without a word
    with pytest.raises(WorkbenchError, match="the vocabulary comes from the tokenizer"):
        build_model_config(tiny_config(tmp_path, model_overrides={"vocab_size": 512}), 257)


@pytest.mark.parametrize("preset, overrides, named", [
    ("glm5-tiny", {"head_dim": 64}, "head_dim (GQA-only"),                     # MLA has no head_dim
    ("glm4-tiny", {"kv_lora_rank": 32}, "kv_lora_rank (MLA-only"),
    ("glm4-tiny", {"num_experts_per_token": 4}, "num_experts_per_token (a MoE setting"),
    ("glm45-tiny", {"index_topk": 16}, "index_topk (a DSA setting"),
    ("glm4-tiny", {"mtp_loss_weight": 1.0}, "mtp_loss_weight (an MTP setting"),
    ("glm45-tiny", {"first_k_dense": 0, "intermediate_size": 99}, "intermediate_size (the dense FFN width"),
])
def test_an_override_the_model_would_not_read_is_refused(tmp_path, preset, overrides, named):
    """--model head_dim=64 on glm5-tiny trained exactly the preset: MLA never reads the GQA-only head_dim."""
    from workbench.train.trainer import build_model_config

    with pytest.raises(WorkbenchError, match=re.escape(named)):
        build_model_config(tiny_config(tmp_path, preset=preset, model_overrides=overrides), 300)


def test_an_override_that_turns_its_feature_on_is_read(tmp_path):
    from workbench.train.trainer import build_model_config

    # switching glm5-tiny to GQA makes head_dim and num_kv_heads count; the MLA fields stay the preset's, unflagged
    gqa = build_model_config(tiny_config(tmp_path, preset="glm5-tiny", model_overrides={
        "attention_type": "gqa", "index_n_heads": 0, "head_dim": 32, "num_kv_heads": 2}), 300)
    assert (gqa.attn_head_dim, gqa.num_kv_heads) == (32, 2)
    # a dense glm4-tiny made MoE reads its router settings; num_layers on glm5-tiny repeats indexer_types unasked
    moe = build_model_config(tiny_config(tmp_path, model_overrides={"num_experts": 4, "num_experts_per_token": 2}), 300)
    assert moe.num_experts_per_token == 2
    assert build_model_config(tiny_config(tmp_path, preset="glm5-tiny", model_overrides={
        "num_layers": 2, "index_n_heads": 0}), 300).use_dsa is False


def test_config_json_records_the_layout_a_launched_run_trained(tmp_path, monkeypatch):
    """Under `workbench launch --nproc 2 -- train` with no --parallel the run trains dp=2, and config.json said
    'dp=1'."""
    import workbench.train.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "dist_rank_world", lambda: (0, 2))
    Trainer(tiny_config(tmp_path, steps=1, warmup_steps=0), model=StandIn(), log=lambda line: None).fit()
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())
    assert recorded["train"]["parallel"] == "dp=2" and recorded["world_size"] == 2


def test_an_op_failing_inside_the_compiled_trace_is_not_blamed_on_the_compiler(tmp_path):
    """dynamo's TorchRuntimeError (an op of the model failed on fake tensors, e.g. a shape mismatch) was reported as
    'torch.compile failed ...; run without --compile', as if the compiler were at fault."""
    from torch._dynamo.exc import TorchRuntimeError

    trainer = Trainer(tiny_config(tmp_path, compile=True), model=StandIn(), log=quiet)
    with pytest.raises(WorkbenchError, match="an op failed while torch.compile traced the model .*if it fails there "
                                             "too, the model or its settings are at fault"):
        with trainer._compile_errors_explained():
            raise TorchRuntimeError("shape '[2, 3]' is invalid for input of size 5")
    trainer.close()


def test_only_rank_zero_speaks(tmp_path, monkeypatch):
    """Under data parallelism every rank printed each step, with its own tokens/s, and the 'done' line."""
    import workbench.train.trainer as trainer_module

    said = {0: [], 1: []}
    for rank in (0, 1):
        monkeypatch.setattr(trainer_module, "dist_rank_world", lambda rank=rank: (rank, 2))
        Trainer(tiny_config(tmp_path / str(rank), steps=2, warmup_steps=5, log_every=1), model=StandIn(),
                log=said[rank].append).fit()
    assert said[1] == [] and any("warmup_steps" in line for line in said[0]) and len(said[0]) > 2


def test_a_notebook_restart_cannot_delete_a_run_another_process_trains_in(tmp_path, lock_in_another_process):
    """Notebook 01 deleted its run folder when it held checkpoints, even while another kernel trained there, then
    took a fresh lock beside the live run. clear_run_folder takes the lock first, and keeps it for the Trainer."""
    from workbench.train.run_lock import clear_run_folder, unlock_run_folder

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.jsonl").write_text("{}\n")
    lock_in_another_process(run)
    with pytest.raises(ValueError, match="is using the run folder"):
        clear_run_folder(run)
    assert (run / "metrics.jsonl").exists() and (run / "checkpoints").is_dir()  # nothing deleted
    run_2 = tmp_path / "run_2"  # a folder nobody holds: cleared, and the lock stays with this process
    (run_2 / "checkpoints").mkdir(parents=True)
    run = run_2
    clear_run_folder(run)
    assert [p.name for p in run.iterdir()] == [".lock"]
    unlock_run_folder(run)


def test_fit_takes_the_lock_again_and_close_releases_it(tmp_path, monkeypatch):
    """After an interrupted fit() released the lock, calling fit() again trained without it; a Trainer that never
    fit() (notebook 04 profiles with one) held the folder for the kernel's whole life."""
    from workbench.train import run_lock

    trainer = Trainer(tiny_config(tmp_path, steps=2), model=StandIn(), log=quiet)
    key = str((tmp_path / "run").resolve())
    assert key in run_lock._held
    trainer.close()
    assert key not in run_lock._held
    taken = []
    original = run_lock.lock_run_folder

    def spy(path):
        taken.append(str(path))
        original(path)

    import workbench.train.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "lock_run_folder", spy)
    trainer.fit()
    assert taken and key not in run_lock._held


def test_a_given_model_config_is_used_and_a_too_small_vocabulary_refused(tmp_path):
    """Trainer(config, model_config=MC) built the preset and ignored MC; a model whose vocabulary is smaller than
    the tokenizer's died at the first step in an IndexError."""
    from workbench.model import get_preset

    mine = get_preset("glm4-tiny").replace(name="mine", hidden_size=32, num_layers=1, intermediate_size=64,
                                           num_heads=2, num_kv_heads=1, head_dim=16)
    trainer = Trainer(tiny_config(tmp_path), model_config=mine, log=quiet)
    assert trainer.model_config.name == "mine" and trainer.model_config.num_layers == 1
    assert trainer.model_config.vocab_size == trainer.tokenizer.vocab_size
    trainer.close()
    from workbench.model import build_model

    small = build_model(mine.replace(vocab_size=200))
    with pytest.raises(ValueError, match=r"vocabulary \(200 tokens\) is smaller than the tokenizer's \(257\)"):
        Trainer(tiny_config(tmp_path / "b"), model=small, model_config=small.config, log=quiet)


def test_a_refused_trainer_releases_the_run_folder(tmp_path):
    """Refused at construction (a folder with checkpoints, no --resume), the Trainer kept the folder locked for the
    rest of the process: another process could not resume it, and there was no object to close()."""
    from workbench.train import run_lock

    Trainer(tiny_config(tmp_path, steps=2), model=StandIn(), log=quiet).fit()
    with pytest.raises(ValueError, match="already holds checkpoints"):
        Trainer(tiny_config(tmp_path, steps=2), model=StandIn(), log=quiet)
    assert not run_lock.holds_run_folder(tmp_path / "run")


def test_peak_memory_is_this_runs(tmp_path):
    """On cpu the peak was the process's lifetime high-water mark: a small run after a big one reported the big
    one's peak (894 MB vs 387 MB alone), which turned a memory ablation around."""
    import os

    import numpy as np

    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("the RSS high-water mark can be reset only on Linux (/proc/self/clear_refs)")
    big = np.ones(400 * 2**20 // 8)  # touch 400 MB, then free it
    del big
    summary = Trainer(tiny_config(tmp_path, steps=2), model=StandIn(), log=quiet).fit()
    rss_now = get_device_rss()
    assert summary["peak_memory_bytes"] < rss_now + 200 * 2**20, (summary["peak_memory_bytes"], rss_now)


def get_device_rss() -> int:
    from workbench.device import get_device

    return get_device("cpu").memory_stats()["allocated_bytes"]


def test_evaluating_on_other_data_leaves_the_runs_records_alone(tmp_path):
    """Swapping val_loader to evaluate on another corpus wrote an untagged eval record into metrics.jsonl, which a
    later resume of the finished run reported as its final validation loss."""
    from workbench.data import TokenLoader

    trainer = Trainer(tiny_config(tmp_path, steps=2, eval_every=0), model=StandIn(), log=quiet)
    summary = trainer.fit()
    other = TokenLoader(trainer.packed.train, 4, 32, seed=99, name="other")
    foreign = trainer.evaluate(loader=other)
    assert isinstance(foreign, float) and foreign != summary["final_val_loss"]
    evals = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "eval"]
    assert [r["val_loss"] for r in evals] == [summary["final_val_loss"]]


def test_resume_with_other_steps_says_the_schedule_changes(tmp_path):
    """--steps may change on --resume (extending a finished run is the point), but on an unfinished run it
    re-stretches the cosine from the current step: the lr jumps, silently. Now the log says by how much."""
    config = tiny_config(tmp_path, steps=8, ckpt_every=4, eval_every=0)
    first = Trainer(config, log=quiet)
    for _ in range(4):
        first.train_step()
    first.save_checkpoint()
    first.close()
    lines: list[str] = []
    Trainer(config.replace(steps=16, resume=True), log=lines.append).close()
    (line,) = [text for text in lines if "--steps" in text]
    assert "8 to 16" in line and "step 4" in line
    lines.clear()
    Trainer(config.replace(resume=True), log=lines.append).close()  # the same --steps: nothing to say
    assert not [text for text in lines if "--steps" in text]


def test_out_dir_must_not_be_empty_and_tilde_is_expanded(tmp_path, monkeypatch, capsys):
    """`--out ""` (an unset $OUT) trained into the working directory, a checkout's root; `--out=~/x` (no shell
    expansion after '=') made a literal '~' folder there."""
    from workbench.cli import main

    with pytest.raises(ConfigError, match="out_dir"):
        TrainConfig(out_dir=" ")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert TrainConfig(out_dir="~/runs/x").out_dir == str(tmp_path / "runs" / "x")
    for command in (["train"], ["profile"], ["kernels", "bench"], ["comm-bench"]):
        with pytest.raises(SystemExit) as stop:
            main([*command, "--out", ""])
        assert stop.value.code == 2 and "must not be empty" in capsys.readouterr().err


def test_each_processs_first_step_stays_out_of_the_summary_speed(tmp_path):
    """The first step of a process pays for warm-up; after --compile --resume it was 20-30x a normal step, and the
    summary's tokens/s and MFU came out 5-7x low: only the run's very first step was left out."""
    first = Trainer(tiny_config(tmp_path, steps=6, ckpt_every=4), model=StandIn(), log=quiet)
    for _ in range(4):
        first.train_step()
    first.save_checkpoint()
    first.close()
    resumed = Trainer(tiny_config(tmp_path, steps=6, ckpt_every=4, resume=True), model=StandIn(), log=quiet)
    records = [resumed.train_step() for _ in range(2)]
    assert records[0].get("process_warmup") and not records[1].get("process_warmup")
    train = [r for r in resumed.history if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    train[4]["step_time_s"], train[4]["tokens_per_s"] = 1000.0, 0.001  # a 1000 s compile in the resumed process
    timed = [train[i] for i in (1, 2, 3, 5)]
    expected = sum(r["step_time_s"] * r["tokens_per_s"] for r in timed) / sum(r["step_time_s"] for r in timed)
    assert resumed.summary(val_loss=1.0)["tokens_per_s"] == pytest.approx(expected)
    resumed.close()


def _train_losses(trainer) -> list[tuple]:
    return [(r["step"], r["kind"], r.get("loss"), r.get("grad_norm"), r.get("val_loss"), json.dumps(r.get("expert")))
            for r in trainer.history]


def _interrupt_at(trainer, where: str, step: int) -> None:
    """Make ``trainer`` stop once at ``step`` (0-based, the step being trained) the way Ctrl-C would: a
    KeyboardInterrupt while the 2nd micro-batch is fetched, or a real SIGINT right after the optimizer applied it."""
    import signal

    armed = [True]
    if where == "mid-accum":
        fetch = trainer.train_loader.batch

        def batch(at, micro=0):
            if at == step and micro == 1 and armed[0]:
                armed[0] = False
                raise KeyboardInterrupt
            return fetch(at, micro)

        trainer.train_loader.batch = batch
    else:
        apply = trainer.optimizer.step

        def optimizer_step(*args, **kwargs):
            out = apply(*args, **kwargs)
            if trainer.step == step and armed[0]:
                armed[0] = False
                signal.raise_signal(signal.SIGINT)  # Python raises KeyboardInterrupt at its next chance
            return out

        trainer.optimizer.step = optimizer_step


@pytest.mark.parametrize("where", ["mid-accum", "sigint-after-optimizer-step"])
def test_fit_again_after_ctrl_c_continues_the_same_run(tmp_path, where):
    """fit() called again after Ctrl-C trained on the gradients left from the interrupted step (added on top of the
    re-run step's), or applied the optimizer step twice when Ctrl-C came after it but before the step counter
    moved; either way every later step differed silently from an uninterrupted run. The eval and checkpoint due
    at the interrupted step (4) happen too."""
    settings = dict(steps=8, grad_accum=2, eval_every=4, ckpt_every=4, sample_tokens=0)
    torch.manual_seed(0)
    whole = Trainer(tiny_config(tmp_path / "a", **settings), model=StandIn(), log=quiet)
    whole.fit()
    torch.manual_seed(0)
    stopped = Trainer(tiny_config(tmp_path / "b", **settings), model=StandIn(), log=quiet)
    _interrupt_at(stopped, where, step=3)
    with pytest.raises(KeyboardInterrupt):
        stopped.fit()
    stopped.fit()
    assert _train_losses(stopped) == _train_losses(whole)
    assert all(torch.equal(a, b) for a, b in zip(whole.params, stopped.params))
    steps = [p.name for p in sorted((tmp_path / "b" / "run" / "checkpoints").glob("step_*"))]
    assert steps == ["step_0000004", "step_0000008"]


def _tiny_moe_config(tmp_path, name: str, **changes) -> TrainConfig:
    text = tmp_path / "corpus.txt"
    if not text.exists():
        text.write_text("".join(f"story {i}: the cat sat on the mat and looked at bird {i % 7}.\n" for i in range(400)))
    moe = dict(hidden_size=32, num_layers=2, mtp_layers=0, num_heads=2, num_kv_heads=1, head_dim=16,
               moe_intermediate_size=32, intermediate_size=64)
    return tiny_config(tmp_path / name, preset="glm45-tiny", model_overrides=moe, data=str(text), batch_size=2, seq_len=16,
                       eval_batches=1, sample_tokens=0, **changes)


def test_fit_again_after_ctrl_c_mid_step_forgets_the_moe_load_counts(tmp_path):
    """The MoE blocks count expert loads in every training forward; Ctrl-C after a micro-batch kept its counts,
    and the re-run step's balancing-bias update used them on top of its own."""
    whole = Trainer(_tiny_moe_config(tmp_path, "a", steps=6, grad_accum=2), log=quiet)
    whole.fit()
    stopped = Trainer(_tiny_moe_config(tmp_path, "b", steps=6, grad_accum=2), log=quiet)
    _interrupt_at(stopped, "mid-accum", step=2)
    with pytest.raises(KeyboardInterrupt):
        stopped.fit()
    stopped.fit()
    assert _train_losses(stopped) == _train_losses(whole)


def test_fit_refuses_to_continue_from_a_half_applied_step(tmp_path, monkeypatch):
    """An error raised inside the optimizer update (not a Ctrl-C, which waits for the update to finish) leaves the
    model between two steps: continuing would apply the step again, so fit() says how to continue instead."""
    trainer = Trainer(tiny_config(tmp_path, steps=6, ckpt_every=2), model=StandIn(), log=quiet)
    sync, armed = trainer.device.synchronize, [True]

    def failing_sync():
        if trainer.step == 3 and armed[0]:
            armed[0] = False
            raise KeyboardInterrupt
        return sync()

    monkeypatch.setattr(trainer.device, "synchronize", failing_sync)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    with pytest.raises(WorkbenchError, match=r"step 4 was interrupted while the optimizer applied it.*resume=True"):
        trainer.fit()


def test_a_final_checkpoint_that_failed_to_save_is_written_by_the_next_fit(tmp_path, monkeypatch):
    """The step counted as checkpointed before the save ran: after a failed final save (disk full, Ctrl-C) the next
    fit() skipped it and wrote summary.json, so steps 5-6 were lost and export/--resume used step 4."""
    import errno

    from workbench.train import checkpoint as ckpt

    trainer = Trainer(tiny_config(tmp_path, steps=6, ckpt_every=4, eval_every=0), model=StandIn(), log=quiet)
    save, failed = ckpt.save_checkpoint, []

    def full_disk_once(root, step, *args, **kwargs):
        if step == 6 and not failed:
            failed.append(step)
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(root, step, *args, **kwargs)

    monkeypatch.setattr(ckpt, "save_checkpoint", full_disk_once)
    with pytest.raises(OSError, match="No space left"):
        trainer.fit()
    summary = trainer.fit()
    run = tmp_path / "run"
    assert summary["steps"] == 6
    assert [p.name for p in sorted((run / "checkpoints").glob("step_*"))] == ["step_0000004", "step_0000006"]


def test_resume_refuses_another_training_dtype_and_warns_about_compile(tmp_path, monkeypatch):
    """WORKBENCH_DTYPE (or another machine's bf16 verdict) changed the precision of a resumed run without a word, and
    config.json then said the whole run had used it; --compile toggled on resume changed the trajectory unannounced."""
    monkeypatch.setenv("WORKBENCH_DTYPE", "fp32")
    Trainer(tiny_config(tmp_path, steps=4, eval_every=0), model=StandIn(), log=quiet).fit()
    state = json.loads((tmp_path / "run" / "checkpoints" / "step_0000004" / "trainer_state.json").read_text())
    assert state["dtype"] == "float32"
    monkeypatch.setenv("WORKBENCH_DTYPE", "bf16")
    with pytest.raises(WorkbenchError) as refused:
        Trainer(tiny_config(tmp_path, steps=6, eval_every=0, resume=True), model=StandIn(), log=quiet)
    message = str(refused.value)
    assert "\n" not in message and "float32" in message and "bfloat16" in message, message
    assert "WORKBENCH_DTYPE=fp32" in message, message
    monkeypatch.setenv("WORKBENCH_DTYPE", "fp32")
    said = []
    trainer = Trainer(tiny_config(tmp_path, steps=6, eval_every=0, resume=True, compile=True), model=StandIn(),
                      log=said.append)
    trainer.close()
    assert trainer.step == 4
    assert any("warning" in line and "--compile" in line for line in said), said


def test_a_checkpoint_without_a_recorded_dtype_still_resumes(tmp_path, monkeypatch):
    """Checkpoints written before the dtype was recorded: unknown, so not compared."""
    monkeypatch.setenv("WORKBENCH_DTYPE", "fp32")
    written = Trainer.trainer_state
    monkeypatch.setattr(Trainer, "trainer_state", lambda self: {k: v for k, v in written(self).items() if k != "dtype"})
    Trainer(tiny_config(tmp_path, steps=4, eval_every=0), model=StandIn(), log=quiet).fit()
    monkeypatch.setattr(Trainer, "trainer_state", written)
    monkeypatch.setenv("WORKBENCH_DTYPE", "bf16")
    trainer = Trainer(tiny_config(tmp_path, steps=6, eval_every=0, resume=True), model=StandIn(), log=quiet)
    trainer.close()
    assert trainer.step == 4
