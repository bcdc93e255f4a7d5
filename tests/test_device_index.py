"""Which device a process computes on: an explicit index (``cuda:1``) in one process, LOCAL_RANK under torchrun,
the device mesh of a launched run. CUDA is a fake ``torch.cuda`` that records its calls (device argument and
current device), so the binding logic runs on a CPU-only machine."""

from __future__ import annotations

import types

import pytest
import torch

from workbench.device import DeviceUnavailableError, detect, get_device


class FakeEvent:
    def __init__(self, backend, enable_timing=False):
        self.backend = backend

    def record(self, stream=None):
        self.backend.calls.append(("Event.record", (stream,), {}))

    def synchronize(self):
        pass

    def elapsed_time(self, other):
        return 1.0


def fake_cuda(count=2):
    """A torch.cuda stand-in: every call is appended to ``.calls`` as (name, args, kwargs); ``.current`` is the
    device ``set_device`` made current (what torch's device=None calls would read)."""
    ns = types.SimpleNamespace(calls=[], current=0)

    def log(name, result=None):
        def call(*args, **kwargs):
            ns.calls.append((name, args, kwargs))
            return result
        return call

    def set_device(index):
        ns.calls.append(("set_device", (index,), {}))
        ns.current = index

    ns.is_available = lambda: True
    ns.device_count = lambda: count
    ns.current_device = lambda: ns.current
    ns.get_device_name = lambda i=None: "NVIDIA H100 80GB HBM3"
    ns.get_device_capability = lambda i=None: (9, 0)
    ns.set_device = set_device
    ns.synchronize = log("synchronize")
    ns.memory_allocated = log("memory_allocated", 123)
    ns.max_memory_allocated = log("max_memory_allocated", 456)
    ns.reset_peak_memory_stats = log("reset_peak_memory_stats")
    ns.get_rng_state = log("get_rng_state", torch.zeros(16, dtype=torch.uint8))
    ns.set_rng_state = log("set_rng_state")
    ns.current_stream = lambda device=None: ("stream", device)
    ns.Event = lambda enable_timing=False: FakeEvent(ns, enable_timing)
    return ns


@pytest.fixture
def cuda(monkeypatch):
    fake = fake_cuda()
    monkeypatch.setattr(torch, "cuda", fake)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    return fake


def called(fake, name):
    return [args for n, args, _ in fake.calls if n == name]


# ---- one process on an explicit index ------------------------------------------------------------------------
def test_an_indexed_device_is_made_current(cuda):
    """`train --device cuda:1` left cuda:0 current: Triton launched there, and torch's device=None calls read it."""
    dev = get_device("cuda:1")
    assert dev.torch_device == torch.device("cuda:1") and cuda.current == 1
    get_device("cuda")  # no index: nothing chosen, nothing changed
    assert cuda.current == 1


def test_memory_rng_and_timer_name_the_index(cuda):
    """memory_allocated(None), reset_peak_memory_stats(None), get_rng_state('cuda') and Events on the current
    stream all meant cuda:0 for a run on cuda:1 (its memory logged as ~0 B, cuda:0's RNG checkpointed)."""
    dev = detect.Device("cuda", 1)
    stats = dev.memory_stats()
    dev.reset_peak_memory()
    dev.get_rng_state()
    dev.set_rng_state(torch.zeros(16, dtype=torch.uint8))
    with dev.timer():
        pass
    assert (stats["allocated_bytes"], stats["peak_bytes"]) == (123, 456)
    assert called(cuda, "memory_allocated") == [(1,)] and called(cuda, "max_memory_allocated") == [(1,)]
    assert called(cuda, "reset_peak_memory_stats") == [(1,)]
    assert called(cuda, "get_rng_state") == [(torch.device("cuda:1"),)]
    assert called(cuda, "set_rng_state")[0][1] == torch.device("cuda:1")
    assert called(cuda, "Event.record") == [(("stream", 1),), (("stream", 1),)]


def test_an_unindexed_device_keeps_torchs_defaults(cuda):
    dev = detect.Device("cuda")
    dev.memory_stats()
    dev.get_rng_state()
    assert called(cuda, "memory_allocated") == [()] and called(cuda, "get_rng_state") == [()]


# ---- torchrun: each rank binds to its LOCAL_RANK -------------------------------------------------------------
def test_a_local_rank_beyond_the_devices_is_one_clear_error(cuda, monkeypatch):
    """`launch --nproc 8` on a 2-GPU node bound rank 5 to cuda:5 and failed inside torch ('invalid device
    ordinal'); get_device('cuda:5') already said 'only 2 cuda device(s) exist'."""
    from workbench.distributed.mesh import init_distributed

    monkeypatch.setenv("LOCAL_RANK", "5")
    with pytest.raises(DeviceUnavailableError, match=r"LOCAL_RANK 5.*only 2 cuda.*--nproc.*CUDA_VISIBLE_DEVICES"):
        init_distributed("cuda")
    assert called(cuda, "set_device") == []
    with pytest.raises(DeviceUnavailableError, match="only 2"):
        detect.Device("cuda").set_current(2)


