"""The analytical cluster-training simulator: step time with a breakdown, memory per device, MFU, time and energy.

One training step of a Megatron-style run (TP+SP inside the scale-up domain, CP, PP with 1F1B or interleaved
schedules, DP with ZeRO 0-3, EP for MoE) is priced op by op for the slowest pipeline stage:
- GEMMs from the model's shapes: ``flops / (rate x size_factor)``, never faster than the memory roofline;
- flash-attention core at ``attn_eff`` of peak (causal work only: S/2 keys per query, with DSA the mean of
  min(t, top-k); backward 2.5x forward), DSA indexers on the layers that own one, when S > top-k;
- memory-bound elementwise work (norms, residuals, activations, RoPE) at HBM bandwidth, plus kernel launches;
- collectives with the alpha-beta costs of ``collectives.py``, partly hidden behind compute (efficiency params);
- the pipeline bubble (pp-1)/vp stage times; the optimizer step at HBM bandwidth.
Activation memory follows Korthikanti et al. 2022 (flash attention: no s^2 term). Efficiency parameters are
calibrated on published runs (``calibration.py``). ``evaluate`` prices one layout; ``simulate`` (in __init__)
adds search and reporting. Used by ``workbench simulate`` and notebooks/05_hardware_comparison.ipynb.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from workbench.perfmodel import collectives as C
from workbench.perfmodel.spec import Layout, Spec

GB = 1e9  # memory results are in decimal GB (10^9 bytes)
MEMORY_HEADROOM = 0.90  # usable fraction of device memory (allocator fragmentation, workspaces, runtime context)
# A chip's hbm_gb is the vendor's "GB" of HBM, which counts binary units: stacks are 16/24 GiB, so an "80 GB" H100
# has 80 x 2^30 = 85.9e9 bytes and a "141 GB" H200 shows ~140 GiB to CUDA. Read as 10^9 bytes it understated
# every chip's memory by 7%.
HBM_GB_BYTES = 2**30


def device_memory_gb(chip) -> float:
    """A chip's memory capacity in decimal GB (the unit of every memory result); hbm_gb is GiB (above)."""
    return chip.hbm_gb * HBM_GB_BYTES / GB


def usable_memory_gb(chip) -> float:
    """What a layout may use per chip, in decimal GB: MEMORY_HEADROOM of the capacity."""
    return device_memory_gb(chip) * MEMORY_HEADROOM
SERVER_POWER_FACTOR = 10.2e3 / (8 * 700)  # DGX H100: 10.2 kW max system power / (8 x 700 W GPUs) = 1.82


@dataclass
class Evaluation:
    layout: Layout
    micro_batch: int
    problems: list[str] = field(default_factory=list)  # why the layout cannot run (does not divide, ...)
    memory: dict = field(default_factory=dict)
    fits: bool = False
    step_time_s: float = math.inf
    breakdown: dict = field(default_factory=dict)
    links: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    breakdown_compute: dict = field(default_factory=dict)

    @property
    def feasible(self) -> bool:
        return not self.problems and self.fits


