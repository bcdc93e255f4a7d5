"""Tensor parallel (Megatron-style) with DTensor, plus sequence parallel on the norms.

Per transformer block, over the ``tp`` ranks (Shoeybi et al. 2019; Korthikanti et al. 2022 for SP):

    block input            Replicate  -> Shard(1)   each rank keeps 1/tp of the sequence (a local slice, free)
    input_layernorm        SequenceParallel: the norm runs on the local sequence shard
    self_attn input        Shard(1)   -> Replicate  all-gather the sequence
    q_proj, k_proj, v_proj ColwiseParallel: each rank computes heads [r*H/tp, (r+1)*H/tp)
    o_proj                 RowwiseParallel, output Shard(1): reduce-scatter back to sequence shards
    post_attention_layernorm  SequenceParallel
    mlp input              Shard(1)   -> Replicate
    gate_up_proj           colwise, with the gate and up halves sharded *together* (see below)
    down_proj              RowwiseParallel, output Shard(1)
    block output           Shard(1)   -> Replicate  (the embedding and LM head stay replicated)

The fused ``gate_up_proj`` weight [2F, D] stacks gate rows [0, F) over up rows [F, 2F), and SwiGLU splits its
output in halves. A plain Shard(0) would give rank 0 all of gate and rank 1 all of up: wrong. So before sharding
we reorder the rows to [gate_0; up_0; gate_1; up_1; ...] (``gate_up_tp_order``); each rank's contiguous shard is
then [gate_r; up_r] and the unchanged SwiGLU computes silu(gate_r) * up_r, its share of the hidden units.
``full_gate_up_weight`` undoes the order when a full weight is gathered (e.g. for export).

Sequence parallel needs the sequence length divisible by tp (``ParallelLayout.check_sequence``). An MTP block sees
S - 1 tokens, which tp then does not divide, so MTP blocks run as plain TP with the whole sequence on every rank.

Attention modules compute ``view(B, S, n_heads, head_dim)``; under TP each rank has n_heads / tp heads, so the
plan sets ``n_heads`` / ``n_kv_heads`` on the module instances (the code itself is unchanged). QK-norm
(``q_norm``/``k_norm``, one weight shared by all heads) runs as SequenceParallel over the head dimension, so its
weight is a Replicate DTensor whose gradient is summed over the tp ranks (each rank sees only its own heads). GQA only (not MLA),
dense FFN only (MoE layers use expert parallel). Used by ``parallelize(..., "tp=N")``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Replicate, Shard, distribute_tensor
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    PrepareModuleOutput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from workbench.distributed.fsdp import transformer_blocks


def gate_up_tp_order(hidden: int, tp: int) -> torch.Tensor:
    """Row order that makes rank r's contiguous 2F/tp rows = [gate rows of shard r; up rows of shard r]."""
    per = hidden // tp
    order = []
    for r in range(tp):
        order += list(range(r * per, (r + 1) * per))                     # gate_r
        order += list(range(hidden + r * per, hidden + (r + 1) * per))   # up_r
    return torch.tensor(order)


