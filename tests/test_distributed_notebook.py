"""notebooks/03_distributed.ipynb's own checks, fast: its code cells run in this process, in one namespace, as
papermill runs them (the parameters cell, then the overrides, then the rest), without a kernel. Where a test runs
the whole notebook, ``launch`` is a stand-in that returns canned rank results instead of starting processes;
tests/test_notebooks.py runs the notebook for real."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workbench.device import DeviceUnavailableError, available_device_types
from workbench.distributed.launcher import LaunchResult
from workbench.errors import ConfigError, WorkbenchError

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "03_distributed.ipynb"
SETUP, PLAN = 2, 3  # how many code cells: parameters + validation; + the layout plan


def _run(tmp_path, n_cells: int | None = None, **params) -> dict:
    cells = [c for c in json.loads(NOTEBOOK.read_text())["cells"] if c["cell_type"] == "code"]
    namespace: dict = {}
    exec("".join(cells[0]["source"]), namespace)
    namespace.update(out_dir=str(tmp_path / "out"), results_path=str(tmp_path / "results.json"), **params)
    for cell in cells[1:n_cells]:
        exec("".join(cell["source"]), namespace)
    return namespace


def test_an_unavailable_device_is_refused_before_any_launch(tmp_path):
    missing = [t for t in ("cuda", "npu") if t not in available_device_types()]
    if not missing:
        pytest.skip("cuda and npu are both available here")
    with pytest.raises(DeviceUnavailableError, match=f"device '{missing[0]}' is not available"):
        _run(tmp_path, SETUP, device=missing[0])


@pytest.mark.parametrize("low, high, match", [
    ("abc", "2K", "comm_min_size='abc', comm_max_size='2K': size 'abc' is not a size"),
    ("4K", "1K", r"comm_min_size='4K', comm_max_size='1K': .*min \(4096\) <= max \(1024\)"),
])
def test_comm_bench_sizes_are_checked_up_front(tmp_path, low, high, match):
    with pytest.raises(WorkbenchError, match=match):
        _run(tmp_path, SETUP, comm_min_size=low, comm_max_size=high)


def test_pipeline_over_an_mtp_model_is_refused_in_the_plan(tmp_path):
    with pytest.raises(ConfigError, match=r"pipeline parallel does not support MTP layers \(set mtp_layers=0\)"):
        _run(tmp_path, PLAN, preset="glm45-tiny", layouts="pp=2,schedule=1f1b")


def test_all_layouts_are_the_ones_that_fit_nproc(tmp_path, capsys):
    plan = _run(tmp_path, PLAN, nproc=4)["plan"]
    assert [p["layout"] for p in plan] == ["dp=4", "fsdp=4", "pp=4,schedule=1f1b", "pp=4,schedule=gpipe", "ep=4"]
    assert "skipped tp=4: " in capsys.readouterr().out  # the 2 kv heads of glm4-tiny do not split 4 ways
    assert [p["layout"] for p in _run(tmp_path, PLAN, nproc=1)["plan"]] == ["dp=1"]
    with pytest.raises(WorkbenchError, match="layouts='all': nothing to run with nproc=3 .*dp=3: global batch 4"):
        _run(tmp_path, PLAN, nproc=3)
    with pytest.raises(ConfigError, match="tp=4 must divide the 2 key/value heads"):
        _run(tmp_path, PLAN, nproc=4, layouts="tp=4")  # a layout asked for by name must fit


def test_all_skips_what_the_model_or_sequence_cannot_run(tmp_path, capsys):
    """An MoE preset listed tp=2 in the plan, and the launched run then failed; so did a seq_len tp does not divide."""
    plan = _run(tmp_path, PLAN, preset="glm45-tiny")["plan"]
    assert [p["layout"] for p in plan] == ["dp=2", "fsdp=2", "ep=2"]
    assert "tensor parallel covers dense layers only; for MoE models use ep" in capsys.readouterr().out
    plan = _run(tmp_path, PLAN, seq_len=15)["plan"]
    assert "tp=2" not in [p["layout"] for p in plan] and "dp=2" in [p["layout"] for p in plan]
    assert "skipped tp=2: seq_len 15 must be divisible by tp=2" in capsys.readouterr().out


def test_layouts_parameter_has_help_text():
    import papermill

    assert "all" in papermill.inspect_notebook(str(NOTEBOOK))["layouts"]["help"]


def _fake_launch(calls):
    def launch(command, config, *, run_dir, **_):
        calls.append(list(command))
        if "workbench.distributed.runner" in command:
            cases = command[command.index("--cases") + 1].split(";")
            payload = {"cases": [{"case": c, "layout": c.split(":")[1], "losses": [2.0, 1.5], "max_loss_diff": 0.0,
                                  "step_s": 0.01, "local_params": 10, "model_params": 10} for c in cases],
                       "reference": {c.split(":")[0]: [2.0, 1.5] for c in cases}}
        elif "comm-bench" in command:
            payload = {"rows": [{"op": "all_reduce", "size_bytes": 1024, "time_us": 1.0, "algbw_GBps": 1.0,
                                 "busbw_GBps": 0.0, "world_size": config.nproc, "backend": "gloo"}]}
        else:
            payload = {"rows": []}
        return LaunchResult(0, Path(run_dir), [payload] * config.nproc)

    return launch


def test_one_process_runs_and_results_list_only_this_runs_figures(tmp_path, monkeypatch):
    calls: list[list[str]] = []
    monkeypatch.setattr("workbench.distributed.launcher.launch", _fake_launch(calls))
    stale = tmp_path / "out" / "figures" / "from_an_earlier_run.html"
    stale.parent.mkdir(parents=True)
    stale.write_text("<html></html>")
    _run(tmp_path, nproc=1, teaching=True)
    runner = next(c for c in calls if "workbench.distributed.runner" in c)
    assert runner[runner.index("--cases") + 1] == "glm4-tiny:dp=1"
    assert not any("workbench.distributed.teaching.compare" in c for c in calls)  # needs 2 ranks
    results = json.loads((tmp_path / "results.json").read_text())
    assert sorted(Path(p).name for p in results["figures"]) == ["comm_bench.html", "loss_by_layout.html",
                                                               "step_time_by_layout.html"]


@pytest.mark.parametrize("nproc, batch", [(2, 32), (3, 33), (5, 35), (40, 40)])
def test_the_teaching_run_gets_a_batch_every_rank_can_share(tmp_path, monkeypatch, nproc, batch):
    """The teaching cell launched compare.py with its fixed --global-batch 32, which failed inside the ranks for
    nproc=3, 5, 6, 7, 9, ... after every layout had run."""
    calls: list[list[str]] = []
    monkeypatch.setattr("workbench.distributed.launcher.launch", _fake_launch(calls))
    _run(tmp_path, nproc=nproc, global_batch=nproc * 2, layouts=f"dp={nproc}", teaching=True)
    teaching = next(c for c in calls if "workbench.distributed.teaching.compare" in c)
    assert int(teaching[teaching.index("--global-batch") + 1]) == batch
