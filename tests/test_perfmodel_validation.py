"""Bad input to the simulator: one clear error naming the field (exit 2 in the CLI), never a traceback, a hang, or
NaN/Infinity in the output."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import threading

import pytest

from workbench.errors import WorkbenchError
from workbench.perfmodel import Efficiency, simulate
from workbench.perfmodel.calibration import FIT_PARAMS
from workbench.perfmodel.efficiency import RANGES, default_efficiency
from workbench.perfmodel.search import divisors

SMALL = {"layers": 4, "hidden": 512, "heads": 8, "kv_heads": 8, "ffn": 2048, "vocab": 32000}
MLA = {**SMALL, "mla": {"q_lora_rank": 128, "kv_lora_rank": 64, "qk_nope_dim": 32, "qk_rope_dim": 16, "v_dim": 32}}
INDEXER = {"heads": 4, "head_dim": 32, "topk": 256}
CUSTOM_CHIP = {"chip": "lab-npu", "bf16_dense_tflops": 100, "hbm_gb": 80, "hbm_tb_s": 2, "scale_up_gb_s": 100,
               "scale_up_domain": 8}


def spec(**changes):
    base = {"model": SMALL, "seq_len": 1024, "global_batch": 16, "cluster": {"chip": "H100", "count": 8},
            "layout": {"tp": 2, "dp": 4}, "train_tokens": 1e9}
    base.update(changes)
    return base


def in_time(fn, seconds: float = 20.0):
    """fn() in a daemon thread; fails (instead of hanging the suite) when it does not finish in time."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"did not finish within {seconds} s (hang)"
    if "error" in box:
        raise box["error"]
    return box["value"]


def finite_json(result: dict) -> str:
    text = json.dumps(result, default=str)
    assert "NaN" not in text and "Infinity" not in text
    return text


