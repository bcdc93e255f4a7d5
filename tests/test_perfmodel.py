"""The cluster-training simulator: shapes vs accounting, result structure, physics sanity, search, clear errors, CLI."""

from __future__ import annotations

import json

import pytest

from workbench.errors import ConfigError, WorkbenchError
from workbench.perfmodel import shape_from_dims, shape_from_preset, simulate

GPT175 = {"layers": 96, "hidden": 12288, "heads": 96, "kv_heads": 96, "head_dim": None, "ffn": 49152,
          "ffn_type": "gelu", "vocab": 51200, "moe": None, "mla": None}
LLAMA8B = {"layers": 32, "hidden": 4096, "heads": 32, "kv_heads": 8, "ffn": 14336, "ffn_type": "swiglu", "vocab": 128256}
SMALL_MOE = {"layers": 8, "hidden": 1024, "heads": 16, "kv_heads": 4, "ffn": 4096, "vocab": 32000,
             "moe": {"experts": 16, "top_k": 2, "shared": 1, "expert_ffn": 512, "first_dense": 1}}


def spec(**changes):
    base = {"model": LLAMA8B, "seq_len": 4096, "global_batch": 64, "micro_batch": 1, "precision": "bf16",
            "cluster": {"chip": "H100-SXM", "count": 16, "chips_per_node": 8},
            "layout": {"tp": 2, "pp": 1, "dp": 8, "ep": 1, "cp": 1, "vp": 1, "zero": 1, "recompute": "selective"},
            "train_tokens": 1e11}
    base.update(changes)
    return base


# ---- shapes -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["glm-5", "glm-4.5", "glm-4.5-air", "glm4-tiny", "glm45-tiny", "glm5-tiny"])
def test_shape_totals_equal_accounting(preset):
    """Cross-check: totals derived from the simulator's per-layer shapes == workbench.model.accounting."""
    from workbench.model import get_preset
    from workbench.model.accounting import count_parameters, flops_per_token

    config = get_preset(preset)
    shape = shape_from_preset(preset)
    counts, mine = count_parameters(config), shape.param_counts()
    assert mine["total"] == counts.main
    assert mine["mtp"] == counts.mtp
    assert mine["embedding"] == counts.embedding
    assert mine["active_non_embedding"] - shape.output_params() == counts.active
    for seq in (1024, 4096):
        assert shape.flops_per_token(seq) == pytest.approx(flops_per_token(config, seq).total, rel=1e-12)


def test_a_gelu_workbench_model_has_no_ffn_biases_in_the_simulator():
    """shape_from_config gave every gelu FFN GPT-style biases the workbench's gelu MLP does not have: 4,096
    parameters too many on glm4-tiny with ffn_act=gelu, and FLOPs per token (the trainer's MFU) apart."""
    from workbench.model import get_preset
    from workbench.model.accounting import count_parameters, flops_per_token
    from workbench.perfmodel import shape_from_config

    config = get_preset("glm4-tiny").replace(ffn_act="gelu")
    shape = shape_from_config(config)
    assert shape.param_counts()["total"] == count_parameters(config).main
    assert shape.flops_per_token(16) == pytest.approx(flops_per_token(config, 16).total, rel=1e-12)
    gpt = shape_from_dims({"layers": 2, "hidden": 64, "heads": 4, "ffn": 256, "vocab": 100, "ffn_type": "gelu"})
    assert gpt.dense_ffn_params() == 2 * 64 * 256 + 256 + 64  # explicit gelu dims keep GPT's biases
    with pytest.raises(ConfigError, match="ffn_bias must be true, false or null"):
        shape_from_dims({"layers": 2, "hidden": 64, "heads": 4, "vocab": 100, "ffn_bias": "no"})


def test_simulate_parameter_keys_match_workbench_models():
    """simulate's params_active (41.8B for GLM-5) counted embedding and LM head, where `workbench models` and the
    README say 39.9B active (model-card convention): the keys now say what they count."""
    from workbench.model import get_preset
    from workbench.model.accounting import count_parameters

    for preset, layout in (("glm45-tiny", {"tp": 1}), ("glm-5", {"tp": 1, "pp": 8, "dp": 256, "ep": 8})):
        count = 1 if preset == "glm45-tiny" else 2048
        r = simulate({"model": {"preset": preset}, "seq_len": 256, "global_batch": 256 if count > 1 else 4,
                      "cluster": {"chip": "H100", "count": count}, "layout": {**layout, "recompute": "full"}})
        counts = count_parameters(get_preset(preset))  # what `workbench models` prints
        m = r["model"]
        assert (m["params_total"], m["params_total_with_mtp"]) == (counts.main, counts.total)
        assert m["params_active_non_embedding"] == counts.active
        assert m["params_active"] > m["params_active_non_embedding"] and "model-card" in m["params_convention"]
    assert round(m["params_active_non_embedding"] / 1e9, 2) == 39.88  # GLM-5, as the README says


def test_explicit_dims_known_models():
    gpt = shape_from_dims(GPT175)
    assert gpt.param_counts()["total"] / 1e9 == pytest.approx(175.2, abs=0.3)
    llama = shape_from_dims(LLAMA8B)
    assert llama.param_counts()["total"] / 1e9 == pytest.approx(8.03, abs=0.01)
    # PaLM: 6N + 12 L H Q T
    n = llama.matmul_params_per_token()
    assert llama.flops_per_token(8192) == pytest.approx(6 * n + 12 * 32 * 32 * 128 * 8192)


