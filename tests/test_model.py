"""The GLM model: shapes, losses, label convention, MTP, MoE balancing, DSA, validation errors."""

import pytest
import torch

from workbench.errors import ConfigError
from workbench.model import ModelConfig, ModelOutput, build_model, get_preset, list_presets

TINY = ["glm4-tiny", "glm45-tiny", "glm5-tiny"]


def _small(name, **kw):
    """A tiny preset shrunk further (vocab 128, 2 layers unless told) so a test forward takes milliseconds."""
    cfg = get_preset(name)
    kw.setdefault("num_layers", 2)
    if cfg.indexer_types is not None and "indexer_types" not in kw:
        kw["indexer_types"] = cfg.indexer_types[: kw["num_layers"]]
    return cfg.replace(vocab_size=128, **kw)


@pytest.mark.parametrize("name", TINY)
def test_forward_logits_and_loss(name):
    torch.manual_seed(0)
    cfg = _small(name)
    model = build_model(cfg)
    x = torch.randint(0, cfg.vocab_size, (2, 48))
    out = model(x)
    assert isinstance(out, ModelOutput) and out.logits.shape == (2, 48, cfg.vocab_size) and out.loss is None
    y = torch.roll(x, -1, 1)
    out = model(x, labels=y)
    assert out.logits is None and torch.isfinite(out.loss)
    # untrained model: loss near log(V)
    assert abs(out.lm_loss.item() - torch.log(torch.tensor(float(cfg.vocab_size))).item()) < 0.5
    expected = out.lm_loss + (cfg.mtp_loss_weight * out.mtp_loss if cfg.mtp_layers else 0)
    if cfg.use_dsa:  # 48 > index_topk: the indexer ran and its KL loss is part of the total
        expected = expected + cfg.indexer_loss_coef * out.indexer_loss
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "indexer" not in n]
    assert all(g is not None for g in grads)
    if cfg.is_moe:
        assert out.expert_load.shape == (cfg.num_layers - cfg.first_k_dense, cfg.num_experts)
        assert int(out.expert_load.sum(1)[0]) == 2 * 48 * cfg.num_experts_per_token
    else:
        assert out.expert_load is None


def test_lm_loss_uses_labels_at_same_position():
    torch.manual_seed(0)
    cfg = _small("glm4-tiny", num_layers=1)
    model = build_model(cfg)
    x = torch.randint(0, cfg.vocab_size, (1, 16))
    y = torch.randint(0, cfg.vocab_size, (1, 16))
    logits = model(x).logits
    expected = torch.nn.functional.cross_entropy(logits[0], y[0])
    torch.testing.assert_close(model(x, labels=y).lm_loss, expected, rtol=1e-5, atol=1e-5)
    y_ignored = y.clone()
    y_ignored[0, 8:] = -100
    expected = torch.nn.functional.cross_entropy(logits[0, :8], y[0, :8])
    torch.testing.assert_close(model(x, labels=y_ignored).lm_loss, expected, rtol=1e-5, atol=1e-5)


def test_mtp_targets_are_labels_shifted_by_one():
    """MTP depth 1 at position t predicts labels[t + 1]: changing labels[0] must not change the MTP loss."""
    torch.manual_seed(0)
    cfg = _small("glm45-tiny", num_layers=2)
    model = build_model(cfg)
    x = torch.randint(0, cfg.vocab_size, (1, 16))
    y = torch.roll(x, -1, 1)
    a = model(x, labels=y)
    y2 = y.clone()
    y2[0, 0] = (y2[0, 0] + 1) % cfg.vocab_size
    b = model(x, labels=y2)
    torch.testing.assert_close(a.mtp_loss, b.mtp_loss)
    assert a.lm_loss != b.lm_loss
    y3 = y.clone()
    y3[0, 5] = (y3[0, 5] + 1) % cfg.vocab_size
    assert model(x, labels=y3).mtp_loss != a.mtp_loss


