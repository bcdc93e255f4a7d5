"""``simulate(spec) -> dict``: the one call behind ``workbench simulate`` and notebooks/05_hardware_comparison.ipynb.

It parses the spec, evaluates the given layout (or searches with ``layout: "auto"``), and reports step time with its
breakdown, memory per device and whether it fits, tokens/s per chip, MFU (PaLM convention) and HFU, time and
energy to train ``train_tokens``, and the chips needed to train them in ``target_days``.
Energy = chips x power per chip x time x PUE, where power per chip is the catalog's all-in system power per
accelerator when sourced, else TDP x 1.82 (DGX H100: 10.2 kW for 8 x 700 W GPUs); PUE defaults to 1.2.
"""

from __future__ import annotations

import math
from typing import Any

from workbench.errors import ConfigError
from workbench.perfmodel.efficiency import calibration_record
from workbench.perfmodel.search import divisors, search
from workbench.perfmodel.simulator import SERVER_POWER_FACTOR, Evaluation, device_memory_gb, evaluate, usable_memory_gb
from workbench.perfmodel.spec import Layout, LayoutError, MemoryCapacityError, Spec, parse_spec

MFU_CONVENTION = ("PaLM/torchtitan: 6 x active non-embedding matmul params + 6 x L x H x (d_qk + d_v) x T per token; "
                  "no causal discount; recomputation not counted")

# The keys say what they count; "workbench models" prints the same numbers as "w/o MTP", "total" and "active".
PARAMS_CONVENTION = ("params_total: every parameter without the MTP layers; params_total_with_mtp: with them; "
                     "params_active: per-token parameters with embedding and LM head, without MTP; "
                     "params_active_non_embedding: without embedding, LM head and MTP (model-card convention, "
                     "`workbench models`' active)")


def power_per_chip(chip) -> tuple[float | None, str]:
    if chip.system_w_per_chip:
        return chip.system_w_per_chip, f"system power per chip ({chip.field_source('system_w_per_chip').source})"
    if chip.tdp_w:
        return chip.tdp_w * SERVER_POWER_FACTOR, (f"TDP {chip.tdp_w:g} W x {SERVER_POWER_FACTOR:.2f} server overhead "
                                                  "(DGX H100 ratio)")
    return None, "unknown: the catalog has no TDP or system power for this chip; give cluster.tdp_w"


def _check_total_memory(spec: Spec) -> None:
    """Impossible memory: weights + grads + optimizer state alone exceed the whole cluster's memory."""
    chip = spec.cluster.chip  # parse_spec requires its hbm_gb
    total = spec.model.param_counts()["total"]
    per_param = 18.0 if spec.precision != "fp32" else 16.0
    need_gb = total * per_param / 1e9
    have_gb = spec.cluster.count * usable_memory_gb(chip)
    if need_gb > have_gb:
        raise MemoryCapacityError(
            f"impossible memory: {total / 1e9:.1f}B parameters need {need_gb:,.0f} GB for weights, gradients and "
            f"optimizer state even fully sharded, but {spec.cluster.count} x {chip.hbm_gb:g} GiB {chip.chip} "
            f"give {have_gb:,.0f} GB usable; use at least {math.ceil(need_gb / usable_memory_gb(chip))} chips")