# ---- result structure and physics ----------------------------------------------------------------------------------
def test_result_has_the_promised_keys_and_consistent_numbers():
    r = simulate(spec())
    for key in ("step_time_s", "tokens_per_s_per_chip", "mfu", "memory_gb_per_chip", "fits", "breakdown", "layout"):
        assert key in r
    assert r["feasible"] and r["fits"]
    assert sum(r["breakdown"].values()) == pytest.approx(r["step_time_s"])
    assert set(r["breakdown"]) >= {"compute", "tp_comm", "pp_comm", "dp_comm", "ep_comm", "cp_comm", "pipeline_bubble",
                                   "optimizer"}
    assert r["tokens_per_s_per_chip"] == pytest.approx(64 * 4096 / r["step_time_s"] / 16)
    fpt = r["model"]["flops_per_token"]
    assert r["mfu"] == pytest.approx(r["tokens_per_s_per_chip"] * fpt / 989e12)
    assert 0.2 < r["mfu"] < 0.8
    mem = r["memory"]
    assert mem["total_gb"] == pytest.approx(mem["params_gb"] + mem["grads_gb"] + mem["optimizer_gb"] + mem["activations_gb"])
    train = r["train"]
    assert train["time_s"] == pytest.approx(1e11 / r["tokens_per_s"])
    assert train["energy_mwh"] == pytest.approx(16 * 1275 * train["time_s"] * 1.2 / 3.6e9)  # DGX H100 W per GPU x PUE


def test_layout_knobs_move_time_and_memory_the_right_way():
    base = simulate(spec())
    full = simulate(spec(layout={"tp": 2, "dp": 8, "recompute": "full"}))
    assert full["step_time_s"] > base["step_time_s"] * 1.15  # one more forward
    assert full["memory"]["activations_gb"] < base["memory"]["activations_gb"] / 3  # logits stay
    z3 = simulate(spec(layout={"tp": 2, "dp": 8, "zero": 3}))
    z0 = simulate(spec(layout={"tp": 2, "dp": 8, "zero": 0}))
    assert z3["memory"]["params_gb"] < base["memory"]["params_gb"] < z0["memory"]["params_gb"] + 1e-9
    assert z0["memory"]["optimizer_gb"] == pytest.approx(8 * base["memory"]["optimizer_gb"])
    no_tp = simulate(spec(layout={"tp": 1, "dp": 16}))
    assert no_tp["breakdown"]["tp_comm"] == 0 and base["breakdown"]["tp_comm"] > 0
    pp = simulate(spec(layout={"tp": 1, "pp": 4, "dp": 4}))
    pp_v = simulate(spec(layout={"tp": 1, "pp": 4, "dp": 4, "vp": 2}))
    assert pp["breakdown"]["pipeline_bubble"] > 0
    assert pp_v["breakdown"]["pipeline_bubble"] == pytest.approx(pp["breakdown"]["pipeline_bubble"] / 2, rel=0.05)


def test_slower_network_and_fp8_and_bigger_memory():
    base = simulate(spec(layout={"tp": 1, "dp": 16, "zero": 1}))
    slow = simulate(spec(layout={"tp": 1, "dp": 16, "zero": 1}, cluster={"chip": "H100", "count": 16,
                                                                         "scale_out_gb_s_per_chip": 1.0}))
    assert slow["breakdown"]["dp_comm"] > base["breakdown"]["dp_comm"] and slow["step_time_s"] > base["step_time_s"]
    fp8 = simulate(spec(precision="fp8"))
    assert fp8["tokens_per_s_per_chip"] > simulate(spec())["tokens_per_s_per_chip"]
    assert fp8["mfu_vs_bf16_peak"] == pytest.approx(2 * fp8["mfu"], rel=0.01)


def test_moe_expert_parallel_costs_all_to_all():
    s = spec(model=SMALL_MOE, cluster={"chip": "H100", "count": 8}, global_batch=32,
             layout={"tp": 1, "dp": 8, "ep": 4})
    r = simulate(s)
    assert r["feasible"] and r["breakdown"]["ep_comm"] > 0
    assert r["model"]["params_active"] < r["model"]["params_total"] / 2
    across = simulate({**s, "cluster": {"chip": "H100", "count": 8, "chips_per_node": 2, "scale_up_domain": 2}})
    assert across["breakdown"]["ep_comm"] > r["breakdown"]["ep_comm"] * 2  # all-to-all leaves the NVLink domain


def test_auto_search_returns_best_and_runners_up():
    r = simulate(spec(layout="auto", micro_batch=None))
    assert r["searched"] and r["feasible"]
    times = [r["step_time_s"]] + [x["step_time_s"] for x in r["runners_up"]]
    assert times == sorted(times) and len(times) >= 3
    fixed = simulate(spec(layout={"auto": True, "tp": 4}, micro_batch=None))
    assert fixed["layout"]["tp"] == 4 and fixed["step_time_s"] >= r["step_time_s"] - 1e-12


def test_auto_search_prices_every_zero_stage_and_keeps_the_fastest():
    """The search stopped at the first ZeRO stage that fitted: on this shape ZeRO-1 fits only with full recompute,
    so it returned ZeRO-1 + full and never priced ZeRO-2 + selective, which also fits and is faster."""
    base = {"model": {"preset": "glm-4.5-air"}, "seq_len": 4096, "global_batch": 512, "micro_batch": 1,
            "cluster": {"chip": "910B", "count": 64}}
    shape = {"tp": 4, "pp": 4, "dp": 4, "ep": 8, "vp": 1}
    found = simulate({**base, "layout": {"auto": True, **shape}})
    explicit = [simulate({**base, "layout": {**shape, "zero": z, "recompute": rc}})
                for z in (1, 2, 3) for rc in ("selective", "full")]
    best = min((r for r in explicit if r["feasible"]), key=lambda r: r["step_time_s"])
    assert not explicit[0]["feasible"]  # ZeRO-1 + selective does not fit: the case that went wrong
    assert found["step_time_s"] == pytest.approx(best["step_time_s"], rel=1e-12)
    assert (found["layout"]["zero"], found["layout"]["recompute"]) == (best["layout"]["zero"], best["layout"]["recompute"])


