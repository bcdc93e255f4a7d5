"""Profiling analysis on hand-written Chrome traces: categories, self time, op tables, step breakdown with
exposed/overlapped communication, the MFU waterfall, memory timelines, figures and saving. No profiler runs here;
every expected number is worked out by hand from the synthetic events."""

from __future__ import annotations

import dataclasses
import json

import pytest

from workbench.profiling import intervals as iv
from workbench.profiling.analysis import analyze, compare
from workbench.profiling.breakdown import step_breakdown
from workbench.profiling.categories import CATEGORIES, categorize
from workbench.profiling.memory import RssSampler, allocator_timeline
from workbench.profiling.tables import category_table, op_table, top_ops
from workbench.profiling.trace import annotate_flops, load_trace
from workbench.profiling.waterfall import mfu_waterfall


def X(name, ts, dur, tid=1, cat="cpu_op", **args):
    return {"ph": "X", "name": name, "cat": cat, "ts": ts, "dur": dur, "pid": 1, "tid": tid, "args": args}


def trace_of(*events, memory=()):
    return {"traceEvents": list(events) + list(memory)}


# ---- categories ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, expected", [
    ("aten::mm", "matmul"), ("aten::addmm", "matmul"), ("aten::bmm", "matmul"), ("aten::linear", "matmul"),
    ("aten::scaled_dot_product_attention", "attention"), ("aten::_flash_attention_forward", "attention"),
    ("npu_fusion_attention", "attention"), ("aten::rms_norm", "norm"), ("aten::native_layer_norm", "norm"),
    ("aten::add", "elementwise"), ("aten::silu", "elementwise"), ("aten::_to_copy", "elementwise"),
    ("c10d::allreduce_", "communication"), ("gloo:all_reduce", "communication"),
    ("ncclDevKernel_AllReduce_Sum_f32_RING_LL", "communication"), ("hcom_allGather_", "communication"),
    ("Optimizer.step#AdamW.step", "optimizer"), ("aten::_foreach_mul_", "optimizer"),
    ("enumerate(DataLoader)#_SingleProcessDataLoaderIter.__next__", "data"),
    ("moe_router", "moe"), ("aten::topk", "moe"), ("aten::view", "other"), ("ProfilerStep#3", "other"),
])
def test_categorize_by_name(name, expected):
    assert categorize(name) == expected


def test_categorize_inherits_from_enclosing_context():
    assert categorize("aten::bmm", ["attention"]) == "attention"  # a reference attention's GEMM
    assert categorize("aten::mul", ["Optimizer.step#AdamW.step"]) == "optimizer"
    assert categorize("aten::copy_", ["workbench/data"]) == "data"
    assert categorize("c10d::allreduce_", ["Optimizer.step#AdamW.step"]) == "communication"
    assert categorize("aten::mm", ["moe_experts"]) == "matmul"  # expert GEMMs stay matmul work
    assert categorize("aten::index_select", ["moe_dispatch"]) == "moe"
    assert categorize("aten::mm", ["workbench/forward", "ProfilerStep#1"]) == "matmul"
    assert set(CATEGORIES) == {"matmul", "attention", "norm", "elementwise", "moe", "communication", "optimizer",
                               "data", "other"}


# ---- self time and tables ----------------------------------------------------------------------------------------
def nested_trace():
    # step 0..100: forward 0..60 holds linear 10..50 (-> addmm 12..42 (2 GFLOP) -> copy 20..25); backward 60..100
    # holds an autograd node for the linear (sequence number 7) with mm 65..95.
    return trace_of(
        X("ProfilerStep#1", 0, 100, cat="user_annotation"),
        X("workbench/forward", 0, 60, cat="user_annotation"),
        X("aten::linear", 10, 40, **{"External id": 1, "Sequence number": 7}),
        X("aten::addmm", 12, 30, **{"External id": 2, "FLOPs": 2e9}),
        X("aten::copy_", 20, 5, **{"External id": 3}),
        X("workbench/backward", 60, 40, cat="user_annotation"),
        X("autograd::engine::evaluate_function: AddmmBackward0", 62, 36, **{"Sequence number": 7}),
        X("aten::mm", 65, 30, **{"External id": 5, "FLOPs": 1e9}),
    )


