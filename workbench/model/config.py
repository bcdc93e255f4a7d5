"""``ModelConfig``: one validated dataclass that describes every GLM-family model the workbench builds.

Dense GLM-4 (GQA + partial RoPE), GLM-4.5 (GQA + QK-norm + QKV bias + MoE + MTP) and GLM-5 (MLA + DSA + MoE + MTP)
are all points in this one space. ``__post_init__`` rejects bad values with a message that says how to fix them,
before any tensor is allocated. Used by every notebook that builds a model (01_training, 04_profiling, 03_distributed,
05_hardware_comparison) and by the performance model.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from workbench.errors import ConfigError
from workbench.typecheck import field_type_problems


@dataclass(frozen=True)
class ModelConfig:
    name: str = "custom"
    # --- trunk
    vocab_size: int = 2048
    hidden_size: int = 256
    num_layers: int = 4
    intermediate_size: int = 768            # dense FFN width (dense layers, and the first_k_dense layers of a MoE)
    ffn_act: str = "swiglu"                 # "swiglu" (gate|up fused) or "gelu" (plain 2-matrix MLP, GPT-style)
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    max_position_embeddings: int = 4096
    init_std: float = 0.02
    # --- attention (shared)
    attention_type: str = "gqa"             # "gqa" (GLM-4 / 4.5) or "mla" (GLM-5)
    num_heads: int = 4
    rope_theta: float = 10000.0
    rope_interleaved: bool = False          # pair channels (2i, 2i+1) (GLM / GPT-J) instead of (i, i + R/2) (NeoX)
    attention_bias: bool = False            # GQA: bias on q/k/v projections; MLA: bias on q_a/kv_a/o projections
    # --- GQA
    num_kv_heads: int = 4
    head_dim: int | None = None             # default hidden_size // num_heads
    partial_rotary_factor: float = 1.0      # fraction of each head's channels that are rotated (GLM: 0.5)
    use_qk_norm: bool = False               # RMSNorm over each q / k head (GLM-4.5 full, not Air)
    # --- MLA (multi-head latent attention)
    q_lora_rank: int = 0                    # 0 = plain q projection (no low-rank q)
    kv_lora_rank: int = 64
    qk_nope_head_dim: int = 32
    qk_rope_head_dim: int = 16
    v_head_dim: int = 32
    latent_norm_eps: float = 1e-6           # eps of the q/kv latent RMSNorms (transformers hard-codes 1e-6)
    # --- DSA lightning indexer (MLA only); index_n_heads = 0 switches DSA off
    index_n_heads: int = 0
    index_head_dim: int = 32
    index_topk: int = 64
    indexer_types: tuple[str, ...] | None = None   # per layer "full" | "shared"; None = all "full"
    indexer_loss_coef: float = 1.0          # weight of the indexer's KL loss (trains the indexer only; 0 = off)
    # how sparse attention runs: "gather" (absorbed MLA, each query reads its top-k rows of the shared latent:
    # work ~ S*k), "mask" (dense flash attention with a top-k mask: work ~ S^2), "auto" (gather once
    # S >= DSA_GATHER_MIN_RATIO * index_topk, where it measured faster on cpu). Same numbers either way.
    dsa_attention: str = "auto"
    # --- MoE; num_experts = 0 means a dense model
    num_experts: int = 0
    num_experts_per_token: int = 2
    num_shared_experts: int = 1
    moe_intermediate_size: int = 256
    first_k_dense: int = 1
    routed_scaling: float = 1.0
    norm_topk_prob: bool = True
    aux_loss_coef: float = 0.0              # sequence-level balance loss weight (0 = off: aux-loss-free only)
    bias_update_rate: float = 1e-3          # gamma of aux-loss-free balancing (DeepSeek-V3)
    # --- MTP (multi-token prediction)
    mtp_layers: int = 0
    mtp_loss_weight: float = 0.3

    def __post_init__(self):
        if isinstance(self.indexer_types, list):  # from JSON (config.json, a checkpoint, an override)
            object.__setattr__(self, "indexer_types", tuple(self.indexer_types))
        problems = field_type_problems(self) or self._problems()
        if problems:
            raise ConfigError(f"ModelConfig {self.name!r}: " + "; ".join(problems))

    # ------------------------------------------------------------------ validation
    def _problems(self) -> list[str]:
        p: list[str] = []
        positive = ["vocab_size", "hidden_size", "num_layers", "num_heads", "max_position_embeddings"]
        for name in positive:
            if int(getattr(self, name)) < 1:
                p.append(f"{name} must be >= 1 (got {getattr(self, name)})")
        # NaN passes every "< 0" check (nan < 0 is False) and then poisons the loss, or turns a loss term off
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                p.append(f"{f.name} must be a finite number (got {value})")
        if p:
            return p
        if self.ffn_act not in ("swiglu", "gelu"):
            p.append(f"ffn_act must be 'swiglu' or 'gelu' (got {self.ffn_act!r})")
        if self.attention_type not in ("gqa", "mla"):
            p.append(f"attention_type must be 'gqa' or 'mla' (got {self.attention_type!r})")
        if self.norm_eps <= 0 or self.latent_norm_eps <= 0:
            p.append("norm_eps and latent_norm_eps must be > 0")
        if self.init_std <= 0:
            p.append(f"init_std must be > 0 (got {self.init_std})")
        if self.rope_theta <= 0:
            p.append(f"rope_theta must be > 0 (got {self.rope_theta})")
        if self.intermediate_size < 1 and (self.num_experts == 0 or self.first_k_dense > 0):
            p.append(f"intermediate_size must be >= 1 (got {self.intermediate_size})")
        if self.attention_type == "gqa":
            if self.head_dim is None and self.hidden_size % self.num_heads:
                p.append(f"num_heads ({self.num_heads}) must divide hidden_size ({self.hidden_size}), "
                         "or set head_dim explicitly")
            if self.num_kv_heads < 1 or self.num_heads % self.num_kv_heads:
                p.append(f"num_kv_heads ({self.num_kv_heads}) must be >= 1 and divide num_heads ({self.num_heads})")
            if self.head_dim is not None and self.head_dim < 1:
                p.append(f"head_dim must be >= 1 (got {self.head_dim})")
            if not 0.0 < self.partial_rotary_factor <= 1.0:
                p.append(f"partial_rotary_factor must be in (0, 1] (got {self.partial_rotary_factor})")
            elif not p:
                rot, hd = self.rotary_dim, self.attn_head_dim
                if rot % 2 or rot < 2 or rot > hd:
                    p.append(f"rotary dims = head_dim * partial_rotary_factor = {hd} * {self.partial_rotary_factor} "
                             f"= {rot} must be even, >= 2 and <= head_dim; change partial_rotary_factor or head_dim")
            if self.index_n_heads:
                p.append("DSA (index_n_heads > 0) needs attention_type='mla'; set index_n_heads=0 for GQA")
        else:
            for name in ("kv_lora_rank", "qk_nope_head_dim", "v_head_dim"):
                if getattr(self, name) < 1:
                    p.append(f"{name} must be >= 1 for MLA (got {getattr(self, name)})")
            if self.q_lora_rank < 0:
                p.append(f"q_lora_rank must be >= 0 (0 = no low-rank q; got {self.q_lora_rank})")
            if self.qk_rope_head_dim < 2 or self.qk_rope_head_dim % 2:
                p.append(f"qk_rope_head_dim (the rotary dims of MLA) must be even and >= 2 "
                         f"(got {self.qk_rope_head_dim})")
            if self.use_qk_norm:
                p.append("use_qk_norm is a GQA option; MLA normalises its latents instead (set use_qk_norm=False)")
        if self.index_n_heads < 0:
            p.append(f"index_n_heads must be >= 0 (0 = no DSA; got {self.index_n_heads})")
        if self.use_dsa:
            if self.index_topk < 1:
                p.append(f"index_topk must be >= 1 (got {self.index_topk})")
            elif self.index_topk >= self.max_position_embeddings:
                # sequences never exceed the positions, so every query would keep every key: the indexer would
                # never run (its parameters counted, never trained)
                p.append(f"index_topk ({self.index_topk}) must be below max_position_embeddings "
                         f"({self.max_position_embeddings}), else DSA never selects; lower index_topk or set "
                         "index_n_heads=0 for dense MLA")
            if self.q_lora_rank < 1:
                p.append("DSA's indexer reads the q latent: set q_lora_rank >= 1")
            if self.index_head_dim < self.qk_rope_head_dim:
                p.append(f"index_head_dim ({self.index_head_dim}) must be >= qk_rope_head_dim "
                         f"({self.qk_rope_head_dim}): the indexer rotates that many channels")
            types = self.layer_indexer_types
            if len(types) != self.num_layers:
                p.append(f"indexer_types has {len(types)} entries; need one per layer ({self.num_layers}): "
                         "pass a new tuple, or indexer_types=None for an indexer in every layer")
            elif any(t not in ("full", "shared") for t in types):
                p.append(f"indexer_types entries must be 'full' or 'shared' (got {sorted(set(types))})")
            elif types[0] != "full":
                p.append("indexer_types[0] must be 'full': a 'shared' layer reuses the previous layer's top-k")
        # checked with DSA off too: a typo there would surface only when someone turns DSA on
        if self.dsa_attention not in ("auto", "gather", "mask"):
            p.append(f"dsa_attention must be 'auto', 'gather' or 'mask' (got {self.dsa_attention!r})")
        if not self.use_dsa and self.indexer_types is not None and \
                any(t not in ("full", "shared") for t in self.indexer_types):
            p.append(f"indexer_types entries must be 'full' or 'shared' (got {sorted(set(self.indexer_types))})")
        if self.num_experts < 0:
            p.append(f"num_experts must be >= 0 (0 = dense; got {self.num_experts})")
        if self.num_experts > 0:
            if not 1 <= self.num_experts_per_token <= self.num_experts:
                p.append(f"num_experts_per_token (top_k = {self.num_experts_per_token}) must be in "
                         f"[1, num_experts = {self.num_experts}]")
            if self.moe_intermediate_size < 1:
                p.append(f"moe_intermediate_size must be >= 1 (got {self.moe_intermediate_size})")
            if self.num_shared_experts < 0:
                p.append(f"num_shared_experts must be >= 0 (got {self.num_shared_experts})")
            if not 0 <= self.first_k_dense <= self.num_layers:
                p.append(f"first_k_dense must be in [0, num_layers] (got {self.first_k_dense})")
            if self.ffn_act != "swiglu":
                p.append("MoE experts are SwiGLU: use ffn_act='swiglu' with num_experts > 0")
            if self.routed_scaling <= 0:
                p.append(f"routed_scaling must be > 0 (got {self.routed_scaling})")
        if self.aux_loss_coef < 0 or self.bias_update_rate < 0 or self.indexer_loss_coef < 0:
            p.append("aux_loss_coef, bias_update_rate and indexer_loss_coef must be >= 0")
        if self.mtp_layers < 0:
            p.append(f"mtp_layers must be >= 0 (got {self.mtp_layers})")
        if self.mtp_loss_weight < 0:
            p.append(f"mtp_loss_weight must be >= 0 (got {self.mtp_loss_weight})")
        return p

    # ------------------------------------------------------------------ derived shapes
    @property
    def attn_head_dim(self) -> int:
        """GQA head dim (q/k/v)."""
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_heads

    @property
    def rotary_dim(self) -> int:
        """Number of rotated channels per head (R): partial RoPE for GQA, qk_rope_head_dim for MLA."""
        if self.attention_type == "mla":
            return self.qk_rope_head_dim
        return int(self.attn_head_dim * self.partial_rotary_factor)

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim if self.attention_type == "mla" else self.attn_head_dim

    @property
    def use_dsa(self) -> bool:
        return self.attention_type == "mla" and self.index_n_heads > 0

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def layer_indexer_types(self) -> tuple[str, ...]:
        """Per main layer: 'full' (own indexer), 'shared' (reuse previous top-k); () without DSA."""
        if not self.use_dsa:
            return ()
        return self.indexer_types if self.indexer_types is not None else ("full",) * self.num_layers

    def layer_is_moe(self, layer: int) -> bool:
        """Layer index ``layer`` (MTP layers continue the numbering after num_layers) uses the MoE FFN."""
        return self.is_moe and layer >= self.first_k_dense

    def unread_fields(self) -> dict[str, str]:
        """Fields this configuration never reads, each with the reason: e.g. the GQA-only ``head_dim`` of an MLA
        model, or the router settings of a dense one. The trainer refuses a ``--model`` override of one of them,
        which would otherwise change nothing without a word (``head_dim=64`` on glm5-tiny trained the same model)."""
        groups: list[tuple[bool, tuple[str, ...], str]] = [
            (self.attention_type == "mla", ("num_kv_heads", "head_dim", "partial_rotary_factor"),
             "GQA-only; MLA sizes its heads with qk_nope_head_dim, qk_rope_head_dim and v_head_dim"),
            (self.attention_type == "gqa", ("q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
                                            "v_head_dim", "latent_norm_eps"),
             "MLA-only; set attention_type='mla' to use it"),
            (not self.use_dsa, ("index_head_dim", "index_topk", "indexer_types", "indexer_loss_coef",
                                "dsa_attention"),
             "a DSA setting, and DSA is off (it needs attention_type='mla' and index_n_heads > 0)"),
            (not self.is_moe, ("num_experts_per_token", "num_shared_experts", "moe_intermediate_size",
                               "first_k_dense", "routed_scaling", "norm_topk_prob", "aux_loss_coef",
                               "bias_update_rate"),
             "a MoE setting, and this model is dense (num_experts = 0)"),
            (self.is_moe and self.first_k_dense == 0 and self.ffn_act == "swiglu", ("intermediate_size",),
             "the dense FFN width, and every layer is MoE (first_k_dense = 0): moe_intermediate_size sizes experts"),
            (self.mtp_layers == 0, ("mtp_loss_weight",), "an MTP setting, and mtp_layers = 0"),
        ]
        return {name: why for unread, names, why in groups if unread for name in names}

    def replace(self, **changes) -> "ModelConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if d["indexer_types"] is not None:
            d["indexer_types"] = list(d["indexer_types"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown ModelConfig fields {unknown}; valid fields: {sorted(names)}")
        return cls(**d)


__all__ = ["ModelConfig"]
