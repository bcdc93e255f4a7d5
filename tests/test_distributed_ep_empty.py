"""Expert parallelism when routing collapses: every token goes to rank 0's experts, so rank 1 receives no rows.

Its experts then run on an empty batch; that crashed (a view of 0 elements with a -1 dimension) while the same
model trained fine in one process. Two gloo processes, forked, against a one-process run on the same batch."""

from __future__ import annotations

import json
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from workbench.distributed.launcher import free_port


def _collapse_routing(model) -> None:
    """Router biases that send every token to experts 0 and 1 (rank 0's two of four under ep=2)."""
    for module in model.modules():
        if hasattr(module, "expert_bias"):
            module.expert_bias.data = torch.tensor([100.0, 100.0, -100.0, -100.0])


def _model():
    from workbench.distributed.runner import tiny_config
    from workbench.model import build_model, get_preset

    torch.manual_seed(0)
    model = build_model(tiny_config(get_preset("glm45-tiny")).replace(mtp_layers=0))
    _collapse_routing(model)
    return model


def _worker(rank: int, port: int, out_dir: str) -> None:
    from workbench.distributed.parallelize import parallelize
    from workbench.distributed.runner import make_batch

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        x, y = make_batch(256, 4, 16, 0)
        model = parallelize(_model(), "ep=2")
        share = 4 // model.data_size
        rows = slice(model.data_rank * share, (model.data_rank + 1) * share)
        opt = torch.optim.SGD(list(model.parameters()), lr=0.5)
        losses = []
        for _ in range(2):
            loss = model.forward_backward(x[rows], y[rows])
            opt.step()
            opt.zero_grad()
            losses.append(model.global_loss(loss))
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(losses, f)
    finally:
        dist.destroy_process_group()


def test_an_expert_parallel_rank_that_receives_no_tokens_trains(tmp_path):
    from workbench.distributed.runner import make_batch, sgd_losses

    mp.start_processes(_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True, start_method="fork")
    x, y = make_batch(256, 4, 16, 0)
    expected = sgd_losses(_model(), x, y, steps=2, lr=0.5)
    for rank in (0, 1):
        losses = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert max(abs(a - b) for a, b in zip(losses, expected)) < 1e-4, (rank, losses, expected)
