"""The simulator's view of a model: per-layer shapes (dims), and the parameter and FLOP totals they imply.

``ModelShape`` holds exactly the spec's explicit-dims schema (layers, hidden, heads, kv_heads, head_dim, ffn,
ffn_type, vocab, moe, mla) plus a few optional extras that presets carry (tied embeddings, QKV bias, QK-norm, MTP
layers, the DSA indexer). It is built from a dict (``shape_from_dims``) or from a workbench preset's ModelConfig
(``shape_from_preset``); tests check that its totals equal ``workbench.model.accounting`` for the presets.

FLOPs follow the PaLM / torchtitan MFU convention (Chowdhery et al. 2022, appendix B): 6 x matmul parameters active
per token (non-embedding; routed experts counted top_k of them) + attention 6 x L x H x (d_qk + d_v) x T, no causal discount.
Used by ``workbench.perfmodel.simulator`` and notebooks/05_hardware_comparison.ipynb.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

from workbench.errors import ConfigError

FFN_TYPES = ("gelu", "swiglu")


MAX_DIM = 10**9  # no model dimension (layers, width, heads, vocab, experts, ...) is anywhere near this; bounding it
# keeps every product of dims a finite float (10**200 would overflow float() into an OverflowError traceback)


def _positive_int(where: str, name: str, value: Any, allow_zero: bool = False) -> int:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and isinstance(value, int) and value > MAX_DIM:  # before float(), which overflows on 400-digit JSON ints
        raise ConfigError(f"{where}: {name!r} = {value if value < 10**30 else f'~1e{int(value.bit_length() * 0.30103)}'} "
                          f"is implausibly large (at most {MAX_DIM:,})")
    ok = ok and math.isfinite(value) and float(value).is_integer()
    if not ok or value < 0 or (value == 0 and not allow_zero):
        need = "a non-negative integer" if allow_zero else "a positive integer"
        raise ConfigError(f"{where}: {name!r} = {value!r} must be {need}")
    if value > MAX_DIM:
        raise ConfigError(f"{where}: {name!r} = {value!r} is implausibly large (at most {MAX_DIM:,})")
    return int(value)


def _bool(where: str, name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: {name!r} = {value!r} must be true or false")


def indexer_layer_flops(n_params: int, heads: int, head_dim: int, topk: int, seq_len: int, trained: bool) -> float:
    """Training FLOPs per token of one DSA indexer layer, for the performance model and ``workbench.model.accounting``
    (whose docstring derives it): 0 when there is nothing to prune (seq_len <= topk). Here, not there: this module
    must not import torch."""
    if seq_len <= topk:
        return 0.0
    per_key = 2.0 * heads * (head_dim + 1)  # one key's score: q.k per indexer head, then the head weights
    select = 2.0 * n_params + per_key * seq_len
    if not trained:
        return select
    return select + 2.0 * n_params + 3.0 * per_key * min(seq_len, topk)


@dataclass(frozen=True)
class MoEShape:
    experts: int
    top_k: int
    shared: int = 0  # shared experts, each of width expert_ffn
    expert_ffn: int = 0
    first_dense: int = 0  # leading layers with a dense FFN instead of experts

    def __post_init__(self):
        for name in ("experts", "top_k", "expert_ffn"):
            _positive_int("moe", name, getattr(self, name))
        for name in ("shared", "first_dense"):
            _positive_int("moe", name, getattr(self, name), allow_zero=True)
        if self.top_k > self.experts:
            raise ConfigError(f"moe: top_k = {self.top_k} exceeds experts = {self.experts}")


@dataclass(frozen=True)
class MLAShape:
    q_lora_rank: int | None  # None or 0: full-rank query projection
    kv_lora_rank: int
    qk_nope_dim: int
    qk_rope_dim: int
    v_dim: int

    def __post_init__(self):
        if self.q_lora_rank not in (None, 0):
            _positive_int("mla", "q_lora_rank", self.q_lora_rank)
        for name in ("kv_lora_rank", "qk_nope_dim", "v_dim"):
            _positive_int("mla", name, getattr(self, name))
        _positive_int("mla", "qk_rope_dim", self.qk_rope_dim, allow_zero=True)


@dataclass(frozen=True)
class IndexerShape:
    """DSA lightning indexer (GLM-5 / DeepSeek-V3.2): scores every key with a few small heads, keeps top-k keys."""

    heads: int
    head_dim: int
    topk: int
    full_layers: int | None = None  # layers with their own indexer (others reuse the previous top-k); None = all
    trained: bool = False  # trained by a KL loss to the main attention (backward + the main scores it needs)

    def __post_init__(self):
        for name in ("heads", "head_dim", "topk"):
            _positive_int("indexer", name, getattr(self, name))
        if self.full_layers is not None:  # at least the first layer computes its own top-k
            _positive_int("indexer", "full_layers", self.full_layers)
        _bool("indexer", "trained", self.trained)


@dataclass(frozen=True)
class ModelShape:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    ffn: int  # dense FFN width (0 allowed when every layer is MoE)
    vocab: int
    ffn_type: str = "swiglu"
    head_dim: int | None = None
    moe: MoEShape | None = None
    mla: MLAShape | None = None
    # extras presets carry (explicit dims may set them too)
    tied_embeddings: bool = False
    qkv_bias: bool = False
    qk_norm: bool = False
    mtp_layers: int = 0
    indexer: IndexerShape | None = None
    # FFN biases: None = the ffn_type's convention (GPT-style gelu FFNs have them, SwiGLU ones do not); the
    # workbench's own gelu MLP has none, so shapes built from a ModelConfig say False
    ffn_bias: bool | None = None
    name: str = "custom"
    source: str = "explicit dims"

    def __post_init__(self):
        for name in ("layers", "hidden", "heads", "kv_heads", "vocab"):
            _positive_int("model", name, getattr(self, name))
        if self.ffn_bias is not None and not isinstance(self.ffn_bias, bool):
            raise ConfigError(f"model: ffn_bias must be true, false or null (the ffn_type's convention), got "
                              f"{self.ffn_bias!r}")
        _positive_int("model", "ffn", self.ffn, allow_zero=True)
        _positive_int("model", "mtp_layers", self.mtp_layers, allow_zero=True)
        for name in ("tied_embeddings", "qkv_bias", "qk_norm"):
            _bool("model", name, getattr(self, name))
        if not isinstance(self.name, str):
            raise ConfigError(f"model: 'name' = {self.name!r} must be a string")
        if self.indexer is not None:
            if self.indexer.full_layers is not None and self.indexer.full_layers > self.layers:
                raise ConfigError(f"indexer: full_layers = {self.indexer.full_layers} exceeds layers = {self.layers}")
        if self.head_dim is not None:
            _positive_int("model", "head_dim", self.head_dim)
        if self.ffn_type not in FFN_TYPES:
            raise ConfigError(f"model: ffn_type = {self.ffn_type!r} must be one of {FFN_TYPES}")
        if self.heads % self.kv_heads:
            raise ConfigError(f"model: heads = {self.heads} is not a multiple of kv_heads = {self.kv_heads}")
        if self.head_dim is None and self.mla is None and self.hidden % self.heads:
            raise ConfigError(f"model: hidden = {self.hidden} is not divisible by heads = {self.heads}; give head_dim")
        if self.moe is not None and self.moe.first_dense > self.layers:
            raise ConfigError(f"moe: first_dense = {self.moe.first_dense} exceeds layers = {self.layers}")
        if self.ffn == 0 and (self.moe is None or self.moe.first_dense > 0):
            raise ConfigError("model: ffn = 0 is only allowed when every layer is MoE (moe.first_dense = 0)")

    # ---- derived dims --------------------------------------------------------------------------------------
    @property
    def d_head(self) -> int:
        return self.head_dim or self.hidden // self.heads

    @property
    def d_qk(self) -> int:
        return self.mla.qk_nope_dim + self.mla.qk_rope_dim if self.mla else self.d_head

    @property
    def d_v(self) -> int:
        return self.mla.v_dim if self.mla else self.d_head

    @property
    def dense_layers(self) -> int:
        return self.layers if self.moe is None else self.moe.first_dense

    @property
    def moe_layers(self) -> int:
        return self.layers - self.dense_layers

    @property
    def ffn_mats(self) -> int:
        """Weight matrices of width ffn in one FFN: 2 for GeLU (up, down), 3 for SwiGLU (gate, up, down)."""
        return 3 if self.ffn_type == "swiglu" else 2

    # ---- parameters per block --------------------------------------------------------------------------------
    def attention_params(self) -> int:
        h, H = self.hidden, self.heads
        if self.mla:
            m = self.mla
            dq = m.qk_nope_dim + m.qk_rope_dim
            if m.q_lora_rank:
                q = h * m.q_lora_rank + m.q_lora_rank + m.q_lora_rank * H * dq  # down, norm, up
            else:
                q = h * H * dq
            kv = h * (m.kv_lora_rank + m.qk_rope_dim) + m.kv_lora_rank + m.kv_lora_rank * H * (m.qk_nope_dim + m.v_dim)
            params = q + kv + H * m.v_dim * h
            if self.qkv_bias:  # MLA's attention_bias: on q_a, kv_a and o projections
                params += (m.q_lora_rank or 0) + m.kv_lora_rank + m.qk_rope_dim + h
        else:
            d, kv = self.d_head, self.kv_heads
            params = h * (H + 2 * kv) * d + H * d * h
            if self.qkv_bias:
                params += (H + 2 * kv) * d
            if self.qk_norm:
                params += 2 * d
        return params

    def indexer_params(self) -> int:
        """One DSA indexer: wq (from the q latent), wk, k LayerNorm (weight + bias), per-head weights projection."""
        if not self.indexer:
            return 0
        ix, h = self.indexer, self.hidden
        q_in = self.mla.q_lora_rank if (self.mla and self.mla.q_lora_rank) else h
        return q_in * ix.heads * ix.head_dim + h * ix.head_dim + 2 * ix.head_dim + h * ix.heads

    @property
    def indexer_layers(self) -> int:
        if not self.indexer:
            return 0
        return self.layers if self.indexer.full_layers is None else self.indexer.full_layers

    def dense_ffn_params(self) -> int:
        with_bias = self.ffn_type == "gelu" if self.ffn_bias is None else self.ffn_bias
        extra = (self.ffn + self.hidden) if with_bias else 0  # GPT-style biases
        return self.ffn_mats * self.hidden * self.ffn + extra

    def expert_params(self) -> int:
        """One routed (or shared) expert."""
        return self.ffn_mats * self.hidden * self.moe.expert_ffn

    def router_params(self) -> int:
        return self.hidden * self.moe.experts  # gate (the aux-free selection bias is a buffer, not a parameter)

    def norm_params_per_layer(self) -> int:
        return 2 * self.hidden

    def layer_params(self, moe_layer: bool, active: bool = False) -> int:
        total = self.attention_params() + self.norm_params_per_layer()
        if not moe_layer:
            return total + self.dense_ffn_params()
        m = self.moe
        routed = (m.top_k if active else m.experts) * self.expert_params()
        return total + routed + m.shared * self.expert_params() + self.router_params()

    def mtp_layer_params(self) -> int:
        """One multi-token-prediction layer: a decoder layer (MoE when the model is) + 2 norms + a 2h -> h projection."""
        block = self.layer_params(moe_layer=self.moe is not None) + self.indexer_params()
        return block + 2 * self.hidden + 2 * self.hidden * self.hidden + self.hidden

    # ---- totals ------------------------------------------------------------------------------------------------
    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    def output_params(self) -> int:
        return 0 if self.tied_embeddings else self.vocab * self.hidden

    def param_counts(self) -> dict[str, int]:
        """total, active, embedding, non_embedding, mtp: MTP layers counted separately (not in total)."""
        body = body_active = self.dense_layers * self.layer_params(False)
        if self.moe_layers:
            body += self.moe_layers * self.layer_params(True)
            body_active += self.moe_layers * self.layer_params(True, active=True)
        body += self.indexer_layers * self.indexer_params()
        body_active += self.indexer_layers * self.indexer_params()
        final = self.hidden + self.output_params()
        embedding = self.embedding_params()
        total = embedding + body + final
        active = embedding + body_active + final
        return {"total": total, "active": active, "embedding": embedding, "non_embedding": total - embedding,
                "active_non_embedding": active - embedding, "mtp": self.mtp_layers * self.mtp_layer_params()}

    def matmul_params_per_token(self) -> int:
        """N in 6*N: active trunk parameters + the LM head (tied or not: it is a matmul), without the embedding
        lookup and the DSA indexers (which run forward only)."""
        counts = self.param_counts()
        n = counts["active_non_embedding"] - self.output_params() + self.embedding_params()
        return n - self.indexer_layers * self.indexer_params()

    def _attention_keys(self, seq_len: int) -> int:
        return min(seq_len, self.indexer.topk) if self.indexer else seq_len  # DSA: each query reads top-k keys

    def _indexer_flops(self, seq_len: int) -> float:
        """One indexer layer: key selection, plus its sparse KL loss when trained (the accounting's formula)."""
        if not self.indexer:
            return 0.0
        ix = self.indexer
        return indexer_layer_flops(self.indexer_params(), ix.heads, ix.head_dim, ix.topk, seq_len, ix.trained)

    def attention_flops_per_token(self, seq_len: int) -> float:
        """PaLM/torchtitan attention term for training: 6 * L * H * (d_qk + d_v) * T (no causal discount; DSA
        models read min(T, top-k) keys)."""
        return 6.0 * self.layers * self.heads * (self.d_qk + self.d_v) * self._attention_keys(seq_len)

    def flops_breakdown(self, seq_len: int) -> dict[str, float]:
        """Training FLOPs per token by part (the accounting module's convention; see its docstring)."""
        dense = 6.0 * self.matmul_params_per_token()
        attention = self.attention_flops_per_token(seq_len)
        indexer = self.indexer_layers * self._indexer_flops(seq_len)
        mtp = 0.0
        if self.mtp_layers:
            inactive = (self.moe.experts - self.moe.top_k) * self.expert_params() if self.moe else 0
            mtp_n = self.mtp_layer_params() - inactive - self.indexer_params() + self.embedding_params()
            per_layer_attn = attention / self.layers
            mtp = self.mtp_layers * (6.0 * mtp_n + per_layer_attn + self._indexer_flops(seq_len))
        return {"dense_matmul": dense, "attention": attention, "indexer": indexer, "mtp": mtp,
                "total": dense + attention + indexer + mtp}

    def flops_per_token(self, seq_len: int) -> float:
        """Training model FLOPs per token: PaLM convention, plus DSA indexers and MTP layers where the model has
        them (as ``workbench.model.accounting.flops_per_token``)."""
        return self.flops_breakdown(seq_len)["total"]

    @functools.cached_property
    def consts(self) -> dict[str, float]:
        """Per-block parameter counts, computed once per shape (the layout search asks thousands of times)."""
        return {"attention": self.attention_params(), "indexer": self.indexer_params(),
                "indexer_layers": self.indexer_layers, "norms": self.norm_params_per_layer(),
                "dense_ffn": self.dense_ffn_params(), "expert": self.expert_params() if self.moe else 0,
                "router": self.router_params() if self.moe else 0, "embedding": self.embedding_params(),
                "output": self.output_params(), "mtp_layer": self.mtp_layer_params() if self.mtp_layers else 0,
                "moe_frac": self.moe_layers / self.layers}

    def as_dims(self) -> dict[str, Any]:
        """The explicit-dims dict that rebuilds this shape (round-trips through ``shape_from_dims``)."""
        out: dict[str, Any] = {
            "layers": self.layers, "hidden": self.hidden, "heads": self.heads, "kv_heads": self.kv_heads,
            "head_dim": self.head_dim, "ffn": self.ffn, "ffn_type": self.ffn_type, "vocab": self.vocab,
            "moe": None if self.moe is None else dict(self.moe.__dict__),
            "mla": None if self.mla is None else dict(self.mla.__dict__),
        }
        for name in ("tied_embeddings", "qkv_bias", "qk_norm", "mtp_layers"):
            if getattr(self, name):
                out[name] = getattr(self, name)
        if self.ffn_bias is not None:
            out["ffn_bias"] = self.ffn_bias
        if self.indexer:
            out["indexer"] = dict(self.indexer.__dict__)
        return out


_DIM_KEYS = {"layers", "hidden", "heads", "kv_heads", "head_dim", "ffn", "ffn_type", "vocab", "moe", "mla",
             "tied_embeddings", "qkv_bias", "qk_norm", "mtp_layers", "indexer", "name", "ffn_bias"}


def shape_from_dims(dims: dict[str, Any]) -> ModelShape:
    """A ModelShape from the spec's explicit dims (see the schema in workbench/perfmodel/README.md)."""
    if not isinstance(dims, dict):
        raise ConfigError(f"model must be a dict of dims or {{'preset': name}}, got {type(dims).__name__}")
    unknown = sorted(set(dims) - _DIM_KEYS)
    if unknown:
        raise ConfigError(f"model: unknown key(s) {unknown}; known: {sorted(_DIM_KEYS)}")
    missing = [k for k in ("layers", "hidden", "heads", "vocab") if dims.get(k) is None]
    if missing:
        raise ConfigError(f"model: missing {missing}; explicit dims need layers, hidden, heads, ffn (or moe), vocab")
    values = dict(dims)
    values.setdefault("kv_heads", values["heads"])
    if values["kv_heads"] is None:
        values["kv_heads"] = values["heads"]
    if values.get("ffn") is None:
        values["ffn"] = 4 * values["hidden"] if not values.get("moe") else 0
    if values.get("ffn_type") is None:
        values["ffn_type"] = "swiglu"
    for key, cls in (("moe", MoEShape), ("mla", MLAShape), ("indexer", IndexerShape)):
        sub = values.get(key)
        if sub is not None:
            if not isinstance(sub, dict):
                raise ConfigError(f"model: {key!r} must be a dict or null, got {sub!r}")
            known = set(cls.__dataclass_fields__)
            bad = sorted(set(sub) - known)
            if bad:
                raise ConfigError(f"model.{key}: unknown key(s) {bad}; known: {sorted(known)}")
            try:
                values[key] = cls(**sub)
            except TypeError as exc:
                raise ConfigError(f"model.{key}: {exc}") from None
    return ModelShape(**values)


def shape_from_config(config: Any, name: str | None = None) -> ModelShape:
    """A ModelShape from a ``workbench.model.ModelConfig`` (GQA or MLA, dense or MoE, with DSA and MTP)."""
    c = config
    mla = indexer = moe = None
    if c.attention_type == "mla":
        mla = MLAShape(q_lora_rank=c.q_lora_rank or None, kv_lora_rank=c.kv_lora_rank,
                       qk_nope_dim=c.qk_nope_head_dim, qk_rope_dim=c.qk_rope_head_dim, v_dim=c.v_head_dim)
        if c.index_n_heads:
            types = c.layer_indexer_types
            indexer = IndexerShape(heads=c.index_n_heads, head_dim=c.index_head_dim, topk=c.index_topk,
                                   full_layers=sum(t == "full" for t in types) if types else None,
                                   trained=getattr(c, "indexer_loss_coef", 0) > 0)
    if c.num_experts:
        moe = MoEShape(experts=c.num_experts, top_k=c.num_experts_per_token, shared=c.num_shared_experts,
                       expert_ffn=c.moe_intermediate_size, first_dense=c.first_k_dense)
    name = name or c.name
    return ModelShape(
        layers=c.num_layers, hidden=c.hidden_size, heads=c.num_heads,
        kv_heads=c.num_kv_heads if mla is None else c.num_heads, head_dim=c.head_dim if mla is None else None,
        ffn=c.intermediate_size if (moe is None or moe.first_dense) else 0, ffn_type=c.ffn_act, ffn_bias=False,
        vocab=c.vocab_size, moe=moe, mla=mla, indexer=indexer, tied_embeddings=c.tie_embeddings,
        qkv_bias=c.attention_bias, qk_norm=c.use_qk_norm, mtp_layers=c.mtp_layers, name=name,
        source=f"preset {name!r}",
    )


def preset_names() -> list[str]:
    """The workbench model presets ``{"model": {"preset": name}}`` accepts (empty without workbench.model)."""
    try:
        from workbench.model import list_presets
    except ImportError:
        return []
    return list_presets()


def shape_from_preset(name: str) -> ModelShape:
    """The shape of a workbench model preset (``workbench.model.get_preset``)."""
    try:
        from workbench.model import get_preset
    except ImportError as exc:  # the model package is optional for explicit-dims specs
        raise ConfigError(f"model preset {name!r} needs workbench.model ({exc}); give explicit dims instead") from None
    return shape_from_config(get_preset(name), name=name)