# ------------------------------------------------------------------------------------------------------------------
# layout checks
# ------------------------------------------------------------------------------------------------------------------
def layout_problems(spec: Spec, L: Layout, mbs: int) -> list[str]:
    """Why ``L`` cannot run this model on this cluster (empty when it divides everything)."""
    m, p = spec.model, []
    if L.chips != spec.cluster.count:
        p.append(f"tp*pp*dp*cp = {L.tp}*{L.pp}*{L.dp}*{L.cp} = {L.chips} but the cluster has {spec.cluster.count} chips")
    if m.heads % L.tp:
        p.append(f"heads = {m.heads} is not divisible by tp = {L.tp}")
    kv = m.heads if m.mla else m.kv_heads
    if kv % L.tp and L.tp % kv:
        p.append(f"kv_heads = {kv} and tp = {L.tp}: one must divide the other")
    if m.ffn and m.ffn % L.tp:
        p.append(f"ffn = {m.ffn} is not divisible by tp = {L.tp}")
    if spec.global_batch % (mbs * L.dp):
        p.append(f"global_batch = {spec.global_batch} is not a multiple of micro_batch x dp = {mbs}x{L.dp}")
    if L.pp > m.layers:
        p.append(f"pp = {L.pp} exceeds layers = {m.layers}")
    if L.vp > 1:
        micro = spec.global_batch // max(mbs * L.dp, 1)
        if L.pp == 1:
            p.append("vp > 1 (interleaved pipeline) needs pp > 1")
        elif L.pp * L.vp > m.layers:
            p.append(f"pp x vp = {L.pp}x{L.vp} exceeds layers = {m.layers} (each virtual stage needs a layer)")
        elif micro % L.pp:
            p.append(f"interleaved 1F1B needs micro-batches per step ({micro}) to be a multiple of pp = {L.pp}")
    if m.moe is None:
        if L.ep > 1:
            p.append(f"ep = {L.ep} needs an MoE model")
        if L.etp > 1:  # it was echoed back unpriced: a dense model has no experts to split
            p.append(f"etp = {L.etp} (expert tensor parallel) needs an MoE model")
    else:
        if m.moe.experts % L.ep:
            p.append(f"experts = {m.moe.experts} is not divisible by ep = {L.ep}")
        if (L.tp * L.cp * L.dp) % (L.ep * L.etp):
            p.append(f"ep x etp = {L.ep}x{L.etp} must divide tp x cp x dp = {L.tp * L.cp * L.dp}")
        if m.moe.expert_ffn % L.etp:
            p.append(f"expert_ffn = {m.moe.expert_ffn} is not divisible by etp = {L.etp}")
    if L.cp > 1 and spec.seq_len % (2 * L.cp):
        p.append(f"seq_len = {spec.seq_len} is not divisible by 2 x cp = {2 * L.cp} (load-balanced context parallel)")
    if L.tp > 1 and L.sp and (spec.seq_len // L.cp) % L.tp:
        p.append(f"sequence parallel needs seq_len / cp = {spec.seq_len // L.cp} divisible by tp = {L.tp}")
    return p


# ------------------------------------------------------------------------------------------------------------------
# chip rates
# ------------------------------------------------------------------------------------------------------------------
def _rates(spec: Spec) -> dict[str, float]:
    chip, eff = spec.cluster.chip, spec.efficiency
    peak = chip.peak_flops(spec.precision)
    measured_peak = chip.field_source("fp32_tflops" if spec.precision == "fp32" else "bf16_dense_tflops").confidence == "measured"
    if measured_peak:  # a probe already measured the achieved GEMM rate on this machine
        gemm = peak
    else:
        gemm = peak * eff.gemm_eff_max
        if spec.precision in ("bf16", "fp16") and chip.measured_gemm_tflops:
            # a measured large-GEMM rate (best case, square shapes) caps what training GEMMs reach
            gemm = min(gemm, chip.measured_gemm_tflops * 1e12)
    # attention runs in bf16 even in FP8 recipes
    attn_peak = peak if spec.precision in ("fp32", "bf16", "fp16") else chip.peak_flops("bf16") or peak
    return {"peak": peak, "gemm": gemm, "attn": attn_peak * eff.attn_eff,
            "mem": chip.hbm_tb_s * 1e12 * eff.mem_eff,
            "el_bytes": 4.0 if spec.precision == "fp32" else 2.0,
            "gemm_bytes": 4.0 if spec.precision == "fp32" else (1.0 if spec.precision == "fp8" else 2.0)}


def _gemm(r: dict, eff, m: float, n: float, k: float, count: float = 1.0) -> tuple[float, float]:
    """(time, flops) of ``count`` GEMMs [m x k] @ [k x n]."""
    if m <= 0 or n <= 0 or k <= 0 or count <= 0:
        return 0.0, 0.0
    flops = 2.0 * m * n * k
    size = 1.0 / (1.0 + eff.gemm_d0 / m + eff.gemm_d0 / n + eff.gemm_d0 / k)
    t_compute = flops / (r["gemm"] * size)
    t_memory = r["gemm_bytes"] * (m * k + k * n + m * n) / r["mem"]
    return count * max(t_compute, t_memory), count * flops


# ------------------------------------------------------------------------------------------------------------------
# one layer, one micro-batch
# ------------------------------------------------------------------------------------------------------------------
def dsa_keys_per_query(seq_len: int, topk: int) -> float:
    """Mean keys a causal DSA query attends to: query t reads min(t, K) keys, so over S queries S/2 when S <= K and
    K - K^2/(2S) otherwise (continuous sums). min(S/2, K) overstated it by up to a third, at S = 2K (GLM-5's
    4096-token stage: 2048 keys against 1536)."""
    if seq_len <= topk:
        return seq_len / 2
    return topk - topk * topk / (2.0 * seq_len)


def _indexer_forward(spec: Spec, L: Layout, mbs: int, r: dict) -> dict[str, float]:
    """Forward seconds of one layer's DSA lightning indexer for one micro-batch: its q and k projections and its
    scores over every causal key (small heads, S/2 keys on average). Zero where no indexer runs: without DSA, or
    when S <= top-k (nothing to prune: the model skips it, and the accounting counts none). Charged only on the
    layers that own one (``indexer_layers``; "shared" layers reuse the previous top-k) and on MTP layers."""
    m, eff = spec.model, spec.efficiency
    t = {"gemm": 0.0, "attention": 0.0, "flops": 0.0}
    if not m.indexer or spec.seq_len <= m.indexer.topk:
        return t
    ix, h = m.indexer, m.hidden
    T = mbs * spec.seq_len / L.cp
    q_in = m.mla.q_lora_rank if (m.mla and m.mla.q_lora_rank) else h
    for n, k in ((ix.heads * ix.head_dim, q_in), (ix.head_dim + ix.heads, h)):
        dt, fl = _gemm(r, eff, T, n, k)
        t["gemm"] += dt
        t["flops"] += fl
    t["attention"] = 2.0 * T * (spec.seq_len / 2) * ix.heads * ix.head_dim / r["attn"]
    return t


def _layer_forward(spec: Spec, L: Layout, mbs: int, r: dict, links: dict, moe_layer: bool) -> dict[str, float]:
    """Forward-pass seconds of one transformer layer for one micro-batch on one device, by kind."""
    m, eff = spec.model, spec.efficiency
    T = mbs * spec.seq_len / L.cp  # tokens on this rank (context parallel splits the sequence)
    h, H, tp = m.hidden, m.heads, L.tp
    t: dict[str, float] = {"gemm": 0.0, "attention": 0.0, "elementwise": 0.0, "kernels": 0.0, "tp": 0.0, "ep": 0.0,
                           "cp": 0.0, "flops": 0.0}

    def gemm(mm, n, k, count=1.0):
        dt, fl = _gemm(r, eff, mm, n, k, count)
        t["gemm"] += dt
        t["flops"] += fl

    # attention projections
    if m.mla:
        a = m.mla
        if a.q_lora_rank:
            gemm(T, a.q_lora_rank, h)
            gemm(T, H * m.d_qk / tp, a.q_lora_rank)
        else:
            gemm(T, H * m.d_qk / tp, h)
        gemm(T, a.kv_lora_rank + a.qk_rope_dim, h)
        gemm(T, H * (a.qk_nope_dim + a.v_dim) / tp, a.kv_lora_rank)
        gemm(T, h, H * a.v_dim / tp)
    else:
        kvh = max(m.kv_heads / tp, 1)
        gemm(T, (H / tp + 2 * kvh) * m.d_head, h)
        gemm(T, h, H * m.d_head / tp)
    # causal: a query sees half the keys on average (CP balances the halves); DSA: at most its top-k of them. The
    # layer's indexer, where it has one, is priced apart (_indexer_forward).
    keys = dsa_keys_per_query(spec.seq_len, m.indexer.topk) if m.indexer else spec.seq_len / 2
    attn_flops = 2.0 * T * keys * (H / tp) * (m.d_qk + m.d_v)
    t["flops"] += attn_flops
    if spec.attention == "flash":
        t["attention"] += attn_flops / r["attn"]
    else:
        # unfused: batched GEMMs over the full s x s score matrix, plus memory-bound scale/mask/softmax/dropout
        # passes over it (~13 bytes per score forward: write, read+write softmax, dropout in/out/mask, read for PV)
        s_kv = spec.seq_len
        heads_local = H / tp
        dt_qk, _ = _gemm(r, eff, T, s_kv, m.d_qk, count=heads_local)
        dt_pv, _ = _gemm(r, eff, T, m.d_v, s_kv, count=heads_local)
        scores = T * s_kv * heads_local
        t["attention"] += dt_qk + dt_pv + eff.elementwise_factor * 13.0 * scores / r["mem"]

    # FFN
    mats_in = 2 if m.ffn_type == "swiglu" else 1
    if not moe_layer:
        f = m.ffn
        gemm(T, mats_in * f / tp, h)
        gemm(T, h, f / tp)
        act_width = f / tp
    else:
        mo = m.moe
        gemm(T, mo.experts, h)  # router (replicated)
        T_dev = T / tp  # with TP, each rank of the group routes its share of tokens
        local = mo.experts / L.ep
        m_e = T_dev * L.ep * L.etp * mo.top_k / mo.experts * eff.moe_imbalance  # tokens at the busiest expert
        gemm(m_e, mats_in * mo.expert_ffn / L.etp, h, count=local)
        gemm(m_e, h, mo.expert_ffn / L.etp, count=local)
        act_width = T_dev * mo.top_k * mo.expert_ffn / L.etp / T
        if mo.shared:
            fs = mo.shared * mo.expert_ffn
            gemm(T, mats_in * fs / tp, h)
            gemm(T, h, fs / tp)
            act_width += fs / tp
        # permute / unpermute / weighted combine of the routed token copies (memory-bound, ~6 passes of h each)
        t["elementwise"] += eff.elementwise_factor * 6 * T_dev * mo.top_k * h * r["el_bytes"] / r["mem"]
        if L.ep > 1:  # dispatch + combine all-to-all of each routed token copy
            n = T_dev * mo.top_k * h * r["el_bytes"]
            t["ep"] += 2 * C.all_to_all(n, L.ep, links["ep"], eff.a2a_eff)
    # memory-bound elementwise work: 2 norms + 2 residual adds (~10 h per token, sharded with SP), RoPE on q/k,
    # the activation function; read + write counted
    tokens_h = T / tp if (tp > 1 and L.sp) else T
    elems = 10 * h * tokens_h + T * (2 * H * m.d_qk / tp + (mats_in + 1) * act_width)
    t["elementwise"] += eff.elementwise_factor * elems * r["el_bytes"] / r["mem"]
    t["kernels"] = eff.kernels_per_layer * eff.kernel_overhead_s
    # tensor parallel collectives: 2 all-gathers + 2 reduce-scatters (SP) or 2 all-reduces of the T x h activations
    if tp > 1:
        n = T * h * r["el_bytes"]
        one = (C.all_gather(n, tp, links["tp"]) + C.reduce_scatter(n, tp, links["tp"])) if L.sp else C.all_reduce(n, tp, links["tp"])
        # two such exchanges per layer (attention and MLP) either way: SP changes which collective runs (a ring
        # all-reduce is a reduce-scatter + all-gather, so the volume is the same, Korthikanti et al. 2022) and the
        # memory/elementwise sharding above, not the number of exchanges
        t["tp"] = 2 * one
    # context parallel: ring exchange of K and V, overlapped with the attention compute
    if L.cp > 1:
        kv_dims = (m.mla.kv_lora_rank + m.mla.qk_rope_dim) if m.mla else 2 * max(m.kv_heads / tp, 1) * m.d_head
        n = T * kv_dims * r["el_bytes"]
        ring = (L.cp - 1) * C.p2p(n, links["cp"])
        t["cp"] = max(0.0, ring - t["attention"])
    return t


# ------------------------------------------------------------------------------------------------------------------
# memory
# ------------------------------------------------------------------------------------------------------------------
def _params_per_device(spec: Spec, L: Layout, layers: int, first: bool, last: bool) -> tuple[float, float]:
    """(dense, expert) parameters held by one device of a stage with ``layers`` layers."""
    m = spec.model
    k = m.consts
    n_moe = layers * k["moe_frac"]
    n_dense = layers - n_moe
    attn = (k["attention"] + k["indexer"] * (k["indexer_layers"] / m.layers)) / L.tp + k["norms"]
    dense = layers * attn + n_dense * k["dense_ffn"] / L.tp
    expert = 0.0
    if m.moe and n_moe:
        dense += n_moe * (k["router"] + m.moe.shared * k["expert"] / L.tp)
        expert = n_moe * (m.moe.experts / L.ep) * k["expert"] / L.etp
    if first:
        dense += k["embedding"] / L.tp
    if last:
        dense += (k["output"] or (k["embedding"] if L.pp > 1 else 0)) / L.tp + m.hidden
        if m.mtp_layers:
            share = k["expert"] * m.moe.experts if m.moe else 0
            dense += m.mtp_layers * (k["mtp_layer"] - share) / L.tp
            expert += m.mtp_layers * share / (L.ep * L.etp)
    return dense, expert


def _activation_bytes_per_layer(spec: Spec, L: Layout, mbs: int, moe_layer: bool) -> tuple[float, float]:
    """(stored bytes per layer for backward, working bytes of one layer) for one micro-batch (Korthikanti 2022)."""
    m = spec.model
    T = mbs * spec.seq_len / L.cp
    h, H, tp = m.hidden, m.heads, L.tp
    e = 2.0 if spec.precision != "fp32" else 4.0
    shard_h = tp if (tp > 1 and L.sp) else 1  # with SP the h-sized tensors are split over TP too
    dropout = 1.0 if m.ffn_type == "gelu" else 0.0  # GPT-style models train with dropout masks (1 byte)
    kvh = H if m.mla else m.kv_heads
    qkv = H * m.d_qk + kvh * m.d_qk + kvh * m.d_v
    norms = 2 * e * T * h / shard_h
    attn = e * T * h / shard_h + e * T * qkv / tp + e * T * H * m.d_v / tp + dropout * T * h / shard_h
    if m.mla:
        attn += e * T * ((m.mla.q_lora_rank or 0) + m.mla.kv_lora_rank + m.mla.qk_rope_dim) / shard_h
    mats_in = 2 if m.ffn_type == "swiglu" else 1
    if not moe_layer:
        mlp = e * T * h / shard_h + e * T * (mats_in + 1) * m.ffn / tp + dropout * T * h / shard_h
    else:
        mo = m.moe
        routed = T / tp * mo.top_k * spec.efficiency.moe_imbalance
        mlp = e * T * h / shard_h + routed * e * (2 * h + (mats_in + 1) * mo.expert_ffn / L.etp)
        if mo.shared:
            mlp += e * T * (mats_in + 1) * mo.shared * mo.expert_ffn / tp
    if spec.attention == "unfused" and L.recompute == "none":  # Korthikanti's 5as/h term (selective drops it)
        attn += 5.0 * T * spec.seq_len * H / tp
    full = norms + attn + mlp
    if L.recompute == "full":
        return e * T * h / shard_h, full  # only the layer input is kept; one layer is rebuilt at a time
    return full, 0.0


def pipeline_split(layers: int, pp: int, extra: float) -> list[int]:
    """Whole layers on each pipeline stage, as the step time balances them (``evaluate``; memory uses the same split).

    Stages are balanced the way Llama 3 / Megatron's --decoder-last-pipeline-num-layers do it: the head, loss and MTP
    work (``extra``, in layers) cannot be split across stages and counts against the last stage, which holds n whole
    layers; the other pp - 1 stages share the rest. n minimises the slowest stage (the largest such n on a tie: the
    last stage holds the fewest micro-batches in flight). The shared layers go lightest first (floor before ceil),
    since stage i holds the most activations when i is small (Megatron's --pipeline-model-parallel-layout places
    any split). Memory priced every stage at ceil(layers / pp), fewer than the timing put on the early stages when the
    head pushes layers off the last stage (8 layers with a 128k head on pp=2: 5 + 3, not 4 + 4)."""
    if pp <= 1:
        return [layers]

    def slowest(n: int) -> float:
        return max(n + extra, math.ceil((layers - n) / (pp - 1)))

    options = range(0, math.ceil(layers / pp) + 1)
    fastest = min(slowest(n) for n in options)
    n = max(n for n in options if slowest(n) == fastest)
    base, more = divmod(layers - n, pp - 1)
    return [base] * (pp - 1 - more) + [base + 1] * more + [n]


def in_flight_layers(L: Layout, micro: int, stage: int, layers: int) -> float:
    """Layers' worth of stored micro-batch activations on pipeline stage ``stage`` holding ``layers`` layers.

    1F1B: stage i holds min(pp - i, micro) micro-batches. Interleaved (Megatron's warmup): rank r holds
    min(2 (pp-1-r) + (vp-1) pp + 1, micro x vp) model chunks of layers / vp layers. The old (pp - r) x
    (1 + (pp-1)/(pp vp)) matched it on the first stage only when micro > pp, and put the last stage 3-10x low."""
    if L.pp == 1:
        return float(layers)
    if L.vp == 1:
        return float(layers * min(L.pp - stage, micro))
    chunks = min(2 * (L.pp - 1 - stage) + (L.vp - 1) * L.pp + 1, micro * L.vp)
    return chunks * layers / L.vp


def memory(spec: Spec, L: Layout, mbs: int, split: list[int] | None = None, stage: int | None = None) -> dict:
    """Bytes per device on the fullest pipeline stage (or on ``stage``), whose layers come from ``split``
    (``pipeline_split``; computed from the step time when not given)."""
    m = spec.model
    micro = spec.global_batch // (mbs * L.dp)
    if split is None:
        split = stage_split(spec, L, mbs)
    mixed = spec.precision != "fp32"
    w_bytes = 2.0 if mixed else 4.0
    # the gradient buffer is what gets reduced (Megatron's main_grad): fp32 by default, 2 B with bf16 reduction
    g_bytes = spec.efficiency.grad_reduce_bytes
    o_bytes = 12.0 if mixed else 8.0  # fp32 master + m + v (mixed) or m + v (fp32)
    edp = max(L.tp * L.cp * L.dp // (L.ep * L.etp), 1)
    dpc = L.dp * L.cp
    moe_frac = m.moe_layers / m.layers
    stored_d, work_d = _activation_bytes_per_layer(spec, L, mbs, False)
    stored_m, work_m = _activation_bytes_per_layer(spec, L, mbs, True) if m.moe else (0.0, 0.0)
    per_layer = (1 - moe_frac) * stored_d + moe_frac * stored_m
    if stage is None:  # each stage that starts a run of equal layer counts holds the most of that run, plus the ends
        stages = sorted({0, L.pp - 1} | {i for i in range(1, L.pp) if split[i] != split[i - 1]})
    else:
        stages = [stage]
    best = None
    for i in stages:
        layers, first, last = split[i], i == 0, i == L.pp - 1
        dense, expert = _params_per_device(spec, L, layers, first, last)
        weights = dense * w_bytes / (dpc if L.zero >= 3 else 1) + expert * w_bytes / (edp if L.zero >= 3 else 1)
        grads = dense * g_bytes / (dpc if L.zero >= 2 else 1) + expert * g_bytes / (edp if L.zero >= 2 else 1)
        optim = dense * o_bytes / (dpc if L.zero >= 1 else 1) + expert * o_bytes / (edp if L.zero >= 1 else 1)
        if L.zero >= 3:  # one layer's parameters gathered at a time (+ prefetch of the next)
            weights += 2 * (dense + expert) / max(layers, 1) * w_bytes
        acts = per_layer * in_flight_layers(L, micro, i, layers) + max(work_d, work_m)
        if last:  # fp32 logits of one micro-batch (their gradient reuses the buffer)
            acts += 4.0 * mbs * spec.seq_len / L.cp * m.vocab / L.tp
        total = weights + grads + optim + acts
        entry = {"params_gb": weights / GB, "grads_gb": grads / GB, "optimizer_gb": optim / GB,
                 "activations_gb": acts / GB, "total_gb": total / GB, "stage": i}
        if best is None or total > best["total_gb"] * GB:
            best = entry
    return best


# ------------------------------------------------------------------------------------------------------------------
# step time
# ------------------------------------------------------------------------------------------------------------------
def links_for(spec: Spec, L: Layout) -> dict[str, C.Link]:
    cl, eff = spec.cluster, spec.efficiency
    links = {"tp": C.choose_link(cl, eff, L.tp), "cp": C.choose_link(cl, eff, L.tp * L.cp),
             "dp": C.choose_link(cl, eff, L.tp * L.cp * L.dp), "ep": C.choose_link(cl, eff, L.ep * L.etp),
             "pp": C.choose_link(cl, eff, L.chips if L.pp > 1 else 1)}
    if L.pp > 1 and links["pp"].name == "none":
        links["pp"] = C.choose_link(cl, eff, 2)
    return links


def _stage_work(spec: Spec, L: Layout, mbs: int) -> dict:
    """One micro-batch's priced work: ``mb_whole`` (seconds by kind for the whole model, head and MTP included),
    ``total`` (their sum), ``one_layer`` (one average layer), ``extra`` (the last stage's unsplittable head + loss +
    MTP work, in layers), ``pp_t`` (pipeline sends), with the rates and links they used."""
    m, eff = spec.model, spec.efficiency
    r = _rates(spec)
    links = links_for(spec, L)
    dense_l = _layer_forward(spec, L, mbs, r, links, False)
    moe_l = _layer_forward(spec, L, mbs, r, links, True) if m.moe else None
    moe_frac = m.moe_layers / m.layers
    indexer_l = _indexer_forward(spec, L, mbs, r)  # one indexer; the layers that own one are indexer_frac of all
    indexer_frac = m.indexer_layers / m.layers

    def stage_layers(n_layers: float) -> dict[str, float]:
        out = {}
        for key in dense_l:
            out[key] = n_layers * ((1 - moe_frac) * dense_l[key] + (moe_frac * moe_l[key] if moe_l else 0.0)
                                   + indexer_frac * indexer_l.get(key, 0.0))
        return out

    T = mbs * spec.seq_len / L.cp
    # the last stage also runs the output head, the loss (memory-bound over fp32 logits) and MTP layers
    head_t, head_flops = _gemm(r, eff, T, m.vocab / L.tp, m.hidden)
    loss_t = 3 * 4.0 * T * m.vocab / L.tp / r["mem"]
    last_extra = {"gemm": head_t, "elementwise": loss_t, "flops": head_flops}
    if m.mtp_layers:
        mtp = _layer_forward(spec, L, mbs, r, links, m.moe is not None)
        proj_t, proj_f = _gemm(r, eff, T, m.hidden, 2 * m.hidden)
        for key in mtp:  # an MTP layer of a DSA model owns an indexer (the accounting counts one per MTP layer)
            last_extra[key] = last_extra.get(key, 0.0) + m.mtp_layers * (mtp[key] + indexer_l.get(key, 0.0))
        last_extra["gemm"] += m.mtp_layers * (proj_t + head_t)
        last_extra["flops"] += m.mtp_layers * (proj_f + head_flops)
    # per micro-batch: backward = 2x forward GEMMs and elementwise, 2.5x attention (flash recomputes scores)
    compute_keys = ("gemm", "attention", "elementwise", "kernels")

    def micro_batch_time(f: dict[str, float]) -> dict[str, float]:
        attn_bwd = 2.5 if spec.attention == "flash" else 2.0  # flash backward recomputes the scores
        out = {"gemm": 3 * f["gemm"], "attention": (1 + attn_bwd) * f["attention"], "elementwise": 3 * f["elementwise"],
               "kernels": 3 * f["kernels"], "tp": 2 * f["tp"] * eff.tp_exposed, "ep": 2 * f["ep"] * eff.ep_exposed,
               "cp": 2 * f["cp"]}
        out["recompute"] = 0.0
        if L.recompute == "selective" and spec.attention == "unfused":
            out["recompute"] = f["attention"]  # Korthikanti: recompute QK^T, softmax, dropout, PV
        if L.recompute == "full":  # the whole forward again during backward, collectives included
            out["recompute"] = sum(f[k] for k in compute_keys) + f["tp"] * eff.tp_exposed + f["ep"] * eff.ep_exposed
        return out

    pp_t = 0.0
    if L.pp > 1:
        n = T * m.hidden * r["el_bytes"] / (L.tp if (L.tp > 1 and L.sp) else 1)
        # send activations forward, gradients backward, once per model chunk: with vp chunks per device a micro-batch
        # crosses pp x vp - 1 stage boundaries, vp times as many sends per device (Narayanan et al. 2021, sec. 2.2)
        pp_t = 2 * L.vp * C.p2p(n, links["pp"])
    whole = dict(stage_layers(m.layers))
    for key, value in last_extra.items():
        whole[key] = whole.get(key, 0.0) + value
    mb_whole = micro_batch_time(whole)
    total = sum(mb_whole.values())
    one_layer = sum(micro_batch_time(stage_layers(1.0)).values())
    # when pp nears the layer count the extra alone can outweigh a layer several times (GLM-5's head + MTP)
    extra = max(0.0, total / one_layer - m.layers) if one_layer > 0 else 0.0
    return {"r": r, "links": links, "mb_whole": mb_whole, "total": total, "one_layer": one_layer, "extra": extra,
            "pp_t": pp_t}


def _dp_and_optimizer(spec: Spec, L: Layout, links: dict, r: dict, dense: float, expert: float, micro: int,
                      hide_last: float, hide_step: float) -> tuple[float, float]:
    """(exposed DP traffic, optimizer time) of one pipeline stage holding ``dense`` + ``expert`` parameters per
    device. ``hide_last``: the last micro-batch's backward; ``hide_step``: the whole step (see ``evaluate``)."""
    eff = spec.efficiency
    edp = max(L.tp * L.cp * L.dp // (L.ep * L.etp), 1)
    dpc = L.dp * L.cp
    gb, pb = eff.grad_reduce_bytes, r["el_bytes"]
    edp_link = C.choose_link(spec.cluster, eff, L.tp * L.cp * L.dp) if edp > 1 else links["dp"]
    grad_rs = C.reduce_scatter(dense * gb, dpc, links["dp"]) + C.reduce_scatter(expert * gb, edp, edp_link)
    param_ag = C.all_gather(dense * pb, dpc, links["dp"]) + C.all_gather(expert * pb, edp, edp_link)
    if L.zero == 0:
        dp_t = C.all_reduce(dense * gb, dpc, links["dp"]) + C.all_reduce(expert * gb, edp, edp_link)
        dp_exposed = max(0.0, dp_t - hide_last)
    elif L.zero == 1 or (L.zero == 2 and micro == 1):
        # ZeRO-1 (and ZeRO-2 with one micro-batch): full gradients accumulate locally; one reduce-scatter at the
        # end of the step, then the updated parameters are all-gathered
        dp_exposed = max(0.0, grad_rs + param_ag - hide_last)
    elif L.zero == 2:
        # ZeRO-2 keeps only 1/dp of the gradients (see memory()), so it cannot accumulate full gradients over
        # micro-batches: each micro-batch's gradients are reduce-scattered into the shard (DeepSpeed stage 2, FSDP
        # SHARD_GRAD_OP), micro x the ZeRO-1 gradient traffic. Like ZeRO-3's per-micro-batch traffic it can hide
        # behind the whole step; but the last micro-batch's reduce-scatter and the parameter all-gather still
        # face the ZeRO-1 limit (only the last backward to hide behind), so ZeRO-2 is never cheaper than ZeRO-1.
        dp_exposed = max(max(0.0, grad_rs + param_ag - hide_last), micro * grad_rs + param_ag - hide_step)
    else:  # ZeRO-3 / FSDP: gather parameters for forward and backward, reduce-scatter gradients, per micro-batch
        # Most of it hides behind the whole step, but the last backward still re-gathers the parameters and
        # reduce-scatters the gradients, the same bytes as ZeRO-1's end-of-step traffic with only that backward to
        # hide behind: without this floor ZeRO-3 moved 33% more bytes than ZeRO-1 and was priced faster.
        dp_t = micro * (2 * param_ag + grad_rs)
        dp_exposed = max(max(0.0, grad_rs + param_ag - hide_last), dp_t - hide_step)
    shard = (dense / (dpc if L.zero >= 1 else 1) + expert / (edp if L.zero >= 1 else 1))
    optimizer = shard * (30.0 if spec.precision != "fp32" else 24.0) / r["mem"]
    return dp_exposed, optimizer


def stage_split(spec: Spec, L: Layout, mbs: int) -> list[int]:
    """Whole layers per pipeline stage for this layout (``pipeline_split`` with the priced head + MTP work)."""
    if L.pp == 1:
        return [spec.model.layers]
    return pipeline_split(spec.model.layers, L.pp, _stage_work(spec, L, mbs)["extra"])


def evaluate(spec: Spec, L: Layout, mbs: int, check_only: bool = False, work: dict | None = None) -> Evaluation:
    """Price one layout: problems (does not divide), memory and fit, step time and breakdown. ``work`` is
    ``_stage_work`` of this layout or of one that differs only in its ZeRO stage (which it does not depend on): the
    search prices every ZeRO stage of a shape with one."""
    ev = Evaluation(layout=L, micro_batch=mbs)
    ev.problems = layout_problems(spec, L, mbs)
    if ev.problems:
        return ev
    m, eff = spec.model, spec.efficiency
    work = work or _stage_work(spec, L, mbs)
    split = pipeline_split(m.layers, L.pp, work["extra"])  # the same whole-layer split for time and memory
    ev.memory = memory(spec, L, mbs, split)
    ev.fits = ev.memory["total_gb"] <= usable_memory_gb(spec.cluster.chip)  # parse_spec requires hbm_gb
    if check_only:
        return ev
    r, links, pp_t = work["r"], work["links"], work["pp_t"]
    ev.links = {k: {"link": v.name, "busbw_gb_s": None if math.isinf(v.busbw) else v.busbw / GB} for k, v in links.items()}
    micro = spec.global_batch // (mbs * L.dp)
    if m.layers % (L.pp * L.vp):
        ev.notes.append(f"layers = {m.layers} not divisible by pp x vp = {L.pp}x{L.vp}: uneven stages ({split} layers "
                        f"per stage; Megatron needs --pipeline-model-parallel-layout or --decoder-first/last-pipeline-"
                        f"num-layers)")
    mb_whole, total, one_layer = work["mb_whole"], work["total"], work["one_layer"]
    if L.pp > 1:  # the slowest stage of the split: a shared stage, or the last with its head + MTP work
        slowest_compute = max(max(split[:-1]), split[-1] + work["extra"]) * one_layer
    else:
        slowest_compute = total
    mb = {k: v * slowest_compute / total for k, v in mb_whole.items()}
    slowest = slowest_compute + pp_t
    mean_stage = total / L.pp + pp_t
    bubble = (L.pp - 1) / L.vp * mean_stage
    steady = micro * slowest

    # data parallel gradient (and parameter) collectives and the optimizer step, on every stage of the split (the
    # slowest gates the step; ceil(layers / pp) + the head priced 4 layers + a 128k head where the first of pp=2
    # holds 5 layers + the embedding, 14% more); distinct stages only, so the search is no slower
    hide_last = eff.dp_overlap * (mb["gemm"] + mb["attention"]) * 2 / 3  # the last micro-batch's backward
    hide_step = eff.dp_overlap * (steady + bubble) * 0.999  # the whole step (traffic issued micro-batch by micro-batch)
    stages = sorted({(n, i == 0, i == L.pp - 1) for i, n in enumerate(split)})
    dp_exposed, optimizer = max((_dp_and_optimizer(spec, L, links, r, *_params_per_device(spec, L, *stage), micro,
                                                   hide_last, hide_step) for stage in stages), key=sum)
    breakdown = {
        "compute": micro * (mb["gemm"] + mb["attention"] + mb["elementwise"] + mb["kernels"] + mb["recompute"]),
        "tp_comm": micro * mb["tp"], "ep_comm": micro * mb["ep"], "cp_comm": micro * mb["cp"], "pp_comm": micro * pp_t,
        "pipeline_bubble": bubble, "dp_comm": dp_exposed, "optimizer": optimizer, "overhead": eff.step_overhead_s,
    }
    ev.breakdown = breakdown
    ev.breakdown_compute = {k: micro * mb[k] for k in ("gemm", "attention", "elementwise", "kernels", "recompute")}
    ev.step_time_s = sum(breakdown.values())
    return ev
