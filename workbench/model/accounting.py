"""Exact parameter counts, training FLOPs per token and a training-memory estimate, from a ``ModelConfig`` alone.

Every MFU figure (the trainer, notebook 01_training) and every simulator figure (the performance model, notebook
05_hardware_comparison) rests on these numbers, so the parameter counts are tested to equal the instantiated module's
``sum(p.numel())`` for every preset, and active counts against a module-level count.

Conventions
-----------
* ``total`` counts every parameter the module holds, MTP layers included; ``mtp`` is their share; ``main`` =
  total - mtp is the figure model cards quote (GLM-5: 744B main, 753.9B with the MTP layer, the checkpoint size).
* ``active`` = parameters one token touches in the trunk, in the model-card convention: MTP excluded, and the
  embedding table and LM head excluded (this is what reproduces the published "A32B" / "A12B" / "A40B"; counting
  them gives 33.6B / 13.4B / 41.8B). ``active_with_embeddings`` adds them back. Inactive = the (E - k) routed
  experts a token does not choose in each MoE layer; the router and shared experts are always active.
* FLOPs per token (training = forward + backward = 3 x forward), PaLM appendix B / torchtitan convention:
      dense_matmul = 6 * N,  N = active (trunk, non-embedding) + LM head (V * D) - DSA indexer params
  (the LM head is counted, tied or not: it is a matmul; the embedding lookup is not. Norm gains and biases stay
  in N: < 0.01%). Attention core, per layer, not halved for causality (PaLM convention):
      attention = 6 * n_heads * (d_qk + d_v) * S_eff,   S_eff = seq_len, or min(seq_len, index_topk) with DSA
  (DSA-aware: each query reads only index_topk keys). The indexer runs, as implemented here, only when
  seq_len > index_topk; per indexer-owning layer, selecting the keys (forward, no gradient):
      select = 2 * N_indexer_layer + 2 * index_n_heads * (index_head_dim + 1) * seq_len
  and, with its KL loss on (indexer_loss_coef > 0), the sparse training stage of DeepSeek-V3.2-Exp (DeepSeek-AI 2025),
  which GLM-5 follows: the KL is taken over the top-k selected keys only, the indexer's input is detached (its
  projections get weight gradients only), and the target is the attention's own probabilities (no extra q.k):
      indexer = select + 2 * N_indexer_layer + 3 * 2 * index_n_heads * (index_head_dim + 1) * min(seq_len, topk)
  Like the attention term these are model FLOPs: the masked DSA path (short sequences) computes a dense KL, more
  than is counted here.
  MTP layers add 6 * (their active matmul params + the LM head) + their attention (field ``mtp``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from workbench.errors import ConfigError
from workbench.model.config import ModelConfig
from workbench.perfmodel.shapes import indexer_layer_flops


# ---------------------------------------------------------------------------------------------- parameters
def _linear(i: int, o: int, bias: bool = False) -> int:
    return i * o + (o if bias else 0)


def attention_params(c: ModelConfig, indexer_type: str | None = None) -> int:
    d, h = c.hidden_size, c.num_heads
    if c.attention_type == "gqa":
        hd, kv = c.attn_head_dim, c.num_kv_heads
        n = _linear(d, h * hd, c.attention_bias) + 2 * _linear(d, kv * hd, c.attention_bias) + _linear(h * hd, d)
        return n + (2 * hd if c.use_qk_norm else 0)
    qk = c.qk_nope_head_dim + c.qk_rope_head_dim
    if c.q_lora_rank > 0:
        n = _linear(d, c.q_lora_rank, c.attention_bias) + c.q_lora_rank + _linear(c.q_lora_rank, h * qk)
    else:
        n = _linear(d, h * qk)
    n += _linear(d, c.kv_lora_rank + c.qk_rope_head_dim, c.attention_bias) + c.kv_lora_rank
    n += _linear(c.kv_lora_rank, h * (c.qk_nope_head_dim + c.v_head_dim))
    n += _linear(h * c.v_head_dim, d, c.attention_bias)
    return n + (indexer_params(c) if indexer_type == "full" else 0)


def indexer_params(c: ModelConfig) -> int:
    """One DSA lightning indexer: wq_b, wk, k LayerNorm (weight + bias), weights_proj."""
    return (_linear(c.q_lora_rank, c.index_n_heads * c.index_head_dim) + _linear(c.hidden_size, c.index_head_dim)
            + 2 * c.index_head_dim + _linear(c.hidden_size, c.index_n_heads))


def expert_params(c: ModelConfig) -> int:
    """One routed SwiGLU expert."""
    return 3 * c.hidden_size * c.moe_intermediate_size


def ffn_params(c: ModelConfig, layer: int) -> int:
    d = c.hidden_size
    if not c.layer_is_moe(layer):
        return (3 if c.ffn_act == "swiglu" else 2) * d * c.intermediate_size
    shared = 3 * d * c.moe_intermediate_size * c.num_shared_experts
    return c.num_experts * d + c.num_experts * expert_params(c) + shared  # router + routed + shared


def block_params(c: ModelConfig, layer: int, indexer_type: str | None) -> int:
    return 2 * c.hidden_size + attention_params(c, indexer_type) + ffn_params(c, layer)


def _inactive_per_token(c: ModelConfig, layer: int) -> int:
    return (c.num_experts - c.num_experts_per_token) * expert_params(c) if c.layer_is_moe(layer) else 0


@dataclass(frozen=True)
class ParamCounts:
    total: int           # == sum(p.numel() for p in build_model(config).parameters())
    main: int            # total - mtp (the model-card total)
    active: int          # per token, trunk, without embedding table and LM head (model-card "active")
    active_with_embeddings: int
    active_with_mtp: int # active + the MTP layers' active params
    embedding: int       # input embedding table
    lm_head: int         # untied output head (0 when tied)
    non_embedding: int   # total - embedding - lm_head
    mtp: int             # MTP layers (reported apart: GLM-5 744B vs 753.9B)
    routed_experts: int  # all routed expert weights (trunk + MTP)
    indexer: int         # all DSA indexer weights (trunk + MTP)

    def to_dict(self) -> dict:
        return asdict(self)


def count_parameters(c: ModelConfig) -> ParamCounts:
    d, types = c.hidden_size, c.layer_indexer_types
    embedding = c.vocab_size * d
    lm_head = 0 if c.tie_embeddings else c.vocab_size * d
    trunk_layers = range(c.num_layers)
    trunk = sum(block_params(c, i, types[i] if types else None) for i in trunk_layers)
    main = embedding + trunk + d + lm_head
    mtp_index = "full" if c.use_dsa else None
    mtp_layers = range(c.num_layers, c.num_layers + c.mtp_layers)
    mtp = sum(3 * d + 2 * d * d + block_params(c, i, mtp_index) for i in mtp_layers)
    active_all = main - sum(_inactive_per_token(c, i) for i in trunk_layers)
    active = active_all - embedding - lm_head
    mtp_active = mtp - sum(_inactive_per_token(c, i) for i in mtp_layers)
    moe_layers = [i for i in list(trunk_layers) + list(mtp_layers) if c.layer_is_moe(i)]
    n_indexers = sum(t == "full" for t in types) + (c.mtp_layers if c.use_dsa else 0)
    return ParamCounts(
        total=main + mtp, main=main, active=active, active_with_embeddings=active_all,
        active_with_mtp=active + mtp_active, embedding=embedding,
        lm_head=lm_head, non_embedding=main + mtp - embedding - lm_head, mtp=mtp,
        routed_experts=len(moe_layers) * c.num_experts * expert_params(c),
        indexer=n_indexers * indexer_params(c) if c.use_dsa else 0)


# ---------------------------------------------------------------------------------------------- FLOPs
@dataclass(frozen=True)
class FlopsPerToken:
    total: float          # dense_matmul + attention + indexer + mtp
    dense_matmul: float   # 6 * N (trunk, LM head included, embedding lookup and indexer excluded)
    attention: float      # trunk attention core, DSA-aware
    indexer: float        # trunk DSA indexers: key selection, plus their KL loss when it trains them
    mtp: float            # MTP layers: their matmuls, their LM-head call, their attention and indexer
    seq_len: int
    matmul_params: int    # N

    def to_dict(self) -> dict:
        return asdict(self)


def _attention_flops(c: ModelConfig, seq_len: int) -> float:
    s_eff = min(seq_len, c.index_topk) if c.use_dsa else seq_len
    d_v = c.v_head_dim if c.attention_type == "mla" else c.attn_head_dim
    return 6.0 * c.num_heads * (c.qk_head_dim + d_v) * s_eff


def _indexer_flops(c: ModelConfig, seq_len: int) -> float:
    if not c.use_dsa:
        return 0.0
    return indexer_layer_flops(indexer_params(c), c.index_n_heads, c.index_head_dim, c.index_topk, seq_len,
                               trained=c.indexer_loss_coef > 0)


def flops_per_token(c: ModelConfig, seq_len: int, include_mtp: bool = True) -> FlopsPerToken:
    if seq_len < 1:
        raise ConfigError(f"seq_len must be >= 1 (got {seq_len})")
    p = count_parameters(c)
    types = c.layer_indexer_types
    n_full = sum(t == "full" for t in types)
    trunk_indexer_params = n_full * indexer_params(c) if c.use_dsa else 0
    n = p.active + c.vocab_size * c.hidden_size - trunk_indexer_params
    dense = 6.0 * n
    attention = c.num_layers * _attention_flops(c, seq_len)
    indexer = n_full * _indexer_flops(c, seq_len)
    mtp = 0.0
    if include_mtp and c.mtp_layers:
        mtp_idx = indexer_params(c) if c.use_dsa else 0
        mtp_n = (p.active_with_mtp - p.active) - c.mtp_layers * mtp_idx + c.mtp_layers * c.vocab_size * c.hidden_size
        mtp = 6.0 * mtp_n + c.mtp_layers * (_attention_flops(c, seq_len) + _indexer_flops(c, seq_len))
    return FlopsPerToken(total=dense + attention + indexer + mtp, dense_matmul=dense, attention=attention,
                         indexer=indexer, mtp=mtp, seq_len=seq_len, matmul_params=n)


# ---------------------------------------------------------------------------------------------- memory
@dataclass(frozen=True)
class MemoryEstimate:
    weights: float        # bytes per device
    grads: float
    optimizer: float
    activations: float
    total: float

    def to_dict(self) -> dict:
        return asdict(self)


def _activation_elems_per_token_layer(c: ModelConfig, moe: bool) -> dict[str, float]:
    """Elements saved for backward per token in one layer, split into what each recompute mode keeps.

    'matmul_inputs' are tensors a matmul needs for its weight gradient (kept by 'selective'); 'elementwise' are
    norm / activation outputs that 'selective' recomputes. Attention assumes a fused kernel (no S x S matrix kept).
    """
    d = c.hidden_size
    if c.attention_type == "gqa":
        q, kv, o = c.num_heads * c.attn_head_dim, 2 * c.num_kv_heads * c.attn_head_dim, c.num_heads * c.attn_head_dim
        attn_in = d + q + kv + o                       # normed x (q/k/v input), q, k, v, attention out (o_proj in)
    else:
        h, qk = c.num_heads, c.qk_head_dim
        attn_in = (d + c.q_lora_rank + c.kv_lora_rank + h * qk + h * (qk + c.v_head_dim) + h * c.v_head_dim)
    if moe:
        k, f = c.num_experts_per_token, c.moe_intermediate_size
        ffn_in = d + k * (d + 3 * f) + c.num_shared_experts * 3 * f + c.num_experts  # dispatched copies, scores
    else:
        f = c.intermediate_size
        ffn_in = d + (3 * f if c.ffn_act == "swiglu" else 2 * f)
    return {"matmul_inputs": attn_in + ffn_in, "elementwise": 2 * d, "layer_input": d}


def training_memory(c: ModelConfig, *, micro_batch: int, seq_len: int, param_bytes: float = 2,
                    grad_bytes: float = 4, optimizer_bytes_per_param: float = 12, recompute: str = "none",
                    activation_bytes: float = 2, shard_degree: int = 1, tensor_parallel: int = 1,
                    expert_parallel: int = 1, chunked_loss: bool = False) -> MemoryEstimate:
    """Per-device training memory in bytes.

    weights/grads/optimizer: parameters split by ``tensor_parallel`` (all) and ``expert_parallel`` (routed experts),
    then sharded ``shard_degree`` ways (FSDP / ZeRO-3; use 1 for DDP). Default bytes: bf16 weights, fp32 grads,
    AdamW fp32 master + m + v (12 B). Activations (per micro-batch, split by tensor_parallel): recompute "none"
    keeps everything, "selective" recomputes norms and activation functions, "full" keeps each layer's input plus
    one layer's working set; plus the fp32 logits of the loss unless ``chunked_loss``.
    """
    if recompute not in ("none", "selective", "full"):
        raise ConfigError(f"recompute must be 'none', 'selective' or 'full' (got {recompute!r})")
    if min(micro_batch, seq_len, shard_degree, tensor_parallel, expert_parallel) < 1:
        raise ConfigError("micro_batch, seq_len, shard_degree, tensor_parallel, expert_parallel must be >= 1")
    p = count_parameters(c)
    per_device = ((p.total - p.routed_experts) / tensor_parallel
                  + p.routed_experts / (tensor_parallel * expert_parallel)) / shard_degree
    tokens = micro_batch * seq_len
    layers = [c.layer_is_moe(i) for i in range(c.num_layers + c.mtp_layers)]
    per_layer = [_activation_elems_per_token_layer(c, moe) for moe in layers]
    if recompute == "none":
        elems = sum(a["matmul_inputs"] + a["elementwise"] + a["layer_input"] for a in per_layer)
    elif recompute == "selective":
        elems = sum(a["matmul_inputs"] + a["layer_input"] for a in per_layer)
    else:
        worst = max(a["matmul_inputs"] + a["elementwise"] for a in per_layer)
        elems = sum(a["layer_input"] for a in per_layer) + worst
    activations = tokens * elems * activation_bytes / tensor_parallel
    logits = 0 if chunked_loss else tokens * c.vocab_size * 4 * (1 + c.mtp_layers)
    activations += logits
    weights, grads, opt = per_device * param_bytes, per_device * grad_bytes, per_device * optimizer_bytes_per_param
    return MemoryEstimate(weights=weights, grads=grads, optimizer=opt, activations=activations,
                          total=weights + grads + opt + activations)


__all__ = ["FlopsPerToken", "MemoryEstimate", "ParamCounts", "count_parameters", "flops_per_token",
           "training_memory"]