BAD_SPECS = [
    # 1. chip counts: bounded, integral (divisors of 1e12 used to take hours)
    pytest.param({"cluster": {"chip": "H100", "count": 1e12}}, r"cluster\.count = 1000000000000\.0 is implausibly large",
                 id="count-1e12"),
    pytest.param({"cluster": {"chip": "H100", "count": 8.5}}, r"cluster\.count = 8\.5 must be an integer", id="count-8.5"),
    pytest.param({"cluster": {"chip": "H100", "count": 8, "chips_per_node": 1e12}}, r"cluster\.chips_per_node",
                 id="per-node-1e12"),
    pytest.param({"seq_len": 1e300}, r"seq_len = 1e\+300 is implausibly large", id="seq-len-1e300"),
    pytest.param({"global_batch": 2 ** 50}, r"global_batch = \d+ is implausibly large", id="global-batch-2^50"),
    pytest.param({"model": {**SMALL, "hidden": 10 ** 200}}, r"'hidden' = ~1e200 is implausibly large", id="hidden-1e200"),
    pytest.param({"model": {**SMALL, "hidden": 10 ** 12}}, r"'hidden' = 1000000000000 is implausibly large",
                 id="hidden-1e12"),
    pytest.param({"seq_len": 10 ** 400}, r"seq_len = an integer of ~401 digits is implausibly large",
                 id="seq-len-400-digit-json-int"),  # float() of it overflowed into a traceback
    pytest.param({"train_tokens": 10 ** 400}, r"train_tokens = an integer of ~401 digits", id="tokens-400-digits"),
    pytest.param({"model": {**SMALL, "ffn": 0, "moe": {"experts": 10 ** 12, "top_k": 2, "expert_ffn": 64}}},
                 r"moe: 'experts' = \d+ is implausibly large", id="experts-1e12"),
    # 2. peaks and bandwidths must be > 0 (0 divided by zero, or silently meant "absent")
    pytest.param({"cluster": {"chip": "H100", "count": 8, "bf16_dense_tflops": 0}},
                 r"cluster\.bf16_dense_tflops = 0 must be positive", id="bf16-peak-0"),
    pytest.param({"cluster": {"chip": "H100", "count": 8, "hbm_tb_s": 0}}, r"cluster\.hbm_tb_s = 0 must be positive",
                 id="hbm-bandwidth-0"),
    pytest.param({"cluster": {"chip": "H100", "count": 8, "hbm_gb": 0}}, r"cluster\.hbm_gb = 0 must be positive",
                 id="hbm-gb-0"),
    pytest.param({"cluster": {"chip": "H100", "count": 8, "scale_up_gb_s": 0}},
                 r"cluster\.scale_up_gb_s = 0 must be positive", id="scale-up-0"),
    pytest.param({"cluster": {"chip": "H100", "count": 8, "scale_up_domain": 2.5}},
                 r"cluster\.scale_up_domain = 2\.5 must be an integer", id="scale-up-domain-override-2.5"),
    pytest.param({"cluster": {"chip": {**CUSTOM_CHIP, "hbm_tb_s": 0}, "count": 8}},
                 r"cluster\.chip\.hbm_tb_s = 0 must be positive", id="custom-chip-hbm-0"),
    pytest.param({"cluster": {"chip": {**CUSTOM_CHIP, "scale_up_domain": 2.5}, "count": 8}},
                 r"cluster\.chip\.scale_up_domain = 2\.5 must be an integer", id="custom-chip-domain-2.5"),
    # a custom chip without memory capacity was priced as unlimited memory (GLM-5 "fitted" in 7,345 GB per chip)
    pytest.param({"cluster": {"chip": {k: v for k, v in CUSTOM_CHIP.items() if k != "hbm_gb"}, "count": 8}},
                 r"lab-npu has no memory capacity \(hbm_gb\); give cluster\.hbm_gb", id="custom-chip-no-hbm-gb"),
    # expert tensor parallel on a dense model ran silently (ep was refused)
    pytest.param({"layout": {"tp": 2, "dp": 4, "etp": 2}}, r"does not divide: etp = 2 \(expert tensor parallel\) "
                 r"needs an MoE model", id="etp-on-dense"),
    # a micro_batch that does not divide global_batch (16) ended in "no layout divides this model"
    pytest.param({"layout": {"auto": True, "micro_batch": 3}}, r"global_batch = 16 is not a multiple of "
                 r"micro_batch = 3", id="auto-micro-batch-3"),
    pytest.param({"layout": "auto", "micro_batch": 3}, r"global_batch = 16 is not a multiple of micro_batch = 3",
                 id="top-level-micro-batch-3"),
    # train_tokens 0 silently dropped the train section, and target_days with it
    pytest.param({"train_tokens": 0}, r"train_tokens = 0 must be positive; leave train_tokens out", id="tokens-0"),
    pytest.param({"train_tokens": 0, "target_days": 5}, r"train_tokens = 0 must be positive", id="tokens-0-target"),
    # 3. a preset name is a string
    pytest.param({"model": {"preset": [1]}}, r"model\.preset = \[1\] must be a preset name", id="preset-list"),
    pytest.param({"model": {"preset": {"name": "glm-5"}}}, r"model\.preset = .* must be a preset name", id="preset-dict"),
    pytest.param({"model": {"preset": 5}}, r"model\.preset = 5 must be a preset name", id="preset-int"),
    # 4. efficiency values are numbers (no None, lists, strings, booleans)
    *[pytest.param({"efficiency": {"mem_eff": v}}, rf"efficiency 'mem_eff' = {re.escape(repr(v))} must be a number",
                   id=f"mem-eff-{v!r}") for v in (None, [1], "abc", "0.5", True)],
    # 5. efficiency values in a plausible range
    pytest.param({"efficiency": {"kernel_overhead_s": 1e308, "kernels_per_layer": 1e308}},
                 r"efficiency 'kernel_overhead_s' = 1e\+308 must be in \[0, 0\.01\]", id="kernel-overhead-1e308"),
    pytest.param({"efficiency": {"kernels_per_layer": 1e308}}, r"efficiency 'kernels_per_layer' = 1e\+308 must be in",
                 id="kernels-per-layer-1e308"),
    pytest.param({"efficiency": {"gemm_d0": 1e308}}, r"efficiency 'gemm_d0' = 1e\+308 must be in \[0, 4096\]",
                 id="gemm-d0-1e308"),
    pytest.param({"efficiency": {"step_overhead_s": 1e300}}, r"efficiency 'step_overhead_s'", id="step-overhead-1e300"),
    pytest.param({"efficiency": {"grad_reduce_bytes": 0}}, r"efficiency 'grad_reduce_bytes' = 0\.0 must be in \[1, 8\]",
                 id="grad-bytes-0"),
    pytest.param({"efficiency": {"mem_eff": 0}}, r"efficiency 'mem_eff' = 0\.0 must be in \(0, 1\.2\]", id="mem-eff-0"),
    # 6. the DSA indexer block
    pytest.param({"model": {**MLA, "indexer": {**INDEXER, "heads": "x"}}}, r"indexer: 'heads' = 'x' must be a positive",
                 id="indexer-heads-x"),
    pytest.param({"model": {**MLA, "indexer": {**INDEXER, "full_layers": "x"}}},
                 r"indexer: 'full_layers' = 'x' must be a positive", id="indexer-full-layers-x"),
    pytest.param({"model": {**MLA, "indexer": {**INDEXER, "heads": -4}}}, r"indexer: 'heads' = -4 must be a positive",
                 id="indexer-heads-negative"),
    pytest.param({"model": {**MLA, "indexer": {**INDEXER, "head_dim": -32}}},
                 r"indexer: 'head_dim' = -32 must be a positive", id="indexer-head-dim-negative"),
    pytest.param({"model": {**MLA, "indexer": {**INDEXER, "topk": 0}}}, r"indexer: 'topk' = 0 must be a positive",
                 id="indexer-topk-0"),
    pytest.param({"model": {**MLA, "indexer": {**INDEXER, "full_layers": 100}}},
                 r"indexer: full_layers = 100 exceeds layers = 4", id="indexer-full-layers-100"),
    pytest.param({"model": {**MLA, "indexer": {**INDEXER, "trained": "yes"}}}, r"indexer: 'trained' = 'yes' must be true",
                 id="indexer-trained-yes"),
    # 7. booleans are booleans
    pytest.param({"layout": {"tp": 8, "dp": 1, "sp": "no"}}, r"layout\.sp = 'no' must be true or false", id="sp-no"),
    pytest.param({"layout": {"tp": 8, "dp": 1, "sp": 0}}, r"layout\.sp = 0 must be true or false", id="sp-0"),
    pytest.param({"layout": {"auto": "no", "tp": 8}}, r"layout\.auto = 'no' must be true or false", id="auto-no"),
    pytest.param({"layout": {"auto": True, "sp": "false"}}, r"layout\.sp = 'false' must be true or false",
                 id="auto-fixed-sp-string"),
    pytest.param({"model": {**SMALL, "qk_norm": "yes"}}, r"model: 'qk_norm' = 'yes' must be true or false",
                 id="qk-norm-yes"),
    # minor: pue, efficiency block type
    pytest.param({"pue": 0.5}, r"pue = 0\.5 must be at least 1", id="pue-0.5"),
    pytest.param({"pue": 1e6}, r"pue = 1000000\.0 is implausibly large", id="pue-1e6"),
    *[pytest.param({"efficiency": v}, rf"efficiency = {re.escape(repr(v))} must be a dict", id=f"efficiency-{v!r}")
      for v in (0, [], "", "fast")],
]


