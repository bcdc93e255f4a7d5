"""workbench.cache_dir: where packed tokens and probe results are cached, also without a usable home folder."""

from __future__ import annotations

import pathlib

import pytest

from workbench import cache_dir as cd


@pytest.fixture
def no_explicit_cache(monkeypatch):
    monkeypatch.delenv(cd.ENV_VAR, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setattr(cd, "_warned", set())


def test_explicit_folder_wins_with_tilde_expanded(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv(cd.ENV_VAR, "~/wb")  # it created a literal "~" folder in the working directory
    assert cd.cache_dir() == tmp_path / "wb"


def test_xdg_cache_home_is_honoured(no_explicit_cache, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cd.cache_dir() == tmp_path / "xdg" / "workbench"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # ignored, as the XDG spec says
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cd.cache_dir() == tmp_path / ".cache" / "workbench"


def test_an_unusable_home_falls_back_to_the_temp_folder_once_said(no_explicit_cache, monkeypatch, tmp_path, capsys):
    """An unwritable home stopped training with "[Errno 13] Permission denied: '/nonexistent'"; a user id with
    no home at all (containers) crashed `info` and `train` with a RuntimeError traceback from Path.home()."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("HOME", str(blocker))  # ~/.cache cannot be created under a file, even by root
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    first = cd.cache_dir()
    assert first.parent == tmp_path / "tmp" and "caching in" in capsys.readouterr().err
    assert cd.cache_dir() == first and capsys.readouterr().err == ""  # said once

    def no_home():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(pathlib.Path, "home", staticmethod(no_home))
    monkeypatch.setattr(cd, "_warned", set())
    assert cd.cache_dir() == first and "no home folder" in capsys.readouterr().err


def test_packing_into_an_unwritable_cache_names_it(monkeypatch, tmp_path):
    from workbench.data.corpus import load_corpus
    from workbench.data.packing import pack_corpus
    from workbench.data.tokenizer import ByteTokenizer
    from workbench.errors import WorkbenchError

    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv(cd.ENV_VAR, str(blocker / "cache"))
    with pytest.raises(WorkbenchError, match="WORKBENCH_CACHE_DIR"):
        pack_corpus(load_corpus("default"), ByteTokenizer())


def test_the_temp_fallback_is_private_and_not_taken_over(no_explicit_cache, monkeypatch, tmp_path):
    """The fallback has a predictable name: on a shared machine another user could make it first and plant packed
    tokens or probe results. It is created 0700, and one that is not ours alone is not used."""
    import os

    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("HOME", str(blocker))
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    folder = cd.cache_dir()
    assert folder.stat().st_mode & 0o777 == 0o700
    folder.chmod(0o777)  # as if someone else had made it, world-writable
    other = cd.cache_dir()
    assert other != folder and other.parent == tmp_path and other.stat().st_mode & 0o077 == 0
    assert os.access(other, os.W_OK)
