"""Alpha-beta costs of collectives (latency + bytes / bus bandwidth) and which link a parallel group uses.

p ranks, n bytes, alpha = per-hop latency, B = bus bandwidth (nccl-tests convention, so the measured busbw of the
catalog plugs in directly):
- ring all-reduce: 2(p-1) alpha + 2(p-1)/p n / B
- ring all-gather / reduce-scatter (n = full size): (p-1) alpha + (p-1)/p n / B
- all-to-all (n = bytes each rank sends): (p-1) alpha + (p-1)/p n / B
- point-to-point: alpha + n / B
Placement follows Megatron's rank order (tp innermost, then cp, then dp; ep inside tp x cp x dp; pp outermost): a
group whose ranks fit in one scale-up domain uses the scale-up fabric (``scale_up_busbw``: which figure, and when the
one-way link rate caps it), otherwise each chip's scale-out NIC.
Used by ``workbench.perfmodel.simulator`` and ``compare.interconnect_sensitivity``.
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


def _user_set(chip, name: str) -> bool:
    """True when ``name`` is a number the user gave (a cluster override or a custom chip), not a catalog figure."""
    return bool(getattr(chip, name)) and chip.field_source(name).confidence == "user"


def scale_up_busbw(chip, eff) -> float | None:
    """All-reduce bus bandwidth inside the scale-up domain in bytes/s (None: the chip has no scale-up figure).

    - a bus bandwidth the user set (``scale_up_busbw_gb_s`` override or custom chip) is used as given;
    - a catalog (measured) bus bandwidth, unless the user set ``scale_up_gb_s``: capped at half the bidirectional
      link rate (a ring cannot beat the one-way rate; a catalog figure above it is NVLS in-switch reduction, which
      this model does not price);
    - otherwise ``comm_eff_up`` x half the bidirectional ``scale_up_gb_s``; a user-set ``scale_up_gb_s`` always
      takes this path, since the catalog's measured busbw belongs to the catalog's link, not to the user's.
    """
    link = chip.scale_up_gb_s
    if chip.scale_up_busbw_gb_s and (_user_set(chip, "scale_up_busbw_gb_s") or not _user_set(chip, "scale_up_gb_s")):
        busbw = chip.scale_up_busbw_gb_s
        if link and not _user_set(chip, "scale_up_busbw_gb_s"):
            busbw = min(busbw, link / 2)
        return busbw * 1e9
    if link:  # catalog figures are bidirectional totals: half per direction
        return link / 2 * 1e9 * eff.comm_eff_up
    return None


def choose_link(cluster, eff, span: int) -> Link:
    """The link for a group whose ranks span ``span`` consecutive ranks (stride x size)."""
    chip = cluster.chip
    if span <= 1:
        return Link("none", float("inf"), 0.0)
    if span <= cluster.scale_up_domain:
        busbw = scale_up_busbw(chip, eff)
        if busbw:
            return Link("scale-up", busbw, eff.alpha_up_s)
        if chip.scale_out_gb_s_per_chip:
            return Link("scale-out", chip.scale_out_gb_s_per_chip * 1e9 * eff.comm_eff_out, eff.alpha_out_s)
        raise ConfigError(f"{chip.chip} has no scale-up bandwidth in the catalog; give cluster.scale_up_gb_s or "
                          f"cluster.scale_up_busbw_gb_s")
    if not chip.scale_out_gb_s_per_chip:
        raise ConfigError(f"{chip.chip}: a parallel group spans {span} chips, more than the scale-up domain of "
                          f"{cluster.scale_up_domain}, and the catalog has no scale-out bandwidth; give "
                          f"cluster.scale_out_gb_s_per_chip")
    return Link("scale-out", chip.scale_out_gb_s_per_chip * 1e9 * eff.comm_eff_out, eff.alpha_out_s)