@pytest.mark.parametrize("changes,message", BAD_SPECS)
def test_bad_spec_gives_one_clear_error_naming_the_field(changes, message):
    with pytest.raises(WorkbenchError, match=message) as info:
        in_time(lambda: simulate(spec(**changes)))
    assert "\n" not in str(info.value)


def test_integral_float_layout_degrees_become_ints():
    """tp: 2.0 passed validation but stayed a float: "tp": 2.0, micro_batches_per_step 16.0, chips_needed 128.0."""
    r = simulate(spec(layout={"tp": 2.0, "pp": 2.0, "dp": 2.0, "vp": 2.0, "zero": 1.0}, global_batch=16,
                      target_days=1e-3))
    degrees = {k: r["layout"][k] for k in ("tp", "pp", "dp", "vp", "zero", "micro_batches_per_step")}
    assert degrees == {"tp": 2, "pp": 2, "dp": 2, "vp": 2, "zero": 1, "micro_batches_per_step": 8}
    assert all(type(v) is int for v in degrees.values())
    assert type(r["train"]["chips_needed"]["chips"]) is int
    assert type(simulate(spec(layout={"auto": True, "tp": 2.0}))["layout"]["tp"]) is int


def test_divisors_are_fast_and_right():
    assert divisors(1) == [1]
    assert divisors(36) == [1, 2, 3, 4, 6, 9, 12, 18, 36]
    assert all(divisors(n) == [d for d in range(1, n + 1) if n % d == 0] for n in range(1, 400))
    big = in_time(lambda: divisors(10 ** 12), seconds=10)  # the old loop to n ran for hours
    assert big[:4] == [1, 2, 4, 5] and big[-1] == 10 ** 12 and len(big) == 169


