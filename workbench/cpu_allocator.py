"""The CPU memory allocator: find jemalloc, say which allocator this process runs with, and how to preload one.

Why it matters: a CPU training step frees and re-allocates hundreds of MB of activations and gradients. glibc's
malloc serves every block above 32 MB (and, by its dynamic threshold, many smaller ones) with a fresh ``mmap`` and
returns it with ``munmap`` on free, so every step page-faults and zero-fills that memory again (measured here:
~130-200 thousand page faults, 0.5-0.8 GB, per glm4-small step). jemalloc configured to keep freed pages
(``dirty_decay_ms:-1``) reuses them: glm4-small steps measured 5.4 s instead of 6.1-7.0 s on the 2-core CPU
(benchmarks/README.md). PyTorch's own CPU launcher (``torch.backends.xeon.run_cpu``) preloads jemalloc or
tcmalloc for the same reason. An allocator can only be chosen when a process starts (``LD_PRELOAD``), so this
module does not switch it; it finds the library and prints the environment that does:

    python -m workbench.cpu_allocator --fetch    # setup: jemalloc from Debian's archive into .venv/jemalloc
    python -m workbench.cpu_allocator --env      # "env LD_PRELOAD=... MALLOC_CONF=..." (empty without jemalloc)
    $(python -m workbench.cpu_allocator --env) workbench train ...   # a command run with it

``make demo``, ``make bench`` and ``make lab`` run with that prefix; ``make test`` does not. ``workbench info``
reports the allocator in use. Nothing here is required: without jemalloc everything runs on the system malloc.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ENV_OVERRIDE = "WORKBENCH_JEMALLOC"   # a path to libjemalloc.so.2, or "off" to never preload one
# keep freed pages for reuse (never decay them back to the OS): the point of switching allocators here
MALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"
VENDOR_DIR = Path(sys.prefix) / "jemalloc"  # where --fetch unpacks Debian's libjemalloc2 (inside the venv)
SYSTEM_GLOBS = ("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
                "/usr/lib64/libjemalloc.so.2", "/usr/lib/libjemalloc.so.2", "/usr/local/lib/libjemalloc.so.2")


def find_jemalloc() -> Path | None:
    """libjemalloc.so.2: $WORKBENCH_JEMALLOC, else the copy fetched into the venv (or conda's, in the env's lib/),
    else a system install."""
    override = os.environ.get(ENV_OVERRIDE, "").strip()
    if override.lower() == "off":
        return None
    if override:
        return Path(override) if Path(override).is_file() else None
    candidates = sorted(glob.glob(str(VENDOR_DIR / "usr" / "lib" / "*" / "libjemalloc.so.2")))
    candidates += sorted(glob.glob(str(VENDOR_DIR / "usr" / "lib" / "libjemalloc.so.2")))
    candidates += sorted(glob.glob(str(Path(sys.prefix) / "lib" / "libjemalloc.so.2")))  # conda's jemalloc
    candidates += [p for p in SYSTEM_GLOBS if os.path.isfile(p)]
    return Path(candidates[0]) if candidates else None


def allocator_in_maps(maps_text: str) -> str:
    """Which malloc a process runs, from the text of its /proc/<pid>/maps."""
    if "libjemalloc" in maps_text:
        return "jemalloc"
    if "libtcmalloc" in maps_text:
        return "tcmalloc"
    if "libmimalloc" in maps_text:
        return "mimalloc"
    return "system malloc"


def loaded_allocator() -> str:
    """The allocator of this process ("jemalloc", "tcmalloc", "mimalloc", "system malloc", or "unknown")."""
    try:
        return allocator_in_maps(Path("/proc/self/maps").read_text())
    except OSError:  # not Linux
        return "unknown"


def preloadable(library: Path) -> bool:
    """ld.so splits LD_PRELOAD on spaces and colons, so a library in a folder whose path holds one (a checkout in
    "My Projects/") cannot be preloaded: such processes run on the system malloc."""
    return not re.search(r"[\s:]", str(library))


def preload_env(library: Path | None = None) -> dict[str, str]:
    """Environment variables that make a *new* process use jemalloc ({} when there is none)."""
    library = library or find_jemalloc()
    if library is None or not preloadable(library):
        return {}
    preload = ":".join(p for p in (str(library), os.environ.get("LD_PRELOAD", "")) if p)  # ld.so splits on ':' 
    return {"LD_PRELOAD": preload, "MALLOC_CONF": MALLOC_CONF}


def describe() -> dict:
    """For ``workbench info``: the allocator in use, and the library that could be preloaded."""
    library, in_use = find_jemalloc(), loaded_allocator()
    return {"in_use": in_use, "jemalloc_found": str(library) if library else None,
            "hint": None if in_use != "system malloc" or library is None else
            "prefix a command with $(python -m workbench.cpu_allocator --env), as make demo/bench/lab do"}


def fetch(dest: Path = VENDOR_DIR) -> Path | None:
    """Unpack Debian's libjemalloc2 into ``dest`` with ``apt-get download`` + ``dpkg -x`` (no root, no system
    change). Returns the library, or None (with the reason printed) where apt or the archive is not reachable."""
    existing = find_jemalloc()
    if existing is not None:
        return existing
    if not (shutil.which("apt-get") and shutil.which("dpkg")):
        print("cpu_allocator: no apt-get/dpkg here; CPU runs use the system malloc", file=sys.stderr)
        return None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            subprocess.run(["apt-get", "download", "libjemalloc2"], cwd=tmp, check=True, capture_output=True,
                           timeout=120)
            debs = glob.glob(os.path.join(tmp, "libjemalloc2_*.deb"))
            subprocess.run(["dpkg", "-x", debs[0], str(dest)], check=True, capture_output=True, timeout=60)
        except (subprocess.SubprocessError, IndexError, OSError) as exc:
            print(f"cpu_allocator: could not fetch libjemalloc2 ({type(exc).__name__}); CPU runs use the system "
                  "malloc", file=sys.stderr)
            return None
    return find_jemalloc()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m workbench.cpu_allocator", description=__doc__.split("\n\n")[0])
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--fetch", action="store_true", help="unpack jemalloc into the venv (setup)")
    group.add_argument("--env", action="store_true", help="print an `env ...` prefix that preloads jemalloc")
    group.add_argument("--show", action="store_true", help="print what this process runs with")
    args = p.parse_args(argv)
    if args.fetch:
        library = fetch()
        print(f"jemalloc: {library}" if library else "jemalloc: not available (system malloc)")
    elif args.env:
        env = preload_env()
        if env:  # quoted for the shell (make pastes this line in front of commands)
            print("env " + " ".join(shlex.quote(f"{k}={v}") for k, v in env.items()))
        elif find_jemalloc() is not None:
            print(f"cpu_allocator: jemalloc is in {find_jemalloc().parent}, a path with a space or ':' that "
                  "LD_PRELOAD cannot hold; CPU runs use the system malloc", file=sys.stderr)
    else:
        print(describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
