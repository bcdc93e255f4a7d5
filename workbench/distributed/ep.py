"""Expert parallel: shard a MoE layer's experts over ranks and send tokens to them with all_to_all.

With ``ep`` ranks and E experts, rank r keeps experts [r*E/ep, (r+1)*E/ep). Every rank routes its own tokens as
usual (the router is replicated), then:

    1. sort its (token, expert) pairs by the rank that owns the expert, and tell each rank how many to expect;
    2. all_to_all #1 (dispatch): send the token vectors (and local expert ids) to the owners;
    3. the owner runs its experts on what it received (``kernels.moe`` with one expert per row, weight 1);
    4. all_to_all #2 (combine): send the results back, in the same order;
    5. weight them by the router's gates and add them up per token.

The all_to_alls are autograd functions (backward of a dispatch is a combine with the splits swapped), so the
gradient of an expert's weights collects contributions from every rank's tokens. Because each rank's loss is a
mean over its own tokens, the expert gradients are divided by the number of data ranks (and summed over ``dp``
replicas of the same shard) by a gradient hook; the dense parameters are averaged by torch DDP as usual.

This swaps ``moe.experts`` (a ``GroupedExperts``) for an ``ExpertParallelExperts`` from outside: the model code
does not change. Used by ``parallelize(..., "ep=2")`` and notebooks/03_distributed.ipynb.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from workbench import kernels


class _AllToAll(torch.autograd.Function):
    """all_to_all_single with uneven splits; backward sends the gradients back along the reverse routes."""

    @staticmethod
    def forward(ctx, x, send_splits: list[int], recv_splits: list[int], group):
        ctx.splits, ctx.group = (send_splits, recv_splits), group
        out = x.new_empty((sum(recv_splits),) + tuple(x.shape[1:]))
        dist.all_to_all_single(out, x.contiguous(), output_split_sizes=recv_splits, input_split_sizes=send_splits,
                               group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        send_splits, recv_splits = ctx.splits
        out = grad.new_empty((sum(send_splits),) + tuple(grad.shape[1:]))
        dist.all_to_all_single(out, grad.contiguous(), output_split_sizes=send_splits,
                               input_split_sizes=recv_splits, group=ctx.group)
        return out, None, None, None


def all_to_all(x: torch.Tensor, send_splits: list[int], recv_splits: list[int], group=None) -> torch.Tensor:
    return _AllToAll.apply(x, send_splits, recv_splits, group)


class ExpertParallelExperts(nn.Module):
    """This rank's E/ep experts of a ``GroupedExperts``, with all_to_all token dispatch in ``forward``."""

    def __init__(self, experts: nn.Module, ep_group, dp_group=None, data_parallel_size: int | None = None):
        super().__init__()
        self.group = ep_group
        self.ep, self.ep_rank = dist.get_world_size(ep_group), dist.get_rank(ep_group)
        total = experts.gate_up_proj.shape[0]
        if total % self.ep:
            raise ValueError(f"expert parallel: ep={self.ep} must divide the {total} experts")
        self.num_experts, self.local_experts = total, total // self.ep
        first = self.ep_rank * self.local_experts
        keep = slice(first, first + self.local_experts)
        # Same names as GroupedExperts, so a state dict maps shard by shard.
        self.gate_up_proj = nn.Parameter(experts.gate_up_proj.detach()[keep].clone())
        self.down_proj = nn.Parameter(experts.down_proj.detach()[keep].clone())
        # d(global mean loss)/dW = (1 / data ranks) * sum over dp replicas of this rank's gradient.
        self.dp_group = dp_group
        scale = 1.0 / (data_parallel_size or self.ep)
        for param in (self.gate_up_proj, self.down_proj):
            param.register_hook(lambda grad, s=scale: self._sync_grad(grad, s))

    def _sync_grad(self, grad: torch.Tensor, scale: float) -> torch.Tensor:
        grad = grad * scale
        if self.dp_group is not None and dist.get_world_size(self.dp_group) > 1:
            dist.all_reduce(grad, group=self.dp_group)
        return grad

    def forward(self, x_TD: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        T, k = indices.shape
        flat_expert = indices.reshape(-1)                                   # [T*k]
        order = torch.argsort(flat_expert, stable=True)                     # group rows by expert, hence by owner
        token_of = order // k                                               # which token each sorted row came from
        sorted_expert = flat_expert[order]
        owner = sorted_expert // self.local_experts
        send_counts = torch.bincount(owner, minlength=self.ep)
        recv_counts = torch.empty_like(send_counts)
        dist.all_to_all_single(recv_counts, send_counts, group=self.group)  # how many rows each rank will send me
        send_splits, recv_splits = send_counts.tolist(), recv_counts.tolist()

        x_recv = all_to_all(x_TD[token_of], send_splits, recv_splits, self.group)            # dispatch
        local_expert = (sorted_expert % self.local_experts).to(torch.int64)
        local_recv = x_TD.new_empty(sum(recv_splits), dtype=torch.int64)
        dist.all_to_all_single(local_recv, local_expert, output_split_sizes=recv_splits,
                               input_split_sizes=send_splits, group=self.group)
        ones = torch.ones(local_recv.shape[0], 1, dtype=torch.float32, device=x_TD.device)
        y_recv = kernels.moe(x_recv, local_recv[:, None], ones, self.gate_up_proj, self.down_proj)
        y_sorted = all_to_all(y_recv, recv_splits, send_splits, self.group)                  # combine

        gate = weights.reshape(-1)[order].to(y_sorted.dtype)
        out = torch.zeros_like(x_TD)
        return out.index_add(0, token_of, y_sorted * gate[:, None])

    def extra_repr(self) -> str:
        return f"experts {self.ep_rank * self.local_experts}..{(self.ep_rank + 1) * self.local_experts - 1} " \
               f"of {self.num_experts} (ep={self.ep})"


def expert_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(qualified name, module) of every MoE layer's stacked experts (anything with 3-D gate_up/down weights)."""
    found = []
    for name, module in model.named_modules():
        w = getattr(module, "gate_up_proj", None)
        if isinstance(w, nn.Parameter) and w.dim() == 3 and isinstance(getattr(module, "down_proj", None),
                                                                       nn.Parameter):
            found.append((name, module))
    return found


def apply_ep(model: nn.Module, ep_group, dp_group=None, data_parallel_size: int | None = None) -> list[str]:
    """Replace every stacked-experts module by its expert-parallel shard. Returns the replaced modules' names."""
    replaced = []
    for name, module in expert_modules(model):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, ExpertParallelExperts(module, ep_group, dp_group, data_parallel_size))
        replaced.append(name)
    if not replaced:
        raise ValueError("expert parallel: the model has no stacked experts to shard (is it a MoE preset?)")
    return replaced