def test_large_but_sane_counts_search_quickly():
    # a big chip count (many divisors) and a big global batch with target_days still finish promptly
    r = in_time(lambda: simulate(spec(cluster={"chip": "H100", "count": 5040}, layout="auto",
                                      global_batch=720720, train_tokens=1e13, target_days=1e-9)), seconds=120)
    finite_json(r)


def test_efficiency_ranges_cover_every_field_and_hold_the_calibration():
    names = {f.name for f in dataclasses.fields(Efficiency)}
    assert set(RANGES) == names
    default_efficiency()  # the stored calibration lies inside the ranges
    Efficiency()  # and so do the hand-set defaults
    for name, (low, high) in FIT_PARAMS.items():  # the fit can never produce a value the spec would reject
        r_low, r_high, open_low = RANGES[name]
        assert r_low <= low and high <= r_high and not (open_low and low == r_low), name


@pytest.mark.parametrize("name", sorted(RANGES))
def test_efficiency_range_edges_give_finite_results(name):
    low, high, open_low = RANGES[name]
    for value in ([high] if open_low else [low, high]):
        r = simulate(spec(efficiency={name: value}, layout={"tp": 2, "dp": 4}, target_days=1))
        finite_json(r)
        assert r["step_time_s"] > 0


def test_non_finite_results_are_refused():
    # a chip 1e300 times slower than any real one: the step takes forever -> one clear error, not Infinity/NaN
    with pytest.raises(WorkbenchError, match="out of range"):
        simulate(spec(cluster={"chip": "H100", "count": 8, "bf16_dense_tflops": 1e-300}))
    with pytest.raises(WorkbenchError, match="out of range"):
        simulate(spec(cluster={"chip": "H100", "count": 8, "bf16_dense_tflops": 1e-300}, train_tokens=None))


def test_non_finite_guard_names_the_key(monkeypatch):
    import workbench.perfmodel.api as api

    monkeypatch.setattr(api, "_simulate", lambda s: {"ok": 1.0, "breakdown": {"compute": math.nan}, "r": [1, math.inf]})
    with pytest.raises(WorkbenchError, match=r"result 'breakdown\.compute' is not finite"):
        api.simulate({})
    monkeypatch.setattr(api, "_simulate", lambda s: {"ok": 1.0, "runners_up": [{"mfu": -math.inf}]})
    with pytest.raises(WorkbenchError, match=r"result 'runners_up\.0\.mfu' is not finite"):
        api.simulate({})