def test_causality():
    torch.manual_seed(0)
    for name in TINY:
        cfg = _small(name, **({"index_topk": 4} if name == "glm5-tiny" else {}))
        model = build_model(cfg)
        x = torch.randint(0, cfg.vocab_size, (1, 24))
        x2 = x.clone()
        x2[0, 12:] = (x2[0, 12:] + 3) % cfg.vocab_size
        torch.testing.assert_close(model(x).logits[:, :12], model(x2).logits[:, :12])


def test_only_training_forwards_count_towards_the_balancing_update():
    """Eval and sampling passes report their expert load but do not steer the bias (nor break bitwise resume)."""
    cfg = _small("glm45-tiny", num_layers=2, mtp_layers=0)
    model = build_model(cfg)
    moe = model.layers[1].mlp
    x = torch.randint(0, cfg.vocab_size, (2, 16))
    model.eval()
    with torch.no_grad():
        model(x)
    assert moe.load_accum.sum() == 0 and moe.last_load.sum() == 2 * 16 * cfg.num_experts_per_token
    model.train()
    model(x)
    assert moe.load_accum.sum() == 2 * 16 * cfg.num_experts_per_token


def test_expert_bias_update_balances_and_only_selects():
    torch.manual_seed(0)
    cfg = _small("glm45-tiny", num_layers=2, mtp_layers=0)
    model = build_model(cfg)
    moe = model.layers[1].mlp
    with torch.no_grad():
        moe.router.weight[0] += 0.5  # make expert 0 attractive to every token
    x = torch.randint(0, cfg.vocab_size, (4, 32))
    model(x)
    before = moe.load_accum.clone()
    metrics = model.update_expert_bias(rate=0.01)
    assert metrics["expert_load/max_over_mean"] > 1.0
    # named by layer: layer 0 is dense (first_k_dense=1), so the MoE block is L1, not "L0" (the first MoE block)
    assert "expert_load/max_over_mean/L1" in metrics and "expert_load/max_over_mean/L0" not in metrics
    bias = moe.router.expert_bias
    assert bias[before.argmax()] < 0 and moe.load_accum.sum() == 0
    # the bias changes the choice, never the weights: with a huge bias on expert 0 the weights stay sigmoid-based
    xt = torch.randn(5, cfg.hidden_size)
    moe.router.expert_bias.zero_()
    moe.router.expert_bias[3] = 100.0
    idx, w, scores = moe.router(xt)
    assert (idx == 3).any(dim=-1).all()
    expect = scores.gather(-1, idx)
    torch.testing.assert_close(w, expect / expect.sum(-1, keepdim=True) * cfg.routed_scaling)
    assert build_model(_small("glm4-tiny", num_layers=1)).update_expert_bias() == {}
    # data parallel: reduce_fn sees every layer's counts (here: another rank that routed everything to expert 5)
    model(x)
    seen = []

    def fake_all_reduce(t):
        seen.append(t.clone())
        t[5] += 10_000

    model.update_expert_bias(rate=0.01, reduce_fn=fake_all_reduce)
    assert len(seen) == len(model.moe_layers()) and moe.router.expert_bias[5] < 0


def test_aux_loss_reported_separately():
    torch.manual_seed(0)
    cfg = _small("glm45-tiny", num_layers=2, aux_loss_coef=0.01, mtp_layers=0)
    model = build_model(cfg)
    x = torch.randint(0, cfg.vocab_size, (2, 16))
    out = model(x, labels=torch.roll(x, -1, 1))
    assert out.aux_loss is not None and out.aux_loss > 0
    torch.testing.assert_close(out.loss, out.lm_loss + 0.01 * out.aux_loss)
    assert build_model(cfg.replace(aux_loss_coef=0.0))(x, labels=x).aux_loss is None


