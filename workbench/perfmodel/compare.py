"""Hardware comparisons for notebooks/05_hardware_comparison.ipynb: spec table, roofline, the seed's claim, scaling.

The seed claims that an Ascend 910B is about 3x slower than an H100, that 3x more chips make up for it "provided
your distributed training software can scale efficiently", and that MFU runs 30-60%. ``claim_study`` puts numbers
on that for one model: per chip, the predicted MFU at a common chip count, the chips needed to match the reference
chip's time-to-train, the energy, and ``scaling_curve`` shows where scaling efficiency breaks down (pipeline bubble
at a fixed global batch, interconnect, memory capacity). Every function returns plain rows / plotly figures.
"""

from __future__ import annotations

import difflib
import json
import math
from typing import Any

from workbench.errors import WorkbenchError
from workbench.hardware.catalog import Chip, catalog_table, find_chip
from workbench.perfmodel.api import power_per_chip, simulate
from workbench.perfmodel.collectives import scale_up_busbw
from workbench.perfmodel.efficiency import default_efficiency
from workbench.perfmodel.shapes import preset_names
from workbench.perfmodel.spec import InfeasibleError, MemoryCapacityError, parse_layout

SPEC_COLUMNS = ["chip", "bf16_dense_tflops", "fp8_dense_tflops", "hbm_gb", "hbm_tb_s", "scale_up_gb_s",
                "scale_up_domain", "scale_up_busbw_gb_s", "scale_out_gb_s_per_chip", "tdp_w", "system_w_per_chip"]


def spec_rows(chips: list[Chip] | None = None) -> list[dict[str, Any]]:
    """The catalog as rows: each number followed by its source and confidence (the notebook's spec table)."""
    rows = []
    for row in catalog_table(chips):
        out = {"chip": row["chip"]}
        for col in SPEC_COLUMNS[1:]:
            value = row[col]
            out[col] = value
            out[f"{col} source"] = f"{row[col + '_source']} [{row[col + '_confidence']}]" if value is not None else ""
        rows.append(out)
    return rows


def roofline_figure(chips: list[Chip], this_machine: Chip | None = None, measured_points: list[dict] | None = None):
    """Attainable TFLOP/s vs arithmetic intensity (FLOP/byte) for every chip, plus this machine's measured points."""
    import plotly.graph_objects as go

    fig = go.Figure()
    xs = [2 ** (k / 4) for k in range(-8, 57)]  # 0.25 ... 16384 FLOP/byte
    for chip in chips:
        peak = chip.peak_flops("bf16") or chip.peak_flops("fp32")
        if not peak or not chip.hbm_tb_s:
            continue
        bw = chip.hbm_tb_s * 1e12
        fig.add_trace(go.Scatter(x=xs, y=[min(peak, x * bw) / 1e12 for x in xs], mode="lines", name=chip.chip,
                                 hovertemplate=f"{chip.chip}<br>ridge {peak / bw:.0f} FLOP/B<extra></extra>"))
    if this_machine is not None and this_machine.peak_flops("fp32") and this_machine.hbm_tb_s:
        peak, bw = this_machine.peak_flops("fp32"), this_machine.hbm_tb_s * 1e12
        fig.add_trace(go.Scatter(x=xs, y=[min(peak, x * bw) / 1e12 for x in xs], mode="lines",
                                 name=f"{this_machine.chip} (fp32, measured)", line=dict(dash="dash", color="black")))
    for p in measured_points or []:
        fig.add_trace(go.Scatter(x=[p["intensity"]], y=[p["tflops"]], mode="markers", marker=dict(size=11, symbol="star"),
                                 name=p["label"]))
    fig.update_layout(title="Roofline: dense BF16 peak and HBM bandwidth (catalog), and this machine (measured fp32)",
                      xaxis=dict(type="log", title="arithmetic intensity (FLOP / byte)"),
                      yaxis=dict(type="log", title="attainable TFLOP/s"), height=520)
    return fig


LAYOUT_HINT_HELP = 'give "auto" or a JSON object of layout fields, e.g. {"auto": true, "tp": 1, "ep": 8}'


