"""``workbench launch``: run a command on several processes with torchrun, or write a Slurm script for it.

    workbench launch --nproc 2 -- train --preset glm4-tiny --parallel dp=2
    workbench launch --nproc 8 --nnodes 2 --node-rank 0 --rdzv-endpoint node0:29500 -- train ...
    workbench launch --nproc 2 --max-restarts 1 -- train ... --resume
    workbench launch --slurm job.sbatch --nnodes 4 --nproc 8 -- train ...

The backend comes from the device layer inside each worker (gloo on cpu, nccl on cuda, hccl on npu). On several
nodes the c10d rendezvous numbers the ranks in the order the nodes join: ``--node-rank`` does not decide which node
holds global rank 0.
"""

from __future__ import annotations

import argparse
import sys

from workbench.distributed.launcher import (LaunchConfig, SlurmConfig, check_timeout, launch, print_worker_lines,
                                            write_slurm_script)
from workbench.errors import ConfigError

DEFAULT_RUN_DIR = "runs/launch"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nproc", type=int, default=2, help="processes per node (default 2)")
    parser.add_argument("--nnodes", type=int, default=1, help="number of nodes (default 1)")
    parser.add_argument("--node-rank", type=int, default=None,
                        help="this node's rank (0..nnodes-1; default 0). torchrun's c10d rendezvous hands out "
                             "global ranks in join order, not by node rank: whichever node joins first may hold "
                             "global rank 0 (the rank that prints results and owns the run folder and checkpoints)")
    parser.add_argument("--rdzv-endpoint", default=None, help="HOST:PORT of the rendezvous (node 0); "
                        "default on one node: a free local port")
    parser.add_argument("--max-restarts", type=int, default=0,
                        help="restart the whole group up to K times when a rank fails (resume from checkpoint)")
    parser.add_argument("--run-dir", default=None,
                        help=f"where logs and per-rank results go (default {DEFAULT_RUN_DIR})")
    parser.add_argument("--timeout", type=float, default=None, help="kill the run after this many seconds")
    parser.add_argument("--slurm", metavar="SCRIPT", default=None,
                        help="write an sbatch script to SCRIPT instead of running (uses --nnodes, --nproc)")
    parser.add_argument("--device-type", default=None, choices=("cuda", "npu", "cpu"),
                        help="accelerator the Slurm script asks for (with --slurm; default cuda)")
    parser.add_argument("--time", default=None, help="Slurm time limit (with --slurm; default 04:00:00)")
    parser.add_argument("--partition", default=None, help="Slurm partition (with --slurm)")
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="after `--`: a workbench command (train ...), a script.py, or -m module")


def run(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if args.slurm is not None:
        return _write_slurm(args, command)
    # the other way round: Slurm's options would silently do nothing in a local run
    slurm_only = [flag for flag, value in (("--device-type", args.device_type), ("--time", args.time),
                                           ("--partition", args.partition)) if value is not None]
    if slurm_only:
        raise ConfigError(f"{', '.join(slurm_only)} only apply with --slurm SCRIPT (they go into the sbatch script); "
                          f"drop {'it' if len(slurm_only) == 1 else 'them'}, or add --slurm")
    timeout = check_timeout(args.timeout, "--timeout")
    config = LaunchConfig(nproc=args.nproc, nnodes=args.nnodes, node_rank=args.node_rank or 0,
                          rdzv_endpoint=args.rdzv_endpoint, max_restarts=args.max_restarts)
    # The workers' output streams to stdout; torchrun's own lines (its tracebacks, its failure report) stay in
    # <run-dir>/launch.log, and a failure is summed up in one line on stderr with the ranks' own errors.
    result = launch(command, config, run_dir=args.run_dir or DEFAULT_RUN_DIR, on_line=print_worker_lines,
                    timeout_s=timeout)
    if not result.ok:
        print(f"workbench launch: {result.failure_summary()}", file=sys.stderr)
        return result.cli_returncode
    wrote = sum(r is not None for r in result.results)
    # a command that writes no rank results (profile, a plain script) succeeded all the same: "0/2 rank results"
    # read as a failure
    where = (f"{wrote}/{len(result.results)} rank results in {result.run_dir / 'results'}" if wrote else
             f"log in {result.run_dir / 'launch.log'}")
    print(f"workbench launch: exit 0 after {result.wall_s:.1f}s; {where}")
    return 0


def _write_slurm(args: argparse.Namespace, command: list[str]) -> int:
    if not args.slurm.strip():
        raise ConfigError("--slurm needs the path of the script to write, e.g. --slurm job.sbatch")
    # the script runs torchrun itself on every node of the allocation: these options would silently do nothing
    ignored = [flag for flag, value in (("--node-rank", args.node_rank), ("--rdzv-endpoint", args.rdzv_endpoint),
                                        ("--run-dir", args.run_dir), ("--timeout", args.timeout))
               if value is not None]
    if ignored:
        raise ConfigError(f"--slurm only writes a script, which ignores {', '.join(ignored)} (Slurm sets the node "
                          "ranks and the rendezvous; logs go to slurm-<job>.out): drop "
                          f"{'it' if len(ignored) == 1 else 'them'}, or run without --slurm")
    config = SlurmConfig(nodes=args.nnodes, nproc_per_node=args.nproc, time=args.time or "04:00:00",
                         partition=args.partition, device_type=args.device_type or "cuda",
                         max_restarts=args.max_restarts)
    path = write_slurm_script(args.slurm, config, command)
    print(f"wrote {path}: submit it with `sbatch {path}`")
    return 0
