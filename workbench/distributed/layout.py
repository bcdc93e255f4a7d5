"""The parallel layout: parse ``--parallel dp=2,tp=1,pp=1,ep=1`` and check it against the world and the model.

A layout names how many ranks each parallelism gets. The mesh dimensions, outermost first, are
``pp`` (pipeline stages), ``dp`` (DDP replicas), ``fsdp`` (FSDP2 shards), ``ep`` (expert shards) and ``tp``
(tensor-parallel shards); their sizes multiply to the world size. ``dp``, ``fsdp`` and ``ep`` ranks all read
different data (a global batch is split over ``dp * fsdp * ep`` ranks); ``tp`` and ``pp`` ranks of one replica
read the same data. Options ride along in the same string: ``schedule=gpipe|1f1b``, ``microbatches=N``.

Used by ``workbench train --parallel``, ``workbench launch`` and notebooks/03_distributed.ipynb.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from workbench.errors import ConfigError

MESH_ORDER = ("pp", "dp", "fsdp", "ep", "tp")  # outermost -> innermost (tp innermost: it talks the most)
SCHEDULES = ("gpipe", "1f1b")

# Combinations with a tested plan. Others are refused with a clear message rather than half-working.
SUPPORTED = (
    frozenset(), frozenset({"dp"}), frozenset({"fsdp"}), frozenset({"tp"}), frozenset({"pp"}), frozenset({"ep"}),
    frozenset({"fsdp", "tp"}), frozenset({"dp", "ep"}), frozenset({"fsdp", "pp"}),
)


@dataclass(frozen=True)
class ParallelLayout:
    """Ranks per parallelism; every size >= 1. ``active`` lists the ones above 1."""

    dp: int = 1
    fsdp: int = 1
    tp: int = 1
    pp: int = 1
    ep: int = 1
    schedule: str = "1f1b"
    microbatches: int = 0  # 0 = as many as pipeline stages (the smallest that keeps every stage busy in 1F1B)

    def __post_init__(self):
        for name in MESH_ORDER:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"parallel layout: {name}={value!r} must be a whole number >= 1")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"parallel layout: schedule={self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if self.microbatches < 0:
            raise ConfigError(f"parallel layout: microbatches={self.microbatches} must be >= 0 (0 = one per stage)")
        combo = frozenset(self.active)
        if combo not in SUPPORTED:
            known = ", ".join("+".join(sorted(c)) for c in SUPPORTED if c)
            raise ConfigError(f"parallel layout {self}: combining {'+'.join(sorted(combo))} is not supported; "
                              f"supported: {known}")

    # ---- sizes ------------------------------------------------------------------------------------------------
    @property
    def world_size(self) -> int:
        return self.pp * self.dp * self.fsdp * self.ep * self.tp

    @property
    def data_parallel_size(self) -> int:
        """Ranks that read different data: the global batch is divided by this."""
        return self.dp * self.fsdp * self.ep

    @property
    def active(self) -> tuple[str, ...]:
        return tuple(name for name in MESH_ORDER if getattr(self, name) > 1)

    @property
    def n_microbatches(self) -> int:
        return self.microbatches or self.pp

    def mesh_shape(self) -> tuple[tuple[str, ...], tuple[int, ...]]:
        """(names, sizes) of the device mesh: the active dims, or ("dp",) of size 1 for a single process."""
        names = self.active or ("dp",)
        return names, tuple(getattr(self, n) for n in names)

    def __str__(self) -> str:
        text = ",".join(f"{n}={getattr(self, n)}" for n in MESH_ORDER)
        if self.pp > 1:
            text += f",schedule={self.schedule},microbatches={self.n_microbatches}"
        return text

    # ---- checks against the world and the model --------------------------------------------------------------
    def check_world(self, world_size: int) -> "ParallelLayout":
        if self.world_size != world_size:
            raise ConfigError(
                f"parallel layout {self}: sizes multiply to {self.world_size} but the world has {world_size} "
                f"process(es); make pp*dp*fsdp*ep*tp = {world_size} (e.g. dp={world_size}) or launch "
                f"--nproc {self.world_size}")
        return self

    def check_model(self, config: Any) -> "ParallelLayout":
        """Check divisibility against a model config (reads num_heads, num_kv_heads, num_layers, num_experts), what
        tp cannot shard (MLA, MoE layers), and for pp > 1 what the pipeline stages cannot carry
        (``pipeline_problems``). Everything ``parallelize`` would refuse for the model is refused here, up front."""
        problems = []
        heads, kv_heads = _get(config, "num_heads", "n_heads"), _get(config, "num_kv_heads", "n_kv_heads")
        layers, experts = _get(config, "num_layers", "n_layers"), _get(config, "num_experts", "n_experts")
        if _get(config, "attention_type") == "mla":
            kv_heads = None  # MLA has no separate key/value heads
        if self.tp > 1:
            if heads is not None and heads % self.tp:
                problems.append(f"tp={self.tp} must divide the {heads} attention heads")
            if kv_heads is not None and kv_heads % self.tp:
                problems.append(f"tp={self.tp} must divide the {kv_heads} key/value heads")
            if _get(config, "attention_type") == "mla":
                problems.append("tp over MLA attention (glm5) is not supported; use fsdp or dp")
            if experts:
                problems.append("tensor parallel covers dense layers only; for MoE models use ep")
        if self.pp > 1:
            if layers is not None and self.pp > layers:
                problems.append(f"pp={self.pp} stages need at least {self.pp} layers (the model has {layers})")
            unsupported = pipeline_problems(config)
            if unsupported:
                problems.append("pipeline parallel does not support " + ", ".join(unsupported))
        if self.ep > 1:
            if not experts:
                problems.append(f"ep={self.ep} needs a mixture-of-experts model (this one has no experts)")
            elif experts % self.ep:
                problems.append(f"ep={self.ep} must divide the {experts} experts")
        if problems:
            raise ConfigError(f"parallel layout {self} does not fit the model: " + "; ".join(problems))
        return self

    def check_batch(self, global_batch: int, seq_len: int | None = None) -> "ParallelLayout":
        """The global batch must split evenly over the data ranks and (pp > 1) the micro-batches; with ``seq_len``
        and tp > 1, the sequence over the tp ranks too (``check_sequence``)."""
        if seq_len is not None:
            self.check_sequence(seq_len)
        if global_batch % self.data_parallel_size:
            raise ConfigError(f"global batch {global_batch} must be divisible by dp*fsdp*ep = "
                              f"{self.data_parallel_size} (each data rank takes an equal share)")
        return self.check_rank_batch(global_batch // self.data_parallel_size)

    def check_rank_batch(self, per_rank: int) -> "ParallelLayout":
        """One rank's batch must split into the pipeline's micro-batches (pp > 1)."""
        if self.pp > 1 and per_rank % self.n_microbatches:
            raise ConfigError(f"per-rank batch {per_rank} must be divisible by microbatches={self.n_microbatches}")
        return self

    def check_sequence(self, seq_len: int) -> "ParallelLayout":
        """Sequence parallel (on by default under tp) gives each tp rank an equal slice of the sequence; an uneven
        slice breaks the norms' backward on one rank while the others wait in a collective."""
        if self.tp > 1 and seq_len % self.tp:
            raise ConfigError(f"seq_len {seq_len} must be divisible by tp={self.tp} (sequence parallel gives each tp "
                              f"rank an equal slice of the sequence); use a multiple of {self.tp}")
        return self


