"""Alpha-beta costs of collectives (latency + bytes / bus bandwidth) and which link a parallel group uses.

p ranks, n bytes, alpha = per-hop latency, B = bus bandwidth (nccl-tests convention, so the measured busbw of the
catalog plugs in directly):
- ring all-reduce: 2(p-1) alpha + 2(p-1)/p n / B
- ring all-gather / reduce-scatter (n = full size): (p-1) alpha + (p-1)/p n / B
- all-to-all (n = bytes each rank sends): (p-1) alpha + (p-1)/p n / B
- point-to-point: alpha + n / B
Placement follows Megatron's rank order (tp innermost, then cp, then dp; ep inside tp x cp x dp; pp outermost): a
group whose ranks fit in one scale-up domain uses the scale-up fabric, otherwise each chip's scale-out NIC.
Used by ``workbench.perfmodel.simulator``.
"""

from __future__ import annotations

from dataclasses import dataclass

from workbench.errors import ConfigError


@dataclass(frozen=True)
class Link:
    name: str  # "scale-up" / "scale-out" / "none"
    busbw: float  # bytes/s
    alpha: float  # s per hop


def all_reduce(n: float, p: int, link: Link) -> float:
    return 0.0 if p <= 1 or n <= 0 else 2 * (p - 1) * link.alpha + 2 * (p - 1) / p * n / link.busbw


def all_gather(n: float, p: int, link: Link) -> float:
    return 0.0 if p <= 1 or n <= 0 else (p - 1) * link.alpha + (p - 1) / p * n / link.busbw


reduce_scatter = all_gather


def all_to_all(n: float, p: int, link: Link, efficiency: float = 1.0) -> float:
    return 0.0 if p <= 1 or n <= 0 else (p - 1) * link.alpha + (p - 1) / p * n / (link.busbw * efficiency)


def p2p(n: float, link: Link) -> float:
    return 0.0 if n <= 0 else link.alpha + n / link.busbw


def choose_link(cluster, eff, span: int) -> Link:
    """The link for a group whose ranks span ``span`` consecutive ranks (stride x size)."""
    chip = cluster.chip
    if span <= 1:
        return Link("none", float("inf"), 0.0)
    if span <= cluster.scale_up_domain:
        if chip.scale_up_busbw_gb_s:
            busbw = chip.scale_up_busbw_gb_s
            if chip.scale_up_gb_s:  # a ring cannot beat the one-way link rate; above it a figure is NVLS in-switch
                busbw = min(busbw, chip.scale_up_gb_s / 2)  # reduction, which this model does not price
            return Link("scale-up", busbw * 1e9, eff.alpha_up_s)
        if chip.scale_up_gb_s:  # catalog figures are bidirectional totals: half per direction
            return Link("scale-up", chip.scale_up_gb_s / 2 * 1e9 * eff.comm_eff_up, eff.alpha_up_s)
        if chip.scale_out_gb_s_per_chip:
            return Link("scale-out", chip.scale_out_gb_s_per_chip * 1e9 * eff.comm_eff_out, eff.alpha_out_s)
        raise ConfigError(f"{chip.chip} has no scale-up bandwidth in the catalog; give cluster.scale_up_gb_s or "
                          f"cluster.scale_up_busbw_gb_s")
    if not chip.scale_out_gb_s_per_chip:
        raise ConfigError(f"{chip.chip}: a parallel group spans {span} chips, more than the scale-up domain of "
                          f"{cluster.scale_up_domain}, and the catalog has no scale-out bandwidth; give "
                          f"cluster.scale_out_gb_s_per_chip")
    return Link("scale-out", chip.scale_out_gb_s_per_chip * 1e9 * eff.comm_eff_out, eff.alpha_out_s)
