"""Load and save transformers GLM checkpoints: ``Glm4MoeForCausalLM`` (GLM-4.5 / 4.6 / 4.7, Air) and
``GlmMoeDsaForCausalLM`` (GLM-5), so released weights can be studied and fine-tuned in the workbench.

    model = from_hf(hf_model)            # an in-memory transformers model
    model = from_hf("path/to/folder")    # config.json + *.safetensors (the released layout; transformers not needed)
    to_hf(model, "out/")                 # config.json + model.safetensors that both from_hf and transformers load

Name mapping (transformers -> workbench), per layer ``model.layers.i.`` -> ``layers.i.``:
  self_attn.* (q/k/v/o_proj, q_norm, k_norm, q_a_proj, kv_a_proj_with_mqa, kv_b_proj, indexer.*)  same names
  mlp.gate_proj + mlp.up_proj            -> mlp.gate_up_proj  (rows: gate then up)
  mlp.gate.weight / e_score_correction_bias -> mlp.router.weight / expert_bias
  mlp.experts.gate_up_proj, down_proj   (stacked, in memory)  or  mlp.experts.{e}.gate/up/down_proj (on disk)
  model.layers.{L + d}.*  (the MTP layer after the L trunk layers) -> mtp.d.{enorm, hnorm, eh_proj,
  shared_head_norm, block.*}; its copies of embed_tokens and shared_head.head are the trunk's and are skipped.
transformers' models ignore the MTP layer; the workbench loads it when the checkpoint holds it.
RoPE: GLM-4.5 rotates (i, i + R/2) pairs of the first R channels ("half"), GLM-5 rotates (2i, 2i + 1) pairs
(interleaved), and ``kernels.rope`` implements both, so loading needs no permutation. A GQA model trained with
interleaved RoPE (the workbench's glm4-tiny) is written with its q/k rows reordered to the half layout
(``_interleaved_to_half_rope``) and reads back as half RoPE: the same function.
Used to study or fine-tune released weights from Python (``Trainer(config, model=from_hf(path))``; README), by
``workbench export`` (workbench/interop/cli.py: a run folder -> transformers), benchmarks/train_throughput.py (config_to_hf: the same model in transformers) and tests/test_interop_hf.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from workbench.errors import ConfigError, WorkbenchError
from workbench.model.config import ModelConfig
from workbench.model.glm import GLMForCausalLM, build_model, cast_model
from workbench.train.checkpoint import save_safetensors, unwrap_model  # (a full disk: an OSError)

ARCHITECTURES = {"glm4_moe": "Glm4MoeForCausalLM", "glm_moe_dsa": "GlmMoeDsaForCausalLM"}
# ModelConfig fields that mean nothing without experts (a dense model's transformers config holds placeholders)
MOE_ONLY_FIELDS = {"num_experts_per_token", "first_k_dense", "moe_intermediate_size", "num_shared_experts",
                   "routed_scaling", "norm_topk_prob"}


# ------------------------------------------------------------------------------------------------ configs
def config_from_hf(d: dict, mtp_layers: int = 0, mtp_is_moe: bool = False) -> ModelConfig:
    """transformers config dict -> ModelConfig (raises ConfigError for features the workbench does not model).

    ``mtp_is_moe``: the checkpoint's MTP layer has a router. It matters only when every trunk layer is dense, where
    the experts would otherwise be dropped (``from_hf`` reads it from the weights)."""
    return ModelConfig(**_fields_from_hf(d, mtp_layers, mtp_is_moe))


def _indexer_types_from_hf(d: dict, layers: int) -> tuple[str, ...]:
    """GLM-5's per-layer indexer schedule, derived as transformers' GlmMoeDsaConfig does: ``indexer_types``, else
    ``index_topk_pattern`` ("FSFS..." or a list), else ``index_topk_freq`` / ``index_skip_topk_offset``."""
    if d.get("indexer_types"):
        return tuple(d["indexer_types"])
    pattern = d.get("index_topk_pattern")
    if pattern is not None:
        if isinstance(pattern, str):
            unknown = set(pattern) - {"F", "S"}
            if unknown:
                raise ConfigError(f"index_topk_pattern {pattern!r} may hold only 'F' (full) and 'S' (shared)")
            return tuple({"F": "full", "S": "shared"}[c] for c in pattern)
        return tuple(pattern)
    freq = max(int(d.get("index_topk_freq", 1)), 1)
    offset = int(d.get("index_skip_topk_offset", 2))
    return tuple("full" if max(i - offset + 1, 0) % freq == 0 else "shared" for i in range(layers))


# transformers' own defaults (5.24's Glm4MoeConfig / GlmMoeDsaConfig) for the keys from_hf reads: a config.json that
# leaves a key out means the class default, which for GLM-5 is not the workbench's (routed_scaling 2.5, not 1.0).
# tests/test_interop_hf.py checks this table against the installed transformers. Keys with no default there (GQA's
# head_dim, the rope keys) are handled where they are read.
_HF_DEFAULTS = {
    "glm4_moe": dict(
        vocab_size=151552, hidden_size=4096, intermediate_size=10944, num_hidden_layers=46, num_attention_heads=96,
        num_key_value_heads=8, hidden_act="silu", max_position_embeddings=131072, initializer_range=0.02,
        rms_norm_eps=1e-5, tie_word_embeddings=False, attention_bias=False, moe_intermediate_size=1408,
        num_experts_per_tok=8, n_shared_experts=1, n_routed_experts=128, routed_scaling_factor=1.0, n_group=1,
        topk_group=1, first_k_dense_replace=1, norm_topk_prob=True, use_qk_norm=False),
    "glm_moe_dsa": dict(
        vocab_size=154880, hidden_size=6144, intermediate_size=12288, moe_intermediate_size=2048,
        num_hidden_layers=78, num_attention_heads=64, n_shared_experts=1, n_routed_experts=256,
        routed_scaling_factor=2.5, kv_lora_rank=512, q_lora_rank=2048, qk_rope_head_dim=64, v_head_dim=256,
        qk_nope_head_dim=192, n_group=1, topk_group=1, num_experts_per_tok=8, norm_topk_prob=True, hidden_act="silu",
        max_position_embeddings=202752, initializer_range=0.02, rms_norm_eps=1e-5, tie_word_embeddings=False,
        attention_bias=False, index_topk=2048, index_head_dim=128, index_n_heads=32, mlp_bias=False,
        first_k_dense_replace=3),
}
_HF_ROPE_DEFAULTS = {"glm4_moe": {"rope_theta": 10000.0, "partial_rotary_factor": 0.5},
                     "glm_moe_dsa": {"rope_theta": 10000.0}}


def _rope_from_hf(d: dict, kind: str) -> dict:
    """The RoPE settings of a config dict: transformers 5's ``rope_parameters``, or the older layout (``rope_theta``
    and ``partial_rotary_factor`` at the top level, scaling in ``rope_scaling`` with ``type`` or ``rope_type``), which
    transformers 5 still reads. A scaled RoPE (yarn, linear, ...) in either place is refused: ignoring it would give
    other logits without a word."""
    rope = dict(_HF_ROPE_DEFAULTS[kind])
    for key in ("rope_theta", "partial_rotary_factor"):
        if d.get(key) is not None:
            rope[key] = d[key]
    for section in ("rope_scaling", "rope_parameters"):  # the newer one wins where both say something
        for key, value in (d.get(section) or {}).items():
            rope["rope_type" if key == "type" else key] = value
    if rope.get("rope_type", "default") != "default":
        raise ConfigError(f"rope_type {rope['rope_type']!r} (scaled RoPE) is not supported; only 'default'")
    return rope


def _fields_from_hf(d: dict, mtp_layers: int, mtp_is_moe: bool) -> dict:
    """The ModelConfig fields a transformers config determines (see ``config_from_hf``)."""
    kind = d.get("model_type")
    if kind not in ARCHITECTURES:
        raise ConfigError(f"unsupported model_type {kind!r}; from_hf reads {sorted(ARCHITECTURES)}")
    rope = _rope_from_hf(d, kind)
    d = {**_HF_DEFAULTS[kind], **d}
    if d["hidden_act"] != "silu" or d.get("mlp_bias", False):
        raise ConfigError("only SiLU-gated MLPs without bias are supported")
    if d["topk_group"] < d["n_group"]:
        raise ConfigError("group-limited routing (topk_group < n_group) is not supported")
    layers = d["num_hidden_layers"]
    first_k_dense = d["first_k_dense_replace"]
    if kind == "glm_moe_dsa" and d.get("mlp_layer_types"):
        types = d["mlp_layer_types"]
        first_k_dense = types.index("sparse") if "sparse" in types else layers
        if any(t != "sparse" for t in types[first_k_dense:]):
            raise ConfigError(f"mlp_layer_types must be dense layers then sparse layers (got {types})")
    common = dict(
        name=d.get("_name_or_path") or kind, vocab_size=d["vocab_size"], hidden_size=d["hidden_size"],
        num_layers=layers, intermediate_size=d["intermediate_size"], num_heads=d["num_attention_heads"],
        norm_eps=d["rms_norm_eps"], tie_embeddings=d["tie_word_embeddings"],
        max_position_embeddings=d["max_position_embeddings"], init_std=d["initializer_range"],
        rope_theta=float(rope["rope_theta"]), attention_bias=d["attention_bias"],
        # an all-dense trunk has no experts, unless its MTP layer (a later layer, so past first_k_dense) is MoE
        num_experts=d["n_routed_experts"] if first_k_dense < layers or (mtp_layers and mtp_is_moe) else 0,
        num_experts_per_token=d["num_experts_per_tok"],
        num_shared_experts=d["n_shared_experts"], moe_intermediate_size=d["moe_intermediate_size"],
        first_k_dense=min(first_k_dense, layers), routed_scaling=d["routed_scaling_factor"],
        norm_topk_prob=d["norm_topk_prob"], mtp_layers=mtp_layers)
    if kind == "glm4_moe":
        return dict(
            **common, attention_type="gqa", num_kv_heads=d["num_key_value_heads"],
            head_dim=d.get("head_dim") or d["hidden_size"] // d["num_attention_heads"],
            partial_rotary_factor=float(rope["partial_rotary_factor"]), use_qk_norm=d["use_qk_norm"],
            rope_interleaved=False)
    return dict(
        **common, attention_type="mla", num_kv_heads=d["num_attention_heads"], q_lora_rank=d["q_lora_rank"] or 0,
        kv_lora_rank=d["kv_lora_rank"], qk_nope_head_dim=d["qk_nope_head_dim"],
        qk_rope_head_dim=d["qk_rope_head_dim"], v_head_dim=d["v_head_dim"], rope_interleaved=True,
        latent_norm_eps=1e-6, index_n_heads=d["index_n_heads"], index_head_dim=d["index_head_dim"],
        index_topk=d["index_topk"], indexer_types=_indexer_types_from_hf(d, layers))


def config_to_hf(c: ModelConfig, dtype: str = "float32") -> dict:
    """ModelConfig -> transformers config dict (raises ConfigError for what transformers cannot express).
    ``dtype``: the weights' dtype name ("float32", "bfloat16"), which transformers loads them as."""
    problems = []
    if c.ffn_act != "swiglu":
        problems.append("ffn_act must be 'swiglu'")
    if c.is_moe and c.num_shared_experts < 1:
        problems.append("transformers' GLM MoE always has a shared expert (num_shared_experts >= 1)")
    if c.attention_type == "mla" and (not c.use_dsa or not c.rope_interleaved or c.latent_norm_eps != 1e-6):
        problems.append("GlmMoeDsa needs DSA (index_n_heads > 0), rope_interleaved=True and latent_norm_eps=1e-6")
    if problems:
        raise ConfigError(f"cannot express {c.name!r} as a transformers GLM config: " + "; ".join(problems))
    kind = "glm4_moe" if c.attention_type == "gqa" else "glm_moe_dsa"
    first_dense = c.first_k_dense if c.is_moe else c.num_layers
    d = dict(
        model_type=kind, architectures=[ARCHITECTURES[kind]], vocab_size=c.vocab_size, hidden_size=c.hidden_size,
        num_hidden_layers=c.num_layers, intermediate_size=c.intermediate_size, num_attention_heads=c.num_heads,
        rms_norm_eps=c.norm_eps, tie_word_embeddings=c.tie_embeddings, initializer_range=c.init_std,
        max_position_embeddings=c.max_position_embeddings, attention_bias=c.attention_bias, hidden_act="silu",
        n_routed_experts=max(c.num_experts, 1), num_experts_per_tok=c.num_experts_per_token if c.is_moe else 1,
        n_shared_experts=c.num_shared_experts, moe_intermediate_size=c.moe_intermediate_size,
        first_k_dense_replace=first_dense, routed_scaling_factor=c.routed_scaling, norm_topk_prob=c.norm_topk_prob,
        n_group=1, topk_group=1, num_nextn_predict_layers=c.mtp_layers, dtype=dtype,
        rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta})
    if kind == "glm4_moe":
        d.update(num_key_value_heads=c.num_kv_heads, head_dim=c.attn_head_dim, use_qk_norm=c.use_qk_norm)
        d["rope_parameters"]["partial_rotary_factor"] = c.partial_rotary_factor
    else:
        d.update(num_key_value_heads=c.num_heads, q_lora_rank=c.q_lora_rank, kv_lora_rank=c.kv_lora_rank,
                 qk_nope_head_dim=c.qk_nope_head_dim, qk_rope_head_dim=c.qk_rope_head_dim,
                 v_head_dim=c.v_head_dim, head_dim=c.qk_rope_head_dim, index_n_heads=c.index_n_heads,
                 index_head_dim=c.index_head_dim, index_topk=c.index_topk,
                 indexer_types=list(c.layer_indexer_types),
                 mlp_layer_types=["dense"] * first_dense + ["sparse"] * (c.num_layers - first_dense))
    d["workbench_config"] = c.to_dict()  # lets from_hf restore training-only fields (loss weights, rates, name)
    return d


