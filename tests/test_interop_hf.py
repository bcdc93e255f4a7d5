"""HF interop: tiny random transformers GLM models built locally (never the hub) load with identical logits."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from workbench.errors import ConfigError, WorkbenchError  # noqa: E402
from workbench.interop.hf import from_hf, to_hf  # noqa: E402
from workbench.model import build_model, get_preset  # noqa: E402

V = 96


def _randomise(hf):
    """Random non-trivial norms, biases and balancing biases, so a wrong mapping cannot hide behind ones/zeros."""
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if p.dim() == 1:
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if "norm" in name else 0.0))
        for name, b in hf.named_buffers():
            if "e_score_correction_bias" in name:
                b.copy_(torch.randn_like(b) * 0.05)
    return hf.eval()


def _glm4moe(**kw):
    cfg = transformers.Glm4MoeConfig(
        vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, moe_intermediate_size=32, n_routed_experts=8, num_experts_per_tok=2,
        first_k_dense_replace=1, attention_bias=True, **kw)
    cfg._attn_implementation = "eager"
    return _randomise(transformers.Glm4MoeForCausalLM(cfg))


def _glm_dsa(**kw):
    cfg = transformers.GlmMoeDsaConfig(
        vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=4, q_lora_rank=32, kv_lora_rank=16, qk_nope_head_dim=16, qk_rope_head_dim=8,
        v_head_dim=16, index_n_heads=2, index_head_dim=16, index_topk=5, moe_intermediate_size=32,
        n_routed_experts=8, num_experts_per_tok=2, first_k_dense_replace=1,
        indexer_types=["full", "shared", "full", "shared"], **kw)
    cfg._attn_implementation = "eager"
    return _randomise(transformers.GlmMoeDsaForCausalLM(cfg))


CASES = {
    "glm4moe-qknorm-partial-rope": lambda: _glm4moe(use_qk_norm=True, routed_scaling_factor=2.5,
                                                    partial_rotary_factor=0.5),
    "glm4moe-air-style": lambda: _glm4moe(use_qk_norm=False, routed_scaling_factor=1.0),
    "glm4moe-tied-quarter-rope": lambda: _glm4moe(use_qk_norm=True, tie_word_embeddings=True,
                                                  partial_rotary_factor=0.25),
    "glm-moe-dsa-topk-shared": lambda: _glm_dsa(routed_scaling_factor=2.5),
}


@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_transformers(case, tmp_path):
    torch.manual_seed(0)
    hf = CASES[case]()
    x = torch.randint(0, V, (2, 20))  # 20 > index_topk = 5: DSA really prunes
    with torch.no_grad():
        expected = hf(x).logits
        in_memory = from_hf(hf).eval()
        torch.testing.assert_close(in_memory(x).logits, expected, rtol=0, atol=1e-4)
        hf.save_pretrained(tmp_path)  # the released on-disk layout: experts stored one by one
        from_disk = from_hf(tmp_path).eval()
        torch.testing.assert_close(from_disk(x).logits, expected, rtol=0, atol=1e-4)
    with torch.no_grad():  # the workbench copy owns its storage: changing it leaves the transformers model alone
        next(in_memory.parameters()).add_(1.0)
    assert torch.equal(hf(x).logits, expected)
    from workbench.model.accounting import count_parameters
    assert count_parameters(in_memory.config).total == sum(p.numel() for p in in_memory.parameters())
    if "dsa" in case:
        attn = in_memory.layers[1].self_attn
        assert in_memory.config.index_topk < x.shape[1] and attn.indexer is None  # a shared layer
        assert in_memory.layers[0].self_attn.indexer is not None


@pytest.mark.parametrize("name", ["glm45-tiny", "glm5-tiny"])
def test_round_trip_exact_with_mtp(name, tmp_path):
    torch.manual_seed(0)
    cfg = get_preset(name).replace(vocab_size=V, num_layers=2, first_k_dense=1, aux_loss_coef=0.01,
                                   **({"indexer_types": ("full", "shared"), "index_topk": 6}
                                      if name == "glm5-tiny" else {}))
    model = build_model(cfg)
    with torch.no_grad():
        for moe in model.moe_layers():
            moe.router.expert_bias.normal_(0, 0.05)
    to_hf(model, tmp_path)
    again = from_hf(tmp_path)
    assert again.config == cfg  # training-only fields travel in config.json
    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randint(0, V, (2, 16))
    with torch.no_grad():
        la, lb = model(x, labels=torch.roll(x, -1, 1)), again(x, labels=torch.roll(x, -1, 1))
    assert torch.equal(la.loss, lb.loss) and la.mtp_loss is not None and torch.equal(la.mtp_loss, lb.mtp_loss)
    # transformers itself reads what to_hf wrote (it ignores the MTP layer)
    cls = transformers.Glm4MoeForCausalLM if name == "glm45-tiny" else transformers.GlmMoeDsaForCausalLM
    hf = cls.from_pretrained(tmp_path, attn_implementation="eager").eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x).logits, rtol=0, atol=1e-4)


def test_dense_glm4_exports_when_half_rope(tmp_path):
    cfg = get_preset("glm4-tiny").replace(vocab_size=V, num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2,
                                          head_dim=16, intermediate_size=96)
    model = build_model(cfg.replace(rope_interleaved=False))
    to_hf(model, tmp_path)
    x = torch.randint(0, V, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(from_hf(tmp_path)(x).logits, model(x).logits, rtol=0, atol=0)


@pytest.mark.parametrize("preset", ["glm4-tiny", "glm45-tiny"])
def test_interleaved_rope_gqa_models_export_with_reordered_rows(preset, tmp_path):
    """The default preset (glm4-tiny, interleaved RoPE) could not be exported: Glm4Moe rotates half-split pairs.
    to_hf now reorders q/k rows (weights, biases, q/k norms) so transformers computes the same logits."""
    torch.manual_seed(0)
    cfg = get_preset(preset).replace(vocab_size=V, num_layers=2, mtp_layers=0, rope_interleaved=True)
    model = build_model(cfg).eval()
    with torch.no_grad():  # non-trivial norm weights and biases, so a wrong reordering cannot hide behind ones/zeros
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if "norm" in name else 0.0))
    to_hf(model, tmp_path)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ours_again = from_hf(tmp_path).eval()  # reads it back as half-split: the same function, rows reordered
    x = torch.randint(0, V, (2, 24))
    with torch.no_grad():
        expected = model(x).logits
        torch.testing.assert_close(theirs(x).logits, expected, rtol=0, atol=1e-4)
        torch.testing.assert_close(ours_again(x).logits, expected, rtol=0, atol=1e-4)
    assert not ours_again.config.rope_interleaved


def test_bad_inputs(tmp_path):
    with pytest.raises(WorkbenchError, match="config.json"):
        from_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match="unsupported model_type"):
        from_hf(tmp_path)
    hf_config = transformers.Glm4MoeConfig(num_hidden_layers=1, head_dim=128)
    (tmp_path / "config.json").write_text(json.dumps(hf_config.to_dict()))
    with pytest.raises(WorkbenchError, match="cannot read"):
        from_hf(tmp_path)


def test_transformers_fields_win_over_the_embedded_workbench_config(tmp_path):
    """to_hf embeds a workbench_config, which transformers keeps when it re-saves; an edit of routed_scaling_factor
    or rope_theta in transformers was then silently undone by the stale copy (logits differed by 0.06)."""
    torch.manual_seed(0)
    cfg = get_preset("glm45-tiny").replace(vocab_size=V, num_layers=2, mtp_layers=0, bias_update_rate=0.005,
                                           mtp_loss_weight=0.5)
    to_hf(build_model(cfg), tmp_path / "exported")
    hf = transformers.Glm4MoeForCausalLM.from_pretrained(tmp_path / "exported", attn_implementation="eager").eval()
    hf.config.routed_scaling_factor = 1.0
    hf.config.rope_parameters["rope_theta"] = 500.0
    hf.save_pretrained(tmp_path / "edited")
    assert "workbench_config" in json.loads((tmp_path / "edited" / "config.json").read_text())
    loaded = from_hf(tmp_path / "edited").eval()
    assert (loaded.config.routed_scaling, loaded.config.rope_theta) == (1.0, 500.0)
    assert (loaded.config.bias_update_rate, loaded.config.mtp_loss_weight, loaded.config.name) == \
        (0.005, 0.5, cfg.name)  # what transformers cannot express still comes from the copy
    edited = transformers.Glm4MoeForCausalLM.from_pretrained(tmp_path / "edited", attn_implementation="eager").eval()
    x = torch.randint(0, V, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, edited(x).logits, rtol=0, atol=1e-4)


@pytest.mark.parametrize("schedule, expected", [
    (dict(index_topk_pattern="FSFS"), ("full", "shared", "full", "shared")),
    (dict(index_topk_pattern=["full", "full", "shared", "full"]), ("full", "full", "shared", "full")),
    (dict(index_topk_freq=2, index_skip_topk_offset=1), ("full", "shared", "full", "shared")),
    (dict(index_topk_freq=3, index_skip_topk_offset=2), ("full", "full", "shared", "shared")),
])
def test_dsa_indexer_schedule_keys_are_read_like_transformers(schedule, expected):
    """A config.json giving the schedule as index_topk_pattern / _freq + offset (no indexer_types list) was read
    as "full" everywhere, and its weights then did not fit."""
    from workbench.interop.hf import config_from_hf

    d = _glm_dsa().config.to_dict()
    del d["indexer_types"]
    d.update(schedule)
    assert tuple(transformers.GlmMoeDsaConfig(**d).indexer_types) == expected  # what transformers derives
    assert config_from_hf(d).indexer_types == expected
    with pytest.raises(ConfigError, match="index_topk_pattern"):
        config_from_hf({**d, "index_topk_pattern": "FXS"})


def test_to_hf_records_the_weights_dtype_and_reads_an_all_dense_trunk_with_a_moe_mtp_layer(tmp_path):
    from workbench.model.glm import cast_model

    cfg = get_preset("glm45-tiny").replace(vocab_size=V, num_layers=2, first_k_dense=2, mtp_layers=1)
    model = build_model(cfg)
    to_hf(cast_model(build_model(cfg), torch.bfloat16), tmp_path / "bf16")
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"  # was float32
    to_hf(model, tmp_path / "fp32")
    config = json.loads((tmp_path / "fp32" / "config.json").read_text())
    assert config["dtype"] == "float32"
    del config["workbench_config"]  # as a folder written by other tools: only the transformers fields
    (tmp_path / "fp32" / "config.json").write_text(json.dumps(config))
    again = from_hf(tmp_path / "fp32")  # "does not fit": the MoE MTP layer's experts were dropped
    assert again.config.num_experts == cfg.num_experts and again.config.first_k_dense == 2
    x = torch.randint(0, V, (1, 10))
    with torch.no_grad():
        assert torch.equal(again(x, labels=x).mtp_loss, model(x, labels=x).mtp_loss)


@pytest.mark.parametrize("name", ["glm45-tiny", "glm5-tiny"])
def test_a_dense_model_round_trips_its_config(name, tmp_path):
    """to_hf writes placeholders for a dense model's MoE-only fields (top-1, first_k_dense = layers); once the
    transformers fields won, they came back as num_experts_per_token 1 and first_k_dense 4."""
    changes = {"indexer_types": ("full", "shared", "full", "shared")} if name == "glm5-tiny" else {}
    cfg = get_preset(name).replace(vocab_size=V, num_experts=0, mtp_layers=0, **changes)
    to_hf(build_model(cfg), tmp_path)
    assert from_hf(tmp_path).config == cfg


def test_a_compiled_model_exports_like_the_model(tmp_path):
    """After --compile, trainer.model is torch.compile's wrapper; to_hf(trainer.model) died with KeyError
    'embed_tokens.weight' (its state-dict keys start with '_orig_mod.'). Wrapping compiles nothing."""
    torch.manual_seed(0)
    model = build_model(get_preset("glm4-tiny").replace(vocab_size=V, num_layers=1, rope_interleaved=False))
    to_hf(torch.compile(model), tmp_path / "compiled")
    to_hf(torch.compile(torch.nn.DataParallel(model)), tmp_path / "wrapped twice")  # DDP's `.module`, then compile
    to_hf(model, tmp_path / "plain")
    a, b, c = (from_hf(tmp_path / name).state_dict() for name in ("compiled", "wrapped twice", "plain"))
    assert a.keys() == b.keys() == c.keys() and all(torch.equal(a[k], c[k]) and torch.equal(b[k], c[k]) for k in a)


def test_export_onto_a_full_disk_is_an_oserror(tmp_path, monkeypatch):
    """safetensors reports a full disk as its own SafetensorError (no OSError): the CLI's one-line handling of
    file-system refusals did not apply to an export."""
    import errno

    from safetensors import SafetensorError

    from workbench.train import checkpoint

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(checkpoint, "save_file", full)
    model = build_model(get_preset("glm4-tiny").replace(vocab_size=V, num_layers=1, rope_interleaved=False))
    with pytest.raises(OSError) as caught:
        to_hf(model, tmp_path)
    assert caught.value.errno == errno.ENOSPC


@pytest.mark.parametrize("kind, config_class", [("glm4_moe", "Glm4MoeConfig"), ("glm_moe_dsa", "GlmMoeDsaConfig")])
def test_the_defaults_table_is_transformers_own(kind, config_class):
    """from_hf fills keys a config.json leaves out with transformers' class defaults (it must load without
    transformers installed, hence a copy): the copy has to match the installed version."""
    import inspect

    from workbench.interop.hf import _HF_DEFAULTS

    signature = inspect.signature(getattr(transformers, config_class).__init__).parameters
    assert {key: signature[key].default for key in _HF_DEFAULTS[kind]} == _HF_DEFAULTS[kind]


def _exported_config_without(tmp_path, preset, drop, **edits):
    """A to_hf export of a small preset whose config.json lost ``drop`` keys (and its workbench_config copy)."""
    torch.manual_seed(0)
    cfg = get_preset(preset)
    dsa = {"indexer_types": ("full", "shared")} if cfg.use_dsa else {}
    cfg = cfg.replace(vocab_size=V, num_layers=2, mtp_layers=0, **dsa)
    folder = tmp_path / preset
    to_hf(build_model(cfg), folder)
    d = json.loads((folder / "config.json").read_text())
    for key in ("workbench_config", *drop):
        d.pop(key)
    d.update(edits)
    (folder / "config.json").write_text(json.dumps(d))
    return folder


@pytest.mark.parametrize("preset, drop", [
    ("glm5-tiny", ("routed_scaling_factor", "max_position_embeddings")),  # GLM-5's defaults: 2.5 and 202752
    ("glm45-tiny", ("max_position_embeddings", "first_k_dense_replace", "norm_topk_prob")),
])
def test_keys_left_out_of_config_json_mean_transformers_defaults(tmp_path, preset, drop):
    """A missing routed_scaling_factor was read as 1.0 where transformers uses GLM-5's 2.5: logits 0.56 apart."""
    folder = _exported_config_without(tmp_path, preset, drop)
    ours = from_hf(folder).eval()
    theirs = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    assert ours.config.max_position_embeddings == theirs.config.max_position_embeddings
    x = torch.randint(0, V, (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(ours(x).logits, theirs(x).logits, rtol=0, atol=1e-4)


def test_the_older_rope_layout_is_read_and_scaled_rope_refused(tmp_path):
    """transformers 4's config.json: rope_theta / partial_rotary_factor at the top level, scaling in rope_scaling.
    A yarn rope_scaling was ignored (plain RoPE, logits 0.47 apart from transformers')."""
    from workbench.interop.hf import config_from_hf

    folder = _exported_config_without(tmp_path, "glm45-tiny", ("rope_parameters",), rope_theta=500.0,
                                      partial_rotary_factor=0.25)
    ours = from_hf(folder).eval()
    assert (ours.config.rope_theta, ours.config.partial_rotary_factor) == (500.0, 0.25)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    x = torch.randint(0, V, (1, 40))
    with torch.no_grad():
        torch.testing.assert_close(ours(x).logits, theirs(x).logits, rtol=0, atol=1e-4)
    d = json.loads((folder / "config.json").read_text())
    for scaling in ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 512},
                    {"type": "linear", "factor": 2.0}):
        with pytest.raises(ConfigError, match="scaled RoPE"):
            config_from_hf({**d, "rope_scaling": scaling})