def parse_layout_hint(text: str) -> str | dict[str, Any]:
    """Notebook 05's ``layout_hint``: "auto", or JSON fixing some layout fields ({"auto": true, "tp": 1}), checked
    like a spec's layout. Raises one ``WorkbenchError`` naming the parameter."""
    text = str(text).strip()
    if text.lower() == "auto":
        return "auto"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise WorkbenchError(f"parameter 'layout_hint' = {text!r} is not valid JSON ({exc.msg} at column "
                             f"{exc.colno}); {LAYOUT_HINT_HELP}") from None
    if not isinstance(value, dict):
        raise WorkbenchError(f"parameter 'layout_hint' = {text!r} is not a JSON object; {LAYOUT_HINT_HELP}")
    try:
        parse_layout(value)
    except WorkbenchError as exc:
        raise WorkbenchError(f"parameter 'layout_hint': {exc}") from None
    return value


def check_inputs(model: str, chips: list, reference_chip: str, layout_hint: str) -> str | dict[str, Any]:
    """Notebook 05's checks that only the perfmodel can make (types, bounds and list lengths are
    ``workbench.params``'s job): a model preset it knows, catalog chips, a layout hint that parses. Returns the
    layout ("auto" or a dict); raises one ``WorkbenchError`` listing every problem."""
    problems, layout = [], None
    presets = preset_names()
    if model not in presets:
        close = difflib.get_close_matches(str(model), presets, n=1, cutoff=0.5)
        problems.append(f"parameter 'model' = {model!r} is not a model preset the perfmodel knows"
                        + (f"; did you mean {close[0]!r}?" if close else "") + f" (presets: {', '.join(presets)})")
    for where, name in [("chips", c) for c in chips] + [("reference_chip", reference_chip)]:
        try:
            find_chip(name)
        except WorkbenchError as exc:
            problems.append(f"parameter {where!r}: {exc}")
    try:
        layout = parse_layout_hint(layout_hint)
    except WorkbenchError as exc:
        problems.append(str(exc))
    if problems:
        raise WorkbenchError("; ".join(problems))
    return layout


def base_spec(model: dict | str, chip: str, count: int, seq_len: int, global_batch: int, precision: str = "bf16",
              train_tokens: float | None = None, layout: Any = "auto", **cluster: Any) -> dict[str, Any]:
    model = {"preset": model} if isinstance(model, str) else model
    return {"model": model, "seq_len": seq_len, "global_batch": global_batch, "precision": precision,
            "cluster": {"chip": chip, "count": count, **cluster}, "layout": layout, "train_tokens": train_tokens,
            "search_top": 3}


def _best(spec_dict: dict[str, Any]) -> dict[str, Any] | None:
    """The best layout's result for ``spec_dict`` (a search unless the layout is fixed), or None if nothing fits."""
    try:
        return simulate({**spec_dict, "search_top": 1})
    except ValueError:
        return None


def _days(result: dict[str, Any] | None, train_tokens: float) -> float:
    if result is None or not result.get("feasible"):
        return math.inf
    return train_tokens / result["tokens_per_s"] / 86400


