"""Parse and validate a simulation spec (a JSON-able dict) into dataclasses, with one clear error per problem.

The schema (README.md here has the full text):
``{"model": {"preset": "glm-5"} | {explicit dims}, "seq_len", "global_batch", "micro_batch", "precision",
"cluster": {"chip", "count", "chips_per_node", ...interconnect overrides}, "layout": {...} | "auto",
"train_tokens", "target_days", "pue", "efficiency": {...overrides}}``.
Layouts are checked for divisibility and reported infeasible with reasons (never "fixed"). Used by the simulator,
``workbench simulate`` and notebooks/05_hardware_comparison.ipynb.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from workbench.errors import ConfigError, WorkbenchError
from workbench.hardware.catalog import NUMERIC_FIELDS, Chip, UnknownChipError, chip_from_dict, find_chip
from workbench.perfmodel.efficiency import Efficiency, default_efficiency
from workbench.perfmodel.shapes import ModelShape, shape_from_dims, shape_from_preset

PRECISIONS = ("bf16", "fp16", "fp8", "fp32")
RECOMPUTE = ("none", "selective", "full")
LAYOUT_KEYS = ("tp", "pp", "dp", "ep", "cp", "vp", "etp", "zero", "recompute", "sp")
SPEC_KEYS = {"model", "seq_len", "global_batch", "micro_batch", "precision", "cluster", "layout", "train_tokens",
             "target_days", "pue", "efficiency", "search_top", "attention"}
ATTENTION = ("flash", "unfused")
CLUSTER_KEYS = {"chip", "count", "chips_per_node", "scale_up_domain"} | set(NUMERIC_FIELDS)
# Sane maxima: far above any real run, low enough that the layout search (divisors of the chip count, of the global
# batch) stays fast and no product of them overflows a float.
MAX_CHIPS = 1_000_000  # the largest clusters built are ~10^5 accelerators
MAX_SEQ_LEN = 100_000_000  # tokens per sequence
MAX_GLOBAL_BATCH = 100_000_000  # sequences per step
PUE_RANGE = (1.0, 10.0)  # facility power / IT power: 1 is the physical floor, real sites are ~1.1-2


class InfeasibleError(WorkbenchError):
    """A valid spec that cannot run at this size; ``limit`` names why. Any other error (a ``ConfigError``: unknown
    preset, no FP8 peak, ...) means the spec itself is wrong, at every size."""

    limit = "infeasible"


class MemoryCapacityError(InfeasibleError):
    """Nothing fits in the chips' memory (more chips, or chips with more memory, would)."""

    limit = "memory capacity"


class LayoutError(InfeasibleError):
    """No parallel layout divides the model, chip count and global batch."""

    limit = "layout / global batch"


def _number(where: str, value: Any, integer: bool = False, positive: bool = True, allow_none: bool = False,
            maximum: float | None = None, minimum: float | None = None):
    if value is None and allow_none:
        return None
    bad = isinstance(value, bool) or not isinstance(value, (int, float))
    if not bad and isinstance(value, int) and abs(value) > 10**300:  # JSON allows 1000...0 (400 digits); float() overflows
        raise ConfigError(f"{where} = an integer of ~{int(value.bit_length() * 0.30103) + 1} digits is implausibly large")
    bad = bad or not math.isfinite(float(value))
    if not bad and integer and not float(value).is_integer():
        bad = True
    if bad:
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{where} = {value!r} must be {kind}")
    if value < 0 or (positive and value == 0):
        raise ConfigError(f"{where} = {value!r} must be {'positive' if positive else 'non-negative'}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{where} = {value!r} must be at least {minimum:g}")
    if maximum is not None and value > maximum:
        limit = f"{int(maximum):,}" if float(maximum).is_integer() else f"{maximum:g}"
        raise ConfigError(f"{where} = {value!r} is implausibly large (at most {limit})")
    return int(value) if integer else float(value)


