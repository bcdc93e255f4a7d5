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
              bucket_cap_mb: float = 25.0) -> DDP:
    """Wrap ``model`` in DDP over the ``dp`` mesh dim (None: the whole world). ``ignore``: parameter names DDP must
    not reduce (expert shards under expert parallel average their own gradients)."""
    if ignore:
        DDP._set_params_and_buffers_to_ignore_for_model(model, ignore)
    index = model_device_index(model)
    device_ids = None if index is None else [index]
    group = dp_mesh.get_group() if dp_mesh is not None else None
    with warnings.catch_warnings():
        # broadcast_buffers=False: MoE load counters are per-rank statistics, not weights to overwrite. torch 2.13
        # deprecates the flag but says to keep it for rank-local buffers until its replacement exists.
        warnings.simplefilter("ignore", FutureWarning)
        return DDP(model, process_group=group, device_ids=device_ids, bucket_cap_mb=bucket_cap_mb,
                   broadcast_buffers=False)


def model_device_index(model: nn.Module) -> int | None:
    return next(model.parameters()).device.index
