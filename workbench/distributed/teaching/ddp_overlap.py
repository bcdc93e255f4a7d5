"""Data parallelism, step 3: start each bucket's all-reduce from a backward hook, while backward goes on.

A hook fires when a parameter's gradient is fully accumulated (``register_post_accumulate_grad_hook``). When the
last gradient of a bucket arrives, the bucket is packed and an *asynchronous* all-reduce starts; backward keeps
computing earlier layers' gradients meanwhile. ``sync_gradients()`` (after ``loss.backward()``) only waits for the
outstanding reductions and unpacks them. This is torch DDP's design (Li et al., VLDB 2020), minus its refinements
(gradient views into buckets, unused-parameter detection, bucket rebuilding from the observed order, and
``no_sync()`` for gradient accumulation: a second backward before ``sync_gradients()`` is refused).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from workbench.distributed.teaching.ddp_bucketed import BucketedDDP


class OverlappedDDP(BucketedDDP):
    def __init__(self, module: nn.Module, bucket_cap_mb: float = 25.0, process_group=None):
        super().__init__(module, bucket_cap_mb, process_group)
        self._bucket_of = {}
        for index, bucket in enumerate(self.buckets):
            for param in bucket:
                self._bucket_of[param] = index
        self._ready = [0] * len(self.buckets)
        self._pending: list[tuple[int, torch.Tensor, object]] = []
        for param in self._bucket_of:
            param.register_post_accumulate_grad_hook(self._on_grad_ready)

    def _on_grad_ready(self, param: nn.Parameter) -> None:
        index = self._bucket_of[param]
        self._ready[index] += 1
        if self._ready[index] == len(self.buckets[index]):  # the bucket's last gradient: send it now
            with torch.no_grad():
                flat = torch.cat([p.grad.reshape(-1) for p in self.buckets[index]])
            handle = dist.all_reduce(flat, group=self.group, async_op=True)
            self._pending.append((index, flat, handle))

    @torch.no_grad()
    def sync_gradients(self) -> None:
        if any(count > len(b) for count, b in zip(self._ready, self.buckets)):
            # A second backward before this call (gradient accumulation): its gradients arrived after the buckets
            # were already sent, so the counts overshoot and nothing was averaged correctly.
            self._reset()
            raise RuntimeError("OverlappedDDP: several backward passes before sync_gradients() (gradient "
                               "accumulation); it all-reduces each bucket during backward, so call sync_gradients() "
                               "after every backward, or add a no_sync()-style switch (torch DDP's no_sync) that "
                               "turns the hooks off for all but the last micro-batch; zero the gradients and redo "
                               "the step")
        if any(count != len(b) for count, b in zip(self._ready, self.buckets) if count):
            self._reset()
            raise RuntimeError("some parameters got no gradient this step; OverlappedDDP needs every parameter used")
        for index, flat, handle in self._pending:
            handle.wait()
            flat.div_(self.world)
            offset = 0
            for param in self.buckets[index]:
                n = param.numel()
                param.grad = flat[offset:offset + n].view_as(param)
                offset += n
        self._pending.clear()
        self._ready = [0] * len(self.buckets)

    def _reset(self) -> None:
        """Forget this step: wait for the reductions in flight (every rank started the same ones), drop them."""
        for _, _, handle in self._pending:
            handle.wait()
        self._pending.clear()
        self._ready = [0] * len(self.buckets)
