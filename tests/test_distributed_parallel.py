"""Each parallelism, on real gloo process groups, against a single-process run on the same global batch.

One launch runs every 2-process case (DDP, FSDP2 fp32 and bf16, TP+SP, PP GPipe and 1F1B, EP) to pay the start-up
once; a second launch runs the 2-D layouts on 4 processes. Tolerances: fp32 layouts differ from one process only
by summation order, so the loss must agree to 1e-4 over 3 SGD steps (lr 0.5, large enough that a wrong gradient
shows: the loss moves by > 0.1 per step); FSDP2 with bf16 compute agrees to 5e-2.
"""

from __future__ import annotations

import pytest
import torch

from workbench.distributed.launcher import LaunchConfig, launch
from workbench.distributed.pp import check_pipelinable, stage_layer_ranges
from workbench.distributed.tp import full_gate_up_weight, gate_up_tp_order

FP32_TOL, BF16_TOL = 1e-4, 5e-2


def _run(cases: list[str], nproc: int, tmp_path, global_batch: int = 4) -> dict:
    result = launch(["-m", "workbench.distributed.runner", "--tiny", "--steps", "3", "--global-batch",
                     str(global_batch), "--cases", ";".join(cases)], LaunchConfig(nproc=nproc), run_dir=tmp_path,
                    on_line=None, timeout_s=240).check()
    assert all(r is not None for r in result.results), "a rank wrote no results"
    return result.results[0]


def _check(main: dict, expected_cases: list[str]) -> None:
    rows = {row["case"]: row for row in main["cases"]}
    assert list(rows) == expected_cases
    for preset, ref in main["reference"].items():
        assert abs(ref[1] - ref[0]) > 0.1, f"{preset}: the reference barely moved; the check would be weak"
    for case, row in rows.items():
        tol = BF16_TOL if row["param_dtype"] == "bf16" else FP32_TOL
        assert row["max_loss_diff"] < tol, (case, row["losses"], main["reference"][row["preset"]])
        if not row["layout"].startswith("pp=1,dp=2,fsdp=1,ep=1,tp=1"):  # all but plain DDP shard something
            assert row["local_params"] < row["model_params"], (case, row["notes"])


def test_gate_up_rows_are_sharded_with_their_partners():
    hidden, tp = 4, 2
    w = torch.arange(2 * hidden).float()[:, None]          # rows 0..3 = gate, 4..7 = up
    reordered = w[gate_up_tp_order(hidden, tp)]
    rank0, rank1 = reordered.chunk(tp)
    assert rank0.flatten().tolist() == [0, 1, 4, 5] and rank1.flatten().tolist() == [2, 3, 6, 7]
    assert torch.equal(full_gate_up_weight(reordered, tp), w)


def test_pipeline_stage_split_and_limits():
    assert stage_layer_ranges(5, 2) == [(0, 3), (3, 5)]
    assert stage_layer_ranges(4, 4) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    with pytest.raises(ValueError, match="stages need"):
        stage_layer_ranges(2, 3)
    from workbench.model import get_preset

    check_pipelinable(get_preset("glm4-tiny"))
    with pytest.raises(ValueError, match="MTP"):
        check_pipelinable(get_preset("glm45-tiny"))


def test_every_parallelism_matches_one_process_on_2_ranks(tmp_path):
    cases = ["glm4-tiny:dp=2", "glm4-tiny:fsdp=2", "glm4-tiny:fsdp=2:bf16", "glm4-tiny:tp=2",
             "glm4-tiny:pp=2,schedule=gpipe", "glm4-tiny:pp=2,schedule=1f1b,microbatches=2", "glm45-tiny:ep=2"]
    _check(_run(cases, 2, tmp_path), cases)


def test_2d_layouts_match_one_process_on_4_ranks(tmp_path):
    cases = ["glm4-tiny:fsdp=2,tp=2", "glm45-tiny:dp=2,ep=2", "glm4-tiny:fsdp=2,pp=2,schedule=1f1b"]
    _check(_run(cases, 4, tmp_path, global_batch=8), cases)
