"""A minimal training loop that runs one model under several parallel layouts in one launch, and compares each
with a single-process run on the same global batch.

Each case is ``preset:layout`` (optionally ``:bf16`` for FSDP2 mixed precision: layouts with fsdp only), e.g. ``glm4-tiny:tp=2``. Every
case starts from the same seeded weights, trains ``steps`` SGD steps on the same fixed global batch of random
tokens (split over the data ranks), and records the global loss per step and the median step time. Rank 0 also
trains the same model alone on the whole batch (the reference) and reports the largest loss difference.

    python -m torch.distributed.run --nproc-per-node 2 -m workbench.distributed.runner \
        --cases "glm4-tiny:dp=2;glm4-tiny:tp=2" --tiny --steps 3

Used by tests/test_distributed_parallel.py and notebooks/03_distributed.ipynb (through ``launch``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import torch
import torch.distributed as dist

from workbench.errors import ConfigError


def tiny_config(config):
    """Shrink a preset to test size, keeping its family (heads, GQA ratio, experts, MTP)."""
    changes: dict[str, Any] = dict(vocab_size=256, hidden_size=64, num_layers=4, intermediate_size=128,
                                   max_position_embeddings=256)
    if config.attention_type == "gqa":
        changes["head_dim"] = 16
    if config.num_experts:
        changes.update(num_experts=4, moe_intermediate_size=32)
    return config.replace(**changes)


def make_model(preset: str, tiny: bool, seed: int, device: torch.device | None = None):
    from workbench.model import build_model, get_preset

    config = get_preset(preset)
    config = tiny_config(config) if tiny else config
    torch.manual_seed(seed)  # identical initial weights on every rank (built on the cpu, then moved)
    model = build_model(config)
    return model.to(device) if device is not None else model


def make_batch(vocab: int, global_batch: int, seq_len: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed + 1)
    tokens = torch.randint(0, vocab, (global_batch, seq_len + 1), generator=gen)
    return tokens[:, :-1], tokens[:, 1:]  # labels already shifted: y[t] = x[t + 1]


def reference_losses(preset: str, tiny: bool, seed: int, x, y, steps: int, lr: float) -> list[float]:
    return sgd_losses(make_model(preset, tiny, seed, x.device), x, y, steps, lr)


def sgd_losses(model, x, y, steps: int, lr: float) -> list[float]:
    """The one-process reference: ``steps`` plain SGD steps of ``model`` on one batch, the loss of each."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = model(x, labels=y).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def run_case(preset: str, layout: str, param_dtype: str | None, tiny: bool, seed: int, x, y, steps: int,
             lr: float) -> dict[str, Any]:
    from workbench.distributed.parallelize import parallelize

    model = make_model(preset, tiny, seed, x.device)
    n_params = sum(p.numel() for p in model.parameters())
    pm = parallelize(model, layout, param_dtype=param_dtype)
    pm.layout.check_batch(x.shape[0], seq_len=x.shape[1])
    share = x.shape[0] // pm.data_size
    rows = slice(pm.data_rank * share, (pm.data_rank + 1) * share)
    opt = torch.optim.SGD(list(pm.parameters()), lr=lr)
    losses, times = [], []
    for _ in range(steps):
        dist.barrier()
        start = time.perf_counter()
        loss = pm.forward_backward(x[rows], y[rows])
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - start)
        losses.append(pm.global_loss(loss))
    return {"case": f"{preset}:{layout}" + (f":{param_dtype}" if param_dtype else ""), "preset": preset,
            "layout": str(pm.layout), "param_dtype": param_dtype or "fp32", "losses": losses,
            "step_s": statistics.median(times[1:] or times), "notes": pm.notes,
            "local_params": sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel()
                                for p in pm.parameters()), "model_params": n_params}


