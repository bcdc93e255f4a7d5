"""``workbench profile``: profile N training steps of a preset and write the trace, tables and figures.

    workbench profile --preset glm4-tiny --steps 3 --out runs/profile [--device auto] [--batch-size 4]
        [--seq-len 64] [--kernels attention=reference] [--with-stack] [--top 15]

``--preset toy`` profiles the small stand-in LM of ``workbench.profiling.toy`` (no corpus, no tokenizer).
Under ``workbench launch --nproc N -- profile ...`` every rank trains data parallel and profiles its own steps:
rank 0 writes to DIR, rank r to DIR/rank<r>.
Writes DIR/trace.json (open in https://ui.perfetto.dev), DIR/op_table.csv, categories.csv, top_ops.csv,
report.json and DIR/figures/*.html, and prints the category table, the step breakdown and the MFU.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from workbench.errors import WorkbenchError
from workbench.params import output_folder


def _kernel_choices(text: str) -> dict[str, str]:
    choices = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        op, sep, impl = item.partition("=")
        if not sep or not op.strip() or not impl.strip():
            raise argparse.ArgumentTypeError(f"expected OP=IMPL[,OP=IMPL], e.g. attention=reference; got {item!r}")
        choices[op.strip()] = impl.strip()
    return choices


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="glm4-tiny", help="model preset (see `workbench models`), or 'toy'")
    p.add_argument("--steps", type=int, default=3, help="active (recorded) steps")
    p.add_argument("--wait", type=int, default=1, help="steps run before recording starts")
    p.add_argument("--warmup", type=int, default=1, help="steps recorded and thrown away before the active ones")
    p.add_argument("--out", type=output_folder, default="runs/profile", help="output folder")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, npu (optionally :index)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--kernels", type=_kernel_choices, default={}, help="kernel choices, e.g. attention=reference")
    p.add_argument("--with-stack", action="store_true",
                   help="record Python frames too (attributes e.g. a reference attention's ops to attention)")
    p.add_argument("--memory-timeline", default="auto", choices=["auto", "profiler", "rss", "both", "off"])
    p.add_argument("--top", type=int, default=15, help="how many top ops to list")


def _run_preset(args, config, out: Path, train_dir: Path, distributed: dict):
    from workbench.profiling.trainer_profile import profile_trainer
    from workbench.train import TrainConfig, Trainer

    train_cfg = TrainConfig(preset=args.preset, steps=config.total_steps, batch_size=args.batch_size,
                            seq_len=args.seq_len, device=args.device, out_dir=str(train_dir), progress=False,
                            warmup_steps=0, eval_every=0, ckpt_every=0)
    trainer = Trainer(train_cfg, log=lambda message: None, **distributed)
    try:
        return profile_trainer(trainer, config, out_dir=out, top_n=args.top)
    finally:
        trainer.close()


def _run_toy(args, config, out: Path, train_dir: Path, distributed: dict):
    from workbench.device import get_device
    from workbench.profiling.analysis import analyze
    from workbench.profiling.session import profile_steps
    from workbench.profiling.toy import ToyConfig, toy_training_step

    device = get_device(args.device)
    toy = ToyConfig(seq_len=args.seq_len, batch=args.batch_size)
    step, model = toy_training_step(toy, device)
    run = profile_steps(step, config, device=device, out_dir=out)
    # the peak of the dtype the toy computes in (fp32 weights, no autocast), not the training dtype's (bf16 on
    # accelerators, several times fp32's peak)
    report = analyze(run, flops_per_step=model.flops_per_token() * toy.batch * toy.seq_len,
                     flops_source="toy LM: 6 x matmul params + attention", peak=device.peak_flops(model.compute_dtype),
                     top_n=args.top, flops_split=model.flops_split())
    return run, report


def _join_launch(args) -> tuple[dict, int]:
    """Under torchrun (``workbench launch -- profile ...``): join the process group and train data parallel, as
    ``workbench train`` does. Returns the Trainer's distributed keyword arguments ({} in one process) and the rank.
    Without this every rank thought it ran alone: all but one died on the shared run folder's lock."""
    from workbench.distributed.mesh import is_launched

    if not is_launched():
        return {}, 0
    if args.preset == "toy":
        raise WorkbenchError("--preset toy profiles one process; under `workbench launch` profile a model preset "
                             "(e.g. --preset glm4-tiny), which trains data parallel across the ranks")
    import torch.distributed as dist

    from workbench.distributed.train_hooks import distributed_train_kwargs
    from workbench.train import TrainConfig

    kwargs = distributed_train_kwargs(TrainConfig(preset=args.preset, device=args.device, progress=False))
    kwargs.pop("callbacks", None)  # (fault injection is for train's restart test)
    return kwargs, dist.get_rank()