def every_layout(world_size: int) -> list[str]:
    """Each parallelism alone over the whole world (pp with both schedules): what notebook 03's ``layouts="all"``
    tries. A world of one has nothing to split: just ``dp=1``, the single process."""
    if world_size < 1:
        raise ConfigError(f"world size {world_size} must be >= 1")
    if world_size == 1:
        return ["dp=1"]
    n = world_size
    return [f"dp={n}", f"fsdp={n}", f"tp={n}", f"pp={n},schedule=1f1b", f"pp={n},schedule=gpipe", f"ep={n}"]


def pipeline_problems(config: Any) -> list[str]:
    """What in a model config the pipeline stages cannot carry (pp.py), each with its fix; [] = pipelinable."""
    problems = []
    if _get(config, "mtp_layers"):
        problems.append("MTP layers (set mtp_layers=0)")
    if _get(config, "use_dsa"):
        problems.append("DSA top-k sharing between layers (use a GQA model)")
    if _get(config, "aux_loss_coef"):
        problems.append("an auxiliary balance loss (set aux_loss_coef=0)")
    if _get(config, "tie_embeddings"):
        problems.append("tied embeddings")
    return problems


def _get(config: Any, *names: str) -> Any:
    for name in names:
        value = config.get(name) if isinstance(config, dict) else getattr(config, name, None)
        if value is not None:
            return value
    return None


def parse_layout(spec: "str | ParallelLayout | dict | None", world_size: int | None = None) -> ParallelLayout:
    """``"dp=2,tp=1"`` -> ParallelLayout. Missing sizes are 1; an empty spec means one process (or ``dp=world``).

    With ``world_size`` the sizes must multiply to it; ``dp=auto`` (or ``dp=-1``) takes whatever is left.
    """
    if isinstance(spec, ParallelLayout):
        return spec.check_world(world_size) if world_size else spec
    values: dict[str, Any] = {}
    if isinstance(spec, dict):
        values = dict(spec)
    elif spec is not None and str(spec).strip() not in ("", "none"):
        for item in str(spec).split(","):
            item = item.strip()
            if not item:
                continue
            key, sep, value = item.partition("=")
            key, value = key.strip().lower(), value.strip().lower()
            if not sep or not value:
                raise ConfigError(f"parallel layout {spec!r}: {item!r} is not name=value (e.g. dp=2,tp=1)")
            values[key] = value
    known = {f.name for f in fields(ParallelLayout)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"parallel layout {spec!r}: unknown name(s) {unknown}; use {', '.join(sorted(known))}")
    auto = None
    for key, value in list(values.items()):
        if key == "schedule":
            continue
        if str(value) in ("auto", "-1"):
            auto = key
            values[key] = 1
            continue
        try:
            values[key] = int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"parallel layout {spec!r}: {key}={value!r} is not a whole number") from None
    if not values and world_size:
        auto = "dp"
    if auto is not None:
        if not world_size:
            raise ConfigError(f"parallel layout {spec!r}: {auto}=auto needs a known world size")
        rest = ParallelLayout(**{k: v for k, v in values.items() if k != auto}).world_size
        if world_size % rest:
            raise ConfigError(f"parallel layout {spec!r}: the other sizes multiply to {rest}, which does not "
                              f"divide the world size {world_size}")
        values[auto] = world_size // rest
    layout = ParallelLayout(**values)
    return layout.check_world(world_size) if world_size else layout
