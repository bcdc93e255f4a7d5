"""Each parallelism, on real gloo process groups, against a single-process run on the same global batch.

One launch runs every 2-process case (DDP, FSDP2 fp32 and bf16, TP+SP, PP GPipe and 1F1B, EP) to pay the start-up
once; a second launch runs the 2-D layouts on 4 processes. Tolerances: fp32 layouts differ from one process only
by summation order, so the loss must agree to 1e-4 over 3 SGD steps (lr 0.5, large enough that a wrong gradient
shows: the loss moves by > 0.1 per step); FSDP2 with bf16 compute agrees to 5e-2.
"""

from __future__ import annotations

import pytest
import torch

import torch.distributed as dist

from workbench.distributed.ddp import apply_ddp, skippable_parameters
from workbench.distributed.launcher import LaunchConfig, launch
from workbench.distributed.parallelize import parallelize
from workbench.distributed.pp import check_pipelinable, stage_layer_ranges
from workbench.distributed.runner import make_batch, make_model, reference_losses
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


@pytest.fixture
def world_of_one(tmp_path):
    """A real gloo process group of one rank in this process (what `launch(nproc=1)` gives each worker)."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_a_world_of_one_just_works(world_of_one):
    model = make_model("glm4-tiny", True, 0)
    x, y = make_batch(model.config.vocab_size, 2, 16, 0)
    pm = parallelize(model, "dp=1")
    assert pm.mesh is None and pm.module is model and (pm.data_rank, pm.data_size) == (0, 1)
    loss = pm.forward_backward(x, y)
    assert pm.global_loss(loss) == pytest.approx(float(loss))  # no mesh: nothing to average, no collective


def test_a_compute_dtype_needs_fsdp(world_of_one):
    """The runner's :bf16 reached only FSDP2: dp/tp cases ran in fp32 and were reported as bf16 (and :banana too)."""
    from workbench.distributed.runner import parse_cases
    from workbench.errors import ConfigError

    assert parse_cases("glm4-tiny:fsdp=2:BF16;glm4-tiny:dp=2:fp32;glm4-tiny:tp=2") == [
        ("glm4-tiny", "fsdp=2", "bf16"), ("glm4-tiny", "dp=2", "fp32"), ("glm4-tiny", "tp=2", None)]
    with pytest.raises(ValueError, match="'glm4-tiny:dp=2:banana': unknown dtype 'banana'"):
        parse_cases("glm4-tiny:dp=2:banana")
    with pytest.raises(ValueError, match=":bf16 sets FSDP2's compute dtype, and tp=2 has no fsdp"):
        parse_cases("glm4-tiny:tp=2:bf16")
    # an fsdp degree left to the world size is still fsdp (it was refused: 'fsdp=auto needs a known world size')
    assert parse_cases("glm4-tiny:fsdp=auto:bf16;glm4-tiny:dp=auto,fsdp=2:bf16") == [
        ("glm4-tiny", "fsdp=auto", "bf16"), ("glm4-tiny", "dp=auto,fsdp=2", "bf16")]
    with pytest.raises(ValueError, match="has no fsdp"):
        parse_cases("glm4-tiny:dp=2,fsdp=1:bf16")
    with pytest.raises(ConfigError, match="param_dtype=bf16 is FSDP2's compute dtype"):
        parallelize(make_model("glm4-tiny", True, 0), "dp=1", param_dtype="bf16")
    assert parallelize(make_model("glm4-tiny", True, 0), "dp=1", param_dtype="fp32").mesh is None


@pytest.mark.parametrize("flag", ["--steps", "--global-batch"])
def test_runner_needs_at_least_one_step_and_row(flag, capsys):
    """--steps 0 ended in "statistics.StatisticsError: no median for empty data"; --global-batch 0 was accepted."""
    from workbench.distributed.runner import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--cases", "glm4-tiny:dp=1", "--tiny", flag, "0"])
    assert exit_info.value.code == 2 and f"{flag} must be >= 1 (got 0)" in capsys.readouterr().err


def test_ddp_accepts_parameters_a_step_leaves_unused(world_of_one):
    """glm5's DSA indexers run only on sequences longer than index_topk (32): at 16 tokens they get no gradient.
    DDP must neither fail on the next step nor touch them: gradients equal one process's (indexers stay None)."""
    x, y = make_batch(256, 2, 16, 0)
    reference = make_model("glm5-tiny", True, 0)
    reference(x, labels=y).loss.backward()
    model = make_model("glm5-tiny", True, 0)
    assert x.shape[1] <= model.config.index_topk
    skipped = skippable_parameters(model)
    assert skipped and all(".indexer." in name for name in skipped)
    ddp = apply_ddp(model, None)
    assert ddp.find_unused_parameters
    for step in range(2):  # without find_unused_parameters the second step raises
        model.zero_grad(set_to_none=True)
        ddp(x, labels=y).loss.backward()
    grads = dict(reference.named_parameters())
    for name, param in model.named_parameters():
        if grads[name].grad is None:
            assert param.grad is None, name
        else:
            assert torch.allclose(param.grad, grads[name].grad, atol=1e-6), name
    assert {n for n, p in model.named_parameters() if p.grad is None} == set(skipped)
    # models that use every parameter in every step keep DDP's cheaper default
    dense = make_model("glm45-tiny", True, 0)
    assert skippable_parameters(dense) == [] and not apply_ddp(dense, None).find_unused_parameters


def test_fsdp_units_leave_mtp_glue_to_the_root(world_of_one):
    """The model applies an MTP layer's shared_head_norm after the layer's forward returns: a unit of the whole MTP
    layer would be resharded by then. glm5 at 16 tokens also leaves its DSA indexers without a gradient."""
    from torch.distributed.device_mesh import init_device_mesh

    from workbench.distributed.fsdp import apply_fsdp, transformer_blocks

    x, y = make_batch(256, 2, 16, 0)
    model = make_model("glm5-tiny", True, 0)
    assert transformer_blocks(model)[-1] is model.mtp[0].block
    apply_fsdp(model, init_device_mesh("cpu", (1,), mesh_dim_names=("fsdp",)))
    opt, losses = torch.optim.SGD(model.parameters(), lr=0.5), []
    for _ in range(2):
        loss = model(x, labels=y).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses == pytest.approx(reference_losses("glm5-tiny", True, 0, x, y, 2, 0.5), abs=1e-5)


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
    # glm5-tiny at the runner's 16 tokens (<= index_topk): its DSA indexers get no gradient, which DDP (under ep)
    # and FSDP must accept; it has an MTP layer too
    cases = ["glm4-tiny:dp=2", "glm4-tiny:fsdp=2", "glm4-tiny:fsdp=2:bf16", "glm4-tiny:tp=2",
             "glm4-tiny:pp=2,schedule=gpipe", "glm4-tiny:pp=2,schedule=1f1b,microbatches=2", "glm45-tiny:ep=2",
             "glm5-tiny:ep=2", "glm5-tiny:fsdp=2"]
    _check(_run(cases, 2, tmp_path), cases)


def test_2d_layouts_match_one_process_on_4_ranks(tmp_path):
    cases = ["glm4-tiny:fsdp=2,tp=2", "glm45-tiny:dp=2,ep=2", "glm4-tiny:fsdp=2,pp=2,schedule=1f1b"]
    _check(_run(cases, 4, tmp_path, global_batch=8), cases)