def _check_kernel_choices(choices: dict[str, str], device: str) -> None:
    """Refuse a --kernels choice that cannot run on this device before anything is profiled: `attention=triton` on
    a cpu failed only inside the first step, leaving trace.json and a train/ folder in --out."""
    if not choices:
        return
    from workbench.distributed.mesh import process_device
    from workbench.kernels import registry

    device_type = process_device(device).type
    for op, impl in choices.items():
        try:
            registry.resolve_impl(op, device_type, impl)
        except registry.KernelUnavailableError as exc:
            raise WorkbenchError(f"--kernels {op}={impl}: {exc}") from None


def run(args: argparse.Namespace) -> int:
    from workbench.kernels import call_counts, use_kernels
    from workbench.profiling.session import ProfileConfig
    from workbench.viz import text_table

    if args.top < 1:
        raise WorkbenchError(f"--top must be >= 1, got {args.top}")
    for name in ("batch_size", "seq_len"):
        if getattr(args, name) < 1:
            raise WorkbenchError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    config = ProfileConfig(wait=args.wait, warmup=args.warmup, active=args.steps, with_stack=args.with_stack,
                           memory_timeline=args.memory_timeline)
    from workbench.model import list_presets

    if args.preset != "toy" and args.preset not in list_presets():  # before --out is made: no empty folder left
        raise WorkbenchError(f"unknown preset {args.preset!r}; choose toy (a small stand-in LM) or one of: "
                             f"{', '.join(list_presets())}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise WorkbenchError(f"--out {out} is a file, not a folder")
    distributed, rank = _join_launch(args)
    _check_kernel_choices(args.kernels, args.device)
    # under `workbench launch` every rank profiles its own share of the data-parallel step: rank 0 writes to --out
    # (the trainer's run folder is rank 0's), the others beside it, so no rank reads another's trace
    rank_out = out if rank == 0 else out / f"rank{rank}"
    try:  # (the folder is made once the device, kernels and model proved good: no empty folder on a bad value)
        calls_before = call_counts()
        with use_kernels(args.kernels) if args.kernels else contextlib.nullcontext():
            run_fn = _run_toy if args.preset == "toy" else _run_preset
            run_, report = run_fn(args, config, rank_out, out / "train", distributed)
        unused = [op for op in args.kernels if call_counts().get(op, 0) == calls_before.get(op, 0)]
        written = report.save(rank_out)
    finally:
        if distributed:
            from workbench.distributed.train_hooks import finish_distributed

            finish_distributed()
    if rank != 0:  # rank 0 speaks for the run (and its folder is --out itself)
        return 0
    summary = report.summary()
    print(f"profiled {summary['n_steps']} steps of {args.preset} on {run_.device_type} with {run_.backend}: "
          f"{summary['step_ms']:.2f} ms/step")
    # two shares with two denominators, named: op time (what the categories split) and the whole step
    print(text_table([{**r, "share of op time": r["share"]} for r in report.categories],
                     ["category", "ms_per_step", "share of op time", "count_per_step", "achieved_tflops"]))
    print(text_table([{**r, "share of step": r["share"]} for r in report.breakdown["rows"]],
                     ["phase", "ms", "share of step"]))
    mfu = summary["mfu"]
    print(f"MFU: {'unknown (no peak)' if mfu is None else f'{mfu:.2%}'}  "
          f"(peak: {report.waterfall['peak_source']}; FLOPs: {report.waterfall['flops_source']})")
    print(f"trace: {run_.trace_path}  (open in https://ui.perfetto.dev)")
    print(f"tables and figures: {out}  ({len(written)} files)")
    if unused:
        print(f"note: {args.preset} never called {', '.join(unused)}, so --kernels changed nothing in this profile")
    return 0
