"""Profile a ``workbench.train.Trainer``: its ``train_step`` under the profiler, with the model's FLOPs per step
(``Trainer.flops_per_token`` from ``workbench.model.accounting``) and the device peak (``Trainer.peak``) feeding the
MFU waterfall. Used by ``workbench profile`` and notebooks/04_profiling.ipynb.
"""

from __future__ import annotations

import os
import warnings

from workbench.profiling.analysis import ProfileReport, analyze
from workbench.profiling.session import ProfileConfig, ProfileRun, profile_steps


def trainer_tokens_per_step(trainer) -> int:
    """Tokens one ``train_step`` processes on this rank (all micro-batches): the profile times this rank's step on
    this rank's device, so its FLOPs and its peak are this rank's too."""
    c = trainer.config
    return int(c.batch_size * c.seq_len * c.grad_accum)


def _flops_split(trainer) -> dict | None:
    """The model's FLOPs by kernel kind, to share the waterfall's ideal time (None for a stand-in model)."""
    from workbench.profiling.waterfall import model_flops_split

    model_config = getattr(trainer, "model_config", None)
    return model_flops_split(model_config, trainer.config.seq_len) if model_config is not None else None


def profile_trainer(trainer, config: ProfileConfig | None = None, out_dir: str | os.PathLike | None = None,
                    top_n: int = 10) -> tuple[ProfileRun, ProfileReport]:
    """Profile ``trainer.train_step`` and analyze it with the model's FLOPs and the device's peak."""
    run = profile_steps(trainer.train_step, config, device=trainer.device, out_dir=out_dir)
    flops_per_token = getattr(trainer, "flops_per_token", None)
    flops = flops_per_token * trainer_tokens_per_step(trainer) if flops_per_token else None
    report = analyze(run, flops_per_step=flops, peak=getattr(trainer, "peak", None), top_n=top_n,
                     flops_source="workbench.model.accounting.flops_per_token x tokens per step" if flops else "",
                     flops_split=_flops_split(trainer) if flops else None)
    report.info["tokens_per_step"] = trainer_tokens_per_step(trainer)
    report.info["world_size"] = getattr(trainer, "world_size", 1)
    return run, report


def profile_kernel_choices(trainer, choices: dict[str, dict[str, str]], config: ProfileConfig | None = None,
                           out_dir: str | os.PathLike | None = None,
                           top_n: int = 10) -> dict[str, tuple[ProfileRun, ProfileReport]]:
    """Profile the same trainer once per kernel choice, e.g. ``{"reference": {"attention": "reference"},
    "torch": {"attention": "torch"}}``; each run's trace, tables and figures go to ``out_dir/<label>``.
    Unknown or unavailable implementations fail before anything runs (the registry says why)."""
    from pathlib import Path

    from workbench.kernels import call_counts, resolve_impl, use_kernels

    device_type = trainer.device.type
    for label, chosen in choices.items():
        for op, impl in chosen.items():
            resolve_impl(op, device_type, impl)  # raises with the reason if it cannot run here
    results = {}
    for label, chosen in choices.items():
        target = Path(out_dir) / label if out_dir is not None else None
        calls_before = call_counts()
        with use_kernels(chosen):
            run, report = profile_trainer(trainer, config, out_dir=target, top_n=top_n)
        calls = call_counts()
        report.info["kernels"] = dict(chosen)
        report.info["kernel_calls"] = {op: calls.get(op, 0) - calls_before.get(op, 0) for op in chosen}
        unused = [op for op, n in report.info["kernel_calls"].items() if n == 0]
        if unused:  # e.g. "attention" on a model whose attention is DSA's sparse_mqa_attention
            warnings.warn(f"the model never called {', '.join(unused)} in the profiled steps, so the kernel choice "
                          f"{label!r} profiled the same code as the others; pick an op this model uses "
                          f"(`workbench kernels list`)", stacklevel=2)
        if target is not None:
            report.save(target)
        results[label] = (run, report)
    return results
