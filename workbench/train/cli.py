"""``workbench train``: train a preset on a corpus, with checkpoints, metrics.jsonl, MFU and ``--resume``.

    workbench train --preset glm4-tiny --steps 300 --device auto --batch-size 16 --seq-len 128 --data default \
        --out runs/mine [--resume] [--compile]

Bad values (negative steps, a seq-len beyond the model's positions, a missing/empty/non-UTF-8 data file, an unknown
preset or device) end with one clear line and exit status 2 (workbench/cli.py prints ``WorkbenchError``s).
"""

from __future__ import annotations

import argparse
import os

# Set before torch (and its OpenMP) is imported by run(): a shorter spin before idle OpenMP threads sleep keeps a
# shared CPU usable (2-6x faster steps measured on a busy 2-core machine, the same speed on an idle one; see
# workbench/demo.py). Numerics are unchanged; a user's own OpenMP settings win.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "100000")

from workbench.errors import WorkbenchError
from workbench.params import output_folder


def _override(text: str) -> tuple[str, object]:
    from workbench.train.config import TrainConfig

    try:
        parsed = TrainConfig.parse_overrides(text)
    except WorkbenchError:
        parsed = {}
    if len(parsed) != 1:  # one setting per --model (a list value may hold commas: indexer_types=[full,shared])
        raise argparse.ArgumentTypeError(f"expected one KEY=VALUE, got {text!r}")
    return next(iter(parsed.items()))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="glm4-tiny", help="model preset (see `workbench models`)")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps in total (a resumed run continues to it)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, npu, xpu, mps (optionally :index in a single process; under "
                   "`workbench launch` each rank takes its LOCAL_RANK's device)")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per micro-batch")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per sequence")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--data", default="default",
                   help="'default' (bundled stories), a UTF-8 text/JSONL file or folder, or hf:NAME[:SPLIT]")
    p.add_argument("--tokenizer", default="byte", choices=["byte", "bpe"], help="byte-level, or BPE trained here")
    p.add_argument("--bpe-vocab-size", type=int, default=2048)
    p.add_argument("--out", type=output_folder, default="runs/train",
                   help="run folder (config, metrics.jsonl, checkpoints, figures)")
    p.add_argument("--resume", action="store_true", help="continue from the newest good checkpoint in --out")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (off by default)")
    p.add_argument("--activation-checkpointing", action="store_true", help="recompute blocks in backward")
    p.add_argument("--optimizer", default="adamw", choices=["adamw", "muon"])
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--muon-lr", type=float, default=0.02)
    p.add_argument("--warmup-steps", type=int, default=20)
    p.add_argument("--grad-clip", type=float, default=1.0, help="max grad norm (0 disables clipping)")
    p.add_argument("--eval-every", type=int, default=50, help="steps between eval losses (0: only at the end)")
    p.add_argument("--ckpt-every", type=int, default=100, help="steps between checkpoints (0: only at the end)")
    p.add_argument("--keep-last", type=int, default=2, help="checkpoints to keep")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--log-every", type=int, default=10, help="steps between printed lines (without progress bar)")
    p.add_argument("--sample-tokens", type=int, default=200, help="tokens per sample at the end (0: none)")
    p.add_argument("--model", type=_override, action="append", default=[], metavar="KEY=VALUE",
                   help="override a ModelConfig field, e.g. --model num_layers=2 (repeatable)")
    p.add_argument("--parallel", default="dp=1", help="parallel layout string (read by workbench/distributed)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (also: WORKBENCH_NO_PROGRESS=1)")


def config_from_args(args: argparse.Namespace):
    from workbench.train.config import TrainConfig

    return TrainConfig(
        preset=args.preset, model_overrides=dict(args.model), data=args.data, tokenizer=args.tokenizer,
        bpe_vocab_size=args.bpe_vocab_size, steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len,
        grad_accum=args.grad_accum, optimizer=args.optimizer, lr=args.lr, muon_lr=args.muon_lr,
        warmup_steps=args.warmup_steps, grad_clip=args.grad_clip, device=args.device, compile=args.compile,
        activation_checkpointing=args.activation_checkpointing, parallel=args.parallel, seed=args.seed,
        out_dir=args.out, eval_every=args.eval_every, ckpt_every=args.ckpt_every, keep_last=args.keep_last,
        log_every=args.log_every, progress=not args.no_progress, sample_tokens=args.sample_tokens,
        resume=args.resume)


def check_early(config) -> None:
    """Cheap checks before the corpus is read: device and preset exist."""
    from workbench.device import get_device
    from workbench.model import list_presets

    get_device(config.device)
    names = list(list_presets())
    if config.preset not in names:
        raise WorkbenchError(f"unknown preset {config.preset!r}; choose one of: {', '.join(names)}")


def summary_line(summary: dict) -> str:
    """The closing line of a run; a value the run did not produce (no train step logged) reads "n/a"."""
    def number(key: str, spec: str = ".3f") -> str:
        value = summary.get(key)
        return "n/a" if value is None else format(value, spec)

    mfu = summary.get("mfu")
    return (f"done: {summary['steps']} steps, train loss {number('first_train_loss')} -> "
            f"{number('final_train_loss')}, val loss {number('final_val_loss')}, {number('tokens_per_s', ',.0f')} "
            f"tok/s, MFU {'n/a' if mfu is None else f'{100 * mfu:.1f}%'} ({summary.get('peak_source')})")


def run(args: argparse.Namespace) -> int:
    from workbench.distributed.train_hooks import distributed_train_kwargs, finish_distributed
    from workbench.train.trainer import train

    config = config_from_args(args)
    check_early(config)
    # Under torchrun (`workbench launch -- train ...`): join the process group and apply --parallel; {} otherwise.
    summary = train(config, **distributed_train_kwargs(config))  # (write limits: workbench/cli.py's WRITE_ADVICE)
    finish_distributed(summary)
    if int(os.environ.get("RANK", "0")) == 0:  # under `workbench launch`, rank 0 speaks for the run
        print(summary_line(summary))
        print(f"run folder: {summary['run_dir']}")
    return 0