def test_self_time_subtracts_direct_children_only():
    trace = load_trace(nested_trace())
    by_name = {e.name: e for e in trace.events}
    assert by_name["aten::linear"].self_us == pytest.approx(10)
    assert by_name["aten::addmm"].self_us == pytest.approx(25)
    assert by_name["aten::copy_"].self_us == pytest.approx(5)
    assert by_name["aten::copy_"].parent is by_name["aten::addmm"]
    assert by_name["aten::mm"].parent.name.startswith("autograd::engine")


def test_op_table_sums_self_time_without_double_counting():
    trace = load_trace(nested_trace())
    ops = op_table(trace, n_steps=1)
    # ops: linear 10 + addmm 25 + copy 5 + autograd node 6 + mm 30 = 76 us (step and phase ranges excluded)
    assert sum(r["ms_per_step"] for r in ops) == pytest.approx(0.076)
    assert sum(r["share"] for r in ops) == pytest.approx(1.0)
    addmm = next(r for r in ops if r["op"] == "aten::addmm")
    assert addmm["category"] == "matmul"
    assert addmm["gflop_per_step"] == pytest.approx(2.0)
    assert addmm["achieved_tflops"] == pytest.approx(2e9 / 25e-6 / 1e12)
    assert next(r for r in ops if r["op"] == "aten::copy_")["category"] == "elementwise"
    assert top_ops(ops, 1)[0]["op"] == "aten::mm"
    cats = {r["category"]: r for r in category_table(ops)}
    assert list(cats) == list(CATEGORIES)
    assert cats["matmul"]["ms_per_step"] == pytest.approx((10 + 25 + 6 + 30) / 1e3)
    assert cats["matmul"]["gflop_per_step"] == pytest.approx(3.0)
    assert cats["attention"]["ms_per_step"] == 0 and cats["attention"]["achieved_tflops"] is None
    with pytest.raises(ValueError, match="n >= 1"):
        top_ops(ops, 0)


def test_backward_ops_inherit_the_forward_context_through_the_sequence_number():
    trace = load_trace(trace_of(
        X("workbench/kernels/reference.py(74): attention", 0, 50, cat="python_function"),
        X("aten::bmm", 5, 20, **{"Sequence number": 11}),
        X("nn.Module: GQAttention_0", 58, 24, cat="python_function"),
        X("workbench/model/attention_gqa.py(36): forward", 60, 20, cat="python_function"),
        X("aten::mm", 62, 10, **{"Sequence number": 12}),  # a projection in an attention module (and file)
        X("autograd::engine::evaluate_function: BmmBackward0", 100, 30, **{"Sequence number": 11}),
        X("aten::bmm", 105, 20),
        X("autograd::engine::evaluate_function: MmBackward0", 140, 30, **{"Sequence number": 12}),
        X("aten::mm", 145, 20),
    ))
    cats = [(e.name, e.ts, e.category) for e in trace.events if e.name in ("aten::bmm", "aten::mm")]
    assert cats == [("aten::bmm", 5, "attention"), ("aten::mm", 62, "matmul"), ("aten::bmm", 105, "attention"),
                    ("aten::mm", 145, "matmul")]


def test_device_kernels_are_timed_on_the_device_and_take_their_launching_ops_category():
    trace = load_trace(trace_of(
        X("ProfilerStep#1", 0, 200, cat="user_annotation"),
        X("Optimizer.step#AdamW.step", 100, 50, cat="user_annotation"),
        X("aten::_foreach_mul_", 110, 5, **{"External id": 9}),
        X("aten::mm", 10, 5, **{"External id": 4, "FLOPs": 4e9}),
        X("volta_sgemm_128x64_nn", 20, 40, tid=7, cat="kernel", **{"External id": 4}),
        X("splitK_reduce_kernel", 60, 10, tid=7, cat="kernel", **{"External id": 4}),
        X("multi_tensor_apply_kernel", 120, 20, tid=7, cat="kernel", **{"External id": 9}),
    ))
    ops = {r["op"]: r for r in op_table(trace)}
    assert set(ops) == {"aten::mm", "aten::_foreach_mul_"}  # kernels grouped under the op that launched them
    assert ops["aten::mm"]["ms_per_step"] == pytest.approx(0.050)
    assert ops["aten::mm"]["count_per_step"] == 2
    assert ops["aten::mm"]["gflop_per_step"] == pytest.approx(4.0)  # counted once for its two kernels
    assert ops["aten::_foreach_mul_"]["category"] == "optimizer"


def test_annotate_flops_writes_flops_by_external_id():
    raw = trace_of(X("aten::mm", 0, 5, **{"External id": 3}), X("aten::add", 5, 5, **{"External id": 4}))
    assert annotate_flops(raw, {3: 1000.0}) == 1
    assert raw["traceEvents"][0]["args"]["FLOPs"] == 1000
    assert "FLOPs" not in raw["traceEvents"][1]["args"]


