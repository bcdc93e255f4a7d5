"""Run the hand-written data-parallel versions next to torch DDP in one process group: same model, same data.

Each rank runs, for every strategy, a fresh copy of a small MLP for ``steps`` SGD-with-momentum steps on its slice
of a fixed global batch, and records the global loss per step, the step time, the optimizer-state bytes it holds
and the largest difference of its final weights from a single-process run on the whole batch (computed by every
rank locally, so no extra launch). Strategies: torch_ddp, naive, bucketed, overlapped, zero1 (naive all-reduce +
ZeRO-1 optimizer).

    python -m torch.distributed.run --nproc-per-node 2 -m workbench.distributed.teaching.compare --steps 5

Used by tests/test_distributed_teaching.py (correctness) and benchmarks/teaching_ddp.py (step times).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.distributed as dist
from torch import nn

STRATEGIES = ("torch_ddp", "naive", "bucketed", "overlapped", "zero1")


def make_mlp(dim: int, depth: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)]
    return nn.Sequential(*layers)


def make_batch(global_batch: int, dim: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(global_batch, dim, generator=gen), torch.randn(global_batch, dim, generator=gen)


def _optimizer(params, lr: float):
    return torch.optim.SGD(params, lr=lr, momentum=0.9)


def reference_run(model: nn.Module, x, y, steps: int, lr: float) -> tuple[list[float], nn.Module]:
    model = copy.deepcopy(model)
    opt = _optimizer(model.parameters(), lr)
    losses = []
    for _ in range(steps):
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses, model


def wrap(strategy: str, model: nn.Module, lr: float, bucket_cap_mb: float):
    """(module to call, optimizer, function that averages gradients after backward)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    from workbench.distributed.teaching import BucketedDDP, NaiveDDP, OverlappedDDP, ZeRO1Optimizer

    if strategy == "torch_ddp":
        ddp = DDP(model, bucket_cap_mb=bucket_cap_mb)
        return ddp, _optimizer(ddp.parameters(), lr), lambda: None  # torch syncs inside backward
    if strategy == "zero1":
        ddp = NaiveDDP(model)
        return ddp, ZeRO1Optimizer(ddp.parameters(), _optimizer, lr=lr), ddp.sync_gradients
    cls = {"naive": NaiveDDP, "bucketed": BucketedDDP, "overlapped": OverlappedDDP}[strategy]
    ddp = cls(model) if cls is NaiveDDP else cls(model, bucket_cap_mb=bucket_cap_mb)
    return ddp, _optimizer(ddp.parameters(), lr), ddp.sync_gradients


def run_strategy(strategy: str, base: nn.Module, x, y, steps: int, lr: float, bucket_cap_mb: float) -> dict:
    rank, world = dist.get_rank(), dist.get_world_size()
    share = x.shape[0] // world
    x_local, y_local = x[rank * share:(rank + 1) * share], y[rank * share:(rank + 1) * share]
    module, opt, sync = wrap(strategy, copy.deepcopy(base), lr, bucket_cap_mb)
    losses, times = [], []
    for _ in range(steps):
        dist.barrier()
        start = time.perf_counter()
        loss = nn.functional.mse_loss(module(x_local), y_local)
        loss.backward()
        sync()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - start)
        global_loss = loss.detach().clone()
        dist.all_reduce(global_loss)
        losses.append(global_loss.item() / world)
    state = opt.state_bytes() if hasattr(opt, "state_bytes") else sum(
        t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if torch.is_tensor(t))
    inner = module.module
    return {"strategy": strategy, "losses": losses, "step_s": statistics.median(times[1:] or times),
            "optimizer_state_bytes": state, "final_params": [p.detach() for p in inner.parameters()]}


def main(argv: list[str] | None = None) -> int:
    from workbench.distributed.launcher import write_rank_results
    from workbench.distributed.mesh import destroy_distributed, init_distributed

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--global-batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.3)
    parser.add_argument("--bucket-cap-mb", type=float, default=1.0)
    args = parser.parse_args(argv)
    for name in ("steps", "global_batch"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(args, name)})")
    info = init_distributed("cpu")
    if args.global_batch % info.world_size:  # each rank trains on an equal share; the rest would be dropped
        parser.error(f"--global-batch {args.global_batch} must be divisible by the {info.world_size} ranks; use a "
                     f"multiple of {info.world_size}")
    base = make_mlp(args.dim, args.depth)
    x, y = make_batch(args.global_batch, args.dim)
    ref_losses, ref_model = reference_run(base, x, y, args.steps, args.lr)
    rows = []
    for strategy in [s.strip() for s in args.strategies.split(",") if s.strip()]:
        row = run_strategy(strategy, base, x, y, args.steps, args.lr, args.bucket_cap_mb)
        finals = row.pop("final_params")
        row["max_param_diff"] = max((a - b).abs().max().item() for a, b in zip(finals, ref_model.parameters()))
        row["max_loss_diff"] = max(abs(a - b) for a, b in zip(row["losses"], ref_losses))
        rows.append(row)
        if info.is_main:
            print(f"{strategy:>10}: step {row['step_s'] * 1e3:7.2f} ms, loss diff vs 1 process "
                  f"{row['max_loss_diff']:.1e}, optimizer state {row['optimizer_state_bytes'] / 2**20:.2f} MiB",
                  flush=True)
    write_rank_results({"rank": info.rank, "world_size": info.world_size, "reference_losses": ref_losses,
                        "n_params": sum(p.numel() for p in base.parameters()), "rows": rows})
    destroy_distributed()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