def test_dsa_indexer_topk_causal_and_shared_layers():
    torch.manual_seed(0)
    cfg = _small("glm5-tiny", index_topk=4, num_layers=4)
    model = build_model(cfg)
    attn = model.layers[0].self_attn
    S = 10
    x = torch.randn(2, S, cfg.hidden_size)
    cos, sin = model.rotary(S, x.device)
    q_latent = attn.q_a_layernorm(attn.q_a_proj(x))
    topk = attn.indexer(x, q_latent, cos, sin)
    assert topk.shape == (2, S, 4)
    for t in range(S):
        chosen = topk[:, t]
        valid = chosen[chosen >= 0]
        assert (valid <= t).all()                           # causal
        assert (chosen >= 0).sum(-1).tolist() == [min(t + 1, 4)] * 2
    # shared layers reuse the previous layer's top-k, and own no indexer
    assert model.layers[1].self_attn.indexer is None and model.layers[2].self_attn.indexer is not None
    out, used = model.layers[1].self_attn(x, cos, sin, prev_topk=topk)
    assert used is topk
    # sparse attention differs from dense once the sequence is longer than index_topk
    dense, _ = model.layers[1].self_attn(x, cos, sin, prev_topk=None)
    assert not torch.allclose(out, dense)
    torch.testing.assert_close(out[:, :4], dense[:, :4])  # the first topk positions see all their keys


@pytest.mark.parametrize("seq, block_rows", [(70, 16), (40, 8), (9, 16)])
def test_blocked_causal_topk_picks_what_the_dense_scores_pick(seq, block_rows):
    """select_causal scores query blocks only against the keys they can see; its picks must carry the same scores
    as the picks from the full [S, S] scores (relu makes exact ties at 0 common, and topk may break those either
    way, so the picked *scores* are compared), with the same -1 slots."""
    torch.manual_seed(1)
    indexer = build_model(_small("glm5-tiny", index_topk=8)).layers[0].self_attn.indexer
    B, Hi, Di = 2, indexer.n_heads, indexer.head_dim
    q, k, w = torch.randn(B, seq, Hi, Di), torch.randn(B, seq, Di), torch.randn(B, seq, Hi)
    dense = indexer.select(indexer.dense_scores(q, k, w))
    blocked = indexer.select_causal(q, k, w, block_rows=block_rows)
    assert blocked.shape == dense.shape == (B, seq, min(8, seq))
    full = indexer.dense_scores(q, k, w)
    def picked_scores(picks):
        return full.gather(-1, picks.clamp(min=0)).masked_fill(picks < 0, float("-inf")).sort(-1).values
    assert torch.equal((blocked < 0).sum(-1), (dense < 0).sum(-1))
    torch.testing.assert_close(picked_scores(blocked), picked_scores(dense), rtol=1e-5, atol=1e-6)
    assert (blocked <= torch.arange(seq)[:, None]).all()  # causal


