"""`workbench info` (table and --json) and the CLI's one-line errors."""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys

import pytest

from workbench.cli import COMMANDS, main


def run_cli(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workbench", *args], capture_output=True, text=True, timeout=120,
                          env=env)


def test_info_json_has_devices_versions_dtype_and_measurements():
    result = run_cli("info", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["selected"]["type"] == "cpu"
    assert info["selected"]["training_dtype"] in ("fp32", "bf16")
    assert info["libraries"]["torch"].startswith("2.13.0")
    measured = info["measured"]
    assert measured["gemm_flops"] > 1e9 and measured["bandwidth_bytes_s"] > 1e8
    assert info["peak_flops"]["source"]
    assert {row["type"] for row in info["devices"]} == {"cpu", "cuda", "npu", "xpu", "mps"}


def test_info_table_is_readable():
    result = run_cli("info", "--no-probe")
    assert result.returncode == 0, result.stderr
    assert "devices:" in result.stdout and "training dtype" in result.stdout and "torch" in result.stdout


def test_missing_device_is_one_clear_line_without_traceback():
    result = run_cli("info", "--device", "npu")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "npu" in lines[0] and "extra" in lines[0]


def test_unknown_command_and_help(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)


def test_an_output_path_that_is_a_file_is_one_line(tmp_path):
    blocker = tmp_path / "out"
    blocker.write_text("not a folder")
    result = run_cli("profile", "--preset", "glm4-tiny", "--steps", "1", "--out", str(blocker))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "is a file, not a folder" in result.stderr.strip().splitlines()[-1]


def _subcommands(parser: argparse.ArgumentParser) -> list[str]:
    return [name for action in parser._actions if isinstance(action, argparse._SubParsersAction)
            for name in action.choices]


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_and_subcommand_prints_its_help(command, capsys):
    """argparse formats help strings with %: a bare "% of roofline" made `workbench kernels --help` a traceback."""
    module = importlib.import_module(COMMANDS[command][0])
    parser = argparse.ArgumentParser(prog=f"workbench {command}")
    module.add_arguments(parser)
    for args in [["--help"]] + [[sub, "--help"] for sub in _subcommands(parser)]:
        with pytest.raises(SystemExit) as exit_info:
            main([command, *args])
        assert exit_info.value.code == 0, (command, args)
        assert "usage: workbench" in capsys.readouterr().out


def _one_line(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("argv, message", [
    # unknown ops / implementations ran nothing and reported success (an empty table, "0/0 checks passed")
    (["kernels", "bench", "--sizes", "tiny", "--no-probe", "--ops", "bogus"], "unknown op(s) ['bogus']"),
    (["kernels", "bench", "--sizes", "tiny", "--no-probe", "--ops", "rope", "--impls", "bogus"],
     "unknown implementation(s) ['bogus']"),
    (["kernels", "check", "--ops", "rope", "--impls", "bogus"], "unknown implementation(s) ['bogus']"),
    (["kernels", "bench", "--sizes", "tiny", "--no-probe", "--moe-experts", "0"], "moe_experts must be positive"),
    # a kernel asked for where it cannot run was a 45-line RuntimeError traceback
    (["profile", "--preset", "toy", "--steps", "1", "--kernels", "attention=triton", "--out", "OUT"],
     "kernel attention/triton was requested but cannot run on cpu"),
])
def test_kernel_choices_are_checked_with_one_line(argv, message, capsys, tmp_path):
    argv = [str(tmp_path / "out") if a == "OUT" else a for a in argv]
    assert message in _one_line(capsys, argv + (["--out", str(tmp_path / "kb")] if argv[1] == "bench" else []))


def test_kernels_bench_json_is_only_json_on_stdout(tmp_path, capsys):
    code = main(["kernels", "bench", "--sizes", "tiny", "--no-probe", "--repeats", "1", "--ops", "rope", "--json",
                 "--moe-experts", "8", "--out", str(tmp_path / "kb")])
    captured = capsys.readouterr()
    assert code == 0
    assert json.loads(captured.out)["rows"]  # "wrote ..." used to follow the JSON on stdout
    assert "wrote" in captured.err