def _metrics(spec: Spec, ev: Evaluation) -> dict[str, Any]:
    tokens_step = spec.global_batch * spec.seq_len
    tps = tokens_step / ev.step_time_s
    tps_chip = tps / spec.cluster.count
    fpt = spec.model.flops_per_token(spec.seq_len)
    peak = spec.cluster.chip.peak_flops(spec.precision)
    # HFU: the model FLOPs in MFU's own convention plus what recomputation runs again, so HFU >= MFU always (it
    # counted causal attention at half and the MoE imbalance padding as work, and fell below MFU)
    if ev.layout.recompute == "full":
        recomputed = fpt / 3  # the whole forward again: forward is 1/3 of training FLOPs
    elif ev.layout.recompute == "selective" and spec.attention == "unfused":
        recomputed = spec.model.attention_flops_per_token(spec.seq_len) / 3  # Korthikanti: the attention core
    else:
        recomputed = 0.0
    out = {
        "step_time_s": ev.step_time_s, "tokens_per_s": tps, "tokens_per_s_per_chip": tps_chip,
        "mfu": tps_chip * fpt / peak, "hfu": tps_chip * (fpt + recomputed) / peak,
        "tflops_per_chip": tps_chip * fpt / 1e12,
    }
    if spec.precision == "fp8":  # FP8 runs are compared in tokens/s; MFU is also given against the BF16 peak
        bf16 = spec.cluster.chip.peak_flops("bf16")
        out["mfu_vs_bf16_peak"] = tps_chip * fpt / bf16 if bf16 else None
    return out


def _layout_dict(spec: Spec, ev: Evaluation) -> dict[str, Any]:
    d = ev.layout.as_dict()
    d["micro_batch"] = ev.micro_batch
    d["micro_batches_per_step"] = spec.global_batch // (ev.micro_batch * ev.layout.dp)
    return d


def _summary(spec: Spec, ev: Evaluation) -> dict[str, Any]:
    out = {"layout": _layout_dict(spec, ev), "memory_gb_per_chip": ev.memory.get("total_gb"), "fits": ev.fits}
    if ev.problems or not ev.fits:
        return out
    out.update(_metrics(spec, ev))
    return out