# ---- intervals and step breakdown --------------------------------------------------------------------------------
def test_interval_arithmetic():
    assert iv.union([(5, 7), (0, 2), (1, 3)]) == [(0, 3), (5, 7)]
    assert iv.total([(0, 2), (1, 3), (10, 11)]) == 4
    assert iv.intersect([(0, 10)], [(2, 3), (5, 20)]) == [(2, 3), (5, 10)]
    assert iv.clip([(0, 10), (20, 30)], (5, 25)) == [(5, 10), (20, 25)]


def comm_trace():
    """Two steps of 100 us. Each: data 0-10, forward 10-40, backward 40-80 (compute op 40-70), optimizer 80-95.
    A gloo thread all-reduces 60-78 each step: 60-70 overlaps backward compute, 70-78 is exposed."""
    events = []
    for base in (0, 100):
        events += [
            X(f"ProfilerStep#{base // 100}", base, 100, cat="user_annotation"),
            X("workbench/data", base, 10, cat="user_annotation"),
            X("workbench/forward", base + 10, 30, cat="user_annotation"),
            X("aten::mm", base + 12, 25),
            X("workbench/backward", base + 40, 40, cat="user_annotation"),
            X("aten::mm", base + 40, 30),
            X("c10d::allreduce_", base + 59, 1),
            X("gloo:all_reduce", base + 60, 18, tid=2, cat="user_annotation"),
            X("workbench/optimizer", base + 80, 15, cat="user_annotation"),
            X("aten::_foreach_add_", base + 81, 10),
        ]
    return trace_of(*events)


def test_step_breakdown_splits_communication_into_exposed_and_overlapped():
    result = step_breakdown(load_trace(comm_trace()))
    assert result["n_steps"] == 2 and result["step_ms"] == pytest.approx(0.1)
    rows = {r["phase"]: r["ms"] for r in result["rows"]}
    comm = result["communication"]
    # comm per step: c10d 59-60 (same thread as compute, nothing else runs then: exposed) + gloo 60-78
    assert comm["total_ms"] == pytest.approx(0.019)
    assert comm["overlapped_ms"] == pytest.approx(0.010)
    assert comm["exposed_ms"] == pytest.approx(0.009)
    assert rows["communication (exposed)"] == pytest.approx(0.009)
    assert rows["backward"] == pytest.approx(0.040 - 0.009)  # exposed comm taken out of the phase it sits in
    assert rows["data"] == pytest.approx(0.010) and rows["forward"] == pytest.approx(0.030)
    assert rows["optimizer"] == pytest.approx(0.015)
    assert rows["other"] == pytest.approx(0.100 - 0.010 - 0.030 - 0.040 - 0.015)
    assert sum(rows.values()) == pytest.approx(result["step_ms"])


def test_breakdown_without_step_markers_treats_the_trace_as_one_step():
    result = step_breakdown(load_trace(trace_of(X("aten::mm", 0, 10), X("aten::add", 20, 5))))
    assert result["n_steps"] == 1 and result["step_ms"] == pytest.approx(0.025)


# ---- waterfall ----------------------------------------------------------------------------------------------------
def categories_rows(**ms_and_gflop):
    rows = []
    for c in CATEGORIES:
        ms, gflop = ms_and_gflop.get(c, (0.0, None))
        rows.append({"category": c, "ms_per_step": ms, "gflop_per_step": gflop})
    return rows


def test_waterfall_goes_from_ideal_to_measured():
    cats = categories_rows(matmul=(6.0, 3.0), attention=(2.0, 1.0), norm=(1.0, None), optimizer=(0.5, None))
    wf = mfu_waterfall(cats, step_ms=12.0, exposed_comm_ms=1.5, flops_per_step=4e9, peak_flops=1e12,
                       flops_source="test", peak_source="given")
    bars = {b["label"]: b["ms"] for b in wf["bars"]}
    assert wf["ideal_ms"] == pytest.approx(4.0) and wf["mfu"] == pytest.approx(4.0 / 12.0)
    assert bars["matmul below peak"] == pytest.approx(6.0 - 3.0)  # ideal split 3:1 by profiler FLOPs
    assert bars["attention below peak"] == pytest.approx(2.0 - 1.0)
    assert bars["norm"] == pytest.approx(1.0) and bars["communication (exposed)"] == pytest.approx(1.5)
    relative = sum(b["ms"] for b in wf["bars"] if b["measure"] != "total")
    assert relative == pytest.approx(12.0) and wf["bars"][-1]["ms"] == 12.0
    assert bars["host overhead / idle"] == pytest.approx(12.0 - 4.0 - 3.0 - 1.0 - 1.0 - 0.5 - 1.5)


