"""Checkpoints: round trip, last-K, manifest verification, fallback past corrupt/partial ones, RNG states."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from torch import nn

from workbench.errors import WorkbenchError
from workbench.train import build_optimizer
from workbench.train import checkpoint as ckpt


def _model_and_optimizer(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Embedding(50, 8), nn.Linear(8, 50))
    model[1].weight = model[0].weight  # tied weights: safetensors needs them de-duplicated
    model.register_buffer("expert_bias", torch.arange(4.0))
    opt = build_optimizer(model, "adamw", lr=1e-2)
    x = torch.randint(0, 50, (4, 6))
    model(x).sum().backward()
    opt.step()
    return model, opt


def _save(root, step, model, opt, keep_last=3):
    return ckpt.save_checkpoint(root, step, model, opt, {"step": step, "note": "test"}, keep_last=keep_last)


def test_round_trip_restores_model_buffers_and_optimizer(tmp_path):
    model, opt = _model_and_optimizer(0)
    path = _save(tmp_path, 5, model, opt)
    assert sorted(p.name for p in path.iterdir()) == sorted(
        [ckpt.MODEL_FILE, ckpt.OPTIM_FILE, ckpt.STATE_FILE, ckpt.MANIFEST_FILE])
    other, other_opt = _model_and_optimizer(1)
    state = ckpt.load_checkpoint(path, other, other_opt)
    assert state == {"step": 5, "note": "test"}
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)
    assert other[1].weight is other[0].weight  # still tied after loading
    sa, sb = opt.state_dict()["adamw"]["state"], other_opt.state_dict()["adamw"]["state"]
    assert torch.equal(sa[0]["exp_avg"], sb[0]["exp_avg"])


def test_keeps_only_the_last_k_and_cleans_temp_folders(tmp_path):
    model, opt = _model_and_optimizer()
    stale = tmp_path / ".tmp-step_0000001-999999"  # left by a writer that was killed
    stale.mkdir(parents=True)
    for step in (1, 2, 3, 4):
        _save(tmp_path, step, model, opt, keep_last=2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [3, 4]
    assert not stale.exists()


@pytest.mark.parametrize("damage, reason", [
    ("truncate", "has .* bytes"),
    ("flip", "does not match its sha256"),
    ("no_manifest", "is partial: no manifest.json"),
    ("missing_file", "optimizer.pt is missing"),
    # a manifest that is JSON but damaged: stopped the resume (error: bytes) or crashed instead of falling back
    ("manifest_key", "damaged manifest"),
    ("manifest_list", "unreadable manifest"),
    ("manifest_files_list", "damaged manifest"),
    ("manifest_empty_files", "damaged manifest"),
])
def test_corrupt_or_partial_checkpoint_is_detected_and_skipped(tmp_path, damage, reason):
    model, opt = _model_and_optimizer()
    _save(tmp_path, 10, model, opt)
    newest = _save(tmp_path, 20, model, opt)
    target = newest / ckpt.MODEL_FILE
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:-7])
    elif damage == "flip":
        data = bytearray(target.read_bytes())
        data[-1] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "no_manifest":
        (newest / ckpt.MANIFEST_FILE).unlink()
    elif damage.startswith("manifest_"):
        manifest = newest / ckpt.MANIFEST_FILE
        text = {"manifest_key": manifest.read_text().replace('"bytes"', '"cytes"', 1),
                "manifest_list": "[]",
                "manifest_files_list": '{"step": 20, "files": ["model.safetensors"]}',
                "manifest_empty_files": '{"step": 20, "files": {}}'}[damage]
        manifest.write_text(text)
    else:
        (newest / ckpt.OPTIM_FILE).unlink()
    with pytest.raises(ckpt.CorruptCheckpointError, match=reason):
        ckpt.verify_checkpoint(newest)
    messages = []
    good = ckpt.latest_good_checkpoint(tmp_path, warn=messages.append)
    assert good is not None and good.name == "step_0000010"
    assert len(messages) == 1 and "step_0000020" in messages[0] and "falling back" in messages[0]
    (good / ckpt.OPTIM_FILE).unlink()  # the last one damaged too: nothing to fall back to, and the warning says so
    messages.clear()
    assert ckpt.latest_good_checkpoint(tmp_path, warn=messages.append) is None
    assert "falling back" in messages[0] and "no earlier checkpoint is left" in messages[1]


def test_no_good_checkpoint_gives_none(tmp_path):
    assert ckpt.latest_good_checkpoint(tmp_path / "nothing") is None
    (tmp_path / "step_0000003").mkdir()
    assert ckpt.latest_good_checkpoint(tmp_path, warn=lambda m: None) is None


def test_rng_states_round_trip_through_json():
    import json

    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = json.loads(json.dumps(ckpt.capture_rng_state()))
    expected = (random.random(), np.random.rand(), torch.rand(()).item())
    random.seed(10)
    np.random.seed(20)
    torch.manual_seed(30)
    ckpt.restore_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(()).item()) == expected


def test_state_dict_functions_can_be_swapped(tmp_path):
    calls = []
    default = ckpt.get_model_state
    try:
        ckpt.set_state_dict_functions(get_model=lambda m: calls.append("get") or default(m))
        model, opt = _model_and_optimizer()
        _save(tmp_path, 1, model, opt)
    finally:
        ckpt.set_state_dict_functions(get_model=default)
    assert calls == ["get"]


def test_saving_a_step_again_replaces_it_whole(tmp_path):
    model, opt = _model_and_optimizer()
    _save(tmp_path, 7, model, opt)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    path = _save(tmp_path, 7, model, opt)
    ckpt.verify_checkpoint(path)
    other, _ = _model_and_optimizer(1)
    ckpt.load_checkpoint(path, other)
    assert torch.equal(other[0].weight, model[0].weight)
    assert [p.name for p in tmp_path.iterdir()] == ["step_0000007"]


def test_pruning_keeps_the_checkpoint_just_written_not_a_corrupt_newer_one(tmp_path):
    """A run resumed past a corrupt step 9 (from the good step 4) saves step 5 with keep_last=1: pruning by step
    alone deleted step 5 and kept the corrupt step 9, so the next resume found nothing and restarted at step 0."""
    model, opt = _model_and_optimizer()
    _save(tmp_path, 4, model, opt)
    corrupt = _save(tmp_path, 9, model, opt)
    (corrupt / ckpt.MODEL_FILE).write_bytes(b"")
    _save(tmp_path, 5, model, opt, keep_last=1)  # the resumed run's next checkpoint
    assert ckpt.latest_good_checkpoint(tmp_path, warn=lambda m: None).name == "step_0000005"
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [5, 9]  # step 4 pruned; step 9 left to be overwritten


def test_an_incomplete_checkpoint_does_not_count_towards_keep_last(tmp_path):
    model, opt = _model_and_optimizer()
    for step in (1, 2):
        _save(tmp_path, step, model, opt, keep_last=3)
    (ckpt.list_checkpoints(tmp_path)[-1][1] / ckpt.MANIFEST_FILE).unlink()  # step 2 partial
    _save(tmp_path, 3, model, opt, keep_last=2)
    good = [s for s, p in ckpt.list_checkpoints(tmp_path) if ckpt._looks_complete(p)]
    assert good == [1, 3]  # two good ones kept; the partial step 2 did not take step 1's place


def test_a_checkpoint_of_another_shape_is_refused_before_touching_the_model(tmp_path):
    """load_state_dict copied tensors until the first size mismatch, then raised a bare RuntimeError."""
    torch.manual_seed(0)
    small = nn.Sequential(nn.Embedding(50, 8), nn.Linear(8, 50))
    path = ckpt.save_checkpoint(tmp_path, 1, small, build_optimizer(small, "adamw", lr=1e-2), {"step": 1})
    wider = nn.Sequential(nn.Embedding(50, 8), nn.Linear(8, 60))  # the same names, one other shape
    before = {k: v.clone() for k, v in wider.state_dict().items()}
    with pytest.raises(ckpt.CheckpointMismatchError, match=r"other shapes \['1.weight \(50, 8\) vs \(60, 8\)'"):
        ckpt.load_checkpoint(path, wider)
    assert all(torch.equal(before[k], v) for k, v in wider.state_dict().items())  # untouched


def test_a_save_interrupted_between_its_renames_is_finished_on_resume(tmp_path):
    """Re-saving step 20 moves the old folder aside, then renames the new one in; killed in between, only the temp
    name held the complete checkpoint, and resume fell back a step."""
    model, opt = _model_and_optimizer()
    _save(tmp_path, 10, model, opt)
    done = _save(tmp_path, 20, model, opt)
    os.rename(done, tmp_path / ".tmp-step_0000020-424242")        # the new copy, not yet renamed in
    (tmp_path / ".tmp-step_0000030-424243").mkdir()                # a writer killed mid-write: no manifest, ignored
    # a reader without the run's lock (workbench export, maybe while the run trains) leaves the temp folder to its
    # writer: promoting it under a live writer made the writer's own rename fail
    assert ckpt.latest_good_checkpoint(tmp_path, warn=lambda m: None, read_only=True).name == "step_0000010"
    assert (tmp_path / ".tmp-step_0000020-424242").is_dir()
    assert ckpt.latest_good_checkpoint(tmp_path, warn=lambda m: None).name == "step_0000020"
    assert not (tmp_path / "step_0000030").exists()


def test_a_full_disk_while_writing_the_weights_is_an_oserror(tmp_path, monkeypatch):
    """safetensors reports a full disk as a SafetensorError, which is no OSError: `workbench train` ended in a
    traceback instead of its one-line "free some space ... --resume" message. The earlier checkpoint stays."""
    import errno

    from safetensors import SafetensorError

    model, opt = _model_and_optimizer()
    good = _save(tmp_path, 1, model, opt)

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(ckpt, "save_file", full)
    with pytest.raises(OSError) as caught:
        _save(tmp_path, 2, model, opt)
    assert caught.value.errno == errno.ENOSPC
    assert ckpt.latest_good_checkpoint(tmp_path) == good
    assert [p.name for p in tmp_path.iterdir()] == [good.name]  # no temp folder left behind


def test_a_file_size_limit_while_writing_the_optimizer_names_the_file(tmp_path):
    """The optimizer state was written through Path.write_bytes, whose EFBIG ("File too large", `ulimit -f`) named
    no file; the earlier checkpoint stays and no temp folder is left."""
    import errno
    import signal

    resource = pytest.importorskip("resource")  # file-size limits are POSIX
    model, opt = _model_and_optimizer()
    good = _save(tmp_path, 1, model, opt)
    sizes = {p.name: p.stat().st_size for p in good.iterdir()}
    assert sizes["model.safetensors"] < 5000 < sizes["optimizer.pt"]
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # (Python ignores it already: write() gets EFBIG)
    resource.setrlimit(resource.RLIMIT_FSIZE, (5000, hard))
    try:
        with pytest.raises(OSError) as caught:
            _save(tmp_path, 2, model, opt)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert caught.value.errno == errno.EFBIG
    assert caught.value.filename and caught.value.filename.endswith("optimizer.pt"), caught.value
    assert ckpt.latest_good_checkpoint(tmp_path) == good
    assert [p.name for p in tmp_path.iterdir()] == [good.name]


def test_a_checkpoint_pruned_while_it_is_verified_is_no_damage(tmp_path, monkeypatch):
    """A reader without the lock (`workbench export` while the run trains) saw the run's --keep-last pruning delete
    the checkpoint it was verifying, and warned that it was partial (or failed with "No such file"); it now takes
    the newer checkpoint the run wrote, without a warning."""
    import shutil

    model, opt = _model_and_optimizer()
    _save(tmp_path, 1, model, opt)
    chosen = _save(tmp_path, 2, model, opt)
    digest, raced = ckpt._sha256, []

    def pruned_meanwhile(path):
        if not raced:
            raced.append(path)
            shutil.copytree(chosen, tmp_path / "step_0000003")
            shutil.rmtree(chosen)
        return digest(path)

    monkeypatch.setattr(ckpt, "_sha256", pruned_meanwhile)
    warned = []
    assert ckpt.latest_good_checkpoint(tmp_path, warn=warned.append, read_only=True).name == "step_0000003"
    assert raced and not warned, warned


def test_a_run_that_outpaces_every_rescan_is_not_called_empty_or_damaged(tmp_path, monkeypatch):
    """When the run replaced its newest checkpoint on every one of the reader's looks, latest_good_checkpoint
    returned None and export said the run's checkpoints/ was 'empty or damaged'."""
    import shutil

    model, opt = _model_and_optimizer()
    _save(tmp_path, 1, model, opt)
    digest, step = ckpt._sha256, [1]

    def replaced_every_time(path):  # each read: the run writes a newer checkpoint and prunes the one being read
        step[0] += 1
        current = path.parent if path.parent.name.startswith("step_") else path
        shutil.copytree(current, tmp_path / f"step_{step[0]:07d}")
        shutil.rmtree(current)
        return digest(tmp_path / f"step_{step[0]:07d}" / path.name)

    monkeypatch.setattr(ckpt, "_sha256", replaced_every_time)
    with pytest.raises(WorkbenchError, match="still trains and replaced its newest checkpoint"):
        ckpt.latest_good_checkpoint(tmp_path, warn=lambda message: pytest.fail(message), read_only=True)
