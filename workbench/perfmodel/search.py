"""``layout: "auto"``: search the feasible layouts and return the fastest with its runners-up.

Searched: TP (divisors of the chip count inside the scale-up domain that divide heads and FFN), CP (only for long
sequences), PP (divisors, at most the layer count), DP (what remains), EP (MoE: divisors of the expert count that fit
in tp x cp x dp), micro-batch, interleaving vp, ZeRO stage and recompute. For each shape every ZeRO stage (1, 2, 3)
is priced with the lightest recompute that fits at that stage, and the fastest is kept (ZeRO-2/3 trade DP traffic
for memory, so a heavier stage with lighter recompute can win). Fields given in ``{"auto": true, ...}`` stay fixed. Infeasible candidates
are never "repaired": they are only skipped, and when none fits the error names the closest one and why.
Used by ``workbench.perfmodel.simulate`` and notebooks/05_hardware_comparison.ipynb.
"""

from __future__ import annotations

from workbench.perfmodel.simulator import Evaluation, _stage_work, evaluate, layout_problems, usable_memory_gb
from workbench.perfmodel.spec import Layout, LayoutError, MemoryCapacityError, Spec


def divisors(n: int) -> list[int]:
    """The divisors of ``n`` in increasing order, in O(sqrt n) steps (chip counts and expert counts can be large)."""
    small, large = [], []
    d = 1
    while d * d <= n:
        if n % d == 0:
            small.append(d)
            if d * d != n:
                large.append(n // d)
        d += 1
    return small + large[::-1]


def _options(fixed: dict, key: str, default: list) -> list:
    return [fixed[key]] if key in fixed else default


def candidates(spec: Spec):
    """(layout-without-memory-settings, micro_batch) pairs that divide everything."""
    m, count, fixed = spec.model, spec.cluster.count, spec.fixed
    max_tp = min(spec.cluster.scale_up_domain, 16)  # TP stays inside the scale-up domain
    tps = _options(fixed, "tp", [t for t in divisors(count) if t <= max_tp and m.heads % t == 0
                                 and (m.ffn % t == 0)])
    cps = _options(fixed, "cp", [c for c in (1, 2, 4, 8) if c == 1 or spec.seq_len >= 16384])
    # every micro-batch 1-8 (1, 2, 4, 8 missed 3 and 6 where the global batch is 3 x dp); those that do not divide
    # global_batch / dp are skipped below at no cost, so power-of-two batches search no more than before
    mbss = [spec.micro_batch] if spec.micro_batch else list(range(1, 9))
    for tp in tps:
        for cp in cps:
            if count % (tp * cp):
                continue
            rest = count // (tp * cp)
            for pp in _options(fixed, "pp", [p for p in divisors(rest) if p <= min(m.layers, 128)]):
                if rest % pp:
                    continue
                dp = rest // pp
                if "dp" in fixed and fixed["dp"] != dp:
                    continue
                eps = [1]
                if m.moe:
                    eps = [e for e in divisors(m.moe.experts) if (tp * cp * dp) % e == 0 and e <= 256]
                for ep in _options(fixed, "ep", eps):
                    for mbs in mbss:
                        if spec.global_batch % (mbs * dp):
                            continue
                        micro = spec.global_batch // (mbs * dp)
                        vps = [1] if pp == 1 else [v for v in (1, 2, 4) if pp * v <= m.layers and micro % pp == 0 or v == 1]
                        for vp in _options(fixed, "vp", vps):
                            base = dict(tp=tp, cp=cp, pp=pp, dp=dp, ep=ep, vp=vp, etp=fixed.get("etp", 1),
                                        sp=fixed.get("sp", True))
                            yield base, mbs


def search(spec: Spec) -> list[Evaluation]:
    """Feasible evaluations, fastest first (at most ``spec.search_top``). Raises when nothing fits."""
    fixed = spec.fixed
    zeros = [fixed["zero"]] if "zero" in fixed else [1, 2, 3]
    # with flash attention "none" and "selective" cost the same here, so only "selective" is priced
    default_rc = ["none", "selective", "full"] if spec.attention == "unfused" else ["selective", "full"]
    recomputes = [fixed["recompute"]] if "recompute" in fixed else default_rc
    feasible: list[Evaluation] = []
    closest: Evaluation | None = None
    for base, mbs in candidates(spec):
        # Every ZeRO stage is priced with the lightest recompute that fits at that stage, and the fastest of those
        # is kept: stopping at the first stage that fits returned ZeRO-1 + full recompute where ZeRO-2 + selective
        # also fits and is faster. For a fixed ZeRO stage a heavier recompute only adds time here (memory does not
        # enter the step time, and "full"/"selective" add recomputation to the same work), so the lightest one that
        # fits is that stage's fastest; across stages the trade (sharded state vs more DP traffic) is priced.
        if layout_problems(spec, Layout(**base), mbs):  # divisibility does not depend on ZeRO or recompute
            continue
        best = None
        zero1_rc = len(recomputes)  # index of the recompute ZeRO-1 fitted with (none: past the end)
        works: dict[str, dict] = {}  # the priced work (memory needs its pipeline split) depends on recompute, not ZeRO
        for zero in zeros:
            for i, rc in enumerate(recomputes):
                if zero == 2 and i >= zero1_rc:
                    # ZeRO-2 costs what ZeRO-1 does plus its per-micro-batch reduce-scatters (simulator.evaluate):
                    # at the same or a heavier recompute it cannot win, so it is not priced (saves a third of the
                    # full evaluations)
                    break
                L = Layout(zero=zero, recompute=rc, **base)
                work = works.get(rc) or works.setdefault(rc, _stage_work(spec, L, mbs))
                ev = evaluate(spec, L, mbs, check_only=True, work=work)
                if ev.fits:
                    if zero == 1:
                        zero1_rc = i
                    ev = evaluate(spec, L, mbs, work=work)
                    if best is None or ev.step_time_s < best.step_time_s:
                        best = ev
                    break
                if closest is None or ev.memory["total_gb"] < closest.memory["total_gb"]:
                    closest = ev
        if best is not None:  # one entry per shape, so the runners-up are other shapes, not other ZeRO stages
            feasible.append(best)
    if not feasible:
        if closest is None:
            raise LayoutError(f"no layout divides this model on {spec.cluster.count} chips (fixed: {fixed or 'none'}); "
                              f"check heads/ffn/experts against the chip count and global_batch")
        L = closest.layout
        raise MemoryCapacityError(
            f"impossible memory: no layout fits in the usable {usable_memory_gb(spec.cluster.chip):.0f} GB of "
            f"{spec.cluster.chip.hbm_gb:g} GiB per {spec.cluster.chip.chip}; the "
            f"closest (tp={L.tp} cp={L.cp} pp={L.pp} vp={L.vp} dp={L.dp} ep={L.ep} zero={L.zero} "
            f"recompute={L.recompute} micro_batch={closest.micro_batch}) needs {closest.memory['total_gb']:.1f} GB. Use more chips, a chip "
            f"with more memory, or a shorter sequence")
    feasible.sort(key=lambda e: e.step_time_s)
    return feasible[: max(spec.search_top, 1)]