def test_waterfall_reports_unknown_mfu_without_a_peak_and_rejects_empty_steps():
    wf = mfu_waterfall(categories_rows(matmul=(1.0, 1.0)), 2.0, 0.0, flops_per_step=None, peak_flops=None)
    assert wf["mfu"] is None and wf["ideal_ms"] is None
    assert wf["flops_source"].startswith("profiler-counted")
    assert sum(b["ms"] for b in wf["bars"] if b["measure"] != "total") == pytest.approx(2.0)
    with pytest.raises(ValueError, match="step time"):
        mfu_waterfall(categories_rows(), 0.0, 0.0, 1e9, 1e12)


def test_waterfall_splits_the_ideal_by_the_models_flops_not_by_what_the_profiler_counted():
    """SDPA / flash kernels report no FLOPs: split by profiler counts, attention got no share of the ideal and the
    matmuls 'beat the peak' by attention's whole time (glm4-tiny at S=1024: matmul -1350 ms, attention +1174 ms)."""
    cats = categories_rows(matmul=(6.0, 3.0), attention=(2.0, None), norm=(1.0, None))
    wf = mfu_waterfall(cats, step_ms=12.0, exposed_comm_ms=0.0, flops_per_step=4e9, peak_flops=1e12,
                       flops_split={"matmul": 3.0, "attention": 1.0})  # relative: normalized to shares
    bars = {b["label"]: b["ms"] for b in wf["bars"]}
    assert bars["matmul below peak"] == pytest.approx(6.0 - 3.0)
    assert bars["attention below peak"] == pytest.approx(2.0 - 1.0)
    assert wf["ideal_split"] == pytest.approx({"matmul": 0.75, "attention": 0.25, "moe": 0.0})
    assert wf["split_source"].startswith("analytic")
    assert sum(b["ms"] for b in wf["bars"] if b["measure"] != "total") == pytest.approx(12.0)


def test_waterfall_gives_routed_expert_flops_to_the_category_that_ran_the_expert_gemms():
    """A grouped GEMM kernel (torch._grouped_mm on CUDA, npu_grouped_matmul) is moe time; a loop of per-expert
    aten::mm is matmul, and so is a grouped op that runs counted aten::mm inside itself (torch's CPU _grouped_mm)."""
    cats = categories_rows(matmul=(4.0, 2.0), attention=(1.0, None), moe=(3.0, None))
    split = {"matmul": 2.0, "attention": 1.0, "experts": 1.0}
    grouped = [{"op": "aten::_grouped_mm", "category": "moe"}, {"op": "aten::mm", "category": "matmul"}]
    wf = mfu_waterfall(cats, 10.0, 0.0, 4e9, 1e12, flops_split=split, ops=grouped)
    assert wf["ideal_split"] == pytest.approx({"matmul": 0.5, "attention": 0.25, "moe": 0.25})
    assert "experts in moe" in wf["split_source"]
    cpu_cats = categories_rows(matmul=(4.0, 3.0), attention=(1.0, None), moe=(3.0, None))  # experts' 1 GFLOP counted
    wf = mfu_waterfall(cpu_cats, 10.0, 0.0, 4e9, 1e12, flops_split=split, ops=grouped)
    assert wf["ideal_split"] == pytest.approx({"matmul": 0.75, "attention": 0.25, "moe": 0.0})
    looped = [{"op": "aten::mm", "category": "matmul"}, {"op": "aten::index_select", "category": "moe"}]
    wf = mfu_waterfall(cats, 10.0, 0.0, 4e9, 1e12, flops_split=split, ops=looped)
    assert wf["ideal_split"] == pytest.approx({"matmul": 0.75, "attention": 0.25, "moe": 0.0})
    with pytest.raises(ValueError, match="flops_split"):
        mfu_waterfall(cats, 10.0, 0.0, 4e9, 1e12, flops_split={"softmax": 1.0})