def test_zero2_reduce_scatters_gradients_every_micro_batch():
    """ZeRO-2 keeps 1/dp of the gradients, so it cannot accumulate full gradients over micro-batches: each one's
    are reduce-scattered (as ZeRO-3 does). It was priced like ZeRO-1: one reduce-scatter per step."""
    def dp_comm(zero, global_batch, **eff):  # tp2 x dp8: 8 (64) or 1 (8) micro-batches per step
        r = simulate(spec(global_batch=global_batch, layout={"tp": 2, "dp": 8, "zero": zero}, efficiency=eff))
        return r["breakdown"]["dp_comm"]

    micro = 8
    z1, z2, z3 = (dp_comm(z, 64, dp_overlap=0.0) for z in (1, 2, 3))  # nothing hidden: the raw traffic
    rs = (z2 - z1) / (micro - 1)  # ZeRO-1: rs + ag; ZeRO-2: micro x rs + ag
    ag = z1 - rs
    assert rs > 0 and ag > 0
    assert z3 == pytest.approx(micro * (2 * ag + rs), rel=1e-9)  # the same reduce-scatter ZeRO-3 charges
    assert dp_comm(2, 8, dp_overlap=0.0) == pytest.approx(dp_comm(1, 8, dp_overlap=0.0), rel=1e-12)  # one micro-batch
    # with overlap the per-micro-batch traffic hides behind the step, but ZeRO-2 never undercuts ZeRO-1
    assert dp_comm(1, 64) < dp_comm(2, 64) < z2


def test_chips_needed_for_a_target_time():
    r = simulate(spec(global_batch=256, train_tokens=1e11, target_days=1.0))
    need = r["train"]["chips_needed"]
    assert need["reached"] and need["days"] <= 1.0
    assert need["chips"] > 16 and need["chips"] % 2 == 0
    too_fast = simulate(spec(global_batch=16, train_tokens=1e12, target_days=0.01))["train"]["chips_needed"]
    assert too_fast["reached"] is False and "micro-batch" in too_fast["why"]


# ---- bad specs -------------------------------------------------------------------------------------------------------
def test_unknown_chip_lists_close_matches():
    with pytest.raises(WorkbenchError, match="did you mean.*H100"):
        simulate(spec(cluster={"chip": "H1OO", "count": 16}))


@pytest.mark.parametrize("model,layout,message", [
    (LLAMA8B, {"tp": 3, "dp": 5}, r"tp\*pp\*dp\*cp = 3\*1\*5\*1 = 15 but the cluster has 16"),
    ({**LLAMA8B, "kv_heads": 4, "heads": 24, "hidden": 3072}, {"tp": 16, "dp": 1}, r"heads = 24 is not divisible"),
    ({**LLAMA8B, "ffn": 14008}, {"tp": 16, "dp": 1}, r"ffn = 14008 is not divisible by tp = 16"),
    (LLAMA8B, {"tp": 1, "dp": 16, "ep": 2}, r"needs an MoE model"),
    (LLAMA8B, {"tp": 1, "pp": 2, "dp": 8, "vp": 2}, None),  # 64 / 8 = 8 micro-batches, divisible by pp: fine
    (LLAMA8B, {"tp": 1, "pp": 16, "dp": 1, "vp": 4}, r"pp x vp = 16x4 exceeds layers = 32"),
])
def test_layouts_that_do_not_divide_are_clear_errors(model, layout, message):
    if message is None:
        assert simulate(spec(model=model, layout=layout))["feasible"]
        return
    with pytest.raises(WorkbenchError, match="does not divide: .*" + message):
        simulate(spec(model=model, layout=layout))


def test_global_batch_must_divide():
    with pytest.raises(WorkbenchError, match="global_batch = 60 is not a multiple of micro_batch x dp = 1x8"):
        simulate(spec(global_batch=60))


@pytest.mark.parametrize("changes,message", [
    ({"seq_len": -4096}, "seq_len = -4096 must be positive"),
    ({"global_batch": 0}, "global_batch = 0 must be positive"),
    ({"cluster": {"chip": "H100", "count": -8}}, "cluster.count = -8 must be positive"),
    ({"train_tokens": -1.0}, "train_tokens = -1.0 must be positive"),
    ({"layout": {"tp": -2}}, "layout.tp = -2 must be positive"),
    ({"model": {**LLAMA8B, "hidden": -1}}, "'hidden' = -1 must be a positive integer"),
    ({"precision": "int4"}, "precision = 'int4' must be one of"),
    ({"cluster": {"chip": "H100", "count": 16, "scale_out_gb_s_per_chip": -5}},
     "cluster.scale_out_gb_s_per_chip = -5 must be positive"),  # bandwidths must be > 0 (0 divides by zero)
    ({"nonsense": 1}, "unknown key"),
    ({"precision": "fp8", "cluster": {"chip": "A100", "count": 16}}, "no FP8 peak"),
])
def test_bad_specs_give_one_clear_error(changes, message):
    with pytest.raises(WorkbenchError, match=message.replace("(", "\\(").replace(")", "\\)").replace("*", "\\*")):
        simulate(spec(**changes))


