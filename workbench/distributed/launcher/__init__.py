"""Launching distributed runs through torchrun (``torch.distributed.run``), from the CLI or from a notebook.

- ``launch.py``: build torchrun's argv, run it, stream the logs, and collect each rank's results JSON;
- ``slurm.py``: write a ready ``sbatch`` script for multi-node runs.
Used by ``workbench launch`` and notebooks/03_distributed.ipynb.
"""

from workbench.distributed.launcher.launch import (
    LaunchConfig,
    LaunchResult,
    check_timeout,
    free_port,
    launch,
    print_worker_lines,
    rank_results_path,
    torchrun_argv,
    worker_argv,
    write_rank_results,
)
from workbench.distributed.launcher.slurm import SlurmConfig, slurm_script, write_slurm_script

__all__ = [
    "LaunchConfig", "LaunchResult", "SlurmConfig", "check_timeout", "free_port", "launch", "print_worker_lines",
    "rank_results_path", "slurm_script",
    "torchrun_argv", "worker_argv", "write_rank_results", "write_slurm_script",
]