def test_waterfall_without_a_split_says_which_timed_category_got_no_share():
    cats = categories_rows(matmul=(6.0, 3.0), attention=(2.0, None))
    wf = mfu_waterfall(cats, 12.0, 0.0, 4e9, 1e12)
    assert wf["ideal_split"] == pytest.approx({"matmul": 1.0, "attention": 0.0, "moe": 0.0})
    assert "profiler-counted" in wf["split_source"] and "attention" in wf["split_source"]


def test_model_flops_split_follows_the_accounting():
    from workbench.model.accounting import expert_params, flops_per_token
    from workbench.model.presets import get_preset
    from workbench.profiling.waterfall import model_flops_split

    for preset, seq_len in (("glm4-tiny", 1024), ("glm45-tiny", 256), ("glm5-tiny", 1024)):
        c = get_preset(preset)
        fpt = flops_per_token(c, seq_len)
        split = model_flops_split(c, seq_len)
        assert sum(split.values()) == pytest.approx(fpt.total)
        n_moe = sum(c.layer_is_moe(i) for i in range(c.num_layers + c.mtp_layers))
        assert split["experts"] == pytest.approx(6.0 * n_moe * c.num_experts_per_token * expert_params(c)
                                                 if c.is_moe else 0.0)
        per_layer_attention = fpt.attention / c.num_layers
        assert split["attention"] >= fpt.attention + fpt.indexer + c.mtp_layers * per_layer_attention - 1
    # the report's example: with the byte tokenizer's 257 tokens, attention is 28.4% of glm4-tiny's FLOPs at S=1024
    c = dataclasses.replace(get_preset("glm4-tiny"), vocab_size=257)
    split = model_flops_split(c, 1024)
    assert split["attention"] / sum(split.values()) == pytest.approx(0.284, abs=0.002)


# ---- memory -------------------------------------------------------------------------------------------------------
def mem(ts, nbytes, total, device_type=0):
    return {"ph": "i", "name": "[memory]", "ts": ts, "pid": 1, "tid": 1,
            "args": {"Bytes": nbytes, "Total Allocated": total, "Device Type": device_type}}


def test_allocator_timeline_prefers_the_accelerator_and_finds_the_peak():
    raw = trace_of(X("ProfilerStep#1", 100, 50, cat="user_annotation"),
                   memory=[mem(110, 4096, 4096), mem(120, 2e6, 2e6, 1), mem(130, 3e6, 5e6, 1), mem(140, -5e6, 0, 1)])
    line = allocator_timeline(load_trace(raw))
    assert "cuda" in line["source"]
    assert line["mb"] == [2.0, 5.0, 0.0] and line["peak_mb"] == 5.0
    assert line["t_ms"] == [pytest.approx(0.020), pytest.approx(0.030), pytest.approx(0.040)]
    assert allocator_timeline(load_trace(trace_of(X("aten::mm", 0, 1)))) is None


def test_rss_sampler_records_samples():
    import time

    with RssSampler(interval_ms=1.0) as sampler:
        time.sleep(0.03)
    assert len(sampler.samples) >= 3
    assert all(b > 1e6 for _, b in sampler.samples)  # a Python process with torch is well above 1 MB
    with pytest.raises(ValueError):
        RssSampler(interval_ms=0)


# ---- report, save, compare ----------------------------------------------------------------------------------------
def test_analyze_save_and_compare(tmp_path):
    path = tmp_path / "trace.json"
    path.write_text(json.dumps(comm_trace()))
    report = analyze(path, flops_per_step=1e6, peak=1e12, top_n=3)
    summary = report.summary()
    assert summary["mfu"] == pytest.approx(1e6 / 1e12 / 1e-4)
    assert summary["top_op"] == "aten::mm" and len(report.top) == 3
    written = report.save(tmp_path / "out")
    for key in ("op_table_csv", "categories_csv", "report_json", "mfu_waterfall_html", "step_breakdown_html",
                "memory_html", "categories_html", "top_ops_html"):
        assert (tmp_path / "out").joinpath(written[key]).exists(), key
    assert '"type":"waterfall"' in open(written["mfu_waterfall_html"]).read().replace(" ", "")
    saved = json.loads(open(written["report_json"]).read())
    assert saved["summary"]["step_ms"] == pytest.approx(0.1)
    slower = analyze(load_trace(trace_of(X("ProfilerStep#1", 0, 200, cat="user_annotation"), X("aten::mm", 0, 150))))
    side = compare({"a": report, "b": slower})
    assert side["speedup_vs_a"]["b"] == pytest.approx(0.5)
    assert {r["category"] for r in side["categories"]} == set(CATEGORIES)
    assert len(side["figures"]["step_breakdown"].data) >= 2
    with pytest.raises(ValueError, match="two"):
        compare({"a": report})