def test_impossible_memory_is_an_error_and_a_tight_layout_is_infeasible():
    with pytest.raises(WorkbenchError, match="impossible memory.*use at least"):
        simulate(spec(model=GPT175, cluster={"chip": "H100", "count": 8}, layout={"tp": 8}))
    with pytest.raises(WorkbenchError, match="impossible memory: no layout fits in the usable 77 GB of 80 GiB"):
        simulate(spec(model=GPT175, cluster={"chip": "H100", "count": 42, "chips_per_node": 2, "scale_up_domain": 2}, layout="auto",
                      seq_len=2048, global_batch=42))
    r = simulate(spec(model=GPT175, cluster={"chip": "H100", "count": 64}, seq_len=2048,
                      layout={"tp": 8, "pp": 1, "dp": 8, "zero": 0}))
    # infeasible (memory) is reported as such, with the layout that was asked for, not "fixed"
    assert not r["feasible"] and not r["fits"] and "more than the usable" in r["problems"][0]
    assert r["layout"]["zero"] == 0 and r["layout"]["tp"] == 8 and r["memory_gb_per_chip"] > r["usable_hbm_gb"]


def test_catalog_memory_is_in_gib():
    """Vendors' "80 GB" of HBM is 80 GiB (16 GiB stacks; a "141 GB" H200 shows ~140 GiB to CUDA): read as 10^9
    bytes it understated every chip by 7% and refused layouts that fit. GPT-3 175B on 44 H100 needs ~75 GB per chip:
    more than 90% of 80e9 bytes (72 GB), less than 90% of 80 GiB (77.3 GB)."""
    r = simulate(spec(model=GPT175, cluster={"chip": "H100", "count": 44, "chips_per_node": 4, "scale_up_domain": 4}, layout="auto",
                      seq_len=2048, global_batch=44))
    assert r["hbm_gb"] == 80 and r["usable_hbm_gb"] == pytest.approx(0.9 * 80 * 2**30 / 1e9)
    assert r["fits"] and 72 < r["memory_gb_per_chip"] <= r["usable_hbm_gb"]