def parse_cases(text: str) -> list[tuple[str, str, str | None]]:
    """"glm4-tiny:dp=2;glm4-tiny:fsdp=2:bf16" -> [(preset, layout, dtype)]. Cases are separated by ';'.

    The dtype is FSDP2's compute dtype (``parse_dtype`` names: fp32, bf16; fp16 is refused, as nothing scales
    the loss), so anything but fp32 needs a layout with fsdp; it comes back as its canonical name."""
    from workbench.device.detect import check_training_dtype, dtype_name, parse_dtype

    cases = []
    for item in [c.strip() for c in text.split(";") if c.strip()]:
        parts = item.split(":")
        if len(parts) not in (2, 3):
            raise ValueError(f"case {item!r} must be preset:layout or preset:layout:dtype")
        dtype = None
        if len(parts) == 3:
            try:
                dtype = dtype_name(check_training_dtype(parse_dtype(parts[2]), "param_dtype"))
            except (ValueError, ConfigError) as exc:
                raise ValueError(f"case {item!r}: {exc}") from None
            # read from the spec's own text: fsdp=auto (or -1) is resolved only once the world size is known
            names_fsdp = any(key.strip() == "fsdp" and value.strip() != "1"
                             for key, _, value in (entry.partition("=") for entry in parts[1].split(",")))
            if dtype != "fp32" and not names_fsdp:
                raise ValueError(f"case {item!r}: :{dtype} sets FSDP2's compute dtype, and {parts[1]} has no fsdp; "
                                 f"drop the suffix or use a layout with fsdp (e.g. fsdp=2:{dtype})")
        cases.append((parts[0], parts[1], dtype))
    return cases


def check_cases(cases: list[tuple[str, str, str | None]], world_size: int, tiny: bool, global_batch: int,
                seq_len: int) -> None:
    """Every case's layout against the world size, its model and the batch, before any case runs: a later case
    that cannot run (ep+fsdp, pp with MTP) used to fail with a traceback per rank after the earlier cases had
    trained."""
    from workbench.distributed.layout import parse_layout
    from workbench.model import get_preset

    for preset, layout, _ in cases:
        config = tiny_config(get_preset(preset)) if tiny else get_preset(preset)
        try:
            parse_layout(layout, world_size=world_size).check_model(config).check_batch(global_batch, seq_len=seq_len)
        except ConfigError as exc:
            raise ConfigError(f"case {preset}:{layout}: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    from workbench.distributed.launcher import write_rank_results
    from workbench.distributed.mesh import destroy_distributed, init_distributed

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", required=True, help="preset:layout[:dtype] separated by ';'")
    parser.add_argument("--tiny", action="store_true", help="shrink the presets to test size")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--global-batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=16)
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-reference", action="store_true")
    args = parser.parse_args(argv)
    for name in ("steps", "global_batch", "seq_len"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(args, name)})")
    try:  # before the process group: a bad case is one line per rank, with nothing started
        cases = parse_cases(args.cases)
        check_cases(cases, int(os.environ.get("WORLD_SIZE", "1")), args.tiny, args.global_batch, args.seq_len)
    except (ValueError, ConfigError) as exc:
        parser.error(str(exc))
    info = init_distributed(args.device)
    results: dict[str, Any] = {"rank": info.rank, "world_size": info.world_size, "cases": [], "reference": {}}
    for preset, layout, dtype in cases:
        from workbench.model import get_preset

        model_vocab = (tiny_config(get_preset(preset)) if args.tiny else get_preset(preset)).vocab_size
        x, y = make_batch(model_vocab, args.global_batch, args.seq_len, args.seed)
        x, y = x.to(info.device.torch_device), y.to(info.device.torch_device)
        row = run_case(preset, layout, dtype, args.tiny, args.seed, x, y, args.steps, args.lr)
        if info.is_main and not args.no_reference:
            if preset not in results["reference"]:
                results["reference"][preset] = reference_losses(preset, args.tiny, args.seed, x, y, args.steps,
                                                                args.lr)
            ref = results["reference"][preset]
            row["max_loss_diff"] = max(abs(a - b) for a, b in zip(row["losses"], ref))
            print(f"{row['case']:>28}: losses {[round(v, 4) for v in row['losses']]}, max |diff| vs 1 process "
                  f"{row['max_loss_diff']:.2e}, step {row['step_s'] * 1e3:.1f} ms", flush=True)
        results["cases"].append(row)
        dist.barrier()
    write_rank_results(results)
    destroy_distributed()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
