"""Pipeline parallel with ``torch.distributed.pipelining``: consecutive layers on consecutive ranks.

The model is cut into ``pp`` stages of (nearly) equal numbers of blocks; stage 0 also owns the embedding, the last
stage the final norm and LM head. ``StageModule`` reuses the model's own submodules (nothing is copied or
rewritten) and runs its slice of the forward. The batch is split into micro-batches that flow through the stages:

- GPipe (Huang et al. 2019): all forwards, then all backwards; activations of every micro-batch are kept;
- 1F1B (Narayanan et al. 2019, PipeDream-Flush): after a warm-up, each stage alternates one forward and one
  backward, so at most ``pp`` micro-batches of activations are alive. Same bubble, less memory.

The loss is computed on the last stage per micro-batch; the schedule averages gradients over micro-batches
(``scale_grads``), so the result matches one step on the whole batch. Limits: models without MTP layers, DSA
top-k sharing or an auxiliary loss (they need values to cross stages that the LM loss path does not carry).
Used by ``parallelize(..., "pp=N")`` and notebooks/03_distributed.ipynb.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

from workbench.distributed.layout import pipeline_problems

SCHEDULES = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}


def stage_layer_ranges(n_layers: int, n_stages: int) -> list[tuple[int, int]]:
    """[start, end) layer indices per stage; the first stages get one extra layer when it does not divide."""
    if not 1 <= n_stages <= n_layers:
        raise ValueError(f"pipeline: {n_stages} stages need 1..{n_layers} (the number of layers)")
    base, extra = divmod(n_layers, n_stages)
    ranges, start = [], 0
    for s in range(n_stages):
        end = start + base + (1 if s < extra else 0)
        ranges.append((start, end))
        start = end
    return ranges


class StageModule(nn.Module):
    """Blocks [start, end) of a GLM model; stage 0 embeds token ids, the last stage returns logits [B, S, V]."""

    def __init__(self, model: nn.Module, start: int, end: int, first: bool, last: bool):
        super().__init__()
        self.embed_tokens = model.embed_tokens if first else None
        self.layers = nn.ModuleList(model.layers[start:end])
        self.norm = model.norm if last else None
        self.lm_head = model.lm_head if last else None
        self.rotary = model.rotary
        self.start, self.end = start, end

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.embed_tokens is not None:
            x = self.embed_tokens(x)  # token ids [B, S] -> [B, S, D]
        cos, sin = self.rotary(x.shape[1], x.device)
        for layer in self.layers:
            x, _ = layer(x, cos, sin, None)
        if self.lm_head is not None:
            x = self.lm_head(self.norm(x))
        return x


def check_pipelinable(config) -> None:
    problems = pipeline_problems(config)
    if problems:
        raise ValueError("pipeline parallel does not support " + ", ".join(problems))


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten())


def build_pipeline(model: nn.Module, pp_mesh: DeviceMesh, schedule: str = "1f1b", n_microbatches: int | None = None,
                   device: torch.device | None = None, wrap=None):
    """(stage module, schedule) for this rank's stage. ``wrap(stage_module)`` applies data parallelism (e.g. DDP)
    to the stage *before* the schedule sees it, so the schedule can sync gradients once per step (torchtitan's
    order); the returned module is the wrapped one."""
    check_pipelinable(model.config)
    n_stages, stage = pp_mesh.size(), pp_mesh.get_local_rank()
    start, end = stage_layer_ranges(len(model.layers), n_stages)[stage]
    module = StageModule(model, start, end, first=stage == 0, last=stage == n_stages - 1)
    device = device or next(model.parameters()).device
    if wrap is not None:
        module = wrap(module)
    pipe_stage = PipelineStage(module, stage, n_stages, device, group=pp_mesh.get_group())
    if schedule not in SCHEDULES:
        raise ValueError(f"pipeline schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    runner = SCHEDULES[schedule](pipe_stage, n_microbatches=n_microbatches or n_stages, loss_fn=lm_loss)
    return module, runner
