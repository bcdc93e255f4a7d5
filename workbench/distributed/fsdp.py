"""Fully sharded data parallel with FSDP2 (``torch.distributed.fsdp.fully_shard``): ZeRO-3 on DTensors.

Each transformer block becomes one FSDP unit: its parameters live sharded (dim 0) over the ``fsdp`` ranks, are
all-gathered just before the block runs and freed after, and their gradients are reduce-scattered. The root unit
holds the embedding, final norm and LM head. ``MixedPrecisionPolicy`` computes in ``param_dtype`` (bf16 where the
device is fast at it) while sharded master weights and gradient reduction stay in fp32.
Composes with tensor parallel: pass the ``fsdp`` dim of a 2-D (fsdp, tp) mesh after ``apply_tp``.
Used by ``parallelize(..., "fsdp=N")`` and notebooks/03_distributed.ipynb.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard


def mixed_precision_policy(param_dtype: torch.dtype | str | None = None,
                           reduce_dtype: torch.dtype | str = torch.float32) -> MixedPrecisionPolicy:
    """bf16/fp16 compute with fp32 reduction, or None/fp32 = full precision."""
    from workbench.device.detect import parse_dtype

    param_dtype = None if param_dtype in (None, "fp32", torch.float32) else parse_dtype(param_dtype)
    return MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=parse_dtype(reduce_dtype))


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks (trunk layers, then each MTP layer's block): the natural FSDP units.

    An MTP layer's own norms and projection stay in the root unit: the model applies its ``shared_head_norm``
    after the layer's forward has returned, when a unit of the whole MTP layer would already be resharded."""
    blocks = list(getattr(model, "layers", []))
    blocks += [getattr(layer, "block", layer) for layer in getattr(model, "mtp", [])]
    return blocks


def apply_fsdp(model: nn.Module, fsdp_mesh: DeviceMesh, mp_policy: MixedPrecisionPolicy | None = None,
               reshard_after_forward: bool = True) -> nn.Module:
    mp_policy = mp_policy or MixedPrecisionPolicy()
    for block in transformer_blocks(model):
        fully_shard(block, mesh=fsdp_mesh, mp_policy=mp_policy, reshard_after_forward=reshard_after_forward)
    # The root unit: embedding, final norm, LM head (the loss reads lm_head.weight inside the root's forward).
    fully_shard(model, mesh=fsdp_mesh, mp_policy=mp_policy, reshard_after_forward=False)
    return model
