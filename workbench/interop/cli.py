"""``workbench export``: a trained run folder -> a Hugging Face transformers folder.

    workbench export runs/demo --out runs/demo-hf [--step N]

Reads the run's model settings (``config.json``), loads its newest good checkpoint (or ``--step N``; a damaged one is
skipped with a warning, as ``--resume`` does), and writes ``config.json`` + ``model.safetensors`` with
``workbench.interop.hf.to_hf``, which ``transformers.AutoModelForCausalLM.from_pretrained`` loads with the same
logits. The run's tokenizer goes along: a BPE tokenizer as ``tokenizer.json`` (HF ``tokenizers`` format, e.g.
``PreTrainedTokenizerFast(tokenizer_file=...)``), and the config gets its end-of-text id as ``eos_token_id`` so
``generate`` stops there; the byte-level tokenizer has no transformers counterpart (its ids are the UTF-8 bytes, eos
256), so it is copied as ``workbench_tokenizer.json`` and described in the message.
The README's command table lists it; tests/test_interop_export.py runs it on a trained run.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from workbench.errors import WorkbenchError
from workbench.params import output_folder

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run folder written by `workbench train` (holds config.json and checkpoints/)")
    p.add_argument("--out", type=output_folder, required=True, help="new folder for the transformers checkpoint")
    p.add_argument("--step", type=int, default=None, help="export this step's checkpoint (default: the newest good)")


def _checkpoint(run: Path, step: int | None) -> Path:
    from workbench.train import checkpoint as ckpt

    root = run / "checkpoints"
    if step is None:
        # read-only: the run may still be training, and export does not take its lock
        path = ckpt.latest_good_checkpoint(root, warn=lambda message: print(f"warning: {message}"), read_only=True)
        if path is None:
            raise WorkbenchError(f"{run} has no complete checkpoint to export (checkpoints/ is empty or damaged)")
        return path
    path = root / ckpt.step_dir_name(step)
    if not path.is_dir():
        steps = ", ".join(str(s) for s, _ in ckpt.list_checkpoints(root)) or "none"
        raise WorkbenchError(f"{run} has no checkpoint of step {step}; it has: {steps}")
    try:
        ckpt.verify_checkpoint(path)
    except ckpt.CorruptCheckpointError as exc:
        raise WorkbenchError(str(exc)) from None
    return path


def _load_checkpoint(run: Path, step: int | None, model) -> Path:
    """Load the checkpoint to export into ``model``; returns its folder. A run that still trains may delete the chosen
    checkpoint while it is read (its --keep-last pruning, after writing a newer one): that is no damage, so export
    takes the then-newest one, up to ``checkpoint.RESCANS`` times (as often as the checkpoint search looks again),
    instead of calling the run's checkpoint partial or corrupt."""
    from safetensors import SafetensorError

    from workbench.train import checkpoint as ckpt

    root = run / "checkpoints"
    for _ in range(ckpt.RESCANS):
        newest = ckpt.newest_step(root)
        path = _checkpoint(run, step)
        try:
            ckpt.load_checkpoint(path, model)
            return path
        except (ckpt.CorruptCheckpointError, OSError, SafetensorError) as exc:
            if not ckpt.was_superseded(path, newest):
                if isinstance(exc, OSError):
                    raise
                raise WorkbenchError(str(exc)) from None
            if step is not None:
                raise WorkbenchError(f"the checkpoint of step {step} in {run} was deleted while export read it (the "
                                     f"run still trains and keeps only its newest --keep-last checkpoints); export "
                                     f"another --step, or the newest without --step") from None
    raise WorkbenchError(f"{run} still trains and replaced its newest checkpoint {ckpt.RESCANS} times while export "
                         f"read it; export again, or export once the run is done (or pass --step N of a checkpoint it "
                         f"keeps)")


def export_run(run: str | Path, out: str | Path, step: int | None = None) -> dict:
    """Export run folder ``run`` to ``out`` (which must not hold files yet). Returns what was written."""
    from workbench.interop.hf import config_to_hf, to_hf
    from workbench.model import ModelConfig, build_model

    run, out = Path(run), Path(out)
    config_path = run / "config.json"
    if not config_path.is_file():
        raise WorkbenchError(f"{run} is not a run folder: it has no config.json (train one with `workbench train`)")
    settings = json.loads(config_path.read_text(encoding="utf-8"))
    if not isinstance(settings.get("model"), dict):
        raise WorkbenchError(f"{config_path} records no model settings (a run of a model that was not a workbench "
                             "GLM): nothing to export")
    if out.exists() and not out.is_dir():
        raise WorkbenchError(f"--out {out} is a file, not a folder; export into a new or empty folder")
    if out.exists() and any(out.iterdir()):
        raise WorkbenchError(f"--out {out} already holds files; export into a new or empty folder")
    model_config = ModelConfig.from_dict(settings["model"])
    config_to_hf(model_config)  # a model transformers cannot express fails here, before anything is read or made
    model = build_model(model_config)
    path = _load_checkpoint(run, step, model)
    to_hf(model, out)
    written = {"checkpoint": str(path), "out": str(out), "tokenizer": None}
    tokenizer_file = run / "tokenizer.json"
    if tokenizer_file.is_file():
        from workbench.data import ByteTokenizer, load_tokenizer

        tokenizer = load_tokenizer(run)
        byte_level = isinstance(tokenizer, ByteTokenizer)
        target = out / ("workbench_tokenizer.json" if byte_level else "tokenizer.json")
        shutil.copyfile(tokenizer_file, target)
        config = json.loads((out / "config.json").read_text(encoding="utf-8"))
        config["eos_token_id"] = int(tokenizer.eos_id)
        (out / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        written["tokenizer"] = "byte" if byte_level else "bpe"
    return written


def run(args: argparse.Namespace) -> int:
    if args.step is not None and args.step < 0:
        raise WorkbenchError(f"--step must be >= 0, got {args.step}")
    written = export_run(args.run, args.out, args.step)
    print(f"exported {written['checkpoint']} -> {written['out']} (config.json, model.safetensors)")
    if written["tokenizer"] == "bpe":
        print("tokenizer: tokenizer.json (PreTrainedTokenizerFast(tokenizer_file=...)); eos_token_id in config.json")
    elif written["tokenizer"] == "byte":
        print("tokenizer: byte-level (ids are UTF-8 bytes, eos 256), described in workbench_tokenizer.json")
    print("load it with transformers.AutoModelForCausalLM.from_pretrained(out) or workbench.interop.hf.from_hf(out)")
    return 0
