"""Where the workbench keeps its caches: packed token files (``workbench.data.packing``) and device probe results
(``workbench.device.probes``). Both are only caches: losing them costs a re-pack or a re-probe, never a run.

Order: ``$WORKBENCH_CACHE_DIR`` (``~`` expanded), else ``$XDG_CACHE_HOME/workbench``, else ``~/.cache/workbench``.
When the home folder cannot be used (no home at all, as for a container's arbitrary user id, or one that cannot be
written), a per-user folder in the temp directory, said once on stderr. An explicit ``WORKBENCH_CACHE_DIR`` is
taken as given: a folder there that cannot be written is reported by whoever writes, naming it.
Used by every command and notebook that trains or probes.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ENV_VAR = "WORKBENCH_CACHE_DIR"
_warned: set[str] = set()


def cache_dir() -> Path:
    """The folder for the workbench's caches (not created unless the default had to be checked)."""
    explicit = os.environ.get(ENV_VAR, "").strip()
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    try:  # the XDG spec ignores a relative XDG_CACHE_HOME
        default = (Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache") / "workbench"
    except RuntimeError:  # Path.home(): no HOME and no passwd entry for this user id
        default = None
    if default is not None and _usable(default):
        return default
    fallback = _private_temp_folder()
    if str(fallback) not in _warned:
        _warned.add(str(fallback))
        where = f"{default} cannot be written" if default is not None else "this user has no home folder"
        print(f"workbench: {where}; caching in {fallback} instead (set {ENV_VAR} to choose)", file=sys.stderr)
    return fallback


def _private_temp_folder() -> Path:
    """<tmp>/workbench-cache-<uid>, made private (0700); if someone else made that name first (a shared machine:
    they could plant packed tokens or probe results), a fresh private folder instead."""
    uid = os.getuid() if hasattr(os, "getuid") else None
    folder = Path(tempfile.gettempdir()) / f"workbench-cache-{uid if uid is not None else 'user'}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        info = folder.lstat()
        if uid is None or (info.st_uid == uid and not info.st_mode & 0o022 and folder.is_dir()
                           and not folder.is_symlink()):
            return folder
    except OSError:
        pass
    return Path(tempfile.mkdtemp(prefix="workbench-cache-"))


def _usable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)


__all__ = ["ENV_VAR", "cache_dir"]