def test_missing_trace_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="run a profile first"):
        load_trace(tmp_path / "nope.json")


def test_device_side_phase_ranges_are_preferred_when_the_trace_has_them():
    # CUDA-style trace: host ranges end early (launches are asynchronous); the GPU copies say when the work ran.
    trace = load_trace(trace_of(
        X("ProfilerStep#1", 0, 100, cat="user_annotation"),
        X("workbench/forward", 0, 10, cat="user_annotation"),
        X("workbench/forward", 5, 60, tid=7, cat="gpu_user_annotation"),
        X("ampere_sgemm_128x64_tn", 5, 60, tid=7, cat="kernel"),
        X("ncclDevKernel_AllReduce_Sum_f32_RING_LL", 50, 30, tid=8, cat="kernel"),
    ))
    result = step_breakdown(trace)
    rows = {r["phase"]: r["ms"] for r in result["rows"]}
    comm = result["communication"]
    # nccl 50-80 on stream 8 overlaps the GEMM on stream 7 for 50-65: 15 us overlapped, 15 us exposed
    assert comm["overlapped_ms"] == pytest.approx(0.015) and comm["exposed_ms"] == pytest.approx(0.015)
    assert rows["forward"] == pytest.approx(0.060 - 0.0)  # the exposed part (65-80) lies outside forward (5-65)
    assert sum(rows.values()) == pytest.approx(0.1)
    ops = {r["op"]: r["category"] for r in op_table(trace)}
    assert ops == {"ampere_sgemm_128x64_tn": "matmul", "ncclDevKernel_AllReduce_Sum_f32_RING_LL": "communication"}


def test_a_failing_step_stops_the_rss_sampler(tmp_path):
    import threading

    from workbench.device import get_device
    from workbench.profiling import ProfileConfig, profile_steps

    calls = []

    def boom():  # the warmup step works, the first active step (sampler running) fails
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("step failed")

    with pytest.raises(RuntimeError, match="step failed"):
        profile_steps(boom, ProfileConfig(wait=0, warmup=1, active=1, memory_timeline="rss"),
                      device=get_device("cpu"), out_dir=tmp_path)
    assert not any(t.name == "workbench-rss-sampler" and t.is_alive() for t in threading.enumerate())


def test_python_frames_give_context_but_are_not_ops():
    # with_stack also traces unrelated threads (a Jupyter kernel's zmq thread calling `send`): no comm, no op rows
    trace = load_trace(trace_of(
        X("ProfilerStep#1", 0, 100, cat="user_annotation"),
        X("workbench/kernels/reference.py(74): attention", 10, 50, cat="python_function"),
        X("aten::bmm", 20, 30),
        X("zmq/sugar/socket.py(700): send", 0, 90, tid=9, cat="python_function"),
    ))
    ops = op_table(trace)
    assert [(r["op"], r["category"]) for r in ops] == [("aten::bmm", "attention")]
    assert step_breakdown(trace)["communication"]["total_ms"] == 0


def test_kernels_without_an_external_id_link_through_the_runtime_call():
    trace = load_trace(trace_of(
        X("aten::_scaled_dot_product_flash_attention", 0, 20),
        X("cudaLaunchKernel", 5, 3, cat="cuda_runtime", correlation=77),
        X("void pytorch_flash::flash_fwd_kernel", 10, 40, tid=7, cat="kernel", correlation=77),
    ))
    kernel = next(e for e in trace.events if e.is_device)
    assert kernel.linked_op.name == "aten::_scaled_dot_product_flash_attention"
    assert kernel.category == "attention"
    # the runtime call is nested (not counted as the op's self time twice) but is no op row of its own
    assert [r["op"] for r in op_table(trace)] == ["aten::_scaled_dot_product_flash_attention"]


def test_shape_broadcasts_are_not_communication():
    """aten::broadcast_tensors (in mse_loss) and broadcast_to matched 'broadcast_': a single process showed
    communication time, exposed."""
    assert categorize("aten::broadcast_tensors") != "communication"
    assert categorize("aten::broadcast_to") != "communication"
    assert categorize("c10d::broadcast_") == categorize("nccl:broadcast") == "communication"