def test_valid_edge_values_still_work():
    MLA_IX = {**MLA, "indexer": {**INDEXER, "full_layers": 4, "trained": True}}
    for changes in ({"pue": 1.0, "target_days": 30}, {"efficiency": None}, {"efficiency": {}},
                    {"layout": {"tp": 2, "dp": 4, "sp": False}}, {"layout": {"auto": False, "tp": 2, "dp": 4}},
                    {"model": MLA_IX}, {"model": {**MLA, "indexer": INDEXER}},
                    {"cluster": {"chip": "H100", "count": 8.0, "scale_up_domain": 8.0}},
                    {"cluster": {"chip": CUSTOM_CHIP, "count": 8}}, {"efficiency": {"mem_eff": 1}}):
        finite_json(simulate(spec(**changes)))
    # indexer layers are bounded by the model's layers
    r = simulate(spec(model=MLA_IX))
    assert r["model"]["dims"]["indexer"]["full_layers"] == 4


def test_sequence_parallel_moves_memory_not_tp_collective_time():
    on = simulate(spec(layout={"tp": 8, "dp": 1, "sp": True}))
    off = simulate(spec(layout={"tp": 8, "dp": 1, "sp": False}))
    assert on["layout"]["sp"] is True and off["layout"]["sp"] is False
    # ring AG + RS moves what one all-reduce moves (Korthikanti et al. 2022): same TP time, less activation memory
    assert on["breakdown"]["tp_comm"] == pytest.approx(off["breakdown"]["tp_comm"])
    assert on["memory"]["activations_gb"] < off["memory"]["activations_gb"]


# ---- CLI: exit 2 and exactly one stderr line ---------------------------------------------------------------------
@pytest.mark.parametrize("changes,field", [
    ({"cluster": {"chip": "H100", "count": 1e12}}, "cluster.count"),
    ({"cluster": {"chip": "H100", "count": 8, "bf16_dense_tflops": 0}}, "cluster.bf16_dense_tflops"),
    ({"model": {"preset": [1]}}, "model.preset"),
    ({"efficiency": {"mem_eff": None}}, "mem_eff"),
    ({"efficiency": {"gemm_d0": 1e308}}, "gemm_d0"),
    ({"model": {**MLA, "indexer": {**INDEXER, "heads": "x"}}}, "heads"),
    ({"layout": {"tp": 8, "dp": 1, "sp": "no"}}, "layout.sp"),
    ({"cluster": {"chip": "H100", "count": 8, "bf16_dense_tflops": 1e-300}}, "out of range"),
])
def test_cli_bad_spec_exits_2_with_one_line(tmp_path, capsys, changes, field):
    from workbench.cli import main

    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec(**changes)))
    code = in_time(lambda: main(["simulate", str(path)]))
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2
    assert len(lines) == 1 and field in lines[0] and "Traceback" not in captured.err
    assert captured.out == ""


def test_cli_reads_a_utf8_bom_spec_and_names_a_file_that_is_not_utf8(tmp_path, capsys):
    """A BOM-prefixed UTF-8 file (a Windows editor's default) was 'not valid JSON (Unexpected UTF-8 BOM)', and a
    UTF-16 file printed the bare codec error, naming neither the file nor the encoding it needs."""
    from workbench.cli import main

    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps(spec()).encode("utf-8"))
    assert main(["simulate", str(bom), "--compact"]) == 0
    assert json.loads(capsys.readouterr().out)["feasible"]
    utf16 = tmp_path / "u16.json"
    utf16.write_bytes(json.dumps(spec()).encode("utf-16"))
    assert main(["simulate", str(utf16)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(utf16) in err[0] and "not UTF-8" in err[0]