def chips_to_match(spec_dict: dict[str, Any], target_days: float, train_tokens: float, unit: int = 64,
                   max_factor: int = 64) -> dict[str, Any]:
    """Fewest chips (a multiple of ``unit``) whose best layout trains ``train_tokens`` within ``target_days``:
    doubling from the spec's count, then bisection. The layout is searched again at every count."""
    count = spec_dict["cluster"]["count"]
    lo, hi, hi_result, best_seen = 0, None, None, None
    c = max(unit, count // unit * unit)
    while c <= count * max_factor:
        result = _best({**spec_dict, "cluster": {**spec_dict["cluster"], "count": c}})
        days = _days(result, train_tokens)
        if result is not None and (best_seen is None or days < best_seen[1]):
            best_seen = (c, days)
        if days <= target_days:
            hi, hi_result = c, result
            break
        lo = c
        c *= 2
    if hi is None:
        c, days = best_seen if best_seen else (None, math.inf)
        return {"chips": None, "reached": False, "best_chips": c, "best_days": days,
                "why": f"not reached up to {count * max_factor} chips at global_batch {spec_dict['global_batch']}: "
                       f"more replicas mean fewer micro-batches each (pipeline bubble) or no layout divides"}
    while hi - lo > unit:  # bisection on multiples of `unit`
        mid = (lo + hi) // 2 // unit * unit
        if mid <= lo:
            break
        result = _best({**spec_dict, "cluster": {**spec_dict["cluster"], "count": mid}})
        if _days(result, train_tokens) <= target_days:
            hi, hi_result = mid, result
        else:
            lo = mid
    return {"chips": hi, "reached": True, "days": _days(hi_result, train_tokens), "layout": hi_result["layout"],
            "mfu": hi_result["mfu"], "energy_mwh": (hi_result.get("train") or {}).get("energy_mwh")}


def claim_study(chips: list[str], model: dict | str, count: int, seq_len: int, global_batch: int,
                train_tokens: float, reference: str, precision: str = "bf16", layout: Any = "auto",
                pue: float = 1.2, unit: int = 64) -> list[dict[str, Any]]:
    """Per chip at ``count`` chips: MFU, tokens/s/chip, days and energy for ``train_tokens``, and the chips needed to
    train as fast as ``count`` x ``reference`` (growing data parallelism at the same global batch).

    The first row is always the reference (``"reference": True``). A chip that cannot run at ``count`` gets a row
    with an ``error`` instead of numbers. If that is the reference, nothing is compared: the other rows keep their
    own numbers but have ``chips_needed`` None, ``reached`` None and ``why_not`` saying why (another chip never
    stands in for the reference)."""
    ref_chip = find_chip(reference).chip
    order = {ref_chip: reference}
    for name in chips:  # the reference first, then each other chip once
        order.setdefault(find_chip(name).chip, name)
    rows: list[dict[str, Any]] = []
    ref_days = None
    for chip_name, name in order.items():
        is_ref = chip_name == ref_chip
        spec_dict = base_spec(model, name, count, seq_len, global_batch, precision, train_tokens, layout)
        spec_dict["pue"] = pue
        try:
            result = simulate(spec_dict)
            if not result["feasible"]:  # a fixed layout that does not fit: simulate reports it, it does not raise
                raise MemoryCapacityError("; ".join(result["problems"]))
        except ValueError as exc:  # e.g. impossible memory at this count: that is a finding, not a crash
            rows.append({"chip": chip_name, "count": count, "reference": is_ref, "error": str(exc)})
            continue
        row = {"chip": result["chip"], "count": count, "reference": is_ref, "mfu": result["mfu"],
               "step_time_s": result["step_time_s"], "tokens_per_s_per_chip": result["tokens_per_s_per_chip"],
               "days": result["train"]["days"], "energy_mwh": result["train"]["energy_mwh"],
               "power_w_per_chip": result["train"]["power_w_per_chip"],
               "memory_gb_per_chip": result["memory_gb_per_chip"], "layout": result["layout"],
               "breakdown": result["breakdown"], "bf16_tflops": find_chip(name).bf16_dense_tflops,
               "mfu_vs_bf16_peak": result.get("mfu_vs_bf16_peak", result["mfu"])}
        if is_ref:
            ref_days = row["days"]
            row.update(chips_needed=count, chips_ratio=1.0, days_at_chips_needed=ref_days, reached=True, why_not=None,
                       mfu_at_chips_needed=row["mfu"], energy_mwh_at_chips_needed=row["energy_mwh"])
        elif ref_days is None:
            row.update(chips_needed=None, chips_ratio=None, days_at_chips_needed=None, reached=None,
                       why_not=f"not compared: the reference {count} x {ref_chip} cannot run at this count",
                       mfu_at_chips_needed=None, energy_mwh_at_chips_needed=None)
        else:
            need = chips_to_match(spec_dict, ref_days, train_tokens, unit=unit)
            row.update(chips_needed=need["chips"], chips_ratio=(need["chips"] or math.nan) / count,
                       days_at_chips_needed=need.get("days"), reached=need["reached"], why_not=need.get("why"),
                       mfu_at_chips_needed=need.get("mfu"), energy_mwh_at_chips_needed=need.get("energy_mwh"))
        rows.append(row)
    return rows


def _mwh(value: float | None) -> str:
    return "unknown energy (no power figure)" if value is None else f"{value:,.0f} MWh"


def claim_summary(rows: list[dict[str, Any]], model: str, count: int, train_tokens: float) -> list[str]:
    """The claim study as sentences (notebook 05's conclusion): the reference, each chip against it, the MFU range.
    Says plainly when the reference or every chip cannot run, and gives each failing chip's error."""
    if not any("mfu" in r for r in rows):
        return [f"No chip can train {model} on {count} chips, so nothing is compared; each chip's error:"] + [
            f"{r['chip']}: {r['error']}" for r in rows]
    ref = next((r for r in rows if r.get("reference")), rows[0])
    if "mfu" in ref:
        lines = [f"Reference: {count} x {ref['chip']} train {model} ({train_tokens:.3g} tokens) in "
                 f"{ref['days']:.0f} days at MFU {ref['mfu']:.0%}, {_mwh(ref['energy_mwh'])}."]
    else:
        lines = [f"Reference: {count} x {ref['chip']} cannot train {model} at this count, so no chip is compared "
                 f"with it (raise count or pick another reference_chip): {ref['error']}"]
    for r in rows:
        if r is ref:
            continue
        if "mfu" not in r:
            lines.append(f"{r['chip']}: {r['error']}")
        elif "mfu" not in ref:
            lines.append(f"{r['chip']} (not compared): MFU {r['mfu']:.0%}, {r['days']:.0f} days on {count} chips, "
                         f"{_mwh(r['energy_mwh'])}.")
        else:
            speed = ref["tokens_per_s_per_chip"] / r["tokens_per_s_per_chip"]
            per_chip = f"{speed:.1f}x slower per chip" if speed >= 1 else f"{1 / speed:.1f}x faster per chip"
            if r.get("reached"):
                lines.append(f"{r['chip']}: {per_chip} (MFU {r['mfu']:.0%}); {r['chips_needed']} chips "
                             f"({r['chips_ratio']:.1f}x) match the reference time, using "
                             f"{_mwh(r['energy_mwh_at_chips_needed'])}.")
            else:
                lines.append(f"{r['chip']}: {per_chip}; the reference time is not reached: {r['why_not']}")
    mfus = [r["mfu"] for r in rows if "mfu" in r]
    bf16 = [r.get("mfu_vs_bf16_peak", r["mfu"]) for r in rows if "mfu" in r]
    if bf16 != mfus:  # FP8: MFU against the FP8 peak is not the seed's (BF16) convention; give both
        lines.append(f"Predicted MFU across chips: {min(mfus):.0%}-{max(mfus):.0%} against the FP8 peak, "
                     f"{min(bf16):.0%}-{max(bf16):.0%} against the BF16 peak (the seed's 30-60% counts BF16).")
    else:
        lines.append(f"Predicted MFU across chips: {min(mfus):.0%}-{max(mfus):.0%} (the seed says 30-60%; large MoE "
                     "models with EP all-to-all and recomputation sit at the low end in this model).")
    return lines


def scaling_curve(model: dict | str, chip: str, counts: list[int], seq_len: int, global_batch: int,
                  precision: str = "bf16", layout: Any = "auto", **cluster: Any) -> list[dict[str, Any]]:
    """Tokens/s and scaling efficiency vs chip count at a fixed global batch, with the best layout at each count;
    names the overhead that grows (bubble, DP/EP communication) and, for each count that cannot run, its ``limit``:
    "memory capacity", "layout / global batch", or "invalid spec" (the spec is wrong at any count: an unknown
    model, no FP8 peak for this chip, ...), with the error in ``why``."""
    if not counts:
        raise WorkbenchError("scaling_curve needs at least one chip count")
    rows, base = [], None
    for count in sorted(counts):
        spec_dict = base_spec(model, chip, count, seq_len, global_batch, precision, layout=layout, **cluster)
        try:
            result = simulate({**spec_dict, "search_top": 1})
        except InfeasibleError as exc:
            rows.append({"chips": count, "feasible": False, "limit": exc.limit, "why": str(exc)})
            continue
        except ValueError as exc:
            rows.append({"chips": count, "feasible": False, "limit": "invalid spec", "why": str(exc)})
            continue
        if not result["feasible"]:  # a fixed layout that does not fit in memory
            rows.append({"chips": count, "feasible": False, "limit": MemoryCapacityError.limit,
                         "why": "; ".join(result["problems"])})
            continue
        tps = result["tokens_per_s"]
        if base is None:
            base = (count, tps)
        non_compute = {k: v for k, v in result["breakdown"].items() if k != "compute"}
        dominant = max(non_compute, key=non_compute.get)
        rows.append({"chips": count, "feasible": True, "tokens_per_s": tps, "mfu": result["mfu"],
                     "scaling_efficiency": (tps / count) / (base[1] / base[0]), "step_time_s": result["step_time_s"],
                     "dominant_overhead": dominant, "overhead_share": non_compute[dominant] / result["step_time_s"],
                     "layout": result["layout"], "breakdown": result["breakdown"]})
    return rows


def scaling_breaks(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Where one ``scaling_curve`` breaks down:
    - ``out_of_memory_up_to``: the largest tested count at which nothing fits in memory (that count itself is
      infeasible); None if every tested count fits;
    - ``first_feasible``: the smallest tested count that runs;
    - ``efficiency_below_80pct_at`` and ``cause``: the first count whose scaling efficiency drops below 0.8, and its
      largest overhead."""
    ok = [r for r in rows if r["feasible"]]
    oom = max([r["chips"] for r in rows if not r["feasible"] and r.get("limit") == MemoryCapacityError.limit],
              default=None)
    knee = next((r for r in ok if r["scaling_efficiency"] < 0.8), None)
    return {"out_of_memory_up_to": oom, "first_feasible": ok[0]["chips"] if ok else None,
            "efficiency_below_80pct_at": None if knee is None else knee["chips"],
            "cause": None if knee is None else knee["dominant_overhead"]}


def breakdown_figure(rows: list[dict[str, Any]], title: str = "Step time breakdown"):
    """Stacked bars of the step-time breakdown, one bar per row (needs 'chip' and 'breakdown')."""
    import plotly.graph_objects as go

    rows = [r for r in rows if r.get("breakdown")]
    keys = [k for k in rows[0]["breakdown"]] if rows else []
    fig = go.Figure()
    for key in keys:
        fig.add_trace(go.Bar(name=key, x=[r["chip"] for r in rows], y=[r["breakdown"][key] for r in rows]))
    fig.update_layout(barmode="stack", title=title, yaxis_title="seconds per step", height=450)
    return fig


def energy_note(chip: str) -> str:
    watts, source = power_per_chip(find_chip(chip))
    return f"{find_chip(chip).chip}: {watts:.0f} W per chip ({source})" if watts else f"{chip}: {source}"


def interconnect_sensitivity(row: dict[str, Any], model: dict | str, seq_len: int, global_batch: int,
                             precision: str = "bf16", factors: tuple[float, ...] = (0.5, 2.0)) -> dict[str, Any]:
    """How a claim row's step time moves when its scale-out (NIC) or scale-up bandwidth is scaled, at its layout.

    Keys ``"scale-out x{f}"`` and ``"scale-up x{f}"``: the relative change of the step time. Scale-up scales the link
    rate (``scale_up_gb_s``) and the bus bandwidth the simulator actually used (a catalog busbw after its cap at
    half the link rate) together, so x2 is twice the bandwidth the base row ran at."""
    chip = find_chip(row["chip"])
    layout = {k: v for k, v in row["layout"].items() if k not in ("micro_batch", "micro_batches_per_step")}
    base = base_spec(model, chip.chip, row["count"], seq_len, global_batch, precision, layout=layout)
    base["micro_batch"] = row["layout"]["micro_batch"]
    out = {"chip": chip.chip, "step_time_s": row["step_time_s"]}
    busbw = scale_up_busbw(chip, default_efficiency())
    for label, nominal in (("scale-out", {"scale_out_gb_s_per_chip": chip.scale_out_gb_s_per_chip}),
                           ("scale-up", {"scale_up_gb_s": chip.scale_up_gb_s,
                                         "scale_up_busbw_gb_s": busbw / 1e9 if busbw else None})):
        nominal = {k: v for k, v in nominal.items() if v}
        if not nominal:
            continue
        for f in factors:
            r = simulate({**base, "cluster": {**base["cluster"], **{k: v * f for k, v in nominal.items()}}})
            out[f"{label} x{f:g}"] = r["step_time_s"] / row["step_time_s"] - 1
    return out
