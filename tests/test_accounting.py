"""Accounting: parameter counts equal the instantiated modules exactly; published totals; FLOPs and memory."""

import pytest
import torch

from workbench.errors import ConfigError
from workbench.model import FULL_SIZE, PUBLISHED, build_model, get_preset, list_presets
from workbench.model.accounting import count_parameters, flops_per_token, training_memory
from workbench.model.moe import GroupedExperts, MoE


def _module_counts(model, cfg):
    """total, and per-token active counted from the module tree (trunk only, no embedding / head)."""
    total = sum(p.numel() for p in model.parameters())
    trunk = sum(p.numel() for name, p in model.named_parameters() if not name.startswith("mtp."))
    inactive = 0
    for layer in model.layers:
        if isinstance(layer.mlp, MoE):
            e = layer.mlp.experts
            per_expert = (e.gate_up_proj.numel() + e.down_proj.numel()) // e.gate_up_proj.shape[0]
            inactive += (cfg.num_experts - cfg.num_experts_per_token) * per_expert
    emb = model.embed_tokens.weight.numel() + (0 if cfg.tie_embeddings else model.lm_head.weight.numel())
    return total, trunk, trunk - inactive - emb


@pytest.mark.parametrize("name", list_presets())
def test_counts_equal_module(name):
    cfg = get_preset(name)
    model = build_model(cfg, device="meta" if name in FULL_SIZE else None)
    total, trunk, active = _module_counts(model, cfg)
    p = count_parameters(cfg)
    assert p.total == total
    assert p.main == trunk and p.mtp == total - trunk
    assert p.active == active


@pytest.mark.parametrize("changes", [dict(tie_embeddings=True), dict(ffn_act="gelu"), dict(attention_bias=False),
                                     dict(num_kv_heads=1, use_qk_norm=True, head_dim=48)])
def test_counts_equal_module_variants(changes):
    cfg = get_preset("glm4-tiny").replace(**changes)
    model = build_model(cfg, device="meta")
    assert count_parameters(cfg).total == sum(p.numel() for p in model.parameters())


def test_counts_mla_variants():
    cfg = get_preset("glm5-tiny").replace(q_lora_rank=0, index_n_heads=0, indexer_types=None, attention_bias=True)
    model = build_model(cfg, device="meta")
    assert count_parameters(cfg).total == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", FULL_SIZE)
def test_published_totals_within_one_percent(name):
    p = count_parameters(get_preset(name))
    total, active = PUBLISHED[name]
    assert abs(p.main - total) / total < 0.01
    assert abs(p.active - active) / active < 0.02  # published actives are rounded to whole billions


def test_glm5_mtp_explains_753_9b():
    p = count_parameters(get_preset("glm-5"))
    assert abs(p.total - 753.9e9) / 753.9e9 < 0.001  # the checkpoint figure includes the MTP layer
    assert abs(p.main - 744e9) / 744e9 < 0.001


def test_flops_dense_matches_6n_plus_attention():
    cfg = get_preset("glm4-tiny")
    f = flops_per_token(cfg, 256)
    n = count_parameters(cfg).active + cfg.vocab_size * cfg.hidden_size
    assert f.dense_matmul == 6 * n
    assert f.attention == 12 * cfg.num_layers * cfg.num_heads * cfg.attn_head_dim * 256  # PaLM 12 L H Q T
    assert f.indexer == 0 and f.mtp == 0 and f.total == f.dense_matmul + f.attention


def test_flops_dsa_attention_term_caps_at_topk():
    cfg = get_preset("glm5-tiny")
    short, at, long = (flops_per_token(cfg, s) for s in (16, cfg.index_topk, 4 * cfg.index_topk))
    assert short.attention * 2 == at.attention == long.attention  # attention reads index_topk keys at most
    assert short.indexer == at.indexer == 0 < long.indexer        # the indexer runs only when it can prune
    assert long.mtp > 0 and flops_per_token(cfg, 128, include_mtp=False).mtp == 0
    no_kl = flops_per_token(cfg.replace(indexer_loss_coef=0.0), 4 * cfg.index_topk)
    S = 4 * cfg.index_topk
    per_layer = no_kl.indexer / 2  # glm5-tiny: 2 indexer-owning layers
    n_indexer = 128 * 4 * 32 + 256 * 32 + 2 * 32 + 256 * 4  # wq_b, wk, k LayerNorm, weights_proj
    assert per_layer == 2 * n_indexer + 2 * 4 * (32 + 1) * S
    # the sparse-stage KL loss of DeepSeek-V3.2 (GLM-5's DSA): over the top-k selected keys only (scores forward and
    # backward), the indexer's input detached (its projections get weight gradients only), the target from the
    # attention's own probabilities. It was charged at its dense cost (3x the whole indexer + q.k over all S keys):
    # glm-5's FLOPs per token +40% at S = 32K, +136% at 128K, and MFU with them.
    assert long.indexer == 2 * (2 * 2 * n_indexer + 2 * 4 * (32 + 1) * S + 3 * 2 * 4 * (32 + 1) * cfg.index_topk)
    full = get_preset("glm-5")
    at_128k = flops_per_token(full, 131072)
    assert at_128k.indexer < 0.25 * at_128k.total  # 1.2 GFLOPs per indexer layer, not 7.6


def test_flops_moe_uses_active_experts_only():
    cfg = get_preset("glm45-tiny")
    more = cfg.replace(num_experts=32)  # more experts, same top-k: only the router grows
    moe_layers = cfg.num_layers - cfg.first_k_dense
    router_growth = 6 * (32 - cfg.num_experts) * cfg.hidden_size * moe_layers
    assert flops_per_token(more, 128).dense_matmul - flops_per_token(cfg, 128).dense_matmul == router_growth
    assert count_parameters(more).total > count_parameters(cfg).total


def test_training_memory_modes_and_sharding():
    cfg = get_preset("glm45-tiny")
    kw = dict(micro_batch=2, seq_len=128)
    none, sel, full = (training_memory(cfg, recompute=r, **kw) for r in ("none", "selective", "full"))
    assert none.activations > sel.activations > full.activations > 0
    p = count_parameters(cfg).total
    assert none.weights == 2 * p and none.grads == 4 * p and none.optimizer == 12 * p
    sharded = training_memory(cfg, shard_degree=4, **kw)
    assert sharded.weights == pytest.approx(none.weights / 4)
    assert none.total == pytest.approx(none.weights + none.grads + none.optimizer + none.activations)
    with pytest.raises(ConfigError, match="recompute"):
        training_memory(cfg, recompute="some", **kw)


def test_real_tiny_count_matches_numel_with_buffers_excluded():
    model = build_model(get_preset("glm45-tiny"))
    buffers = {name for name, _ in model.named_buffers()}
    assert any("expert_bias" in b for b in buffers)  # balancing bias is state, not a parameter
    assert count_parameters(get_preset("glm45-tiny")).total == sum(p.numel() for p in model.parameters())
    assert all(isinstance(m.experts, GroupedExperts) for m in model.moe_layers())
    assert torch.isfinite(model.embed_tokens.weight).all()
