"""MFU waterfall: from the ideal step time (model FLOPs / peak FLOP/s) to the measured one, gap by category.

    ideal        = FLOPs per step / peak FLOP/s          (MFU = ideal / measured, PaLM convention)
    + matmul / attention / moe:  their measured time - their share of the ideal
    + norm, elementwise, optimizer, data, other:  all of their time (no model FLOPs are assigned to them)
    + communication:  exposed communication only (overlapped communication costs no step time)
    + host overhead / idle:  the rest of the measured step, time in no op (Python, launches, waits); negative
      when ops on several threads overlap, which the per-thread self times cannot show
    = measured step time

The ideal is shared out by the model's own FLOP accounting (``flops_split``, e.g. ``model_flops_split``): the
profiler counts FLOPs for plain GEMMs only, not for SDPA / flash / fused attention kernels nor for grouped expert
GEMMs, so a split by counted FLOPs gave all of the ideal to matmul and showed the matmuls beating the peak by
attention's whole time. Profiler counts are the fallback when no split is given (``split_source`` says which).

Category times are the op table's self times per step (device kernel time on accelerators). With an unknown peak
the ideal bar is left out and MFU is reported as unknown, never guessed. Used by notebooks/04_profiling.ipynb.
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

from workbench.profiling.categories import CATEGORIES

FLOP_CATEGORIES = ("matmul", "attention", "moe")  # where the model's FLOPs are done
SPLIT_KEYS = ("matmul", "attention", "experts")  # the keys of a flops_split
# A grouped GEMM op (torch._grouped_mm, npu_grouped_matmul) is moe time (categories.py); a per-expert loop of
# aten::mm stays matmul work, and so do the per-group aten::mm that torch's CPU _grouped_mm runs inside itself.
_GROUPED_GEMM = re.compile(r"grouped_m(m|atmul)", re.I)


def _experts_category(ops: Sequence[dict], by_cat: dict, matmul_flops: float | None, expert_flops: float) -> str:
    """Which category timed the routed experts' GEMMs: moe where one grouped-GEMM kernel ran them, matmul where
    they ran as per-expert matmuls. A grouped op whose work the profiler counted as matmul FLOPs (at least the
    model's other GEMMs plus half the experts') decomposed into matmuls (torch's CPU _grouped_mm does)."""
    if not any(row.get("category") == "moe" and _GROUPED_GEMM.search(str(row.get("op", ""))) for row in ops):
        return "matmul"
    counted = (by_cat.get("matmul", {}).get("gflop_per_step") or 0.0) * 1e9
    if matmul_flops is not None and counted >= matmul_flops + 0.5 * expert_flops:
        return "matmul"
    return "moe"


def model_flops_split(model_config, seq_len: int) -> dict[str, float]:
    """Training FLOPs per token of a ``ModelConfig`` by the kind of kernel that does them (they sum to
    ``accounting.flops_per_token(...).total``):

    - ``attention``: the attention core of the trunk and MTP layers, plus the DSA indexers (their scores and
      top-k are sparse-attention work, and the profiler files dsa_indexer.py's frames under attention);
    - ``experts``: the routed experts' GEMMs (6 x top_k x one expert's params per MoE layer, MTP included);
    - ``matmul``: every other GEMM (projections, dense FFNs, shared experts, router, LM head, MTP projection).
    """
    from workbench.model.accounting import expert_params, flops_per_token

    c = model_config
    fpt = flops_per_token(c, seq_len)
    mtp_attention = c.mtp_layers * fpt.attention / c.num_layers  # the same attention core in every layer
    n_full = sum(t == "full" for t in c.layer_indexer_types)
    mtp_indexer = (c.mtp_layers * fpt.indexer / n_full) if (n_full and c.use_dsa) else 0.0
    attention = fpt.attention + fpt.indexer + mtp_attention + mtp_indexer
    experts = 0.0
    if c.is_moe:
        n_moe = sum(c.layer_is_moe(i) for i in range(c.num_layers + c.mtp_layers))
        experts = 6.0 * n_moe * c.num_experts_per_token * expert_params(c)
    return {"matmul": fpt.total - attention - experts, "attention": attention, "experts": experts}


def _ideal_split(flops_split: Mapping[str, float] | None, by_cat: dict, ops: Sequence[dict],
                 flops_per_step: float | None) -> tuple[dict[str, float], str]:
    """Shares of the ideal time per FLOP category, and where they came from."""
    if flops_split:
        unknown = sorted(set(flops_split) - set(SPLIT_KEYS))
        total = sum(flops_split.values())
        if unknown or any(v < 0 for v in flops_split.values()) or not total:
            raise ValueError(f"flops_split takes non-negative FLOPs under {', '.join(SPLIT_KEYS)} (not all 0); "
                             f"got {dict(flops_split)}")
        scale = flops_per_step / total if flops_per_step else None  # split -> FLOPs per step
        experts_in = _experts_category(ops, by_cat, flops_split.get("matmul", 0.0) * scale if scale else None,
                                       flops_split.get("experts", 0.0) * (scale or 0.0))
        flops = {c: 0.0 for c in FLOP_CATEGORIES}
        flops["matmul"] += flops_split.get("matmul", 0.0)
        flops["attention"] += flops_split.get("attention", 0.0)
        flops[experts_in] += flops_split.get("experts", 0.0)
        total = sum(flops.values())
        return {c: flops[c] / total for c in FLOP_CATEGORIES}, f"analytic (model FLOPs; routed experts in {experts_in})"
    counted = {c: (by_cat.get(c, {}).get("gflop_per_step") or 0.0) for c in FLOP_CATEGORIES}
    total = sum(counted.values())
    share = {c: counted[c] / total for c in FLOP_CATEGORIES} if total else {"matmul": 1.0, "attention": 0.0, "moe": 0.0}
    source = "profiler-counted FLOPs"
    unshared = [c for c in FLOP_CATEGORIES if not share[c] and by_cat.get(c, {}).get("ms_per_step", 0.0) > 0]
    if unshared:  # e.g. SDPA: time, but no FLOPs the profiler could count
        source += f" ({', '.join(unshared)}: time but no counted FLOPs, so no share; their ideal is in the others)"
    return share, source


def mfu_waterfall(categories: Sequence[dict], step_ms: float, exposed_comm_ms: float,
                  flops_per_step: float | None, peak_flops: float | None, *,
                  flops_source: str = "", peak_source: str = "",
                  flops_split: Mapping[str, float] | None = None, ops: Sequence[dict] = ()) -> dict:
    """Build the waterfall. ``categories``: rows of ``tables.category_table``; times in ms per step.

    ``flops_split``: the model's FLOPs (any scale) under ``matmul`` / ``attention`` / ``experts``
    (``model_flops_split``); ``ops``: rows of ``tables.op_table``, which tell whether the routed experts ran as a
    grouped GEMM (moe time) or as per-expert matmuls. Without a split the profiler's counted FLOPs decide."""
    if step_ms <= 0:
        raise ValueError(f"measured step time must be > 0 ms, got {step_ms}; did the profile record any steps?")
    by_cat = {row["category"]: row for row in categories}
    if not flops_per_step:  # fall back on what the profiler counted
        flops_per_step = sum((by_cat.get(c, {}).get("gflop_per_step") or 0.0) for c in CATEGORIES) * 1e9 or None
        flops_source = "profiler-counted FLOPs (ops that report FLOPs only)" if flops_per_step else "unknown"
    known = bool(flops_per_step and peak_flops)
    ideal_ms = flops_per_step / peak_flops * 1e3 if known else 0.0

    ideal_share, split_source = _ideal_split(flops_split, by_cat, ops, flops_per_step)

    bars = [{"label": "ideal (FLOPs / peak)" if known else "ideal (unknown peak)", "ms": ideal_ms,
             "measure": "absolute"}]
    for category in CATEGORIES:
        if category == "communication":
            bars.append({"label": "communication (exposed)", "ms": exposed_comm_ms, "measure": "relative"})
            continue
        measured = by_cat.get(category, {}).get("ms_per_step", 0.0)
        ideal_part = ideal_ms * ideal_share.get(category, 0.0)
        label = f"{category} below peak" if category in FLOP_CATEGORIES else category
        bars.append({"label": label, "ms": measured - ideal_part, "measure": "relative"})
    accounted = sum(b["ms"] for b in bars)
    bars.append({"label": "host overhead / idle", "ms": step_ms - accounted, "measure": "relative"})
    bars.append({"label": "measured step", "ms": step_ms, "measure": "total"})
    return {
        "ideal_ms": ideal_ms if known else None,
        "measured_ms": step_ms,
        "mfu": ideal_ms / step_ms if known else None,
        "flops_per_step": flops_per_step,
        "flops_source": flops_source,
        "peak_flops": peak_flops,
        "peak_source": peak_source or ("unknown" if not peak_flops else ""),
        "ideal_split": ideal_share,
        "split_source": split_source,
        "bars": bars,
    }
