"""The GLM decoder: blocks, trunk, LM head, MTP, losses. ``build_model(config)`` is the one way to make one.

Block (pre-norm, as in every GLM since GLM-4):  x += attn(RMSNorm(x));  x += ffn(RMSNorm(x))
with attn = GQA (attention_gqa.py) or MLA(+DSA) (attention_mla.py) and ffn = dense SwiGLU for the first
``first_k_dense`` layers, MoE (moe.py) after. MTP layers (mtp.py) follow the trunk when ``mtp_layers > 0``.
No parallelism here: distributed plans target the plain submodules (q_proj, kv_b_proj, gate_up_proj, experts...)
from outside. Used by notebook 01_training and everything that trains, profiles or simulates a model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from workbench import kernels
from workbench.model.attention_gqa import GQAttention
from workbench.model.attention_mla import MLAttention
from workbench.model.config import ModelConfig
from workbench.model.layers import DenseMLP, RMSNorm, RotaryTable
from workbench.model.moe import MoE, GroupedExperts, Router
from workbench.model.mtp import MTPLayer


@dataclass
class ModelOutput:
    loss: torch.Tensor | None = None         # lm_loss + mtp_loss_weight * mtp_loss + aux_loss_coef * aux_loss
                                             # (+ indexer_loss_coef * indexer_loss, which only reaches the indexer)
    logits: torch.Tensor | None = None       # [B, S, V]; None when labels were given (the loss never builds it)
    lm_loss: torch.Tensor | None = None
    mtp_loss: torch.Tensor | None = None     # mean over MTP depths (unweighted)
    aux_loss: torch.Tensor | None = None     # sequence-level balance loss summed over MoE layers (unweighted)
    indexer_loss: torch.Tensor | None = None # DSA indexer KL loss, mean over indexer layers (trains the indexer only)
    expert_load: torch.Tensor | None = None  # [num trunk MoE layers, E] token counts of this forward


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int, indexer_type: str | None = None):
        super().__init__()
        self.layer_idx = layer_idx
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.self_attn = GQAttention(cfg) if cfg.attention_type == "gqa" else MLAttention(cfg, indexer_type)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.mlp = MoE(cfg) if cfg.layer_is_moe(layer_idx) else DenseMLP(cfg.hidden_size, cfg.intermediate_size,
                                                                         cfg.ffn_act)

    def forward(self, x, cos, sin, prev_topk=None):
        """Returns (x, the DSA top-k this layer used, or None); the top-k feeds the next ("shared") layer."""
        attn, topk = self.self_attn(self.input_layernorm(x), cos, sin, prev_topk=prev_topk)
        x = x + attn
        return x + self.mlp(self.post_attention_layernorm(x)), topk


class GLMForCausalLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        types = cfg.layer_indexer_types
        self.layers = nn.ModuleList(Block(cfg, i, types[i] if types else None) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        mtp_index = "full" if cfg.use_dsa else None
        self.mtp = nn.ModuleList(MTPLayer(cfg, Block(cfg, cfg.num_layers + d, mtp_index))
                                 for d in range(cfg.mtp_layers))
        self.rotary = RotaryTable(cfg.rotary_dim, cfg.rope_theta)
        self.init_weights()

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def init_weights(self) -> None:
        """Normal(0, init_std) matrices; output projections (o_proj, down_proj) scaled by 1/sqrt(2 L) (GPT-2);
        norms to 1, biases to 0, balancing biases to 0. A no-op on the meta device."""
        if self.embed_tokens.weight.device.type == "meta":
            return
        std = self.config.init_std
        out_std = std / math.sqrt(2 * (self.config.num_layers + self.config.mtp_layers))
        for name, module in self.named_modules():
            leaf = name.rsplit(".", 1)[-1]
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, out_std if leaf in ("o_proj", "down_proj") else std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, 0.0, std)
            elif isinstance(module, (RMSNorm, nn.LayerNorm)):
                nn.init.ones_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, Router):
                nn.init.normal_(module.weight, 0.0, std)
                module.expert_bias.zero_()
            elif isinstance(module, GroupedExperts):
                nn.init.normal_(module.gate_up_proj, 0.0, std)
                nn.init.normal_(module.down_proj, 0.0, out_std)

    def reset_runtime_state(self, device: torch.device | str = "cpu") -> None:
        """Rebuild what is not in a checkpoint (RoPE frequencies, MoE load counters) on ``device``: used after
        loading weights into a model built on the meta device."""
        self.rotary = RotaryTable(self.config.rotary_dim, self.config.rope_theta).to(device)
        for moe in self.moe_layers():
            moe.load_accum = torch.zeros(self.config.num_experts, dtype=torch.float32, device=device)

    # ------------------------------------------------------------------ forward
    def moe_layers(self) -> list[MoE]:
        """Every MoE block: trunk layers first, then MTP layers."""
        return [m for m in self.modules() if isinstance(m, MoE)]

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> ModelOutput:
        B, S = input_ids.shape
        if S > self.config.max_position_embeddings:  # RoPE would extrapolate silently past the trained positions
            raise ValueError(f"sequence of {S} tokens is longer than the model's max_position_embeddings "
                             f"({self.config.max_position_embeddings})")
        cos, sin = self.rotary(S, input_ids.device)  # [S, R/2], once per forward, shared by every layer
        for module in self.modules():  # per-forward side outputs of the layers
            if isinstance(module, MoE):
                module.last_load = module.last_aux_loss = None
            elif isinstance(module, MLAttention):
                module.last_indexer_loss = None
        embeds = self.embed_tokens(input_ids)
        x, topk = embeds, None
        for layer in self.layers:
            x, topk = layer(x, cos, sin, topk)  # topk threads through "shared" DSA layers
        out = ModelOutput()
        trunk_moe = [layer.mlp for layer in self.layers if isinstance(layer.mlp, MoE)]
        if trunk_moe:
            out.expert_load = torch.stack([m.last_load for m in trunk_moe])
        if labels is None:
            out.logits = self.lm_head(self.norm(x))
            return out

        D = self.config.hidden_size
        h = self.norm(x)
        out.lm_loss = kernels.cross_entropy(h.reshape(-1, D), self.lm_head.weight, labels.reshape(-1))
        loss = out.lm_loss
        if len(self.mtp):  # depth 1 reads the trunk's final (normed) hidden state, as Megatron and vLLM do
            mtp_losses = []
            for depth, layer in enumerate(self.mtp, start=1):
                n = S - depth  # positions that still have a target labels[t + depth]
                if n < 1:
                    break
                h = layer(h[:, :n], embeds[:, depth:], cos[:n], sin[:n])
                hidden = layer.shared_head_norm(h).reshape(-1, D)
                mtp_losses.append(kernels.cross_entropy(hidden, self.lm_head.weight,
                                                        labels[:, depth:].reshape(-1)))
            if mtp_losses:
                out.mtp_loss = torch.stack(mtp_losses).mean()
                loss = loss + self.config.mtp_loss_weight * out.mtp_loss
        aux = [m.last_aux_loss for m in self.moe_layers() if m.last_aux_loss is not None]
        if aux:
            out.aux_loss = torch.stack(aux).sum()
            loss = loss + self.config.aux_loss_coef * out.aux_loss
        indexer = [m.last_indexer_loss for m in self.modules()
                   if isinstance(m, MLAttention) and m.last_indexer_loss is not None]
        if indexer:
            out.indexer_loss = torch.stack(indexer).mean()
            loss = loss + self.config.indexer_loss_coef * out.indexer_loss
        out.loss = loss
        return out

    # ------------------------------------------------------------------ balancing
    @torch.no_grad()
    def update_expert_bias(self, rate: float | None = None, reduce_fn=None) -> dict:
        """Aux-loss-free balancing step over every MoE block (call after each optimizer step).

        Uses the loads accumulated since the previous call (then resets them). Returns load metrics:
        ``expert_load/max_over_mean`` (mean over the MoE blocks), ``expert_load/max_over_mean_worst`` and one entry
        per MoE block, named by its layer: ``expert_load/max_over_mean/L{i}`` for trunk layer i (GLM's first dense
        layers have none) and ``.../MTP{d}`` for MTP depth d (max expert load / mean expert load; 1.0 is perfect
        balance). The mean and the worst include the MTP blocks.
        Under data parallelism pass ``reduce_fn=torch.distributed.all_reduce`` (sums each layer's counts in place
        across ranks) so every rank applies the same update.
        """
        moes = self.moe_layers()
        if not moes:
            return {}
        rate = self.config.bias_update_rate if rate is None else rate
        # the name of each MoE block's layer (the blocks were numbered 0.. among MoE blocks, so L0 was layer 1)
        names = {id(layer.mlp): f"L{i}" for i, layer in enumerate(self.layers)}
        names.update({id(layer.block.mlp): f"MTP{d}" for d, layer in enumerate(self.mtp, start=1)})
        metrics = {}
        for moe in moes:
            load = moe.update_bias(rate, reduce_fn)
            ratio = float(load.max() / load.mean()) if load.sum() > 0 else float("nan")
            metrics[f"expert_load/max_over_mean/{names.get(id(moe), f'block{len(metrics)}')}"] = ratio
        valid = [r for r in metrics.values() if r == r]
        if valid:
            metrics["expert_load/max_over_mean"] = sum(valid) / len(valid)
            metrics["expert_load/max_over_mean_worst"] = max(valid)
        return metrics


def cast_model(model: GLMForCausalLM, dtype: torch.dtype) -> GLMForCausalLM:
    """``model.to(dtype)``, except the balancing biases and RoPE frequencies, which stay fp32."""
    model.to(dtype)
    for module in model.modules():
        if isinstance(module, Router):
            module.expert_bias.data = module.expert_bias.data.float()
        elif isinstance(module, RotaryTable):
            module.inv_freq.data = module.inv_freq.data.float()
    return model


def build_model(config: ModelConfig, device: str | torch.device | None = None,
                dtype: torch.dtype | None = None) -> GLMForCausalLM:
    """Build (and initialise) a model. ``device="meta"`` allocates nothing: full-size presets, for accounting."""
    if not isinstance(config, ModelConfig):
        raise TypeError(f"build_model expects a ModelConfig, got {type(config).__name__}")
    with torch.device(device if device is not None else "cpu"):
        model = GLMForCausalLM(config)
    if dtype is not None:
        cast_model(model, dtype)
    return model


__all__ = ["Block", "GLMForCausalLM", "ModelOutput", "build_model", "cast_model"]
