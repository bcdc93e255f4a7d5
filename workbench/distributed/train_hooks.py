"""What ``workbench train`` needs when torchrun started it: join the process group, parallelize the model, keep
MoE balancing in step across ranks, optionally kill a rank on purpose (to test restarts), and report results.

    kwargs = distributed_train_kwargs(config)     # {} outside torchrun
    summary = train(config, **kwargs)             # Trainer(..., parallelize=..., callbacks=...)
    finish_distributed(summary)                   # rank results JSON for `launch()`, then leave the group

The trainer saves checkpoints from rank 0 only and shards its data loader by the global rank, which is right for
data parallel (``dp=N``): every rank holds the full model. Sharded layouts (fsdp, tp, pp, ep) need every rank to
take part in saving, so ``workbench train`` refuses them with a clear message; they run through ``parallelize`` in
``workbench.distributed.runner`` and notebooks/03_distributed.ipynb.

Fault injection, for the restart test: ``WORKBENCH_FAULT_STEP=N`` (and ``WORKBENCH_FAULT_RANK``, default 1) makes
that rank SIGKILL itself after step N on the first attempt only (torchrun's ``TORCHELASTIC_RESTART_COUNT`` = 0).
"""

from __future__ import annotations

import os
import signal
from typing import Any

import torch
import torch.distributed as dist

from workbench.distributed.layout import parse_layout
from workbench.distributed.mesh import destroy_distributed, init_distributed, is_launched
from workbench.errors import ConfigError

TRAINER_LAYOUTS = ({"dp"}, set())


def effective_parallel(parallel: str, world_size: int) -> str:
    """The trainer's layout as it runs: its default "dp=1" (or "") means "all ranks data parallel" under a launch."""
    return f"dp={world_size}" if world_size > 1 and parallel.strip() in ("", "dp=1") else parallel


def resolve_layout(parallel: str, world_size: int):
    """The trainer's layout (``effective_parallel``), checked: data parallel only."""
    layout = parse_layout(effective_parallel(parallel, world_size), world_size=world_size)
    if set(layout.active) not in TRAINER_LAYOUTS:
        raise ConfigError(f"workbench train runs data parallel layouts (dp=N) under torchrun; {layout} shards the "
                          "model, which the trainer's rank-0 checkpoints do not support yet. Use "
                          "`python -m workbench.distributed.runner` or notebooks/03_distributed.ipynb for "
                          "fsdp/tp/pp/ep")
    return layout


def sync_expert_load(model: torch.nn.Module) -> None:
    """Make ``model.update_expert_bias`` sum the MoE token counts over all ranks first, so every rank moves its
    balancing biases the same way (an instance attribute; the model class is unchanged)."""
    original = getattr(model, "update_expert_bias", None)
    moes = model.moe_layers() if hasattr(model, "moe_layers") else []
    if original is None or not moes:
        return

    def update_expert_bias(rate=None):
        for moe in moes:
            dist.all_reduce(moe.load_accum)
        return original(rate)

    model.update_expert_bias = update_expert_bias


def fault_injection_callback():
    """A trainer callback that SIGKILLs this rank after step ``WORKBENCH_FAULT_STEP`` (first attempt only)."""
    step = int(os.environ.get("WORKBENCH_FAULT_STEP", "0") or 0)
    rank = int(os.environ.get("WORKBENCH_FAULT_RANK", "1"))
    if step <= 0 or int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0:
        return None

    def callback(record: dict[str, Any]) -> None:
        if record.get("kind") == "train" and record.get("step") == step and dist.get_rank() == rank:
            print(f"fault injection: rank {rank} kills itself after step {step}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    return callback


def distributed_train_kwargs(config) -> dict[str, Any]:
    """Keyword arguments for ``Trainer``/``train`` under torchrun ({} in a single process)."""
    if not is_launched():
        parse_layout(config.parallel, world_size=1)  # a single process: the layout must be trivial
        return {}
    info = init_distributed(config.device)
    layout = resolve_layout(config.parallel, info.world_size)

    def parallelize_hook(model, device, cfg):
        from workbench.distributed.parallelize import parallelize

        sync_expert_load(model)
        layout.check_sequence(cfg.seq_len)  # sequence parallel under tp: one clear message, not a crash in backward
        return parallelize(model, layout, device=info.device).module  # the mesh on the device this rank is bound to

    kwargs: dict[str, Any] = {"parallelize": parallelize_hook}
    callback = fault_injection_callback()
    if callback is not None:
        kwargs["callbacks"] = [callback]
    return kwargs


def finish_distributed(summary: dict[str, Any] | None = None) -> None:
    """Write this rank's summary for ``launch()`` to collect, and leave the process group."""
    from workbench.distributed.launcher import write_rank_results

    if summary is not None and is_launched():
        rank = dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", 0))
        write_rank_results({"rank": rank, **{k: v for k, v in summary.items() if k != "samples"}})
    destroy_distributed()