def test_device_side_step_annotations_are_not_counted_as_steps():
    """On CUDA each ProfilerStep#N also appears as a gpu_user_annotation: 2 steps were counted as 4."""
    trace = load_trace(trace_of(
        X("ProfilerStep#1", 0, 100, cat="user_annotation"), X("ProfilerStep#2", 100, 100, cat="user_annotation"),
        X("ProfilerStep#1", 5, 98, tid=7, cat="gpu_user_annotation"),
        X("ProfilerStep#2", 105, 98, tid=7, cat="gpu_user_annotation")))
    assert [e.ts for e in trace.steps] == [0, 100]


def test_a_backward_op_takes_the_context_of_the_op_that_created_its_node():
    """Ops that create no autograd node carry the next node's number earlier in time: the embedding's backward was
    matched to the data loader's lift_fresh (sequence number 3 too) and counted as data."""
    trace = load_trace(trace_of(
        X("ProfilerStep#1", 0, 200, cat="user_annotation"),
        X("workbench/data", 0, 10, cat="user_annotation"),
        X("aten::lift_fresh", 2, 3, **{"Sequence number": 3}),
        X("workbench/forward", 10, 90, cat="user_annotation"),
        X("aten::embedding", 20, 10, **{"Sequence number": 3}),
        X("workbench/backward", 100, 100, cat="user_annotation"),
        X("autograd::engine::evaluate_function: EmbeddingBackward0", 110, 50, **{"Sequence number": 3}),
        X("aten::embedding_dense_backward", 115, 40)))
    backward = next(e for e in trace.events if e.name == "aten::embedding_dense_backward")
    assert backward.category != "data"


# ---- torch_npu's trace_view.json ------------------------------------------------------------------------------
NPU_BASE = 1699529623100000  # torch_npu writes absolute microseconds, as strings with nanosecond digits


def _npu_trace(collective_on_hardware_lane: bool = True, thread_names: bool = True) -> list[dict]:
    """Two steps laid out as torch_npu documents trace_view.json: a bare list; host ops (cat cpu_op) on the
    "Python" process; device tasks without cat on "Ascend Hardware", linked to their ops by async_npu flows; an
    all-reduce on the "Communication" process's op-level thread, its sub-task on a "Plane" thread; lanes that hold
    no ops ("CANN" API calls, "Overlap Analysis" summaries)."""
    def at(us):
        return f"{NPU_BASE + us:.3f}"

    def x(name, ts, dur, pid, tid, cat=None, **args):
        event = {"ph": "X", "name": name, "pid": pid, "tid": tid, "ts": at(ts), "dur": dur, "args": args}
        return {**event, "cat": cat} if cat else event

    def flow(op_ts, task_ts, task_tid=2):
        ident = int((NPU_BASE + task_ts) * 1000)
        return [{"ph": "s", "bp": "e", "name": "torch_to_npu", "id": ident, "pid": 1, "tid": 1, "ts": at(op_ts),
                 "cat": "async_npu"},
                {"ph": "f", "bp": "e", "name": "torch_to_npu", "id": ident, "pid": 4, "tid": task_tid,
                 "ts": at(task_ts), "cat": "async_npu"}]

    events = [{"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": name}}
              for pid, name in ((1, "Python"), (4, "Ascend Hardware"), (5, "Communication"), (6, "CANN"),
                                (7, "Overlap Analysis"))]
    if thread_names:
        events += [{"ph": "M", "name": "thread_name", "pid": 5, "tid": 1, "args": {"name": "Communication"}},
                   {"ph": "M", "name": "thread_name", "pid": 5, "tid": 2, "args": {"name": "Plane 0"}}]
    for step, base in enumerate((0, 10000)):
        events += [x(f"ProfilerStep#{step + 2}", base, 10000, 1, 1, cat="cpu_op"),
                   x("workbench/forward", base + 100, 2000, 1, 1, cat="cpu_op"),
                   # an op that ends exactly with its parent: nested only if the string timestamps stay exact
                   x("aten::linear", base + 200.250, 30.5, 1, 1, cat="cpu_op"),
                   x("aten::addmm", base + 200.250, 30.5 - 0.25, 1, 1, cat="cpu_op", flops=2e9),
                   x("npu_fusion_attention", base + 400, 40, 1, 1, cat="cpu_op"),
                   x("workbench/backward", base + 2100, 2000, 1, 1, cat="cpu_op"),
                   # the device runs long after the host launched: 3 ms of GEMM, 4 ms of a task named only
                   # by its kernel, which takes its category from the attention op that launched it
                   x("MatMulV2", base + 300, 3000, 4, 2, **{"Task Type": "AI_CORE"}),
                   x("Slice1", base + 3400, 4000, 4, 2, **{"Task Type": "AI_CORE"}),
                   x("hcom_allReduce__123_0_1", base + 7500, 2000, 5, 1),
                   x("Notify_Wait", base + 7500, 1500, 5, 2),
                   x("aclnnMatmul", base + 250, 10, 6, 1),
                   x("Computing", base + 300, 7100, 7, 1)]
        if collective_on_hardware_lane:
            events.append(x("hcom_allReduce__123_0_1", base + 7500, 2000, 4, 3, **{"Task Type": "COMMUNICATION"}))
        events += flow(base + 200.250, base + 300) + flow(base + 400, base + 3400)
    return events