# ------------------------------------------------------------------------------------------------ weights
_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_EXPERT = re.compile(r"^mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
_MTP_OWN = {"enorm.weight": "enorm.weight", "hnorm.weight": "hnorm.weight", "eh_proj.weight": "eh_proj.weight",
            "shared_head.norm.weight": "shared_head_norm.weight"}
_MTP_SHARED = ("embed_tokens.weight", "shared_head.head.weight")
_FUSED = {f"{p}{n}_proj.weight" for p in ("mlp.", "mlp.shared_experts.") for n in ("gate", "up")}


def _block_from_hf(parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One decoder layer's tensors, transformers names (without 'model.layers.i.') -> workbench names."""
    out, experts = {}, {}
    for key, t in parts.items():
        m = _EXPERT.match(key)
        if m:
            experts.setdefault(m.group(2), {})[int(m.group(1))] = t
        elif key == "mlp.gate.weight":
            out["mlp.router.weight"] = t
        elif key == "mlp.gate.e_score_correction_bias":
            out["mlp.router.expert_bias"] = t
        elif key in _FUSED:
            continue  # fused below
        else:
            out[key] = t
    for prefix in ("mlp.", "mlp.shared_experts."):
        if prefix + "gate_proj.weight" in parts:
            out[prefix + "gate_up_proj.weight"] = torch.cat([parts[prefix + "gate_proj.weight"],
                                                             parts[prefix + "up_proj.weight"]], dim=0)
    if experts:
        n = len(experts["gate_proj"])
        gate, up, down = ([experts[k][e] for e in range(n)] for k in ("gate_proj", "up_proj", "down_proj"))
        out["mlp.experts.gate_up_proj"] = torch.cat([torch.stack(gate), torch.stack(up)], dim=1)
        out["mlp.experts.down_proj"] = torch.stack(down)
    return out


def state_dict_from_hf(state: dict[str, torch.Tensor], c: ModelConfig) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    per_layer: dict[int, dict[str, torch.Tensor]] = {}
    for key, t in state.items():
        m = _LAYER.match(key)
        if m:
            per_layer.setdefault(int(m.group(1)), {})[m.group(2)] = t
        elif key == "model.embed_tokens.weight":
            out["embed_tokens.weight"] = t
        elif key == "model.norm.weight":
            out["norm.weight"] = t
        elif key == "lm_head.weight" and not c.tie_embeddings:
            out["lm_head.weight"] = t
    for i, parts in per_layer.items():
        if i < c.num_layers:
            out.update({f"layers.{i}.{k}": v for k, v in _block_from_hf(parts).items()})
        elif i < c.num_layers + c.mtp_layers:
            depth = i - c.num_layers
            own = {k: v for k, v in parts.items() if k not in _MTP_OWN and k not in _MTP_SHARED}
            out.update({f"mtp.{depth}.{_MTP_OWN[k]}": v for k, v in parts.items() if k in _MTP_OWN})
            out.update({f"mtp.{depth}.block.{k}": v for k, v in _block_from_hf(own).items()})
    if c.tie_embeddings and "embed_tokens.weight" in out:
        out["lm_head.weight"] = out["embed_tokens.weight"]  # one tensor under two names, as in the module
    return out


def _block_to_hf(parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, t in parts.items():
        if key == "mlp.router.weight":
            out["mlp.gate.weight"] = t
        elif key == "mlp.router.expert_bias":
            out["mlp.gate.e_score_correction_bias"] = t
        elif key.endswith("gate_up_proj.weight"):
            gate, up = t.chunk(2, dim=0)
            prefix = key[: -len("gate_up_proj.weight")]
            out[prefix + "gate_proj.weight"], out[prefix + "up_proj.weight"] = gate, up
        elif key == "mlp.experts.gate_up_proj":
            gate, up = t.chunk(2, dim=1)
            for e in range(t.shape[0]):
                out[f"mlp.experts.{e}.gate_proj.weight"], out[f"mlp.experts.{e}.up_proj.weight"] = gate[e], up[e]
        elif key == "mlp.experts.down_proj":
            for e in range(t.shape[0]):
                out[f"mlp.experts.{e}.down_proj.weight"] = t[e]
        else:
            out[key] = t
    return out


def _interleaved_to_half_rope(parts: dict[str, torch.Tensor], c: ModelConfig) -> dict[str, torch.Tensor]:
    """A GQA block trained with interleaved RoPE, rewritten for transformers' Glm4Moe, which rotates half-split
    pairs. Interleaved RoPE rotates channels (2i, 2i + 1) of each head's first R; half-split rotates (i, i + R/2),
    both at frequency i. Reordering the rows of q_proj and k_proj (weights, biases) and the q/k norm weights by
    [0, 2, .., R-2, 1, 3, .., R-1] moves each pair to where half-split expects it; q . k is unchanged because q and
    k are reordered alike. (How the workbench's default glm4-tiny exports.)"""
    head_dim = c.attn_head_dim
    rotary = int(head_dim * c.partial_rotary_factor)
    order = torch.cat([torch.arange(0, rotary, 2), torch.arange(1, rotary, 2), torch.arange(rotary, head_dim)])
    out = dict(parts)
    for name, heads in (("q", c.num_heads), ("k", c.num_kv_heads)):
        for key in (f"self_attn.{name}_proj.weight", f"self_attn.{name}_proj.bias"):
            if key in out:
                t = out[key]
                out[key] = t.reshape(heads, head_dim, *t.shape[1:])[:, order].reshape(t.shape)
        if f"self_attn.{name}_norm.weight" in out:
            out[f"self_attn.{name}_norm.weight"] = out[f"self_attn.{name}_norm.weight"][order]
    return out


def state_dict_to_hf(model: GLMForCausalLM) -> dict[str, torch.Tensor]:
    model = unwrap_model(model)
    c = model.config
    state = model.state_dict()
    convert = _interleaved_to_half_rope if c.attention_type == "gqa" and c.rope_interleaved else (lambda p, c: p)
    out = {"model.embed_tokens.weight": state["embed_tokens.weight"], "model.norm.weight": state["norm.weight"]}
    if not c.tie_embeddings:
        out["lm_head.weight"] = state["lm_head.weight"]
    layers: dict[int, dict[str, torch.Tensor]] = {}
    for key, t in state.items():
        m = re.match(r"^layers\.(\d+)\.(.+)$", key)
        if m:
            layers.setdefault(int(m.group(1)), {})[m.group(2)] = t
    for i, parts in layers.items():
        out.update({f"model.layers.{i}.{k}": v for k, v in _block_to_hf(convert(parts, c)).items()})
    inverse = {v: k for k, v in _MTP_OWN.items()}
    for depth in range(c.mtp_layers):
        i, prefix = c.num_layers + depth, f"mtp.{depth}."
        parts = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        block = convert({k[len("block."):]: v for k, v in parts.items() if k.startswith("block.")}, c)
        out.update({f"model.layers.{i}.{k}": v for k, v in _block_to_hf(block).items()})
        out.update({f"model.layers.{i}.{inverse[k]}": v for k, v in parts.items() if k in inverse})
        out[f"model.layers.{i}.embed_tokens.weight"] = state["embed_tokens.weight"]  # the released layout
        out[f"model.layers.{i}.shared_head.head.weight"] = model.lm_head.weight.detach()
    return out


# ------------------------------------------------------------------------------------------------ entry points
def _read_folder(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    if not (path / "config.json").is_file():
        raise WorkbenchError(f"{path} has no config.json: pass a folder written by save_pretrained or to_hf")
    d = json.loads((path / "config.json").read_text(encoding="utf-8"))
    config_from_hf(d)  # reject an unsupported model before reading gigabytes of weights
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise WorkbenchError(f"{path} has no *.safetensors files (pytorch .bin checkpoints are not read)")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            state.update(load_file(str(f)))
        except Exception as exc:  # safetensors raises its own error types
            raise WorkbenchError(f"cannot read {f}: {exc}") from exc
    return d, state


def from_hf(model_or_path, *, device: str | torch.device | None = None,
            dtype: torch.dtype | None = None) -> GLMForCausalLM:
    """A transformers GLM model (in memory) or checkpoint folder -> a workbench ``GLMForCausalLM``."""
    if isinstance(model_or_path, (str, Path)):
        d, state = _read_folder(Path(model_or_path))
    else:  # copies: the workbench model must not share storage with the transformers one
        d = model_or_path.config.to_dict()
        state = {k: v.detach().clone() for k, v in model_or_path.state_dict().items()}
    n_mtp = int(d.get("num_nextn_predict_layers") or 0)
    layers = d["num_hidden_layers"]
    n_mtp = sum(f"model.layers.{layers + k}.eh_proj.weight" in state for k in range(n_mtp))  # only if present
    mtp_is_moe = f"model.layers.{layers}.mlp.gate.weight" in state
    fields = _fields_from_hf(d, n_mtp, mtp_is_moe)
    if "workbench_config" in d:  # written by to_hf: restore the training-only fields too (loss weights, rates, name)
        # The transformers fields decide the architecture: they are what transformers runs, and what a user edits
        # (an embedded copy, which transformers keeps when it re-saves, must not silently undo such an edit).
        # Only the fields they cannot express come from the copy; MLA's num_kv_heads has no transformers meaning.
        from_copy = {"name"} | ({"num_kv_heads"} if fields["attention_type"] == "mla" else set())
        if fields["num_experts"] == 0:  # a dense model: to_hf wrote placeholders for the MoE-only fields
            from_copy |= MOE_ONLY_FIELDS
        fields = {**d["workbench_config"], **{k: v for k, v in fields.items() if k not in from_copy}}
    config = ModelConfig.from_dict(fields)
    ours = state_dict_from_hf(state, config)
    # Build on meta (no random init, no memory), then adopt the checkpoint's tensors as the parameters.
    model = build_model(config, device="meta")
    try:
        missing, unexpected = model.load_state_dict(ours, strict=False, assign=True)
    except RuntimeError as exc:  # shape mismatches
        raise WorkbenchError(f"checkpoint does not fit the model: {exc}") from None
    if missing or unexpected:
        raise WorkbenchError(f"checkpoint does not fit the model: missing {missing[:8]}, unexpected "
                             f"{unexpected[:8]}")
    if config.tie_embeddings:  # assign=True made two Parameters of one tensor: make them one Parameter again
        model.lm_head.weight = model.embed_tokens.weight
    model.reset_runtime_state(next(model.parameters()).device)
    if device is not None:
        model.to(device)
    return cast_model(model, dtype or torch.get_default_dtype())


def to_hf(model: GLMForCausalLM, path) -> Path:
    """Write ``config.json`` + ``model.safetensors`` in the transformers layout (experts stored one by one)."""

    model = unwrap_model(model)
    path = Path(path)
    weights_dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    d = config_to_hf(model.config, dtype=str(weights_dtype).removeprefix("torch."))  # (no folder made if it fails)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict_to_hf(model).items()}
    save_safetensors(tensors, path / "model.safetensors", metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(d, indent=2), encoding="utf-8")
    return path


__all__ = ["config_from_hf", "config_to_hf", "from_hf", "state_dict_from_hf", "state_dict_to_hf", "to_hf"]
