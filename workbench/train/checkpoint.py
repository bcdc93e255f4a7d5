"""Checkpoints: atomic, verified, last-K, and everything a bitwise-identical resume needs.

Layout of ``run_dir/checkpoints/step_0000100/``:
    model.safetensors    model parameters and buffers (MoE expert biases included)
    optimizer.pt         optimizer state (torch.save)
    trainer_state.json   step, tokens seen, schedule, data position, config, and the RNG states
                         (python, numpy, torch cpu, device)
    manifest.json        sha256 and size of each file above; written last, so its presence means "complete"
A checkpoint is written into ``.tmp-step_.../``, every file fsynced, then renamed into place (a rename is atomic), so a
crash leaves either the old set of checkpoints or the new one, never half of one. ``latest_good_checkpoint`` walks
from the newest down, verifies each against its manifest, warns with a clear message about any that is corrupt or
partial, and returns the newest good one.

Seam for workbench/distributed: model/optimizer state-dict get/set are the four functions ``get_model_state``,
``set_model_state``, ``get_optimizer_state``, ``set_optimizer_state``; an FSDP/DTensor run swaps them for
``torch.distributed.checkpoint.state_dict`` helpers (``get_model_state_dict`` etc.) via ``set_state_dict_functions``.
Used by the trainer (``--resume``) and notebooks/01_training.ipynb.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import random
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from workbench.errors import WorkbenchError

MODEL_FILE, OPTIM_FILE, STATE_FILE, MANIFEST_FILE = ("model.safetensors", "optimizer.pt", "trainer_state.json",
                                                     "manifest.json")
STEP_DIR = re.compile(r"^step_(\d{7,})$")


class CorruptCheckpointError(WorkbenchError):
    """A checkpoint folder is incomplete or its files do not match their manifest."""


class CheckpointMismatchError(WorkbenchError):
    """A sound checkpoint that was written for another model (other tensor names or shapes)."""


# --------------------------------------------------------------------------------------------------------------
# state-dict get/set: the one place a sharded (FSDP / DTensor) run needs to change
# --------------------------------------------------------------------------------------------------------------
def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model itself, also when it comes wrapped by torch.compile (``trainer.model`` after ``--compile``) or by
    (Distributed)DataParallel, whose state-dict keys start with ``_orig_mod.`` / ``module.``."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        inner = inner if isinstance(inner, torch.nn.Module) else getattr(model, "module", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def _default_get_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    model = unwrap_model(model)
    state, seen = {}, {}
    for name, tensor in model.state_dict().items():
        t = tensor.detach().to("cpu")
        # safetensors refuses tensors sharing storage (tied embeddings): store a copy of the second one.
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape)) if t.numel() else None
        if key is not None and key in seen:
            t = t.clone()
        seen[key] = name
        state[name] = t.contiguous()
    return state


def _default_set_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    model = unwrap_model(model)
    # Check names and shapes before copying anything: load_state_dict copies tensor by tensor and stops at the first
    # size mismatch with a RuntimeError, leaving the model partly overwritten.
    own = model.state_dict()
    missing = [name for name in own if name not in state]
    unexpected = [name for name in state if name not in own]
    resized = [f"{name} {tuple(state[name].shape)} vs {tuple(t.shape)}" for name, t in own.items()
               if name in state and tuple(state[name].shape) != tuple(t.shape)]
    if missing or unexpected or resized:
        raise CheckpointMismatchError(
            f"checkpoint does not fit this model (missing {missing[:3]}, unexpected {unexpected[:3]}, "
            f"other shapes {resized[:3]}); was it written for another preset or model settings?")
    model.load_state_dict(state, strict=True)


def _default_get_optimizer_state(optimizer: Any) -> dict[str, Any]:
    return optimizer.state_dict()


def _default_set_optimizer_state(optimizer: Any, state: dict[str, Any]) -> None:
    optimizer.load_state_dict(state)


get_model_state: Callable = _default_get_model_state
set_model_state: Callable = _default_set_model_state
get_optimizer_state: Callable = _default_get_optimizer_state
set_optimizer_state: Callable = _default_set_optimizer_state


def set_state_dict_functions(get_model=None, set_model=None, get_optim=None, set_optim=None) -> None:
    """Swap the state-dict functions (workbench/distributed does this for FSDP/DTensor runs); None keeps one."""
    global get_model_state, set_model_state, get_optimizer_state, set_optimizer_state
    get_model_state = get_model or get_model_state
    set_model_state = set_model or set_model_state
    get_optimizer_state = get_optim or get_optimizer_state
    set_optimizer_state = set_optim or set_optimizer_state


# --------------------------------------------------------------------------------------------------------------
# RNG states (JSON-able)
# --------------------------------------------------------------------------------------------------------------
def _b64(t: torch.Tensor | None) -> str | None:
    return None if t is None else base64.b64encode(t.cpu().numpy().tobytes()).decode()


def _unb64(s: str | None) -> torch.Tensor | None:
    return None if s is None else torch.from_numpy(np.frombuffer(base64.b64decode(s), dtype=np.uint8).copy())


def capture_rng_state(device=None) -> dict[str, Any]:
    """Python, numpy, torch-cpu and (via the device layer) accelerator RNG states, as JSON-able values."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)  # {"bit_generator": "MT19937", "state": {"key": [...], "pos": n}}
    np_state = {**np_state, "state": {"key": np_state["state"]["key"].tolist(), "pos": int(np_state["state"]["pos"])}}
    return {
        "python": [version, list(internal), gauss],
        "numpy": np_state,
        "torch_cpu": _b64(torch.get_rng_state()),
        "device": _b64(device.get_rng_state()) if device is not None else None,
    }