@dataclass(frozen=True)
class Layout:
    tp: int = 1
    pp: int = 1
    dp: int = 1
    ep: int = 1
    cp: int = 1
    vp: int = 1
    etp: int = 1  # expert tensor parallel (experts are split etp ways; ep x etp must divide tp x cp x dp)
    zero: int = 1
    recompute: str = "selective"
    sp: bool = True  # sequence parallel with TP (Megatron): norms/dropout sharded, AG/RS instead of all-reduce

    def __post_init__(self):
        # JSON's 2.0 is a valid degree: store the int, or 2.0 leaked into the result (tp, chip counts) as floats
        for name in ("tp", "pp", "dp", "ep", "cp", "vp", "etp"):
            object.__setattr__(self, name, _number(f"layout.{name}", getattr(self, name), integer=True,
                                                   maximum=MAX_CHIPS))
        if not isinstance(self.sp, bool):  # "no" or 0 would be read as truthy/falsy, not as the user meant
            raise ConfigError(f"layout.sp = {self.sp!r} must be true or false")
        object.__setattr__(self, "zero", _number("layout.zero", self.zero, integer=True, positive=False))
        if self.zero not in (0, 1, 2, 3):
            raise ConfigError(f"layout.zero = {self.zero!r} must be 0, 1, 2 or 3")
        if self.recompute not in RECOMPUTE:
            raise ConfigError(f"layout.recompute = {self.recompute!r} must be one of {RECOMPUTE}")

    @property
    def chips(self) -> int:
        return self.tp * self.pp * self.dp * self.cp

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in LAYOUT_KEYS}


@dataclass(frozen=True)
class Cluster:
    chip: Chip
    count: int
    chips_per_node: int
    scale_up_domain: int  # chips sharing the scale-up fabric (>= chips_per_node on CloudMatrix / NVL72 / TPU pods)


@dataclass(frozen=True)
class Spec:
    model: ModelShape
    seq_len: int
    global_batch: int
    micro_batch: int | None  # None: searched with layout 'auto'
    precision: str
    cluster: Cluster
    layout: Layout | None  # None: search
    fixed: dict = field(default_factory=dict)  # layout fields fixed during a search
    train_tokens: float | None = None
    target_days: float | None = None
    pue: float = 1.2
    efficiency: Efficiency = field(default_factory=default_efficiency)
    search_top: int = 5
    attention: str = "flash"  # "unfused": materialised s x s scores (pre-2022 Megatron), Korthikanti's 5as/h term


def parse_chip(value: Any) -> Chip:
    if isinstance(value, Chip):
        return value
    if isinstance(value, dict):
        return chip_from_dict(value)
    if isinstance(value, str):
        try:
            return find_chip(value)
        except UnknownChipError as exc:
            raise ConfigError(f"cluster.chip: {exc}") from None
    raise ConfigError(f"cluster.chip must be a catalog name or a dict of chip fields, got {value!r}")


def _check_chip(chip: Chip, cluster: dict) -> None:
    """Every number a chip gives must be > 0: the simulator divides by peaks and bandwidths (0 -> ZeroDivisionError)
    and treats 0 as "absent" elsewhere (a 0 scale-up bandwidth would silently route over the network)."""
    for name in NUMERIC_FIELDS:
        value = getattr(chip, name)
        if value is None:
            continue
        if name in cluster:
            where = f"cluster.{name}"
        elif isinstance(cluster.get("chip"), dict):
            where = f"cluster.chip.{name}"
        else:
            where = f"chip {chip.chip!r}: {name}"
        _number(where, value, integer=name == "scale_up_domain")


def parse_model(value: Any) -> ModelShape:
    if isinstance(value, ModelShape):
        return value
    if isinstance(value, str):
        value = {"preset": value}
    if not isinstance(value, dict):
        raise ConfigError(f"model must be {{'preset': name}} or a dict of dims, got {value!r}")
    if "preset" in value:
        extra = set(value) - {"preset"}
        if extra:
            raise ConfigError(f"model: give either 'preset' or explicit dims, not both (extra keys {sorted(extra)})")
        if not isinstance(value["preset"], str):
            raise ConfigError(f"model.preset = {value['preset']!r} must be a preset name (a string)")
        return shape_from_preset(value["preset"])
    return shape_from_dims(value)


