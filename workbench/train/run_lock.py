"""One training process per run folder: an advisory lock on ``run_dir/.lock`` while a Trainer may write there.

Two processes writing one run folder (a second ``--resume`` started while the first run still trains) prune each
other's checkpoints and interleave metrics.jsonl; the second one now stops at once with one line naming the first.
The lock is ``fcntl.flock``: the kernel drops it when the process dies (SIGKILL included), so a crashed run never
leaves a stale lock behind, and ``--resume`` after a crash just works. A process may create another Trainer on a run
folder it already holds (a notebook cell run again). No lock on Windows (no fcntl). Used by the trainer.
"""

from __future__ import annotations

import os
from pathlib import Path

from workbench.errors import WorkbenchError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCK_FILE = ".lock"
_held: dict[str, int] = {}  # resolved run folder -> file descriptor of its lock, in this process


def lock_run_folder(run_dir: str | Path) -> None:
    """Take the run folder's lock (creating the folder), or raise ``WorkbenchError`` if another process has it."""
    if fcntl is None:
        return
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    key = str(run_dir.resolve())
    if key in _held:
        return
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise WorkbenchError(f"another process (pid {holder}) is using the run folder {run_dir}; wait for it to "
                             f"finish (a notebook kernel holds it until it restarts or calls trainer.close()), or "
                             f"choose another --out / out_dir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[key] = fd


def clear_run_folder(run_dir: str | Path) -> None:
    """Empty ``run_dir`` for a fresh run while holding its lock (a notebook starting its run over): raises
    ``WorkbenchError`` if another process trains there, instead of deleting that run from under it. The lock file
    itself stays, so this process keeps the lock through the Trainer that follows."""
    import shutil

    run_dir = Path(run_dir)
    lock_run_folder(run_dir)
    for child in run_dir.iterdir():
        if child.name == LOCK_FILE:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def holds_run_folder(run_dir: str | Path) -> bool:
    """Whether this process holds ``run_dir``'s lock."""
    return str(Path(run_dir).resolve()) in _held


def unlock_run_folder(run_dir: str | Path) -> None:
    """Release the lock this process holds on ``run_dir`` (a no-op if it holds none)."""
    fd = _held.pop(str(Path(run_dir).resolve()), None)
    if fd is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
