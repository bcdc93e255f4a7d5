"""Data parallelism, step 2: pack gradients into buckets and all-reduce each bucket once.

A collective costs ``latency + bytes / bandwidth``. Per-parameter all-reduces pay the latency once per parameter;
concatenating gradients into ~25 MB flat buckets pays it once per bucket and keeps the links busy. The bucket is
copied out of, reduced, and copied back into the ``.grad`` tensors (torch DDP avoids the copies by making the
gradients views into the bucket: ``gradient_as_bucket_view=True``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from workbench.distributed.teaching.ddp_naive import NaiveDDP


def make_buckets(params: list[nn.Parameter], bucket_cap_mb: float) -> list[list[nn.Parameter]]:
    """Group parameters, in the given order, into lists of at most ``bucket_cap_mb`` (one big param = own bucket)."""
    cap = bucket_cap_mb * 2**20
    buckets, current, size = [], [], 0
    for param in params:
        nbytes = param.numel() * param.element_size()
        if current and size + nbytes > cap:
            buckets.append(current)
            current, size = [], 0
        current.append(param)
        size += nbytes
    if current:
        buckets.append(current)
    return buckets


class BucketedDDP(NaiveDDP):
    def __init__(self, module: nn.Module, bucket_cap_mb: float = 25.0, process_group=None):
        super().__init__(module, process_group)
        params = [p for p in module.parameters() if p.requires_grad]
        # Reverse order: backward produces the last layers' gradients first (the overlapped version relies on it).
        self.buckets = make_buckets(list(reversed(params)), bucket_cap_mb)

    @torch.no_grad()
    def sync_gradients(self) -> None:
        for bucket in self.buckets:
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in bucket]
            flat = torch.cat([g.reshape(-1) for g in grads])  # one message for the whole bucket
            dist.all_reduce(flat, group=self.group)
            flat.div_(self.world)
            offset = 0
            for param in bucket:
                n = param.numel()
                param.grad = flat[offset:offset + n].view_as(param)
                offset += n
