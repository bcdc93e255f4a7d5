"""``workbench comm-bench``: time the collectives training depends on, in the nccl-tests convention.

For each operation (all_reduce, all_gather, reduce_scatter, all_to_all, broadcast) and message size (default
1 KB to 256 MB, x4 steps) it reports the time per call (slowest rank, mean over iterations), the algorithm
bandwidth ``algbw = bytes / time`` and the bus bandwidth ``busbw = algbw * factor`` with factor 2(n-1)/n for
all-reduce, (n-1)/n for all-gather, reduce-scatter and all-to-all, and 1 for broadcast, so that busbw can be
compared with the link speed whatever the rank count. ``bytes`` is the whole buffer, as in nccl-tests (the
gathered output of all-gather, the input of reduce-scatter). Results go to JSON and a plotly chart.

Runs on gloo (cpu) here and on nccl / hccl where they exist: the backend comes from the device layer.

    workbench comm-bench --nproc 2 --max-size 64M          # launches itself with torchrun
    torchrun --nproc-per-node 8 -m workbench comm-bench     # or inside an existing launch

Notebook: notebooks/03_distributed.ipynb shows the chart.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.distributed as dist

from workbench.errors import ConfigError
from workbench.params import output_folder

OPS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "broadcast")
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "m": 1 << 20, "mb": 1 << 20, "g": 1 << 30, "gb": 1 << 30}


def parse_size(text: str | int) -> int:
    """'1K' / '256MB' / '4096' -> bytes (binary units, as nccl-tests)."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not match or match.group(2).lower() not in _UNITS:
        raise ConfigError(f"size {text!r} is not a size; write e.g. 1K, 64M, 256MB, 1G")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def size_sweep(min_size: int | str = "1K", max_size: int | str = "256M", factor: int = 4) -> list[int]:
    lo, hi = parse_size(min_size), parse_size(max_size)
    if lo < 4 or hi < lo:
        raise ConfigError(f"sizes: need 4 B <= min ({lo}) <= max ({hi})")
    if factor < 2:
        raise ConfigError(f"size factor {factor} must be >= 2")
    sizes, size = [], lo
    while size <= hi:
        sizes.append(size)
        size *= factor
    return sizes


def bus_factor(op: str, n: int) -> float:
    """busbw / algbw for ``op`` on ``n`` ranks (nccl-tests PERFORMANCE.md)."""
    if op == "all_reduce":
        return 2 * (n - 1) / n
    if op in ("all_gather", "reduce_scatter", "all_to_all"):
        return (n - 1) / n
    if op == "broadcast":
        return 1.0
    raise ConfigError(f"unknown collective {op!r}; choose from {', '.join(OPS)}")