@pytest.fixture
def group(monkeypatch):
    """torch.distributed's group start-up replaced by a recorder: ``group`` lists init_process_group's kwargs."""
    import torch.distributed as dist

    started = []

    def rendezvous(url, timeout=None):
        yield object(), int(__import__("os").environ["RANK"]), int(__import__("os").environ["WORLD_SIZE"])

    monkeypatch.setattr(dist, "rendezvous", rendezvous)
    monkeypatch.setattr(dist, "PrefixStore", lambda prefix, store: store)
    monkeypatch.setattr(dist, "init_process_group", lambda **kwargs: started.append(kwargs))
    return started


def launched(monkeypatch, rank, world, local_rank):
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))


@pytest.fixture
def mps(monkeypatch):
    """An Apple-silicon host: only torch.mps.is_available is faked; the rest is the real torch.mps."""
    monkeypatch.setattr(torch.mps, "is_available", lambda: True)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)


def test_mps_in_a_world_of_one_binds_nothing(mps, group, monkeypatch):
    """torch.mps has no set_device: every distributed path on a Mac died with an AttributeError, and gloo was
    handed device_id=mps."""
    from workbench.distributed.mesh import init_distributed

    assert init_distributed("mps").device.type == "mps"  # runner --device mps, not launched
    launched(monkeypatch, 0, 1, 0)
    info = init_distributed("mps")
    assert (info.device.type, info.backend) == ("mps", "gloo")
    assert group and "device_id" not in group[0]


def test_several_mps_ranks_run_auto_on_cpu_and_refuse_explicit_mps(mps, group, monkeypatch):
    """gloo carries cpu (and cuda) tensors only, so ranks on mps cannot all-reduce: `launch --nproc 2 -- train`
    (device auto) runs on cpu with a warning; --device mps is refused in one line."""
    from workbench.distributed.mesh import init_distributed
    from workbench.distributed.train_hooks import distributed_train_kwargs
    from workbench.train.config import TrainConfig

    launched(monkeypatch, 1, 2, 1)
    with pytest.warns(UserWarning, match="mps.*cpu"):
        kwargs = distributed_train_kwargs(TrainConfig(preset="glm4-tiny", parallel="dp=2"))
    assert "parallelize" in kwargs and group[-1]["backend"] == "gloo" and "device_id" not in group[-1]
    with pytest.raises(DeviceUnavailableError, match="--device cpu"):
        init_distributed("mps")


def test_a_cuda_group_is_bound_to_the_local_rank(cuda, group, monkeypatch):
    from workbench.distributed.mesh import init_distributed

    launched(monkeypatch, 1, 2, 1)
    info = init_distributed("cuda")
    assert info.device.torch_device == torch.device("cuda:1") and cuda.current == 1
    assert group[0]["backend"] == "nccl" and group[0]["device_id"] == torch.device("cuda:1")


# ---- one device per rank, the same in every component ---------------------------------------------------------
def test_an_explicit_index_under_a_multi_process_launch_is_refused(cuda, group, monkeypatch):
    """`launch --nproc 2 -- train --device cuda:0`: the group of rank 1 was bound to cuda:1 while the trainer and
    comm_bench put its model and tensors on cuda:0 (DDP device_ids=[0] on a cuda:1 communicator)."""
    from workbench.distributed.mesh import init_distributed
    from workbench.errors import ConfigError

    launched(monkeypatch, 1, 2, 1)
    with pytest.raises(ConfigError, match=r"--device cuda:0.*LOCAL_RANK.*--device cuda\b.*CUDA_VISIBLE_DEVICES"):
        init_distributed("cuda:0")
    assert called(cuda, "set_device") == [] and group == []


@pytest.mark.parametrize("env", [None, (0, 1, 0)], ids=["not-launched", "launched-alone"])
def test_one_process_keeps_the_index_it_was_given(cuda, group, monkeypatch, env):
    """runner/comm_bench --device cuda:1 in one process was bound to cuda:0 (LOCAL_RANK defaults to 0)."""
    from workbench.distributed.mesh import destroy_distributed, init_distributed, process_device

    if env:
        launched(monkeypatch, *env)
    info = init_distributed("cuda:1")
    assert info.device.torch_device == torch.device("cuda:1") and cuda.current == 1
    assert process_device("cuda:1").torch_device == torch.device("cuda:1")
    assert not env or group[0]["device_id"] == torch.device("cuda:1")
    destroy_distributed()


