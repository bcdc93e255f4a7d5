"""workbench.cpu_allocator: finding jemalloc, reading which malloc a process runs, the preload environment."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

import pytest

from workbench import cpu_allocator as ca

SHOW = "from workbench.cpu_allocator import loaded_allocator; print(loaded_allocator())"


def test_allocator_is_read_from_the_process_maps():
    assert ca.allocator_in_maps("7f00 r-xp 00000000 /usr/lib/x86_64-linux-gnu/libjemalloc.so.2\n") == "jemalloc"
    assert ca.allocator_in_maps("7f00 r-xp 00000000 /usr/lib/libtcmalloc_minimal.so.4\n") == "tcmalloc"
    assert ca.allocator_in_maps("7f00 r-xp 00000000 /usr/lib/x86_64-linux-gnu/libc.so.6\n") == "system malloc"


def test_override_variable_wins_and_can_switch_it_off(tmp_path, monkeypatch):
    fake = tmp_path / "libjemalloc.so.2"
    fake.write_bytes(b"")
    monkeypatch.setenv(ca.ENV_OVERRIDE, str(fake))
    assert ca.find_jemalloc() == fake
    env = ca.preload_env()
    assert env["LD_PRELOAD"].split(":")[0] == str(fake) and env["MALLOC_CONF"] == ca.MALLOC_CONF
    monkeypatch.setenv("LD_PRELOAD", "/opt/other.so")
    assert ca.preload_env()["LD_PRELOAD"] == f"{fake}:/opt/other.so"  # keeps what was preloaded already
    monkeypatch.setenv(ca.ENV_OVERRIDE, str(tmp_path / "missing.so"))
    assert ca.find_jemalloc() is None
    monkeypatch.setenv(ca.ENV_OVERRIDE, "off")
    assert ca.find_jemalloc() is None and ca.preload_env() == {}


def test_env_prefix_is_empty_without_jemalloc(monkeypatch, capsys):
    monkeypatch.setenv(ca.ENV_OVERRIDE, "off")
    assert ca.main(["--env"]) == 0
    assert capsys.readouterr().out == ""  # `$(ALLOC) cmd` in the Makefile is then just `cmd`


def test_preloaded_process_really_runs_jemalloc():
    library = ca.find_jemalloc()
    if library is None:
        pytest.skip("no libjemalloc.so.2 here (setup could not fetch it): nothing to preload")
    plain_env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF")}
    plain = subprocess.run([sys.executable, "-c", SHOW], env=plain_env, capture_output=True, text=True, check=True)
    assert plain.stdout.strip() == "system malloc"
    preloaded = subprocess.run([sys.executable, "-c", SHOW], env={**plain_env, **ca.preload_env(library)},
                               capture_output=True, text=True, check=True)
    assert preloaded.stdout.strip() == "jemalloc"


def test_a_library_under_a_path_with_a_space_is_not_preloaded(tmp_path, monkeypatch, capsys):
    """`make demo` in a checkout under "my repo/" died with "env: 'repo/.venv/jemalloc/...': No such file": the
    unquoted prefix split at the space, and ld.so splits LD_PRELOAD on spaces too. Such a checkout runs on the
    system malloc (said on stderr); the printed prefix is shell-quoted."""
    spaced = tmp_path / "my repo" / "libjemalloc.so.2"
    spaced.parent.mkdir()
    spaced.write_bytes(b"")
    monkeypatch.setenv(ca.ENV_OVERRIDE, str(spaced))
    assert ca.preload_env() == {}
    assert ca.main(["--env"]) == 0
    out, err = capsys.readouterr()
    assert out == "" and "system malloc" in err
    plain = tmp_path / "lib" / "libjemalloc.so.2"
    plain.parent.mkdir()
    plain.write_bytes(b"")
    monkeypatch.setenv(ca.ENV_OVERRIDE, str(plain))
    monkeypatch.setenv("LD_PRELOAD", "/opt/a.so /opt/b.so")  # a space-separated list the user preloads already
    assert ca.main(["--env"]) == 0
    words = shlex.split(capsys.readouterr().out)
    assert words[0] == "env" and words[1] == f"LD_PRELOAD={plain}:/opt/a.so /opt/b.so"
