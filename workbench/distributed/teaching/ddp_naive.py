"""Data parallelism, step 1: one all-reduce per parameter gradient after backward.

Every rank holds the whole model, runs forward/backward on its own slice of the batch, then averages every
gradient over the ranks, so each rank takes the identical optimizer step. Correct, and slow: a model with
hundreds of parameters sends hundreds of small messages, each paying the collective's fixed latency.

    model = NaiveDDP(model)
    loss = model(x, labels=y).loss; loss.backward()
    model.sync_gradients()          # the only line torch DDP hides from you
    optimizer.step()
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class NaiveDDP(nn.Module):
    def __init__(self, module: nn.Module, process_group=None):
        super().__init__()
        self.module = module
        self.group = process_group
        self.world = dist.get_world_size(process_group)
        # Start from identical weights: rank 0's parameters (and buffers) win.
        with torch.no_grad():
            for tensor in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(tensor, src=dist.get_global_rank(process_group, 0) if process_group else 0,
                               group=process_group)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    @torch.no_grad()
    def sync_gradients(self) -> None:
        for param in self.module.parameters():
            if param.grad is None:  # unused this step: contribute zeros so every rank calls the same collectives
                param.grad = torch.zeros_like(param)
            dist.all_reduce(param.grad, group=self.group)
            param.grad.div_(self.world)
