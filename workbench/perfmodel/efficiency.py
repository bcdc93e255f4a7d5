"""The simulator's efficiency parameters: what fraction of a chip's peaks real kernels and collectives reach.

Some are set from measurements with a source (alpha latencies from the NCCL latency model; all-to-all vs all-reduce
bandwidth from DeepEP vs nccl-tests on H800), the rest are fitted on published_runs.csv (beside this file) by
``workbench.perfmodel.calibration.fit`` and stored in ``calibration.json`` beside this file (with the fit's error).
A spec may override any of them under ``"efficiency"``, within ``RANGES`` (below; README.md lists them).
Used by the simulator; documented in README.md here.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from dataclasses import dataclass
from importlib import resources

from workbench.errors import ConfigError


# Plausible range of each parameter: (low, high, low excluded). Wider than anything measured or fitted (the fit's
# own bounds, calibration.FIT_PARAMS, lie inside), narrow enough that no value can overflow a step time to inf/NaN.
RANGES: dict[str, tuple[float, float, bool]] = {
    "gemm_eff_max": (0.0, 1.2, True), "attn_eff": (0.0, 1.2, True), "mem_eff": (0.0, 1.2, True),
    "comm_eff_up": (0.0, 1.2, True), "comm_eff_out": (0.0, 1.2, True), "a2a_eff": (0.0, 1.2, True),
    "gemm_d0": (0.0, 4096.0, False),
    "elementwise_factor": (0.0, 20.0, False),
    "kernel_overhead_s": (0.0, 0.01, False), "kernels_per_layer": (0.0, 1e5, False),
    "alpha_up_s": (0.0, 0.01, False), "alpha_out_s": (0.0, 0.01, False),
    "tp_exposed": (0.0, 1.0, False), "ep_exposed": (0.0, 1.0, False), "dp_overlap": (0.0, 1.0, False),
    "moe_imbalance": (1.0, 100.0, False),
    "grad_reduce_bytes": (1.0, 8.0, False),
    "step_overhead_s": (0.0, 3600.0, False),
}
RANGE_NOTES: dict[str, str] = {
    **{k: "achieved / nominal; > 0" for k in ("gemm_eff_max", "attn_eff", "mem_eff", "comm_eff_up", "comm_eff_out",
                                            "a2a_eff")},
    "gemm_d0": "GEMM size scale: m = n = k = d0 runs at 1/4 of the rate; fitted within 16-512",
    "elementwise_factor": "x the minimal elementwise bytes",
    "kernel_overhead_s": "seconds per kernel launch; GPUs ~4e-6, CPUs up to ~1e-4",
    "kernels_per_layer": "forward kernels per layer",
    "alpha_up_s": "seconds per hop; NCCL ~1e-6-1e-5", "alpha_out_s": "seconds per hop; NCCL ~3e-6-2e-5",
    "tp_exposed": "a fraction", "ep_exposed": "a fraction", "dp_overlap": "a fraction",
    "moe_imbalance": "max expert load / mean load",
    "grad_reduce_bytes": "bytes per gradient element: 1 (fp8) to 8 (fp64)",
    "step_overhead_s": "seconds per optimizer step",
}


@dataclass(frozen=True)
class Efficiency:
    # GEMMs: time = flops / (peak * gemm_eff_max * size_factor), size_factor = 1 / (1 + d0/m + d0/n + d0/k), and never
    # faster than the memory roofline. A chip's measured large-GEMM rate (catalog) replaces peak * gemm_eff_max.
    gemm_eff_max: float = 0.80
    gemm_d0: float = 96.0
    attn_eff: float = 0.55  # flash attention core (causal work) vs dense peak
    mem_eff: float = 0.80  # achieved / nominal HBM bandwidth
    elementwise_factor: float = 1.5  # x the minimal bytes of norms, residuals, activations, RoPE (unfused kernels)
    kernel_overhead_s: float = 4e-6  # per kernel launch (accelerators); CPUs measure theirs
    kernels_per_layer: float = 30.0  # forward kernels per transformer layer; backward counts twice
    # collectives (alpha-beta); bandwidth = measured busbw where the catalog has it, else eff x nominal
    comm_eff_up: float = 0.75  # scale-up (NVLink/HCCS/UB) busbw / unidirectional nominal, when not measured
    comm_eff_out: float = 0.90  # scale-out busbw / NIC nominal (nccl-tests issue 119: ~48 of 50 GB/s)
    a2a_eff: float = 0.70  # all-to-all vs all-reduce bus bandwidth (DeepEP H800 ~155 GB/s vs nccl-tests 215)
    # per hop, lumped: NCCL's model is a base ~6.6-14 us per collective plus 0.6-3.4 us per NVLink hop / 2.7-14 us
    # per network hop; base + per hop calibrated worse (README, blind spots), so one figure per hop is charged
    alpha_up_s: float = 10e-6
    alpha_out_s: float = 20e-6
    tp_exposed: float = 0.7  # fraction of TP/SP collective time not hidden behind compute
    ep_exposed: float = 1.0  # fraction of EP all-to-all not hidden
    dp_overlap: float = 0.9  # fraction of the overlappable backward that hides DP gradient collectives
    moe_imbalance: float = 1.10  # busiest expert's load / mean load (aux-loss-free balancing, not measured here)
    grad_reduce_bytes: float = 4.0  # gradients reduced in fp32 (Megatron / torchtitan default)
    step_overhead_s: float = 0.0  # per optimizer step: data loading, logging, host sync

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ConfigError(f"efficiency {f.name!r} = {value!r} must be a number")
            low, high, open_low = RANGES[f.name]
            if value < low or value > high or (open_low and value == low):
                raise ConfigError(f"efficiency {f.name!r} = {value!r} must be in {'(' if open_low else '['}{low:g}, "
                                  f"{high:g}] ({RANGE_NOTES[f.name]})")

    def replace(self, **changes) -> "Efficiency":
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ConfigError(f"unknown efficiency parameter(s) {unknown}; known: {sorted(self.as_dict())}")
        for name, value in changes.items():  # no float("0.5"), float(True): JSON strings and booleans are mistakes
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"efficiency {name!r} = {value!r} must be a number")
        return dataclasses.replace(self, **{k: float(v) for k, v in changes.items()})

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


@functools.lru_cache(maxsize=1)
def calibration_record() -> dict:
    """The stored fit: {'params': {...}, 'fitted': [...], 'median_abs_error': ..., 'when': ...} (or {} if absent)."""
    try:
        stored = resources.files("workbench.perfmodel").joinpath("calibration.json")
        return json.loads(stored.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return {}


def default_efficiency() -> Efficiency:
    """The calibrated parameters (calibration.json), falling back to the hand-set defaults above."""
    params = calibration_record().get("params", {})
    known = {f.name for f in dataclasses.fields(Efficiency)}
    return Efficiency(**{k: v for k, v in params.items() if k in known})