def test_gathered_sparse_attention_equals_the_masked_dense_path():
    """dsa_attention="gather" (absorbed MLA, top-k rows gathered, KL on the [B, S, K] slots) and "mask" (per-head
    k/v, dense flash attention under a top-k mask, dense KL) are two ways to compute the same model: same losses,
    same gradients, in "full" and "shared" indexer layers alike."""
    torch.manual_seed(0)
    cfg = _small("glm5-tiny", index_topk=5, mtp_layers=0)
    models = {}
    for mode in ("mask", "gather"):
        torch.manual_seed(0)
        models[mode] = build_model(cfg.replace(dsa_attention=mode)).train()
    x = torch.randint(0, cfg.vocab_size, (2, 33))
    outs = {mode: m(x[:, :-1], labels=x[:, 1:]) for mode, m in models.items()}
    torch.testing.assert_close(outs["gather"].lm_loss, outs["mask"].lm_loss, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(outs["gather"].indexer_loss, outs["mask"].indexer_loss, rtol=1e-4, atol=1e-7)
    for out in outs.values():
        out.loss.backward()
    masked = dict(models["mask"].named_parameters())
    for name, p in models["gather"].named_parameters():
        torch.testing.assert_close(p.grad, masked[name].grad, rtol=1e-4, atol=1e-6, msg=name)
    attn = models["gather"].layers[0].self_attn
    assert attn.gathers(32) and not models["mask"].layers[0].self_attn.gathers(32)
    assert build_model(cfg).layers[0].self_attn.gathers(16 * 5) and not build_model(cfg).layers[0].self_attn.gathers(32)
    with pytest.raises(ConfigError, match="dsa_attention"):
        cfg.replace(dsa_attention="sparse")


def test_full_size_presets_build_on_meta():
    for name in ("glm-5", "glm-4.5", "glm-4.5-air"):
        model = build_model(get_preset(name), device="meta")
        assert next(model.parameters()).device.type == "meta"


def test_dtype_keeps_balancing_state_fp32():
    model = build_model(_small("glm45-tiny", num_layers=2), dtype=torch.bfloat16)
    assert model.embed_tokens.weight.dtype == torch.bfloat16
    assert model.layers[1].mlp.router.expert_bias.dtype == torch.float32


@pytest.mark.parametrize("changes, match", [
    (dict(hidden_size=250, num_heads=4, head_dim=None), "must divide hidden_size"),
    (dict(num_kv_heads=3), "num_kv_heads"),
    (dict(partial_rotary_factor=0.3), "rotary dims"),   # 64 * 0.3 = 19, odd
    (dict(num_experts=4, num_experts_per_token=5), "num_experts_per_token"),
    (dict(attention_type="sparse"), "attention_type"),
    (dict(ffn_act="relu"), "ffn_act"),
    # NaN passed every "< 0" check: a nan loss, or (aux_loss_coef) a loss term silently off
    (dict(norm_eps=float("nan")), "norm_eps must be a finite number"),
    (dict(routed_scaling=float("inf")), "routed_scaling must be a finite number"),
    (dict(aux_loss_coef=float("nan")), "aux_loss_coef must be a finite number"),
    # DSA settings are checked with DSA off too: a typo would surface only once DSA is turned on
    (dict(dsa_attention="bogus"), "dsa_attention must be"),
    (dict(indexer_types=("full", "bogus", "full", "full")), "indexer_types entries"),
])
def test_bad_gqa_configs(changes, match):
    with pytest.raises(ConfigError, match=match):
        get_preset("glm45-tiny").replace(**changes)


@pytest.mark.parametrize("changes, match", [
    (dict(index_topk=0), "index_topk"),
    (dict(qk_rope_head_dim=15), "qk_rope_head_dim"),
    (dict(qk_rope_head_dim=64, index_head_dim=32), "index_head_dim"),
    (dict(indexer_types=("shared", "full", "full", "full")), "indexer_types"),
    (dict(indexer_types=("full", "full")), "indexer_types"),
    (dict(q_lora_rank=0), "q_lora_rank"),
    # no sequence is longer than the positions: the indexer would never select, its parameters never train
    (dict(index_topk=2048), r"index_topk \(2048\) must be below max_position_embeddings \(2048\)"),
])
def test_bad_mla_configs(changes, match):
    with pytest.raises(ConfigError, match=match):
        get_preset("glm5-tiny").replace(**changes)


def test_rotary_larger_than_head_dim_and_unknown_preset():
    with pytest.raises(ConfigError, match="rotary"):
        ModelConfig(hidden_size=64, num_heads=4, num_kv_heads=4, head_dim=2, partial_rotary_factor=0.5)
    with pytest.raises(ConfigError) as err:
        get_preset("glm-6")
    for name in list_presets():
        assert name in str(err.value)


@pytest.mark.parametrize("dsa_attention", ["mask", "gather"])
def test_indexer_kl_loss_trains_only_the_indexer(dsa_attention):
    torch.manual_seed(0)
    cfg = _small("glm5-tiny", index_topk=4, mtp_layers=0, dsa_attention=dsa_attention)
    model = build_model(cfg)
    x = torch.randint(0, cfg.vocab_size, (2, 12))
    out = model(x, labels=torch.roll(x, -1, 1))
    assert out.indexer_loss is not None and out.indexer_loss > 0
    torch.testing.assert_close(out.loss, out.lm_loss + cfg.indexer_loss_coef * out.indexer_loss)
    out.indexer_loss.backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None and p.grad.abs().sum() > 0) == ("indexer" in name), name
    model.eval()
    assert model(x, labels=x).indexer_loss is None  # eval: no KL loss
    model.train()
    assert build_model(cfg.replace(indexer_loss_coef=0.0))(x, labels=x).indexer_loss is None
    # the loss is a KL: zero when the indexer's distribution equals the attention's
    from workbench.model.dsa_indexer import indexer_kl_loss
    B, H, S, D = 1, 2, 6, 8
    q, k = torch.randn(B, H, S, D), torch.randn(B, H, S, D)
    topk = torch.arange(S).expand(B, S, S).masked_fill(torch.ones(S, S, dtype=torch.bool).triu(1), -1)
    probs = torch.softmax((q @ k.transpose(-1, -2) * 0.3).masked_fill(torch.ones(S, S).triu(1).bool(), -1e9), -1)
    target = probs.sum(1) / H
    scores = target.clamp_min(1e-30).log().masked_fill(torch.ones(S, S).triu(1).bool(), float("-inf"))
    assert indexer_kl_loss(scores, topk, q, k, 0.3).abs() < 1e-5
    assert indexer_kl_loss(torch.zeros(B, S, S), topk, q, k, 0.3) > 1e-3


