"""Shared test setup: small thread counts, a private probe cache, and a quiet progress bar."""

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

# Tests run on a 2-core CI machine: keep probes out of the user's cache and progress bars off.
os.environ.setdefault("WORKBENCH_NO_PROGRESS", "1")
# Notebooks executed by tests/test_notebooks.py inherit this: no widgets, static figures only.
os.environ.setdefault("WORKBENCH_HEADLESS", "1")


@pytest.fixture(autouse=True, scope="session")
def _private_probe_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("workbench-cache")
    previous = os.environ.get("WORKBENCH_CACHE_DIR")
    os.environ["WORKBENCH_CACHE_DIR"] = str(cache)
    yield cache
    if previous is None:
        os.environ.pop("WORKBENCH_CACHE_DIR", None)
    else:
        os.environ["WORKBENCH_CACHE_DIR"] = previous


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def lock_in_another_process():
    """``lock_in_another_process(folder)`` starts a process that holds ``folder``'s run lock (as a second training
    run or notebook kernel would) until the test ends."""
    import subprocess

    holders = []

    def hold(folder) -> None:
        holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from workbench.train.run_lock import "
                                   "lock_run_folder; lock_run_folder(sys.argv[1]); print('locked', flush=True); "
                                   "time.sleep(60)", str(folder)], stdout=subprocess.PIPE, text=True)
        holders.append(holder)
        assert holder.stdout.readline().strip() == "locked"

    yield hold
    for holder in holders:
        holder.kill()
        holder.wait()
