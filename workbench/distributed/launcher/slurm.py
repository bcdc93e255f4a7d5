"""Write an ``sbatch`` script that runs torchrun on every node of a Slurm allocation.

One Slurm task per node; each task starts torchrun with ``--nproc-per-node`` workers; the first node of the
allocation hosts the c10d rendezvous. Used by ``workbench launch --slurm``.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from workbench.errors import ConfigError


# sbatch --time's accepted forms (man sbatch): minutes, minutes:seconds, hours:minutes:seconds, days-hours,
# days-hours:minutes, days-hours:minutes:seconds; and the words UNLIMITED / INFINITE
_SLURM_TIME = re.compile(r"\d+(:\d{1,2}){0,2}|\d+-\d{1,2}(:\d{1,2}){0,2}|UNLIMITED|INFINITE", re.IGNORECASE)


@dataclass
class SlurmConfig:
    nodes: int = 2
    nproc_per_node: int = 8
    job_name: str = "workbench"
    time: str = "04:00:00"
    partition: str | None = None
    account: str | None = None
    device_type: str = "cuda"  # cuda -> --gpus-per-node; npu -> generic resource "npu"; cpu -> none
    cpus_per_task: int | None = None
    max_restarts: int = 0
    rdzv_port: int = 29500
    output: str = "slurm-%x-%j.out"

    def __post_init__(self):
        if self.nodes < 1 or self.nproc_per_node < 1:
            raise ConfigError(f"slurm: nodes={self.nodes} and nproc_per_node={self.nproc_per_node} must be >= 1")
        if self.device_type not in ("cuda", "npu", "cpu"):
            raise ConfigError(f"slurm: device_type={self.device_type!r}; choose cuda, npu or cpu")
        if self.max_restarts < 0:
            raise ConfigError(f"slurm: max_restarts={self.max_restarts} must be >= 0")
        # Each value lands on an "#SBATCH --name=value" line: a newline would start a shell line of its own, and
        # sbatch reads a directive only up to the first blank.
        for name in ("job_name", "time", "partition", "account", "output"):
            value = getattr(self, name)
            if value is None:
                continue
            if not value or any(ch.isspace() or not ch.isprintable() for ch in value):
                raise ConfigError(f"slurm: {name}={value!r} must be non-empty, without spaces, newlines or "
                                  "control characters")
        if self.time is not None and not _SLURM_TIME.fullmatch(self.time):
            # written as is into "#SBATCH --time=": a typo surfaced only when sbatch refused it on the cluster
            raise ConfigError(f"slurm: time={self.time!r} is not a Slurm time limit; use minutes, MM:SS, HH:MM:SS, "
                              f"D-HH, D-HH:MM, D-HH:MM:SS or UNLIMITED (e.g. 04:00:00)")


def slurm_script(config: SlurmConfig, command: Sequence[str]) -> str:
    """The text of the sbatch script for ``command`` (a workbench command, a .py script, or ``-m module``)."""
    from workbench.distributed.launcher.launch import worker_argv

    work = worker_argv(command) if not (command and str(command[0]).endswith(".py")) else list(command)
    if work[0] == "-m":
        work = ["--module", *work[1:]]
    lines = ["#!/bin/bash", f"#SBATCH --job-name={config.job_name}", f"#SBATCH --nodes={config.nodes}",
             "#SBATCH --ntasks-per-node=1", f"#SBATCH --time={config.time}", f"#SBATCH --output={config.output}"]
    if config.partition:
        lines.append(f"#SBATCH --partition={config.partition}")
    if config.account:
        lines.append(f"#SBATCH --account={config.account}")
    if config.device_type == "cuda":
        lines.append(f"#SBATCH --gpus-per-node={config.nproc_per_node}")
    elif config.device_type == "npu":
        lines.append(f"#SBATCH --gres=npu:{config.nproc_per_node}")
    if config.cpus_per_task:
        lines.append(f"#SBATCH --cpus-per-task={config.cpus_per_task}")
    torchrun = ["python", "-m", "torch.distributed.run", "--nnodes", "$SLURM_NNODES",
                "--nproc-per-node", str(config.nproc_per_node), "--rdzv-id", "$SLURM_JOB_ID",
                "--rdzv-backend", "c10d", "--rdzv-endpoint", f"$HEAD_NODE:{config.rdzv_port}",
                "--max-restarts", str(config.max_restarts)]
    quoted = " ".join(part if part.startswith("$") else shlex.quote(part) for part in torchrun)
    quoted += " " + " ".join(shlex.quote(str(part)) for part in work)
    lines += [
        "set -euo pipefail",
        "",
        "# The first node of the allocation hosts torchrun's c10d rendezvous; every node runs one torchrun.",
        'HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        "export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}",
        'echo "job $SLURM_JOB_ID: $SLURM_NNODES nodes, rendezvous at $HEAD_NODE:' + str(config.rdzv_port) + '"',
        "",
        f"srun --kill-on-bad-exit=1 {quoted}",
        "",
    ]
    return "\n".join(lines)


def write_slurm_script(path: str | Path, config: SlurmConfig, command: Sequence[str]) -> Path:
    path = Path(path)
    text = slurm_script(config, command)  # a bad command fails before anything is written
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(0o755)
    return path
