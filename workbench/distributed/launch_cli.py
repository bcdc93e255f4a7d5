"""``workbench launch``: run a command on several processes with torchrun, or write a Slurm script for it.

    workbench launch --nproc 2 -- train --preset glm4-tiny --parallel dp=2
    workbench launch --nproc 8 --nnodes 2 --node-rank 0 --rdzv-endpoint node0:29500 -- train ...
    workbench launch --nproc 2 --max-restarts 1 -- train ... --resume auto
    workbench launch --slurm job.sbatch --nnodes 4 --nproc 8 -- train ...

The backend comes from the device layer inside each worker (gloo on cpu, nccl on cuda, hccl on npu).
"""

from __future__ import annotations

import argparse

from workbench.distributed.launcher import LaunchConfig, SlurmConfig, launch, write_slurm_script


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nproc", type=int, default=2, help="processes per node (default 2)")
    parser.add_argument("--nnodes", type=int, default=1, help="number of nodes (default 1)")
    parser.add_argument("--node-rank", type=int, default=0, help="this node's rank (0..nnodes-1)")
    parser.add_argument("--rdzv-endpoint", default=None, help="HOST:PORT of the rendezvous (node 0); "
                        "default on one node: a free local port")
    parser.add_argument("--max-restarts", type=int, default=0,
                        help="restart the whole group up to K times when a rank fails (resume from checkpoint)")
    parser.add_argument("--run-dir", default="runs/launch", help="where logs and per-rank results go")
    parser.add_argument("--timeout", type=float, default=None, help="kill the run after this many seconds")
    parser.add_argument("--slurm", metavar="SCRIPT", default=None,
                        help="write an sbatch script to SCRIPT instead of running (uses --nnodes, --nproc)")
    parser.add_argument("--device-type", default="cuda", choices=("cuda", "npu", "cpu"),
                        help="accelerator the Slurm script asks for (with --slurm)")
    parser.add_argument("--time", default="04:00:00", help="Slurm time limit (with --slurm)")
    parser.add_argument("--partition", default=None, help="Slurm partition (with --slurm)")
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="after `--`: a workbench command (train ...), a script.py, or -m module")


def run(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if args.slurm:
        config = SlurmConfig(nodes=args.nnodes, nproc_per_node=args.nproc, time=args.time,
                             partition=args.partition, device_type=args.device_type, max_restarts=args.max_restarts)
        path = write_slurm_script(args.slurm, config, command)
        print(f"wrote {path}: submit it with `sbatch {path}`")
        return 0
    config = LaunchConfig(nproc=args.nproc, nnodes=args.nnodes, node_rank=args.node_rank,
                          rdzv_endpoint=args.rdzv_endpoint, max_restarts=args.max_restarts)
    result = launch(command, config, run_dir=args.run_dir, timeout_s=args.timeout)
    wrote = sum(r is not None for r in result.results)
    print(f"workbench launch: exit {result.returncode} after {result.wall_s:.1f}s; "
          f"{wrote}/{len(result.results)} rank results in {result.run_dir / 'results'}")
    return result.returncode
