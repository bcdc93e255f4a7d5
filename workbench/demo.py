"""``make demo`` / ``python -m workbench.demo``: train the default preset on the default corpus, on the best device.

It picks the device (NPU, CUDA, ... or CPU), trains ``glm4-tiny`` (byte-level tokens, the bundled synthetic stories)
for a few minutes with a progress bar, then prints the loss it reached, tokens/s and MFU, two samples, and where the
run folder and the loss figure are. On 2 CPU cores the loss falls from ~5.6 to well under 2 within its default 3
minutes; on an accelerator the same run takes seconds, so it trains longer there. Options: ``--steps``,
``--minutes``, ``--out``, ``--device``, ``--batch-size``, ``--seq-len``.
"""

from __future__ import annotations

import argparse
import os
import sys
from workbench.params import output_folder
from pathlib import Path

# Before torch loads OpenMP: idle OpenMP threads spin for a shorter while before they sleep. On a CPU shared with
# other work (a workshop laptop, a busy CI box) the default long spin made steps 2-6x slower here; on an idle CPU
# this setting measured the same speed (0.64 vs 0.68 s/step), while OMP_WAIT_POLICY=PASSIVE was 2x slower there.
# Numerics are unchanged; a user's own OpenMP settings win.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "100000")

DEFAULT_OUT = "runs/demo"
DEMO_MARKER = ".workbench-demo"  # marks a folder the demo made, which it may clear to start over


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m workbench.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=None, help="default: 300 on CPU, 2000 on an accelerator")
    p.add_argument("--minutes", type=float, default=3.0, help="stop training after this long (then eval + save)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--preset", default="glm4-tiny")
    p.add_argument("--out", type=output_folder, default=DEFAULT_OUT)
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from workbench.device import get_device
    from workbench.device.detect import dtype_name
    from workbench.errors import WorkbenchError
    from workbench.train import TrainConfig, train

    from workbench.train.cli import check_early
    from workbench.train.run_lock import clear_run_folder

    out = Path(args.out)
    try:
        device = get_device(args.device)
    except (WorkbenchError, ValueError, RuntimeError) as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.steps is not None and args.steps < 1:  # 0 meant "the default" by accident (args.steps or 300)
            raise WorkbenchError(f"--steps must be >= 1, got {args.steps}")
        if not (args.minutes > 0 and args.minutes < float("inf")):
            raise WorkbenchError(f"--minutes must be a positive number, got {args.minutes}")
        steps = args.steps if args.steps is not None else (300 if device.type == "cpu" else 2000)
        config = TrainConfig(preset=args.preset, steps=steps, batch_size=args.batch_size, seq_len=args.seq_len,
                             device=args.device, out_dir=str(out), lr=3e-3,
                             # 20 warm-up steps, fewer on a short --steps run: the trainer's warning about warm-up
                             # >= steps named --warmup-steps, which the demo does not have
                             warmup_steps=min(20, steps // 10), eval_every=50,
                             ckpt_every=100, log_every=10, progress=not args.no_progress, sample_tokens=120,
                             time_limit_s=60.0 * args.minutes)
        check_early(config)  # the preset exists: checked before anything in --out is touched
        # Start over in the demo's own folder only: under the lock (a run training there stops this with its pid),
        # and never in a folder holding some other run (it deleted whatever --out named that had a config.json).
        if out.exists() and any(out.iterdir()):
            # the default folder is the demo's own even when an earlier version made it without the marker
            if not (out / DEMO_MARKER).exists() and out.resolve() != Path(DEFAULT_OUT).resolve():
                raise WorkbenchError(f"--out {str(out)!r} is not empty and not a demo run folder; choose another "
                                     f"--out (the demo starts over in its own folder only)")
            clear_run_folder(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / DEMO_MARKER).write_text("written by python -m workbench.demo; it may start over here\n",
                                       encoding="utf-8")
        print(f"workbench demo: training {args.preset} on the bundled stories on {device.type} ({device.name}), "
              f"{dtype_name(device.training_dtype)}; up to {steps} steps or {args.minutes:g} minutes", flush=True)
        s = train(config)
    except (WorkbenchError, OSError) as exc:  # bad flags, a busy, foreign or unwritable --out, bad data: one line
        print(f"demo: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: what was written stays (checkpoints are atomic); no traceback
        print(f"demo: interrupted; the run so far is in {out}", file=sys.stderr)
        return 130
    mfu = "n/a" if s["mfu"] is None else f"{100 * s['mfu']:.1f}%"
    print()
    print(f"loss: {s['first_train_loss']:.3f} at step 1 -> {s['final_train_loss']:.3f} at step {s['steps']} "
          f"(validation {s['final_val_loss']:.3f}; uniform guessing over {s['vocab_size']} tokens would be "
          f"{__import__('math').log(s['vocab_size']):.2f})")
    print(f"speed: {s['tokens_per_s']:,.0f} tokens/s, MFU {mfu} of {s['peak_flops'] or 0:.3g} FLOP/s "
          f"({s['peak_source']})")
    print("samples:")
    for text in s.get("samples", []):
        print("  " + text.replace("\n", " ")[:400])
    print(f"run folder: {s['run_dir']}  (config.json, metrics.jsonl, summary.json, checkpoints/, samples.txt)")
    for kind, path in (s.get("figures") or {}).items():
        print(f"figure ({kind}): {path}")
    print(f"next: .venv/bin/workbench export {s['run_dir']} --out {s['run_dir']}-hf  (the model for transformers)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