# ---- CLI -------------------------------------------------------------------------------------------------------------
def test_cli_prints_json_and_one_line_errors(tmp_path, capsys):
    from workbench.cli import main

    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec()))
    assert main(["simulate", str(path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["feasible"] and out["step_time_s"] > 0
    path.write_text(json.dumps(spec(cluster={"chip": "Ascend 999", "count": 16})))
    assert main(["simulate", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown chip 'Ascend 999'" in err[0]
    chips = tmp_path / "chips.json"
    chips.write_text(json.dumps({"chip": "Lab NPU", "base": "H100", "bf16_dense_tflops": 500}))
    path.write_text(json.dumps(spec(cluster={"chip": "lab npu", "count": 16})))
    try:
        assert main(["simulate", str(path), "--chips", str(chips), "--compact"]) == 0
        assert json.loads(capsys.readouterr().out)["chip"] == "Lab NPU"
    finally:
        from workbench.hardware import unregister_chip

        unregister_chip("Lab NPU")


@pytest.mark.parametrize("changes", [
    dict(layout={"tp": 1, "pp": 1, "dp": 16, "ep": 1, "cp": 1, "vp": 1, "zero": 1, "recompute": "selective"}),
    dict(layout={"tp": 1, "pp": 1, "dp": 16, "ep": 1, "cp": 1, "vp": 1, "zero": 1, "recompute": "full"}),
    dict(seq_len=32768, global_batch=16,
         layout={"tp": 8, "pp": 1, "dp": 2, "ep": 1, "cp": 1, "vp": 1, "zero": 1, "recompute": "full"}),
])
def test_hfu_is_never_below_mfu(changes):
    """HFU counted causal attention at half (MFU's PaLM convention counts it in full) and fell below MFU."""
    r = simulate(spec(**changes))
    recompute = changes["layout"]["recompute"]
    assert r["hfu"] == pytest.approx(r["mfu"] * (4 / 3 if recompute == "full" else 1.0))


def test_moe_imbalance_slows_the_step_without_counting_as_work():
    """The busiest expert's padding was counted as FLOPs: HFU rose as imbalance made the run slower."""
    moe = {**spec(), "model": SMALL_MOE, "global_batch": 64,
           "layout": {"tp": 1, "pp": 1, "dp": 16, "ep": 8, "cp": 1, "vp": 1, "zero": 1, "recompute": "selective"}}
    results = [simulate({**moe, "efficiency": {"moe_imbalance": k}}) for k in (1.0, 1.6, 3.0)]
    times = [r["step_time_s"] for r in results]
    assert times == sorted(times) and times[0] < times[-1]
    hfus = [r["hfu"] for r in results]
    assert hfus == sorted(hfus, reverse=True)


def test_the_last_pipeline_stage_carries_the_head_it_cannot_split():
    """At pp = layers the last stage holds one layer or none plus the LM head and loss, which cannot be spread
    over the other stages; it was priced at total / pp, under one layer's worth."""
    model = {**LLAMA8B, "layers": 8, "vocab": 256000}  # a big head: ~1.3 layers of work
    base = spec(model=model, global_batch=64, cluster={"chip": "H100-SXM", "count": 64, "chips_per_node": 8})
    times = {}
    for pp in (1, 4, 8):
        layout = {"tp": 1, "pp": pp, "dp": 64 // pp, "ep": 1, "cp": 1, "vp": 1, "zero": 1, "recompute": "selective"}
        times[pp] = simulate({**base, "layout": layout})["breakdown"]["compute"]
    micro = {pp: 64 // (64 // pp) for pp in times}  # micro-batches per step on each data rank: 1, 4, 8
    per_micro = {pp: times[pp] / micro[pp] for pp in times}
    whole = per_micro[1]  # one micro-batch of the whole model: 8 layers + head
    # pp=8: the best split of 8 whole layers with the ~1.3-layer head unsplit makes the slowest stage ~2 layers
    # of work (1 layer + head on the last stage, or 2 layers elsewhere), not the 9.3 / 8 layers of total / pp
    assert per_micro[8] > whole / 8 * 1.5
    assert per_micro[4] >= whole / 4 * 0.999


def test_calibration_can_leave_rows_out():
    from workbench.perfmodel import calibration

    rows = calibration.validate()
    first = rows[0]["id"]
    rest = calibration.validate(exclude=frozenset({first}))
    assert [r["id"] for r in rest] == [r["id"] for r in rows[1:]]


def test_chips_per_node_does_not_widen_the_scale_up_domain():
    """16 H100s per node put TP=16 on one 16-way NVLink domain no H100 has; only scale_up_domain widens it."""
    layout = {"tp": 16, "pp": 1, "dp": 1, "ep": 1, "cp": 1, "vp": 1, "zero": 1, "recompute": "selective"}
    per_node = simulate(spec(layout=layout, global_batch=16, cluster={"chip": "H100", "count": 16,
                                                                      "chips_per_node": 16}))
    wide = simulate(spec(layout=layout, global_batch=16, cluster={"chip": "H100", "count": 16, "chips_per_node": 16,
                                                                  "scale_up_domain": 16}))
    assert per_node["breakdown"]["tp_comm"] > 2 * wide["breakdown"]["tp_comm"]


def test_target_days_without_train_tokens_and_validate_with_a_spec_are_refused(tmp_path, capsys):
    from workbench.cli import main

    with pytest.raises(WorkbenchError, match="target_days needs train_tokens"):
        simulate({k: v for k, v in spec(target_days=30).items() if k != "train_tokens"})
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec()))
    assert main(["simulate", "--validate", str(path)]) == 2
    assert "takes no spec" in capsys.readouterr().err


def test_claim_summary_under_fp8_gives_mfu_against_both_peaks():
    from workbench.perfmodel.compare import claim_study, claim_summary

    rows = claim_study(["H800", "H100"], "glm4-tiny", 8, 1024, 64, 1e9, "H100", precision="fp8", unit=8)
    last = claim_summary(rows, "glm4-tiny", 8, 1e9)[-1]
    assert "against the FP8 peak" in last and "against the BF16 peak" in last


def test_a_catalog_scale_up_bus_bandwidth_above_the_link_rate_is_capped_at_it():
    """H200's catalog figure (475 GB/s, an NVLS measurement) beat its 450 GB/s one-way NVLink, so H200 and H100 (ring
    figure, same NVLink4) got different collective speeds; a ring cannot exceed the one-way rate. H800's catalog
    215 GB/s is capped at its 200 GB/s one-way rate."""
    from workbench.hardware import find_chip

    assert find_chip("H200").scale_up_busbw_gb_s == find_chip("H100").scale_up_busbw_gb_s
    r = simulate(spec(cluster={"chip": "H800", "count": 16}, layout={"tp": 8, "dp": 2}))
    assert r["links"]["tp"]["busbw_gb_s"] == pytest.approx(200.0)


def test_scale_up_overrides_take_effect():
    """An override was silently capped (busbw 740 -> 450 on H100) or ignored (scale_up_gb_s 1800: the catalog's
    measured 370 GB/s busbw stayed); what the user sets is used, and a set link rate gives a derived busbw."""
    from workbench.perfmodel.efficiency import Efficiency

    def tp_busbw(**overrides):
        r = simulate(spec(cluster={"chip": "H100", "count": 16, **overrides}, layout={"tp": 8, "dp": 2}))
        return r["links"]["tp"]["busbw_gb_s"], r["step_time_s"]

    base, t0 = tp_busbw()
    assert base == pytest.approx(370.0)  # the catalog's measured ring busbw
    assert tp_busbw(scale_up_busbw_gb_s=740.0)[0] == pytest.approx(740.0)
    faster, t1 = tp_busbw(scale_up_gb_s=1800.0)
    assert faster == pytest.approx(1800.0 / 2 * Efficiency().comm_eff_up) and t1 < t0
    assert tp_busbw(scale_up_gb_s=1800.0, scale_up_busbw_gb_s=500.0)[0] == pytest.approx(500.0)  # busbw is explicit


def test_interconnect_sensitivity_x2_doubles_the_bandwidth_used(monkeypatch):
    """Notebook 05's "x2" scaled only scale_up_busbw_gb_s, which the link-rate cap then clipped: H800 x2 = +0.0%,
    H100's "x2" was x1.22. Both fields now scale together, from the busbw the base row actually ran at."""
    from workbench.perfmodel import compare

    seen = []
    monkeypatch.setattr(compare, "simulate", lambda s: seen.append(s) or simulate(s))
    layout = {"tp": 8, "pp": 1, "dp": 1, "ep": 1, "cp": 1, "vp": 1, "etp": 1, "zero": 1, "recompute": "selective",
              "sp": True}
    for chip in ("H800", "H100", "910B"):
        base = simulate({**spec(layout=layout), "cluster": {"chip": chip, "count": 8}, "global_batch": 8})
        row = {"chip": chip, "count": 8, "step_time_s": base["step_time_s"], "layout": {**layout, "micro_batch": 1}}
        seen.clear()
        out = compare.interconnect_sensitivity(row, spec()["model"], 4096, 8)
        assert set(out) >= {"scale-up x0.5", "scale-up x2"}
        for s, factor in zip(seen[-2:], (0.5, 2.0)):
            assert simulate(s)["links"]["tp"]["busbw_gb_s"] == pytest.approx(factor * base["links"]["tp"]["busbw_gb_s"])
        assert out["scale-up x2"] < 0 < out["scale-up x0.5"]


def test_the_performance_model_imports_without_torch():
    """`workbench simulate` and notebook 05 need no torch: a shared FLOPs formula imported from the model package
    made `import workbench.perfmodel` load torch (0.1 s -> 2.7 s)."""
    import subprocess
    import sys

    code = "import sys, workbench.perfmodel; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr[-500:]


# ---- DSA attention: keys per causal query, indexers where the model runs them ------------------------------------
DSA = {"layers": 4, "hidden": 1024, "heads": 16, "kv_heads": 16, "ffn": 4096, "vocab": 32000,
       "mla": {"q_lora_rank": 512, "kv_lora_rank": 256, "qk_nope_dim": 64, "qk_rope_dim": 32, "v_dim": 64},
       "indexer": {"heads": 8, "head_dim": 64, "topk": 1024}}


def _dsa_attention_by_hand(model: dict, seq_len: int, keys: float, indexer_layers: int) -> float:
    """breakdown_compute['attention'] of spec(model, seq_len) with tp = pp = 1, dp = 16 (4 micro-batches of one
    sequence): forward + 2.5x backward of every layer's attention core and of the indexer scores it runs."""
    from workbench.perfmodel.simulator import _rates
    from workbench.perfmodel.spec import parse_spec

    r = _rates(parse_spec(spec(model=model, seq_len=seq_len)))
    mla, ix, H = model["mla"], model["indexer"], model["heads"]
    d_qk, d_v = mla["qk_nope_dim"] + mla["qk_rope_dim"], mla["v_dim"]
    core = 2.0 * seq_len * keys * H * (d_qk + d_v)
    scores = 2.0 * seq_len * (seq_len / 2) * ix["heads"] * ix["head_dim"]  # every causal key, S/2 on average
    per_micro = model["layers"] * core + indexer_layers * scores
    return 4 * 3.5 * per_micro / r["attn"]


@pytest.mark.parametrize("seq_len, full_layers, keys, indexer_layers", [
    (2048, None, 1024 - 1024**2 / (2 * 2048), 4),  # S = 2K: a causal query reads K - K^2/2S = 768 keys, not K
    (8192, None, 1024 - 1024**2 / (2 * 8192), 4),
    (8192, 2, 1024 - 1024**2 / (2 * 8192), 2),  # "shared" layers reuse the previous top-k: no indexer of their own
    (1024, None, 512, 0),  # S <= top-k: plain causal attention (S/2 keys), no indexer runs
    (512, 2, 256, 0),
])
def test_dsa_attention_reads_the_mean_causal_keys_and_charges_indexers_where_they_run(seq_len, full_layers, keys,
                                                                                       indexer_layers):
    model = {**DSA, "indexer": {**DSA["indexer"], "full_layers": full_layers}}
    r = simulate(spec(model=model, seq_len=seq_len, layout={"tp": 1, "dp": 16, "zero": 1, "recompute": "none"}))
    assert r["breakdown_compute"]["attention"] == pytest.approx(
        _dsa_attention_by_hand(model, seq_len, keys, indexer_layers), rel=1e-9)


def test_dsa_indexer_projections_are_charged_only_where_an_indexer_runs():
    """The indexer's two GEMMs (q from the q latent, k from the hidden state) ran in every layer at every length."""
    layout = {"tp": 1, "dp": 16, "zero": 1, "recompute": "none"}

    def gemm(model, seq_len):
        return simulate(spec(model=model, seq_len=seq_len, layout=layout))["breakdown_compute"]["gemm"]

    no_indexer = {**DSA, "indexer": None}
    half = {**DSA, "indexer": {**DSA["indexer"], "full_layers": 2}}
    assert gemm(DSA, 1024) == pytest.approx(gemm(no_indexer, 1024))  # S <= top-k: no indexer anywhere
    extra_all, extra_half = gemm(DSA, 4096) - gemm(no_indexer, 4096), gemm(half, 4096) - gemm(no_indexer, 4096)
    assert extra_all > 0 and extra_half == pytest.approx(extra_all / 2)


def test_gradient_memory_follows_the_reduced_gradient_bytes():
    """grad_reduce_bytes changed the gradient traffic but not the gradient buffer: bf16 reduction (2 B) still held
    4 B per gradient (Llama-8B, ZeRO-0: 32.1 GB where the bf16 buffer is 16.1 GB)."""
    layout = {"tp": 1, "pp": 1, "dp": 16, "zero": 0, "recompute": "full"}
    fp32, bf16 = (simulate(spec(layout=layout, efficiency={"grad_reduce_bytes": b})) for b in (4, 2))
    assert fp32["memory"]["grads_gb"] == pytest.approx(2 * bf16["memory"]["grads_gb"], rel=1e-12)
    assert bf16["memory"]["grads_gb"] == pytest.approx(8.03e9 * 2 / 1e9, rel=0.01)
    assert bf16["breakdown"]["dp_comm"] < fp32["breakdown"]["dp_comm"]


def test_a_node_smaller_than_the_scale_up_domain_must_say_where_the_fabric_ends():
    """chips_per_node was only checked to divide the count: one H100 per node still priced a TP=8 group over an
    8-way NVLink domain. A node smaller than the chip's domain is ambiguous (the fabric stops at the node, or joins
    nodes as on NVL72 / CloudMatrix384), so scale_up_domain must say which."""
    layout = {"tp": 8, "pp": 1, "dp": 2, "zero": 1}
    for per_node in (4, 1):
        with pytest.raises(ConfigError, match=f"chips_per_node = {per_node} is smaller than .* scale-up domain of 8"):
            simulate(spec(layout=layout, cluster={"chip": "H100", "count": 16, "chips_per_node": per_node}))
    node = simulate(spec(layout=layout, cluster={"chip": "H100", "count": 16, "chips_per_node": 8}))
    apart = simulate(spec(layout=layout, cluster={"chip": "H100", "count": 16, "chips_per_node": 1,
                                                  "scale_up_domain": 1}))
    assert node["links"]["tp"]["link"] == "scale-up" and apart["links"]["tp"]["link"] == "scale-out"
    assert apart["breakdown"]["tp_comm"] > 3 * node["breakdown"]["tp_comm"]  # the NIC, not NVLink
    rack = simulate(spec(layout=layout, cluster={"chip": "GB200", "count": 16, "chips_per_node": 4,
                                                 "scale_up_domain": 72}))
    assert rack["links"]["tp"]["link"] == "scale-up"  # a fabric that joins nodes, said so
    default = simulate(spec(layout=layout, cluster={"chip": "Ascend 910C", "count": 16}))
    assert default["links"]["tp"]["link"] == "scale-up"  # no chips_per_node given: the catalog's domain holds


def test_zero3_is_never_less_exposed_than_zero1():
    """ZeRO-3 hid all its traffic behind the whole step, forward included, and came out 9.5% faster than ZeRO-1 while
    moving 33% more bytes (Llama-8B, 16 H100 on 2 nodes, one micro-batch). Its last backward must still gather the
    parameters and reduce-scatter the gradients, ZeRO-1's floor."""
    base = spec(seq_len=8192, global_batch=16)
    dp = {z: simulate({**base, "layout": {"tp": 1, "pp": 1, "dp": 16, "zero": z, "recompute": "full"}})
          for z in (1, 2, 3)}
    assert dp[1]["breakdown"]["dp_comm"] == pytest.approx(dp[2]["breakdown"]["dp_comm"], rel=1e-12)  # one micro-batch
    assert dp[3]["breakdown"]["dp_comm"] >= dp[1]["breakdown"]["dp_comm"] > 0
    assert dp[3]["step_time_s"] >= dp[1]["step_time_s"]


def test_interleaving_multiplies_the_pipeline_point_to_point_traffic():
    """pp_comm was the same for vp = 1, 2, 4: with v chunks per device a micro-batch crosses pp x v - 1 stage
    boundaries, so each device sends and receives v times as much (Narayanan et al. 2021, section 2.2)."""
    model = {**LLAMA8B, "layers": 48, "hidden": 8192, "heads": 64, "ffn": 28672}
    pp = {vp: simulate(spec(model=model, global_batch=64, cluster={"chip": "H100", "count": 64},
                            layout={"tp": 8, "pp": 8, "dp": 1, "vp": vp, "recompute": "full"}))["breakdown"]["pp_comm"]
          for vp in (1, 2, 4)}
    assert pp[1] > 0
    assert pp[2] == pytest.approx(2 * pp[1], rel=1e-9) and pp[4] == pytest.approx(4 * pp[1], rel=1e-9)


def test_auto_search_tries_every_micro_batch_from_1_to_8():
    """The search tried micro-batches 1, 2, 4, 8 only: with a global batch of 3 x dp it missed micro-batch 3, a
    layout that fits and is 8.9% faster than the one it returned."""
    moe = {"layers": 24, "hidden": 2048, "heads": 16, "ffn": 0, "vocab": 50000,
           "moe": {"experts": 16, "top_k": 2, "expert_ffn": 1024, "shared": 1}}
    s = {"model": moe, "seq_len": 4096, "global_batch": 24, "cluster": {"chip": "H100", "count": 8}}
    found = simulate({**s, "layout": "auto"})
    three = simulate({**s, "layout": {"auto": True}, "micro_batch": 3})
    assert three["feasible"] and found["step_time_s"] <= three["step_time_s"] * (1 + 1e-12)


def _stage0_memory(layers, vocab, **layout):
    model = {**LLAMA8B, "layers": layers, "vocab": vocab}
    r = simulate(spec(model=model, global_batch=8, cluster={"chip": "H100", "count": 2},
                      layout={"tp": 1, "pp": 2, "dp": 1, "zero": 0, "recompute": "selective", **layout}))
    assert r["memory"]["stage"] == 0
    return r["memory"]["total_gb"]


def test_memory_counts_the_layers_the_timing_puts_on_each_stage():
    """The timing balances stages with the LM head counted against the last one (8 layers, a 128k head of ~2.3 layers'
    work on pp=2: 5 + 3 layers), but memory priced every stage at ceil(8/2) = 4 layers: the first stage's fifth
    layer (its weights, gradients, optimizer state and two micro-batches of activations) was missing."""
    split = _stage0_memory(8, 128256)  # 5 layers on stage 0
    even = _stage0_memory(10, 1000)  # 5 + 5 layers (a tiny head), a smaller embedding
    embedding = (128256 - 1000) * LLAMA8B["hidden"] * (2 + 4 + 12) / 1e9  # bf16 weights, fp32 grads, Adam state
    assert split == pytest.approx(even + embedding, rel=1e-9)


def _interleaved(global_batch, vp, stage=None):
    from workbench.perfmodel.simulator import memory
    from workbench.perfmodel.spec import Layout, parse_spec

    model = {**LLAMA8B, "layers": 8, "vocab": 1000}  # a tiny head: 2 layers on each of 4 stages
    s = parse_spec(spec(model=model, global_batch=global_batch, cluster={"chip": "H100", "count": 4}))
    L = Layout(tp=1, pp=4, dp=1, vp=vp, zero=0, recompute="selective")
    return memory(s, L, 1, stage=stage)


def test_interleaved_activation_memory_follows_megatrons_warmup():
    """Interleaved in-flight memory was (pp - r) x (1 + (pp-1)/(pp vp)) stage-loads on every stage. Megatron's rank r
    holds min(2(pp-1-r) + (vp-1)pp + 1, micro x vp) chunks of layers/(pp vp) layers: the last stage ~2x the model's
    figure here, and with micro == pp every micro-batch is in warmup, exactly the 1F1B first stage."""
    one_f_one_b = _interleaved(8, 1, stage=0)["activations_gb"]  # 4 micro-batches x 2 layers
    per_layer = one_f_one_b / 8  # selective recompute: no working buffer on top
    assert _interleaved(8, 2, stage=0)["activations_gb"] == pytest.approx(11 * per_layer, rel=1e-9)  # 6 + 4 + 1 chunks
    logits = 4.0 * 4096 * 1000 / 1e9
    assert _interleaved(8, 2, stage=3)["activations_gb"] == pytest.approx(5 * per_layer + logits, rel=1e-9)  # (vp-1)pp+1
    # micro-batches per step == pp: all 4 x 2 chunks in warmup, 8 layers, as 1F1B's first stage (it counted 11)
    assert _interleaved(4, 2)["activations_gb"] == pytest.approx(_interleaved(4, 1)["activations_gb"], rel=1e-9)


def test_a_single_node_smaller_than_the_domain_needs_no_scale_up_domain():
    """The chips_per_node check refused one 4-GPU H100 node (count 4, chips_per_node 4), where whether the fabric
    joins nodes makes no difference: there is no other node, and scale_up_domain 4 and 8 price the same step."""
    base = {"model": {"preset": "glm4-small"}, "seq_len": 2048, "global_batch": 16, "search_top": 1}
    for count in (4, 2):
        plain = simulate({**base, "cluster": {"chip": "H100", "count": count, "chips_per_node": count}})
        for domain in (count, 8):
            said = simulate({**base, "cluster": {"chip": "H100", "count": count, "chips_per_node": count,
                                                 "scale_up_domain": domain}})
            assert said["step_time_s"] == pytest.approx(plain["step_time_s"], rel=1e-12)
    with pytest.raises(ConfigError, match="chips_per_node = 4 is smaller than"):  # two nodes: it does matter
        simulate({**base, "cluster": {"chip": "H100", "count": 8, "chips_per_node": 4}})


def test_a_cluster_override_cannot_put_the_measured_gemm_rate_above_the_peak():
    """A chip dict with measured_gemm_tflops above its peak was refused, but the same figure as a cluster field
    (or a lowered bf16 peak under a catalog chip's measured rate) was accepted and priced."""
    base = {"model": {"preset": "glm4-small"}, "seq_len": 2048, "global_batch": 64, "search_top": 1}
    for cluster in ({"chip": "H100", "count": 8, "measured_gemm_tflops": 1200},
                    {"chip": "Ascend 910B1", "count": 8, "bf16_dense_tflops": 300}):
        with pytest.raises(WorkbenchError, match="above its bf16 dense peak.*measured_gemm_tflops: null"):
            simulate({**base, "cluster": cluster})
    dropped = simulate({**base, "cluster": {"chip": "Ascend 910B1", "count": 8, "bf16_dense_tflops": 300,
                                            "measured_gemm_tflops": None}})
    assert dropped["feasible"]


def test_dp_traffic_and_optimizer_are_priced_on_the_fullest_stage_of_the_split():
    """Compute and memory put 8 layers + a 128k head on pp=2 as 5 + 3, but DP traffic and the optimizer were still
    priced on ceil(8/2) = 4 layers + the head, 14% under the first stage's 5 layers + embedding."""
    model = {**LLAMA8B, "layers": 8}
    whole, split = (simulate(spec(model=model, global_batch=8, cluster={"chip": "H100", "count": 2 * pp},
                                  efficiency={"dp_overlap": 0.0},  # nothing hidden: dp_comm is the whole traffic
                                  layout={"tp": 1, "pp": pp, "dp": 2, "zero": 1, "recompute": "selective"}))
                    for pp in (1, 2))
    assert split["memory"]["stage"] == 0
    share = split["memory"]["params_gb"] / whole["memory"]["params_gb"]  # stage 0: (5 layers + embedding) / all
    assert share == pytest.approx(1.616 / 2.796, rel=0.01)
    assert split["breakdown"]["optimizer"] == pytest.approx(share * whole["breakdown"]["optimizer"], rel=1e-9)
    assert split["breakdown"]["dp_comm"] == pytest.approx(share * whole["breakdown"]["dp_comm"], rel=0.01)