# torch 2.13 renamed the tensor-in/tensor-out collectives (*_single); older torch has only the *_tensor names.
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def message_bytes(nbytes: int, world: int) -> int:
    """The bytes actually sent for a requested size: fp32 elements, a multiple of the world size, at least one
    element per rank (so anything below 4 B x world becomes 4 B x world)."""
    return 4 * max(world, nbytes // 4 // world * world)


def _make_call(op: str, nbytes: int, world: int, device: torch.device):
    """Buffers for one message of ``nbytes`` (fp32, rounded to a multiple of the world size) and the call."""
    numel = message_bytes(nbytes, world) // 4
    x = torch.ones(numel, dtype=torch.float32, device=device)
    if op == "all_reduce":
        return lambda: dist.all_reduce(x), numel * 4
    if op == "broadcast":
        return lambda: dist.broadcast(x, src=0), numel * 4
    if op == "all_gather":  # size = the gathered output, nccl-tests style
        shard = torch.ones(numel // world, dtype=torch.float32, device=device)
        return lambda: _all_gather(x, shard), numel * 4
    if op == "reduce_scatter":  # size = the full input
        out = torch.empty(numel // world, dtype=torch.float32, device=device)
        return lambda: _reduce_scatter(out, x), numel * 4
    if op == "all_to_all":
        out = torch.empty_like(x)
        return lambda: dist.all_to_all_single(out, x), numel * 4
    raise ConfigError(f"unknown collective {op!r}; choose from {', '.join(OPS)}")




def bench_collectives(ops: Sequence[str] = OPS, sizes: Sequence[int] | None = None, iters: int = 5,
                      warmup: int = 2, device: Any = "auto") -> list[dict[str, Any]]:
    """Time every (op, size) on the current process group; every rank returns the same rows. The buffers live on
    the device ``init_distributed`` bound this rank to (``process_device``), not on a re-read --device."""
    from workbench.distributed.mesh import process_device

    if not dist.is_initialized():
        raise RuntimeError("bench_collectives needs an initialised process group (run under torchrun / launch)")
    dev = process_device(device)
    torch_device = dev.torch_device if dist.get_backend() != "gloo" else torch.device("cpu")
    world, backend = dist.get_world_size(), dist.get_backend()
    rows = []
    for op in dict.fromkeys(ops):  # an op named twice runs once
        bus_factor(op, world)  # validates the name
        done: set[int] = set()
        for size in sizes or size_sweep():
            if message_bytes(size, world) in done:  # sizes below 4 B x world round up to the same message
                continue
            call, nbytes = _make_call(op, size, world, torch_device)
            done.add(nbytes)
            for _ in range(warmup):
                call()
            dist.barrier()
            with dev.timer() as t:
                for _ in range(iters):
                    call()
            # The slowest rank sets the pace of a collective: report the max over ranks.
            elapsed = torch.tensor([t.elapsed_s / iters], dtype=torch.float64, device=torch_device)
            dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
            time_s = float(elapsed.item())
            algbw = nbytes / time_s / 1e9
            rows.append({"op": op, "size_bytes": nbytes, "time_us": time_s * 1e6, "algbw_GBps": algbw,
                         "busbw_GBps": algbw * bus_factor(op, world), "world_size": world, "backend": backend})
    return rows


def comm_bench_figure(rows: Sequence[dict[str, Any]], metric: str = "busbw_GBps"):
    """busbw (or any column) against message size, one line per collective, log-x."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for op in dict.fromkeys(r["op"] for r in rows):
        mine = [r for r in rows if r["op"] == op]
        fig.add_trace(go.Scatter(x=[r["size_bytes"] for r in mine], y=[r[metric] for r in mine],
                                 mode="lines+markers", name=op))
    world = rows[0]["world_size"] if rows else "?"
    backend = rows[0]["backend"] if rows else "?"
    fig.update_layout(title=f"Collective {metric.split('_')[0]} ({backend}, {world} ranks)",
                      xaxis_title="message size (bytes)", yaxis_title=metric.replace("_GBps", " (GB/s)"),
                      xaxis_type="log", template="plotly_white")
    return fig


def write_outputs(rows: Sequence[dict[str, Any]], out_dir: str | Path) -> dict[str, str]:
    from workbench.results import write_json_atomic
    from workbench.viz import save_figure

    out_dir = Path(out_dir)
    json_path = write_json_atomic(out_dir / "comm_bench.json", {"rows": list(rows)})
    written = save_figure(comm_bench_figure(rows), out_dir / "comm_bench")
    return {"json": str(json_path), **written}


# ---- the command ----------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nproc", type=int, default=2, help="processes to launch when not already under torchrun")
    parser.add_argument("--ops", default=",".join(OPS), help=f"comma-separated subset of {','.join(OPS)}")
    parser.add_argument("--min-size", default="1K", help="smallest message (default 1K)")
    parser.add_argument("--max-size", default="256M", help="largest message (default 256M)")
    parser.add_argument("--factor", type=int, default=4, help="size step multiplier (default 4)")
    parser.add_argument("--iters", type=int, default=5, help="timed calls per size (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per size (default 2)")
    parser.add_argument("--device", default="auto",
                        help="auto, cpu, cuda, npu (no index: each rank takes the device of its LOCAL_RANK)")
    parser.add_argument("--out", type=output_folder, default="figures/comm_bench",
                        help="folder for comm_bench.json and the chart")
    parser.add_argument("--timeout", type=float, default=None, help="kill the launched run after this many s")


def _parse_ops(text: str) -> list[str]:
    ops = [o.strip().replace("-", "_") for o in text.split(",") if o.strip()]
    bad = [o for o in ops if o not in OPS]
    if bad or not ops:
        raise ConfigError(f"--ops: {bad or text!r} not known; choose from {', '.join(OPS)}")
    return list(dict.fromkeys(ops))  # each op once, in the order given


def _check_out(out: str | Path) -> None:
    """Refuse an --out that cannot hold the results, before any worker starts."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a file; give a folder for comm_bench.json and the chart")
    for name in ("comm_bench.json", "comm_bench.html"):
        if (out / name).is_dir():
            raise ConfigError(f"--out {str(out)!r}: {out / name} is a folder; remove it or choose another --out")
    launch_dir = out / "launch"
    if launch_dir.exists() and not launch_dir.is_dir():
        raise ConfigError(f"--out {str(out)!r}: {launch_dir} (the launch's log folder) is a file")


def _note_rounded_sizes(sizes: Sequence[int], world: int) -> None:
    actual = [message_bytes(s, world) for s in sizes]
    if len(set(actual)) < len(actual) or any(a != s for a, s in zip(actual, sizes)):
        print(f"note: sizes are whole fp32 elements, a multiple of {world} ranks, at least {4 * world} B: "
              f"measuring {', '.join(map(str, dict.fromkeys(actual)))} B")


# Per rank the largest message needs its input and output buffers, and gloo stages about one more copy.
BUFFERS_PER_RANK = 3


def _available_host_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _check_host_memory(max_size: int, nproc: int) -> None:
    """On cpu every rank lives on this machine: a --max-size that cannot fit got a rank killed by the OOM killer
    after the smaller sizes had run. Refuse it up front, naming what would fit."""
    available = _available_host_bytes()
    need = BUFFERS_PER_RANK * max_size * nproc
    if available is not None and need > 0.8 * available:
        fits = int(0.8 * available / (BUFFERS_PER_RANK * nproc))
        raise ConfigError(f"--max-size {max_size / 2**20:,.0f} MiB: {nproc} ranks x {BUFFERS_PER_RANK} buffers need "
                          f"~{need / 2**30:,.1f} GiB, but this machine has {available / 2**30:,.1f} GiB available; "
                          f"use --max-size {fits // 2**20}M or less")


def run(args: argparse.Namespace) -> int:
    from workbench.distributed.launcher import check_timeout
    from workbench.distributed.mesh import is_launched

    ops = _parse_ops(args.ops)
    sizes = size_sweep(args.min_size, args.max_size, args.factor)
    if args.iters < 1 or args.warmup < 0:
        raise ConfigError("--iters must be >= 1 and --warmup >= 0")
    if not is_launched():
        # everything a worker would trip over, checked here in one line rather than once per rank after start-up
        if args.nproc < 1:
            raise ConfigError(f"--nproc {args.nproc}: need at least 1 process")
        check_timeout(args.timeout, "--timeout")
        from workbench.device import get_device

        device = get_device(args.device)  # DeviceUnavailableError / ValueError: one line, exit 2
        _check_out(args.out)
        if device.type == "cpu":
            _check_host_memory(max(sizes), args.nproc)
        return _launch_self(args, ops)
    from workbench.distributed.launcher import write_rank_results
    from workbench.distributed.mesh import destroy_distributed, init_distributed
    from workbench.viz import text_table

    info = init_distributed(args.device)
    try:
        rows = bench_collectives(ops, sizes, iters=args.iters, warmup=args.warmup, device=info.device)
    finally:
        destroy_distributed()
    if info.is_main:
        _note_rounded_sizes(sizes, info.world_size)
        written = write_outputs(rows, args.out)
        print(text_table(rows, ["op", "size_bytes", "time_us", "algbw_GBps", "busbw_GBps"]))
        print(f"wrote {', '.join(written.values())}")
    write_rank_results({"rank": info.rank, "rows": rows})
    return 0


def _launch_self(args: argparse.Namespace, ops: Sequence[str]) -> int:
    import sys

    from workbench.distributed.launcher import LaunchConfig, launch, print_worker_lines

    command = ["comm-bench", "--ops", ",".join(ops), "--min-size", str(args.min_size), "--max-size",
               str(args.max_size), "--factor", str(args.factor), "--iters", str(args.iters), "--warmup",
               str(args.warmup), "--device", args.device, "--out", str(Path(args.out).resolve())]
    result = launch(command, LaunchConfig(nproc=args.nproc), run_dir=Path(args.out) / "launch",
                    on_line=print_worker_lines, timeout_s=args.timeout)
    if not result.ok:
        print(f"workbench comm-bench: {result.failure_summary()}", file=sys.stderr)
        return result.cli_returncode
    return 0