def restore_rng_state(state: dict[str, Any], device=None) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state({**np_state, "state": {"key": np.asarray(np_state["state"]["key"], dtype=np.uint32),
                                               "pos": int(np_state["state"]["pos"])}})
    torch.set_rng_state(_unb64(state["torch_cpu"]))
    if device is not None and state.get("device") is not None:
        device.set_rng_state(_unb64(state["device"]))


# --------------------------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems do not support fsync on directories
    finally:
        os.close(fd)


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


def check_checkpoint_folder(root: str | Path) -> None:
    """Create ``root`` and prove a file can be written there, so that a run folder whose checkpoints cannot be saved
    (``checkpoints`` is a file, the disk is read-only) fails before training rather than at its first save."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise WorkbenchError(f"{root} is a file, but the run keeps its checkpoints in a folder of that name: move the "
                             f"file away or choose another --out")
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=root)  # a dot name: listing and pruning skip it
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise WorkbenchError(f"cannot write checkpoints to {root}: {error.strerror or error}") from None


def save_safetensors(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """safetensors' save_file, whose I/O failures (a full disk, a name too long) come as a SafetensorError that is
    no OSError: re-raised as the OSError they are, so callers report them like any other file-system refusal."""
    try:
        save_file(state, str(path), metadata=metadata)
    except SafetensorError as exc:
        code = re.search(r"os error (\d+)", str(exc))
        if code is None:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from exc


def _write_file(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path``; an OSError from the write itself (a full disk, a file-size limit, a quota) names the
    file, as the one from opening it does: Path.write_bytes' said only "[Errno 27] File too large"."""
    try:
        if isinstance(data, str):
            path.write_text(data, encoding="utf-8")
        else:
            path.write_bytes(data)
    except OSError as exc:
        if exc.filename is not None or exc.errno is None:
            raise
        raise OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(path)) from exc


def save_checkpoint(root: str | Path, step: int, model: torch.nn.Module, optimizer: Any,
                    trainer_state: dict[str, Any], keep_last: int = 2) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically, then delete all but the newest ``keep_last``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        save_safetensors(get_model_state(model), tmp / MODEL_FILE, metadata={"step": str(step)})
        buffer = io.BytesIO()
        torch.save(get_optimizer_state(optimizer), buffer)
        _write_file(tmp / OPTIM_FILE, buffer.getvalue())
        _write_file(tmp / STATE_FILE, json.dumps(trainer_state, indent=1, sort_keys=True))
        files = {}
        for name in (MODEL_FILE, OPTIM_FILE, STATE_FILE):
            _fsync_file(tmp / name)
            files[name] = {"sha256": _sha256(tmp / name), "bytes": (tmp / name).stat().st_size}
        _write_file(tmp / MANIFEST_FILE, json.dumps({"step": step, "files": files}, indent=1))
        _fsync_file(tmp / MANIFEST_FILE)
        _fsync_dir(tmp)
        old = None
        if final.exists():  # re-saving a step (a finished run resumed): move the old copy aside, never delete first
            old = root / f".old-{final.name}-{os.getpid()}"
            os.rename(final, old)
        os.rename(tmp, final)
        _fsync_dir(root)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prune_checkpoints(root, keep_last, newest_step=step)
    return final