def full_gate_up_weight(gathered: torch.Tensor, tp: int) -> torch.Tensor:
    """Inverse of the TP row order: a gathered [2F, D] weight back to [gate; up]."""
    order = gate_up_tp_order(gathered.shape[0] // 2, tp)
    out = torch.empty_like(gathered)
    out[order] = gathered
    return out


class GateUpColwiseParallel(ColwiseParallel):
    """ColwiseParallel for a fused [gate; up] projection: reorder the rows, then Shard(0)."""

    def _partition_linear_fn(self, name, module, device_mesh):
        tp = device_mesh.size()
        hidden = module.weight.shape[0] // 2
        if hidden % tp:
            raise ValueError(f"tensor parallel: tp={tp} must divide the FFN width {hidden}")
        order = gate_up_tp_order(hidden, tp).to(module.weight.device)
        for pname, param in list(module.named_parameters()):
            reordered = param.detach()[order]
            module.register_parameter(pname, nn.Parameter(
                distribute_tensor(reordered, device_mesh, [Shard(0)]), requires_grad=param.requires_grad))


def _check_block(block: nn.Module, tp: int) -> None:
    attn, mlp = block.self_attn, block.mlp
    if not all(hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")):
        raise ValueError("tensor parallel supports GQA attention (q/k/v/o_proj); this model uses "
                         f"{type(attn).__name__}: use fsdp or dp instead")
    if not hasattr(mlp, "down_proj") or not isinstance(mlp.down_proj, nn.Linear):
        raise ValueError(f"tensor parallel supports dense MLP layers; this block has {type(mlp).__name__} "
                         "(for MoE layers use expert parallel: ep=N)")
    if attn.n_heads % tp or attn.n_kv_heads % tp:
        raise ValueError(f"tensor parallel: tp={tp} must divide {attn.n_heads} heads and {attn.n_kv_heads} kv heads")


def apply_tp(model: nn.Module, tp_mesh: DeviceMesh, sequence_parallel: bool = True) -> nn.Module:
    """Shard every block's attention and MLP over ``tp_mesh`` in place. Returns the model."""
    tp = tp_mesh.size()
    trunk = {id(layer) for layer in getattr(model, "layers", [])}
    for block in transformer_blocks(model):
        # An MTP block sees S - 1 tokens: with S divisible by tp (checked by ParallelLayout.check_batch), S - 1 is
        # not, and an uneven sequence shard breaks DTensor reshapes in the norms' backward. MTP blocks therefore
        # keep the whole sequence on every rank (plain TP, no sequence parallel); they are one or two blocks.
        _apply_tp_block(block, tp_mesh, sequence_parallel and id(block) in trunk)
    return model


def _apply_tp_block(block: nn.Module, tp_mesh: DeviceMesh, sequence_parallel: bool) -> None:
    tp = tp_mesh.size()
    seq = Shard(1) if sequence_parallel else Replicate()
    _check_block(block, tp)
    if sequence_parallel:
        parallelize_module(block, tp_mesh, PrepareModuleInput(
            input_layouts=(Replicate(), None, None, None), desired_input_layouts=(seq, None, None, None),
            use_local_output=False))
        parallelize_module(block, tp_mesh, PrepareModuleOutput(
            output_layouts=(seq, None), desired_output_layouts=(Replicate(), None), use_local_output=True))
    plan = {
        "self_attn": PrepareModuleInput(input_layouts=(seq, None, None), desired_input_layouts=(Replicate(), None,
                                                                                                None)),
        "self_attn.q_proj": ColwiseParallel(),
        "self_attn.k_proj": ColwiseParallel(),
        "self_attn.v_proj": ColwiseParallel(),
        "self_attn.o_proj": RowwiseParallel(output_layouts=seq, use_local_output=not sequence_parallel),
        "mlp": PrepareModuleInput(input_layouts=(seq,), desired_input_layouts=(Replicate(),)),
        "mlp.gate_up_proj": GateUpColwiseParallel(),
        "mlp.down_proj": RowwiseParallel(output_layouts=seq, use_local_output=not sequence_parallel),
    }
    if sequence_parallel:
        plan["input_layernorm"] = SequenceParallel()
        plan["post_attention_layernorm"] = SequenceParallel()
    if getattr(block.self_attn, "q_norm", None) is not None:
        # QK-norm runs on each rank's own heads [B, S, H/tp, Dh], so its weight's gradient on one rank covers
        # only those heads. As a Replicate DTensor over an input sharded on the head dim (dim 2), autograd
        # all-reduces the weight's gradient over tp: every rank gets the full gradient and stays identical.
        plan["self_attn.q_norm"] = SequenceParallel(sequence_dim=2, use_local_output=True)
        plan["self_attn.k_norm"] = SequenceParallel(sequence_dim=2, use_local_output=True)
    if not hasattr(block.mlp, "gate_up_proj"):  # GELU MLP: a plain colwise up projection
        plan.pop("mlp.gate_up_proj")
        plan["mlp.up_proj"] = ColwiseParallel()
    parallelize_module(block, tp_mesh, plan)
    # Each rank now holds n_heads / tp query heads and n_kv_heads / tp kv heads.
    block.self_attn.n_heads //= tp
    block.self_attn.n_kv_heads //= tp
