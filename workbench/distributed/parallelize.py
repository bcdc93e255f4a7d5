"""Apply a parallel layout to an unchanged model: the trainer's ``parallelize`` hook.

    pm = parallelize(model, "fsdp=2,tp=2")          # inside a torchrun worker, after init_distributed()
    opt = torch.optim.AdamW(pm.parameters(), ...)
    loss = pm.forward_backward(x, y)                # handles the pipeline schedule when pp > 1
    loss_value = pm.global_loss(loss)               # the mean loss over the data ranks, the same on every rank

Order (torchtitan's): expert parallel (swap the expert modules) -> tensor parallel -> FSDP2 -> DDP -> pipeline.
``data_rank`` / ``data_size`` say which slice of the global batch this rank reads: ranks of one TP group or
one pipeline read the same data. Used by the trainer, the tests and notebooks/03_distributed.ipynb.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from workbench.distributed.layout import ParallelLayout, parse_layout
from workbench.distributed.mesh import build_mesh, comm_device, submesh
from workbench.errors import ConfigError


@dataclass
class ParallelModel:
    layout: ParallelLayout
    mesh: DeviceMesh | None  # None in a world of one
    model: nn.Module          # the original model object (its modules now hold DTensors / shards)
    module: nn.Module         # what to call and optimize: the model, its DDP wrapper, or this rank's pipeline stage
    data_rank: int = 0
    data_size: int = 1
    schedule: Any = None      # torch.distributed.pipelining schedule when pp > 1
    is_first_stage: bool = True
    is_last_stage: bool = True
    sequence_parallel: bool = False  # tp > 1 with the sequence sharded over tp (the sequence length must divide)
    notes: list[str] = field(default_factory=list)

    def parameters(self) -> Iterator[nn.Parameter]:
        return self.module.parameters()

    def named_parameters(self):
        return self.module.named_parameters()

    def train(self, mode: bool = True) -> "ParallelModel":
        self.module.train(mode)
        return self

    def forward_backward(self, input_ids: torch.Tensor, labels: torch.Tensor, loss_scale: float = 1.0):
        """Forward and backward of one (micro)batch on this rank's data; returns this rank's loss (detached) or
        None on pipeline stages that do not compute it. Gradients accumulate over calls as ``grad += loss_scale *
        d(mean loss of this batch)``, under pp too (``loss_scale`` e.g. 1/accumulation steps)."""
        if self.sequence_parallel:
            self.layout.check_sequence(input_ids.shape[1])
        if self.schedule is not None:  # every stage checks (they all see the batch): no rank left in a collective
            self.layout.check_rank_batch(input_ids.shape[0])
        if self.schedule is None:
            out = self.module(input_ids, labels=labels)
            (out.loss * loss_scale).backward()
            return out.loss.detach()
        # The schedule accumulates into .grad and then divides *every* gradient by the number of micro-batches
        # (scale_grads), so a second call in one step would also rescale the first call's gradients. Take the
        # earlier gradients out, let the schedule compute this batch's alone, then grad = previous + scale * new.
        previous = {}
        for p in self.module.parameters():
            if p.grad is not None:
                previous[id(p)], p.grad = p.grad, None
        losses: list[torch.Tensor] = []
        if self.is_first_stage:
            self.schedule.step(input_ids, target=labels if self.is_last_stage else None, losses=losses)
        elif self.is_last_stage:
            self.schedule.step(target=labels, losses=losses)
        else:
            self.schedule.step()
        for p in self.module.parameters():
            new, old = p.grad, previous.get(id(p))
            if new is not None and loss_scale != 1.0:
                new.mul_(loss_scale)
            if old is not None:
                p.grad = old if new is None else old.add_(new)
        return torch.stack([l.detach() for l in losses]).mean() if losses else None

    def global_loss(self, loss: torch.Tensor | None) -> float:
        """Mean of the loss over the ranks that hold one (TP ranks agree; only the last pipeline stage has it)."""
        if self.mesh is None or not dist.is_initialized():  # a world of one (launched or not): nothing to average
            return float(loss)
        pair = torch.tensor([0.0 if loss is None else float(loss), 0.0 if loss is None else 1.0],
                            dtype=torch.float64, device=comm_device())
        dist.all_reduce(pair)
        return float(pair[0] / pair[1])


def data_coordinates(layout: ParallelLayout, mesh: DeviceMesh) -> tuple[int, int]:
    """(rank, size) of this process among the ranks that read different data (dp x fsdp x ep)."""
    rank, size = 0, 1
    for name in ("dp", "fsdp", "ep"):
        sub = submesh(mesh, name)
        if sub is not None and getattr(layout, name) > 1:
            rank, size = rank * sub.size() + sub.get_local_rank(), size * sub.size()
    return rank, size


def parallelize(model: nn.Module, layout: ParallelLayout | str | dict | None = None, *,
                mesh: DeviceMesh | None = None, param_dtype: torch.dtype | str | None = None,
                sequence_parallel: bool = True, device: Any = None) -> ParallelModel:
    """Apply ``layout`` to ``model`` (in place) inside an initialised process group; see the module docstring.

    ``device``: the run's device (``init_distributed(...).device``), the mesh's device type; None takes the device
    type of the process group's backend (gloo: cpu), so a cpu model gets a cpu mesh on any host.

    ``param_dtype``: FSDP2's compute dtype (bf16 = mixed precision; None/fp32 = full precision); anything but fp32
    is refused for a layout without fsdp, and fp16 always (no loss scaling).
    ``sequence_parallel``: under tp, shard the norms' activations over the sequence (the sequence length must then
    be divisible by tp; ``forward_backward`` checks it). MTP blocks always run without it (tp.apply_tp).
    """
    from workbench.device.detect import check_training_dtype, parse_dtype

    world = dist.get_world_size() if dist.is_initialized() else 1
    layout = parse_layout(layout, world_size=world)
    if param_dtype is not None:  # fp16 compute computes fp16 gradients, and nothing scales the loss
        check_training_dtype(parse_dtype(param_dtype), "param_dtype")
    if param_dtype is not None and layout.fsdp == 1:
        if parse_dtype(param_dtype) != torch.float32:  # nothing else would apply it: refuse, do not ignore
            raise ConfigError(f"param_dtype={param_dtype} is FSDP2's compute dtype and layout {layout} has no fsdp; "
                              f"leave it unset or use a layout with fsdp")
    config = getattr(model, "config", None)
    if config is not None:
        layout.check_model(config)  # every model-dependent refusal lives there (notebook 03 plans with it)
    if world == 1:  # nothing to split; mesh stays None unless given (global_loss then needs no collective)
        return ParallelModel(layout, mesh, model, model)
    mesh = mesh if mesh is not None else build_mesh(layout, device)
    data_rank, data_size = data_coordinates(layout, mesh)
    pm = ParallelModel(layout, mesh, model, model, data_rank=data_rank, data_size=data_size)

    if layout.ep > 1:
        from workbench.distributed.ddp import apply_ddp
        from workbench.distributed.ep import apply_ep

        dp_mesh = submesh(mesh, "dp")
        replaced = apply_ep(model, mesh["ep"].get_group(), dp_group=dp_mesh.get_group() if dp_mesh else None,
                            data_parallel_size=layout.data_parallel_size)
        ignore = [n for n, _ in model.named_parameters() if any(n.startswith(r + ".") for r in replaced)]
        # Dense weights: averaged over every data rank (dp x ep = the whole world here) by torch DDP.
        pm.module = apply_ddp(model, None, ignore=ignore)
        pm.notes.append(f"expert parallel: {len(replaced)} MoE layers sharded over ep={layout.ep}")
        return pm
    if layout.tp > 1:
        from workbench.distributed.tp import apply_tp

        apply_tp(model, mesh["tp"], sequence_parallel=sequence_parallel)
        pm.sequence_parallel = sequence_parallel
        pm.notes.append(f"tensor parallel over tp={layout.tp}" + (" + sequence parallel" if sequence_parallel else ""))
    wrap = None  # data parallelism for the model, or for this rank's pipeline stage (applied before the schedule)
    if layout.fsdp > 1:
        from workbench.distributed.fsdp import apply_fsdp, mixed_precision_policy

        def wrap(module):
            return apply_fsdp(module, mesh["fsdp"], mixed_precision_policy(param_dtype))

        pm.notes.append(f"FSDP2 over fsdp={layout.fsdp}, compute dtype {param_dtype or 'fp32'}")
    elif layout.dp > 1:
        from workbench.distributed.ddp import apply_ddp

        def wrap(module):
            return apply_ddp(module, mesh["dp"])

        pm.notes.append(f"DDP over dp={layout.dp}")
    if layout.pp > 1:
        from workbench.distributed.pp import build_pipeline

        # The stage is sharded/wrapped before the schedule is built (torchtitan's order), so the schedule can
        # drive FSDP's all-gathers and gradient reduce-scatters across micro-batches.
        stage, schedule = build_pipeline(model, mesh["pp"], layout.schedule, layout.n_microbatches, wrap=wrap)
        pp_rank = mesh["pp"].get_local_rank()
        pm.module, pm.schedule = stage, schedule
        pm.is_first_stage, pm.is_last_stage = pp_rank == 0, pp_rank == layout.pp - 1
        inner = getattr(stage, "module", stage)
        pm.notes.append(f"pipeline: stage {pp_rank} of {layout.pp} (layers {inner.start}..{inner.end - 1}), "
                        f"{layout.schedule}, {layout.n_microbatches} micro-batches")
    elif wrap is not None:
        pm.module = wrap(pm.module)
    return pm