def list_checkpoints(root: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every finished checkpoint folder under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = STEP_DIR.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def _looks_complete(path: Path) -> bool:
    """A cheap completeness check (a sound manifest, every file at its size); ``verify_checkpoint`` also hashes."""
    try:
        return _size_problem(path, _manifest_files(path)) is None
    except (CorruptCheckpointError, OSError):
        return False


def prune_checkpoints(root: str | Path, keep_last: int, newest_step: int | None = None) -> None:
    """Keep the newest ``keep_last`` complete checkpoints up to ``newest_step`` (the one just written), delete the
    older ones, and remove temp folders left by crashed writers.

    Checkpoints past ``newest_step`` are left alone: after a resume they are the corrupt ones the resume skipped
    (it takes the newest good one), and ordering by step alone once deleted the checkpoint just written and kept
    such a corrupt one. Incomplete checkpoints never count towards ``keep_last``."""
    root = Path(root)
    kept = 0
    for step, path in reversed(list_checkpoints(root)):
        if newest_step is not None and step > newest_step:
            continue
        if kept >= keep_last:
            shutil.rmtree(path, ignore_errors=True)
        elif _looks_complete(path):
            kept += 1
    for p in [*root.glob(".tmp-step_*"), *root.glob(".old-step_*")]:
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid():
            shutil.rmtree(p, ignore_errors=True)


# --------------------------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------------------------
def _manifest_files(path: Path) -> dict[str, dict[str, Any]]:
    """The manifest's {file name: {"sha256", "bytes"}}; raises CorruptCheckpointError if it is missing or damaged."""
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.exists():
        raise CorruptCheckpointError(f"checkpoint {path} is partial: no {MANIFEST_FILE}")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = manifest["files"]
        # every entry must say {"sha256": str, "bytes": int}, and the three files must be listed: a bit flipped in a
        # key ("cytes") or a manifest of the wrong shape is damage like any other, so resume falls back past it
        sound = (isinstance(files, dict) and {MODEL_FILE, OPTIM_FILE, STATE_FILE} <= set(files)
                 and all(isinstance(e, dict) and isinstance(e.get("sha256"), str) and isinstance(e.get("bytes"), int)
                         for e in files.values()))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise CorruptCheckpointError(f"checkpoint {path} has an unreadable manifest ({type(exc).__name__}: {exc})") \
            from None
    if not sound:
        raise CorruptCheckpointError(f"checkpoint {path} has a damaged manifest (it does not list "
                                     f"{MODEL_FILE}, {OPTIM_FILE} and {STATE_FILE} with their sha256 and size)")
    return files


def _size_problem(path: Path, files: dict[str, dict[str, Any]]) -> str | None:
    """What is wrong with the files' presence and sizes ("partial: ...", "corrupt: ..."), or None."""
    for name, expected in files.items():
        f = path / name
        if not f.exists():
            return f"partial: {name} is missing"
        if f.stat().st_size != expected["bytes"]:
            return f"corrupt: {name} has {f.stat().st_size} bytes, the manifest says {expected['bytes']}"
    return None


def verify_checkpoint(path: str | Path) -> dict[str, Any]:
    """Check ``path`` against its manifest; return its trainer_state. Raises CorruptCheckpointError saying why."""
    path = Path(path)
    files = _manifest_files(path)
    problem = _size_problem(path, files)
    if problem is not None:
        raise CorruptCheckpointError(f"checkpoint {path} is {problem}")
    for name, expected in files.items():
        if _sha256(path / name) != expected["sha256"]:
            raise CorruptCheckpointError(f"checkpoint {path} is corrupt: {name} does not match its sha256")
    try:
        return json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:  # matches a manifest written over a bad file: still damage
        raise CorruptCheckpointError(f"checkpoint {path} has an unreadable {STATE_FILE} ({exc})") from None


def finish_interrupted_saves(root: str | Path) -> list[Path]:
    """Rename into place every complete ``.tmp-step_N-PID`` folder whose ``step_N`` is missing; returns them.

    Re-saving a step that exists (replacing a corrupt one) moves the old folder aside before the new one is renamed
    in: a crash between the two renames left the complete new checkpoint under its temp name, ignored by resume and
    deleted by the next save. Only a temp folder that verifies against its manifest is promoted; the run folder's
    lock (workbench/train/run_lock.py) guarantees that its writer is gone."""
    root = Path(root)
    promoted = []
    for tmp in sorted(root.glob(".tmp-step_*")) if root.is_dir() else []:
        final = root / tmp.name[len(".tmp-"):].rsplit("-", 1)[0]
        if STEP_DIR.match(final.name) and not final.exists():
            try:
                verify_checkpoint(tmp)
                os.rename(tmp, final)
            except (CorruptCheckpointError, OSError):  # incomplete, or another rank of the run promoted it first
                continue
            promoted.append(final)
    return promoted


def latest_good_checkpoint(root: str | Path, warn: Callable[[str], None] | None = None,
                           read_only: bool = False) -> Path | None:
    """The newest checkpoint under ``root`` that verifies, or None. Each bad one is reported through ``warn``.

    ``read_only``: for a reader that does not hold the run folder's lock (``workbench export``, possibly while the
    run still trains): interrupted saves are left alone, since renaming a temp folder into place under a live
    writer would make its own rename fail."""
    warn = warn or (lambda message: warnings.warn(message, stacklevel=2))
    if not read_only:
        finish_interrupted_saves(root)
    for _ in range(RESCANS):
        candidates = list(reversed(list_checkpoints(root)))
        newest = candidates[0][0] if candidates else -1
        for i, (_, path) in enumerate(candidates):
            try:
                verify_checkpoint(path)
                return path
            except (CorruptCheckpointError, FileNotFoundError) as exc:
                if was_superseded(path, newest):  # pruned by the run while read: look again, it is no damage
                    break
                warn(f"{exc}; " + ("falling back to the previous checkpoint" if i + 1 < len(candidates)
                                   else "no earlier checkpoint is left"))
        else:
            return None
    # every look ended on a checkpoint the run replaced meanwhile: the run is healthy, only too quick for the reader
    # (export used to call it "empty or damaged")
    raise WorkbenchError(f"the run still trains and replaced its newest checkpoint under {root} {RESCANS} times while "
                         f"it was being verified; try again, or pick one with --step N")


# How often a reader looks again when the run, still training, replaced the checkpoint it was reading.
RESCANS = 5


def newest_step(root: str | Path) -> int:
    """The highest step among the checkpoint folders under ``root`` (-1 when there is none)."""
    found = list_checkpoints(root)
    return found[-1][0] if found else -1


def was_superseded(path: str | Path, newest_seen: int) -> bool:
    """Whether ``path`` failed to read because a run still training replaced it, not because it is damaged: it is
    gone, or a checkpoint newer than ``newest_seen`` (the newest before the read began) has appeared. Pruning
    (``--keep-last``) deletes old checkpoints only after writing a newer one, so a damaged checkpoint in a run that
    writes nothing never counts as superseded."""
    path = Path(path)
    return not path.is_dir() or newest_step(path.parent) > newest_seen


def load_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: Any | None = None,
                    device=None) -> dict[str, Any]:
    """Verify ``path``, load model (and optimizer) state into the given objects, return the trainer state."""
    path = Path(path)
    state = verify_checkpoint(path)
    set_model_state(model, load_file(str(path / MODEL_FILE)))
    if optimizer is not None:
        map_location = device.torch_device if device is not None else "cpu"
        set_optimizer_state(optimizer, torch.load(path / OPTIM_FILE, map_location=map_location, weights_only=True))
    return state