def parse_layout(value: Any) -> tuple[Layout | None, dict]:
    """A fixed Layout, or (None, fixed fields) for a search: "auto" or {"auto": true, "tp": 8, ...}."""
    if value is None or value == "auto":
        return None, {}
    if not isinstance(value, dict):
        raise ConfigError(f"layout must be a dict or 'auto', got {value!r}")
    unknown = sorted(set(value) - set(LAYOUT_KEYS) - {"auto", "micro_batch"})
    if unknown:
        raise ConfigError(f"layout: unknown key(s) {unknown}; known: {list(LAYOUT_KEYS)} (+ 'auto': true to search "
                          "the rest)")
    fields = {k: v for k, v in value.items() if k in LAYOUT_KEYS and v is not None}
    if not isinstance(value.get("auto", False), bool):
        raise ConfigError(f"layout.auto = {value['auto']!r} must be true or false")
    if value.get("auto"):
        checked = Layout(**fields)  # validate the fixed values now (and keep them as ints)
        return None, {k: getattr(checked, k) for k in fields}
    return Layout(**fields), {}


def parse_spec(spec: dict) -> Spec:
    if not isinstance(spec, dict):
        raise ConfigError(f"a simulation spec must be a dict (JSON object), got {type(spec).__name__}")
    unknown = sorted(set(spec) - SPEC_KEYS)
    if unknown:
        raise ConfigError(f"spec: unknown key(s) {unknown}; known: {sorted(SPEC_KEYS)}")
    for key in ("model", "seq_len", "global_batch", "cluster"):
        if key not in spec:
            raise ConfigError(f"spec: {key!r} is missing (the spec schema is in workbench/perfmodel/README.md)")
    model = parse_model(spec["model"])
    seq_len = _number("seq_len", spec["seq_len"], integer=True, maximum=MAX_SEQ_LEN)
    global_batch = _number("global_batch", spec["global_batch"], integer=True, maximum=MAX_GLOBAL_BATCH)
    micro_batch = _number("micro_batch", spec.get("micro_batch"), integer=True, allow_none=True,
                          maximum=MAX_GLOBAL_BATCH)
    precision = spec.get("precision", "bf16")
    if precision not in PRECISIONS:
        raise ConfigError(f"precision = {precision!r} must be one of {PRECISIONS}")

    cluster = spec["cluster"]
    if not isinstance(cluster, dict):
        raise ConfigError(f"cluster must be a dict like {{'chip': 'H100', 'count': 64}}, got {cluster!r}")
    bad = sorted(set(cluster) - CLUSTER_KEYS)
    if bad:
        raise ConfigError(f"cluster: unknown key(s) {bad}; known: {sorted(CLUSTER_KEYS)}")
    if "chip" not in cluster or "count" not in cluster:
        raise ConfigError("cluster needs 'chip' and 'count', e.g. {'chip': 'H100', 'count': 64, 'chips_per_node': 8}")
    if isinstance(cluster["chip"], dict) and cluster["chip"].get("scale_up_domain") is not None:
        # checked before the catalog's chip_from_dict, which would truncate 2.5 to 2
        _number("cluster.chip.scale_up_domain", cluster["chip"]["scale_up_domain"], integer=True, maximum=MAX_CHIPS)
    chip = parse_chip(cluster["chip"])
    overrides = {k: v for k, v in cluster.items() if k in NUMERIC_FIELDS}
    if overrides:  # e.g. a slower network for the same chip (notebook 05's interconnect slider)
        for k, v in overrides.items():
            # peaks, bandwidths, memory and power are divided by or compared with: 0 is never meaningful
            # (scale_up_gb_s: 0 would silently route scale-up traffic over the network)
            # measured_gemm_tflops: null drops the catalog chip's measured rate (e.g. under a lowered bf16 peak)
            _number(f"cluster.{k}", v, integer=k == "scale_up_domain", maximum=MAX_CHIPS if k == "scale_up_domain" else None,
                    allow_none=k == "measured_gemm_tflops")
        chip = chip.with_overrides(**overrides)
    _check_chip(chip, cluster)
    count = _number("cluster.count", cluster["count"], integer=True, maximum=MAX_CHIPS)
    per_node = _number("cluster.chips_per_node", cluster.get("chips_per_node", min(chip.scale_up_domain or 8, 8, count)),
                       integer=True, maximum=MAX_CHIPS)
    if count % per_node and count > per_node:
        raise ConfigError(f"cluster.count = {count} is not a multiple of chips_per_node = {per_node}")
    # only an explicit scale_up_domain widens the catalog's: 16 chips in a node are not one 16-way NVLink domain
    domain = _number("cluster.scale_up_domain", cluster.get("scale_up_domain", chip.scale_up_domain or per_node),
                     integer=True, maximum=MAX_CHIPS)
    if "chips_per_node" in cluster and "scale_up_domain" not in cluster and per_node < domain and count > per_node:
        # a node smaller than the domain was silently ignored (one H100 per node still priced TP=8 over NVLink); the
        # catalog cannot say whether the fabric stops at the node or joins nodes (NVL72, CloudMatrix384): ask. Only
        # with more than one node: a lone node prices the same either way (its links stop at count)
        raise ConfigError(f"cluster.chips_per_node = {per_node} is smaller than {chip.chip}'s scale-up domain of "
                          f"{domain} chips; give cluster.scale_up_domain: {per_node} if the scale-up fabric stops at "
                          f"the node, or {domain} if it joins nodes (NVL72, CloudMatrix384)")
    if precision in ("bf16", "fp16") and chip.peak_flops("bf16") is None:
        raise ConfigError(f"{chip.chip} has no bf16 peak in the catalog; give cluster.bf16_dense_tflops or pick "
                          f"another precision")
    if precision == "fp8" and chip.peak_flops("fp8") is None:
        raise ConfigError(f"{chip.chip} has no FP8 peak in the catalog (no sourced figure); give "
                          f"cluster.fp8_dense_tflops or use precision 'bf16'")
    if precision == "fp32" and chip.peak_flops("fp32") is None:
        raise ConfigError(f"{chip.chip} has no fp32 peak; give cluster.fp32_tflops")
    if chip.hbm_tb_s is None:
        raise ConfigError(f"{chip.chip} has no memory bandwidth (hbm_tb_s); give cluster.hbm_tb_s")
    if chip.hbm_gb is None:  # without it nothing could be checked for fit: every layout "fitted" (GLM-5 on 8 chips)
        raise ConfigError(f"{chip.chip} has no memory capacity (hbm_gb); give cluster.hbm_gb (GiB per chip, the vendor's 'GB')")

    layout, fixed = parse_layout(spec.get("layout", "auto"))
    if isinstance(spec.get("layout"), dict) and "micro_batch" in spec["layout"]:
        micro_batch = _number("layout.micro_batch", spec["layout"]["micro_batch"], integer=True,
                              maximum=MAX_GLOBAL_BATCH)
    if layout is not None and micro_batch is None:
        micro_batch = 1
    if micro_batch is not None and global_batch % micro_batch:  # wrong at any chip count: say so, not "no layout"
        raise ConfigError(f"global_batch = {global_batch} is not a multiple of micro_batch = {micro_batch}; give a "
                          f"micro_batch that divides it (or none with layout 'auto', which searches it)")

    attention = spec.get("attention", "flash")
    if attention not in ATTENTION:
        raise ConfigError(f"attention = {attention!r} must be one of {ATTENTION}")
    efficiency = default_efficiency()
    if spec.get("efficiency") is not None:  # null: no overrides; 0, [], "" are mistakes, not "no overrides"
        if not isinstance(spec["efficiency"], dict):
            raise ConfigError(f"efficiency = {spec['efficiency']!r} must be a dict (JSON object) of parameter "
                              f"overrides, e.g. {{\"mem_eff\": 0.7}}")
        efficiency = efficiency.replace(**spec["efficiency"])
    if spec.get("target_days") is not None and spec.get("train_tokens") is None:
        raise ConfigError("target_days needs train_tokens: the chips needed are those that train that many tokens "
                          "in that time")
    if spec.get("train_tokens") == 0 and not isinstance(spec["train_tokens"], bool):
        # 0 silently dropped the train section (and target_days with it)
        raise ConfigError("train_tokens = 0 must be positive; leave train_tokens out to skip the time to train")
    return Spec(
        model=model, seq_len=seq_len, global_batch=global_batch, micro_batch=micro_batch, precision=precision,
        cluster=Cluster(chip=chip, count=count, chips_per_node=per_node, scale_up_domain=domain),
        layout=layout, fixed=fixed,
        train_tokens=_number("train_tokens", spec.get("train_tokens"), allow_none=True),
        target_days=_number("target_days", spec.get("target_days"), allow_none=True),
        pue=_number("pue", spec.get("pue", 1.2), minimum=PUE_RANGE[0], maximum=PUE_RANGE[1]), efficiency=efficiency,
        search_top=_number("search_top", spec.get("search_top", 5), integer=True), attention=attention,
    )