@pytest.mark.parametrize("thread_names", [True, False])
def test_a_torch_npu_trace_is_timed_on_the_device(thread_names):
    """The NPU tasks carry no 'kernel' cat: the analysis timed the host only (matmul 0.03 ms where the device ran
    3 ms; communication 0; the waterfall's 'host overhead' 9.9 of 10 ms). Without thread names on the
    Communication process, a collective's sub-tasks counted as communication as well (4 ms in the table)."""
    result = analyze(_npu_trace(thread_names=thread_names), flops_per_step=2e9, peak=1e12)
    assert result.info["time_basis"] == "device"
    per_step = {c["category"]: c["ms_per_step"] for c in result.categories}
    assert per_step["matmul"] == pytest.approx(3.0) and per_step["attention"] == pytest.approx(4.0)
    # one all-reduce of 2 ms per step: not its sub-task, and not again from the hardware lane
    assert per_step["communication"] == pytest.approx(2.0)
    assert result.breakdown["communication"]["total_ms"] == pytest.approx(2.0)
    assert sum(per_step.values()) == pytest.approx(9.0)  # no CANN API call or overlap summary counted
    bars = {b["label"]: b["ms"] for b in result.waterfall["bars"]}
    assert bars["measured step"] == pytest.approx(10.0) and bars["communication (exposed)"] == pytest.approx(2.0)
    assert bars["ideal (FLOPs / peak)"] == pytest.approx(2.0)


def test_torch_npu_timestamps_keep_their_nanoseconds_and_an_open_array_loads(tmp_path):
    """As floats, absolute microsecond strings keep ~0.25 us: an op ending with its parent was not nested, and
    its time counted twice. torch_npu's two-pass export leaves an interrupted file without its closing ']'."""
    path = tmp_path / "trace_view.json"
    path.write_text(json.dumps(_npu_trace())[:-1] + ",\n", encoding="utf-8")
    trace = load_trace(path)
    linear = next(e for e in trace.events if e.name == "aten::linear")
    addmm = next(e for e in trace.events if e.name == "aten::addmm" and e.parent is linear)
    assert linear.self_us == pytest.approx(0.25, abs=1e-6) and addmm.flops == 2e9
    assert load_trace(_npu_trace()).events[0].name == "ProfilerStep#2"  # an already-loaded bare list too
    (tmp_path / "broken.json").write_text("[{", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_trace(tmp_path / "broken.json")


def test_a_top_k_takes_the_category_of_the_work_it_runs_in():
    """GLM-5's DSA indexer selects keys with aten::topk, which counted as MoE routing (463 us of 'moe' against
    115 us of real routing in a glm5-tiny profile)."""
    assert categorize("aten::topk") == "moe"  # on its own: MoE routing is the likelier guess
    assert categorize("aten::topk", ["attention (DSA indexer)"]) == "attention"
    trace = load_trace(trace_of(
        X("workbench/model/dsa_indexer.py(110): select", 0, 50, cat="python_function"),
        X("aten::topk", 10, 20), X("aten::mm", 31, 5)))
    assert {e.name: e.category for e in trace.events if e.cat == "cpu_op"} == {"aten::topk": "attention",
                                                                               "aten::mm": "attention"}


def test_top_ops_figure_keeps_two_rows_of_one_op_apart():
    """The table keys rows by (op, category); the figure labelled bars by op only, so plotly drew an aten::mul of
    a norm and one of an activation on one line: 'top 10' showed 9 rows."""
    from workbench.profiling.figures import top_ops_figure

    rows = [{"op": "aten::mul", "category": c, "ms_per_step": 1.0, "count_per_step": 1}
            for c in ("norm", "elementwise")]
    labels = list(top_ops_figure(rows).data[0].y)
    assert len(set(labels)) == 2 and all("aten::mul" in label for label in labels)
