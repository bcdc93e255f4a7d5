"""Data parallel with torch's DistributedDataParallel: every rank holds the whole model, gradients are averaged.

DDP buckets gradients and all-reduces each bucket from backward hooks, overlapping communication with the rest
of backward; ``teaching/ddp_*.py`` builds the same thing up by hand. Used by ``parallelize(..., "dp=N")``.
"""

from __future__ import annotations

import warnings

from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.nn.parallel import DistributedDataParallel as DDP


def apply_ddp(model: nn.Module, dp_mesh: DeviceMesh | None, ignore: list[str] | None = None,
              bucket_cap_mb: float = 25.0, find_unused_parameters: bool | None = None) -> DDP:
    """Wrap ``model`` in DDP over the ``dp`` mesh dim (None: the whole world). ``ignore``: parameter names DDP must
    not reduce (expert shards under expert parallel average their own gradients). ``find_unused_parameters``:
    None = only for models whose forward may skip parameters (``skippable_parameters``)."""
    if ignore:
        DDP._set_params_and_buffers_to_ignore_for_model(model, ignore)
    if find_unused_parameters is None:
        find_unused_parameters = bool(skippable_parameters(model, ignore))
    index = model_device_index(model)
    device_ids = None if index is None else [index]
    group = dp_mesh.get_group() if dp_mesh is not None else None
    with warnings.catch_warnings():
        # broadcast_buffers=False: MoE load counters are per-rank statistics, not weights to overwrite. torch 2.13
        # deprecates the flag but says to keep it for rank-local buffers until its replacement exists.
        warnings.simplefilter("ignore", FutureWarning)
        return DDP(model, process_group=group, device_ids=device_ids, bucket_cap_mb=bucket_cap_mb,
                   broadcast_buffers=False, find_unused_parameters=find_unused_parameters)


def skippable_parameters(model: nn.Module, ignore: list[str] | None = None) -> list[str]:
    """Names of the parameters a training step may leave without a gradient, depending on its input.

    Today: the DSA lightning indexers (glm5). A layer runs its indexer only when the sequence is longer than
    ``index_topk`` (model/attention_mla.py; an MTP layer at depth d sees S - d tokens), and the indexer gets a
    gradient only from its KL loss. DDP by default expects a gradient for every parameter in every step and fails
    on the next one otherwise ("Expected to have finished reduction in the prior iteration"). With
    ``find_unused_parameters`` it walks the autograd graph once per step to mark the skipped ones ready and leaves
    the gradient of a parameter that no rank used untouched (None), as in a single process. That walk costs time,
    so only models with such parameters pay for it.
    """
    from workbench.model.dsa_indexer import LightningIndexer

    ignored = set(ignore or ())
    names = []
    for prefix, module in model.named_modules():
        if isinstance(module, LightningIndexer):
            names += [f"{prefix}.{n}" for n, _ in module.named_parameters()]
    return [n for n in names if n not in ignored]


def model_device_index(model: nn.Module) -> int | None:
    return next(model.parameters()).device.index