def chips_for_time(spec: Spec, ev: Evaluation, target_s: float) -> dict[str, Any]:
    """Smallest chip count (growing DP at the same global batch and per-replica layout) that trains
    ``spec.train_tokens`` within ``target_s``; says where scaling stops (one micro-batch per replica)."""
    L = ev.layout
    unit = L.tp * L.pp * L.cp
    tokens = spec.train_tokens
    best = None
    for dp in divisors(spec.global_batch // ev.micro_batch):  # ascending; O(sqrt) even for a huge global batch
        if spec.global_batch % (dp * ev.micro_batch):
            continue
        count = unit * dp
        scaled = Spec(**{**spec.__dict__, "cluster": type(spec.cluster)(**{**spec.cluster.__dict__, "count": count})})
        cand = None
        for vp in sorted({L.vp, 1}, reverse=True):  # interleaving needs micro-batches % pp == 0: drop it if not
            trial = evaluate(scaled, Layout(**{**L.as_dict(), "dp": dp, "vp": vp}), ev.micro_batch)
            if not trial.problems and trial.fits:
                cand = trial
                break
        if cand is None:
            continue
        seconds = tokens / (spec.global_batch * spec.seq_len / cand.step_time_s)
        best = {"chips": count, "days": seconds / 86400, "layout": _layout_dict(scaled, cand),
                "scaling_efficiency": (ev.step_time_s * spec.cluster.count) / (cand.step_time_s * count)}
        if seconds <= target_s:
            best["reached"] = True
            return best
    if best is None:
        return {"chips": None, "reached": False, "why": "no data-parallel width of this layout fits"}
    best["reached"] = False
    best["why"] = (f"one micro-batch per replica at global_batch {spec.global_batch}: more chips cannot shorten a step; "
                   f"raise global_batch or use a different layout")
    return best


def _non_finite(value: Any, path: str = "") -> str | None:
    """The path of the first NaN or infinite number in a result (None when every number is finite)."""
    if isinstance(value, float) and not math.isfinite(value):
        return path or "result"
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _non_finite(item, f"{path}.{key}" if path else str(key))
        if found:
            return found
    return None


def simulate(spec: dict) -> dict[str, Any]:
    """Simulate one training configuration; see workbench/perfmodel/README.md for the spec and the result keys.
    Never returns NaN or infinity: a spec whose numbers overflow the model raises a ConfigError instead."""
    hint = "check extreme values (train_tokens, seq_len, model dims, efficiency, cluster peaks and bandwidths)"
    try:
        result = _simulate(spec)
    except (ZeroDivisionError, OverflowError) as exc:  # e.g. a 1e-300 TFLOP/s chip: an infinite step time
        raise ConfigError(f"the spec's numbers push the model out of range ({exc}); {hint}") from None
    bad = _non_finite(result)
    if bad:
        raise ConfigError(f"the spec's numbers push the model out of range: result {bad!r} is not finite; {hint}")
    return result


def _simulate(spec: dict) -> dict[str, Any]:
    s = parse_spec(spec)
    _check_total_memory(s)
    runners_up: list[Evaluation] = []
    if s.layout is None:
        ranked = search(s)
        ev, runners_up = ranked[0], ranked[1:]
    else:
        ev = evaluate(s, s.layout, s.micro_batch)
        if ev.problems:  # a layout that does not divide is a bad spec: one clear error, never a "fixed" layout
            L = s.layout
            raise LayoutError(f"layout tp={L.tp} pp={L.pp} dp={L.dp} cp={L.cp} ep={L.ep} vp={L.vp} "
                              f"(micro_batch={s.micro_batch}) does not divide: " + "; ".join(ev.problems))
    chip = s.cluster.chip
    counts = s.model.param_counts()
    result: dict[str, Any] = {
        "chip": chip.chip, "chips": s.cluster.count, "precision": s.precision,
        "model": {"name": s.model.name, "params_total": counts["total"],
                  "params_total_with_mtp": counts["total"] + counts["mtp"], "params_active": counts["active"],
                  "params_active_non_embedding": counts["active_non_embedding"] - s.model.output_params(),
                  "params_convention": PARAMS_CONVENTION,
                  "flops_per_token": s.model.flops_per_token(s.seq_len), "dims": s.model.as_dims()},
        "seq_len": s.seq_len, "global_batch": s.global_batch, "tokens_per_step": s.global_batch * s.seq_len,
        "layout": _layout_dict(s, ev), "searched": s.layout is None,
        "feasible": ev.feasible, "problems": list(ev.problems), "fits": ev.fits,
        "memory_gb_per_chip": ev.memory.get("total_gb"), "memory": ev.memory,
        # hbm_gb as the catalog gives it (GiB); the usable memory in GB, the unit of memory_gb_per_chip
        "hbm_gb": chip.hbm_gb, "usable_hbm_gb": usable_memory_gb(chip),
        "mfu_convention": MFU_CONVENTION, "notes": list(ev.notes),
        "calibration": {k: calibration_record().get(k) for k in ("when", "median_abs_error", "rows")},
    }
    if not ev.fits:
        result["problems"].append(f"needs {ev.memory['total_gb']:.1f} GB per chip, more than the usable "
                                  f"{usable_memory_gb(chip):.1f} GB of {chip.chip}'s {chip.hbm_gb:g} GiB "
                                  f"({device_memory_gb(chip):.1f} GB)")
        result["notes"].append("infeasible layout: does not fit in memory (timing shown as if it did)")
    result.update(_metrics(s, ev))
    if result["mfu"] > 1:
        result["notes"].append("MFU above 1: the PaLM convention counts causal attention in full, twice the work "
                               "that runs; at this sequence length attention dominates the FLOPs")
    result["breakdown"] = ev.breakdown
    result["breakdown_compute"] = ev.breakdown_compute
    result["links"] = ev.links
    result["runners_up"] = [_summary(s, r) for r in runners_up]
    watts, power_source = power_per_chip(chip)
    if s.train_tokens:
        seconds = s.train_tokens / result["tokens_per_s"]
        train = {"tokens": s.train_tokens, "time_s": seconds, "days": seconds / 86400, "power_w_per_chip": watts,
                 "power_source": power_source, "pue": s.pue,
                 "energy_mwh": None if watts is None else s.cluster.count * watts * seconds * s.pue / 3.6e9}
        if s.target_days:
            train["target_days"] = s.target_days
            train["chips_needed"] = chips_for_time(s, ev, s.target_days * 86400) if ev.feasible else None
        result["train"] = train
    return result