@pytest.fixture
def rank_one(cuda, group, monkeypatch):
    """Rank 1 of 2 under torchrun, after its (recorded) process group started: what init_distributed bound."""
    import torch.distributed as dist

    from workbench.distributed.mesh import destroy_distributed, init_distributed

    launched(monkeypatch, 1, 2, 1)
    info = init_distributed("cuda")
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "nccl")
    monkeypatch.setattr(dist, "destroy_process_group", lambda: None)
    yield info
    destroy_distributed()


def test_the_trainer_uses_the_device_its_rank_was_bound_to(rank_one, monkeypatch, tmp_path):
    from workbench.train.config import TrainConfig
    from workbench.train.trainer import Trainer

    monkeypatch.setattr(Trainer, "_build", lambda self, *args: None)  # only the device choice is under test
    trainer = Trainer(TrainConfig(preset="glm4-tiny", device="cuda", out_dir=str(tmp_path / "run")))
    assert trainer.device.torch_device == torch.device("cuda:1") == rank_one.device.torch_device


def test_comm_bench_puts_its_buffers_on_the_bound_device(rank_one, monkeypatch):
    from workbench.distributed import comm_bench

    seen = []

    def stop(op, nbytes, world, device):
        seen.append(device)
        raise StopIteration

    monkeypatch.setattr(comm_bench, "_make_call", stop)
    with pytest.raises(StopIteration):
        comm_bench.bench_collectives(["all_reduce"], [1024])
    assert seen == [torch.device("cuda:1")]


def test_a_device_of_another_type_than_the_bound_one_is_refused(rank_one):
    from workbench.distributed.mesh import process_device
    from workbench.errors import ConfigError

    assert process_device("auto") is rank_one.device
    with pytest.raises(ConfigError, match="bound to cuda:1"):
        process_device("cpu")


# ---- the mesh is the run's device, not "auto" -----------------------------------------------------------------
@pytest.fixture
def gloo_world_of_one(cuda):
    """A real one-rank gloo group on a host whose (fake) cuda is what "auto" would pick."""
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_a_cpu_run_on_a_gpu_host_gets_a_cpu_mesh(gloo_world_of_one, monkeypatch):
    """--device cpu on a GPU/NPU host (notebook 03 and the runner default to cpu) built a cuda mesh over a gloo
    group: FSDP2 moved shards to cuda, TP placed DTensors on cuda while the inputs stayed on cpu."""
    from workbench.distributed import mesh

    seen = []
    monkeypatch.setattr(mesh, "init_device_mesh", lambda kind, shape, mesh_dim_names=None: seen.append(kind))
    mesh.build_mesh("dp=1")
    mesh.build_mesh("dp=1", device="cuda")  # an explicit device still wins
    assert seen == ["cpu", "cuda"]
    assert mesh.comm_device() == torch.device("cpu")


def test_parallelize_builds_its_mesh_on_the_given_device(gloo_world_of_one, monkeypatch):
    import torch.distributed as dist

    from workbench.distributed import mesh
    from workbench.distributed.parallelize import parallelize

    seen = []

    def record(kind, shape, mesh_dim_names=None):
        seen.append(kind)
        raise StopIteration

    monkeypatch.setattr(mesh, "init_device_mesh", record)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    for device in (None, "cpu", detect.Device("cuda", 1)):
        with pytest.raises(StopIteration):
            parallelize(torch.nn.Linear(2, 2), "dp=2", device=device)
    assert seen == ["cpu", "cpu", "cuda"]


def test_collectives_on_an_nccl_group_use_the_bound_device(rank_one):
    from workbench.distributed.mesh import comm_device

    assert comm_device() == torch.device("cuda:1")


def test_the_train_hook_parallelizes_on_the_bound_device(rank_one, monkeypatch):
    import sys

    from workbench.distributed.train_hooks import distributed_train_kwargs
    from workbench.train.config import TrainConfig

    seen = []
    module = sys.modules["workbench.distributed.parallelize"]
    monkeypatch.setattr(module, "parallelize", lambda model, layout, **kw: seen.append(kw) or
                        types.SimpleNamespace(module=model))
    hook = distributed_train_kwargs(TrainConfig(preset="glm4-tiny", device="cuda", parallel="dp=2"))["parallelize"]
    hook(torch.nn.Linear(2, 2), rank_one.device, types.SimpleNamespace(seq_len=16))
    assert seen[0]["device"].torch_device == torch.device("cuda:1")