def test_bf16_autocast_trains_and_routes_in_fp32():
    torch.manual_seed(0)
    cfg = _small("glm45-tiny", num_layers=2)
    model = build_model(cfg)
    x = torch.randint(0, cfg.vocab_size, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, labels=torch.roll(x, -1, 1))
        _, weights, scores = model.layers[1].mlp.router(torch.randn(4, cfg.hidden_size))
    out.loss.backward()
    assert torch.isfinite(out.loss) and scores.dtype == weights.dtype == torch.float32


@pytest.mark.parametrize("dsa_attention, seq", [("mask", 64), ("gather", 64)])  # the two KL paths
def test_the_dsa_indexer_scores_picks_and_trains_in_fp32_under_autocast(dsa_attention, seq):
    """Under bf16 autocast the indexer's scores, top-k and KL loss ran in bf16 (its docstring promised fp32): the
    logged loss was 12-70% high at init and the masked and gathered modes disagreed by up to 24%."""
    torch.manual_seed(0)
    model = build_model(get_preset("glm5-tiny").replace(vocab_size=97, dsa_attention=dsa_attention)).train()
    ids = torch.randint(0, 97, (2, seq))
    picks = {}

    def record(module, args, output):
        picks.setdefault(id(module), []).append(output[1])

    hook = model.layers[0].self_attn.register_forward_hook(record)
    losses = []
    for autocast in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            losses.append(model(ids, labels=ids).indexer_loss.float())
    hook.remove()
    fp32_picks, bf16_picks = picks[id(model.layers[0].self_attn)]
    assert torch.isfinite(losses[1]) and abs(losses[1] - losses[0]) / losses[0] < 0.02
    same = (fp32_picks.sort(-1).values == bf16_picks.sort(-1).values).float().mean()
    assert same > 0.94  # near-ties may differ: the indexer's inputs come from bf16 layers (was 0.88 at S=128)


@pytest.mark.parametrize("changes, message", [
    (dict(num_layers="abc"), "num_layers must be an integer (got 'abc')"),
    (dict(num_layers=1.5), "num_layers must be an integer (got 1.5)"),
    (dict(tie_embeddings="False"), "tie_embeddings must be true or false (got 'False')"),
    (dict(indexer_types="None"), "indexer_types must be a list of strings or None"),
    (dict(rope_theta="1e4"), "rope_theta must be a number"),
])
def test_model_config_checks_field_types(changes, message):
    """Overrides come from strings (CLI, notebooks): "False" was a true bool and "None" became ('N','o','n','e')."""
    with pytest.raises(ConfigError) as err:
        ModelConfig(**changes)
    assert message in str(err.value)
    assert ModelConfig(indexer_types=["full"], num_layers=1, attention_type="mla", q_lora_rank=16, index_n_heads=2,
                       index_head_dim=16).indexer_types == ("full",)  # JSON lists become tuples


def test_a_sequence_longer_than_the_positions_is_refused():
    """RoPE extrapolated silently past max_position_embeddings."""
    model = build_model(_small("glm4-tiny", max_position_embeddings=8))
    model(torch.zeros(1, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="9 tokens is longer than the model's max_position_embeddings \\(8\\)"):
        model(torch.zeros(1, 9, dtype=torch.long))
