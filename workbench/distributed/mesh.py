"""Process-group start-up and the device mesh: the one place that calls ``init_process_group``.

``init_distributed()`` reads the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT), takes the
backend from the device layer (gloo on cpu, nccl on cuda, hccl on npu) and binds the process to its local device.
Under a launch of several processes each rank takes the device of its LOCAL_RANK, so ``--device cuda`` (not
``cuda:0``: an explicit index is refused there; pick the devices with CUDA_VISIBLE_DEVICES); a single process keeps
the index it is given. ``process_device()`` is that bound device: the trainer and comm_bench compute on it.
``build_mesh(layout)`` turns a ``ParallelLayout`` into a named ``DeviceMesh`` (pp, dp, fsdp, ep, tp).
Used by the trainer, the tests and notebooks/03_distributed.ipynb (through the launched workers).
"""

from __future__ import annotations

import datetime
import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from workbench.device import Device, DeviceUnavailableError, get_device
from workbench.device.detect import DIST_BACKENDS, VISIBLE_DEVICES_ENV, parse_device_spec
from workbench.distributed.layout import ParallelLayout, parse_layout
from workbench.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: Device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from the torchrun environment; (0, 1, 0) outside one."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def is_launched() -> bool:
    """True inside a torchrun worker (the environment names a world)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


# The device type whose tensors a backend's collectives take, from the device layer's backend table (gloo also
# takes cuda; we give it cpu tensors); the backends other than gloo bind a communicator to one device
# (init_process_group's device_id).
BACKEND_DEVICE_TYPES = {"gloo": "cpu", **{b: t for t, b in DIST_BACKENDS.items() if b != "gloo"}}
DEVICE_BOUND_BACKENDS = tuple(b for b, t in BACKEND_DEVICE_TYPES.items() if t != "cpu")

# What init_distributed bound this launched process to, until destroy_distributed (read by process_device).
_BOUND: DistInfo | None = None


def init_distributed(device: str | Device = "auto", timeout_s: float = 300.0) -> DistInfo:
    """Join the process group torchrun set up (idempotent). Outside torchrun: a world of one, no group.

    Several ranks on mps cannot all-reduce (gloo carries cpu and cuda tensors only, and torch has no mps
    backend): ``auto`` then runs them on cpu with a warning, and an explicit mps is refused."""
    global _BOUND
    rank, world_size, local_rank = env_world()
    dev = _launch_device(device, world_size, local_rank)
    if dev.is_accelerator:  # a kept index is already current (get_device); otherwise bind the LOCAL_RANK's device
        dev = dev.set_current(None if dev.index is not None else local_rank)
    backend = dev.dist_backend
    if is_launched() and not dist.is_initialized():
        timeout = datetime.timedelta(seconds=timeout_s)
        # torchrun hands every restart of the group the same key-value store. Without a fresh namespace per
        # attempt, a restarted rank can read the address its dead peer published last time and fail to connect
        # (seen with gloo under --max-restarts), so the keys of attempt N live under "attempt_N/".
        store, rank, world_size = next(dist.rendezvous("env://", timeout=timeout))
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group(backend=backend, store=dist.PrefixStore(f"attempt_{attempt}/", store), rank=rank,
                                world_size=world_size, timeout=timeout,
                                **({"device_id": dev.torch_device} if backend in DEVICE_BOUND_BACKENDS else {}))
    info = DistInfo(rank, world_size, local_rank, dev, backend)
    if is_launched():
        _BOUND = info
    return info


def process_device(device: str | Device = "auto") -> Device:
    """The device this process computes on: inside a launched run, the one ``init_distributed`` bound (each rank
    its LOCAL_RANK's), so the model, batches and buffers sit where the process group expects them; elsewhere
    ``get_device(device)``. Parsing --device again put every rank of ``--device cuda:0`` on device 0."""
    info = _BOUND
    if info is None or not dist.is_initialized():
        return get_device(device)
    kind, _ = parse_device_spec(device)
    if kind not in ("auto", info.device.type):
        raise ConfigError(f"device {device} asked for, but this process joined its process group bound to "
                          f"{info.device.torch_device}; use the same --device for both")
    return info.device


def _launch_device(device: str | Device, world_size: int, local_rank: int) -> Device:
    kind, index = parse_device_spec(device)
    if world_size > 1 and index is not None and kind not in ("cpu", "auto"):  # checked before anything is bound
        visible = VISIBLE_DEVICES_ENV.get(kind, "the visible-devices variable")
        raise ConfigError(f"--device {kind}:{index}: under a launch of {world_size} processes each rank takes the "
                          f"device of its LOCAL_RANK (this one {kind}:{local_rank}); pass --device {kind} and choose "
                          f"the devices with {visible}")
    dev = get_device(device)
    if dev.type != "mps" or world_size == 1:
        return dev
    if str(device).strip().lower() != "auto":
        raise DeviceUnavailableError(f"{world_size} ranks on mps cannot exchange tensors (torch.distributed has no mps "
                                     f"backend; gloo carries cpu tensors): run a multi-process launch with --device cpu")
    warnings.warn(f"device auto is mps here, which {world_size} ranks cannot all-reduce on (torch.distributed has no "
                  f"mps backend); running them on cpu with gloo")
    return get_device("cpu")


def destroy_distributed() -> None:
    global _BOUND
    _BOUND = None
    if dist.is_initialized():
        dist.destroy_process_group()


def build_mesh(layout: ParallelLayout | str, device: str | Device | None = None) -> DeviceMesh:
    """A DeviceMesh with one named dim per active parallelism (``mesh["tp"]``, ``mesh["dp"]``...), on ``device``
    (the run's: ``DistInfo.device``). Without one, the device type the process group's backend carries (gloo: cpu),
    never "auto": ``--device cpu`` on a GPU host got a cuda mesh over a gloo group. No group yet: cpu."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    layout = parse_layout(layout, world_size=world)
    names, shape = layout.mesh_shape()
    return init_device_mesh(_mesh_device_type(device), shape, mesh_dim_names=names)


def _mesh_device_type(device: str | Device | None) -> str:
    if device is None:
        return comm_device().type if dist.is_initialized() else "cpu"
    kind, _ = parse_device_spec(device)  # only the type: naming the device must not rebind this rank
    return get_device(kind).type if kind == "auto" else kind


def submesh(mesh: DeviceMesh, name: str) -> DeviceMesh | None:
    """``mesh[name]`` when the mesh has that dim, else None."""
    return mesh[name] if mesh.mesh_dim_names and name in mesh.mesh_dim_names else None


def comm_device(group=None) -> torch.device:
    """Where a tensor for a collective on ``group`` lives: cpu under gloo; otherwise the device init_distributed
    bound this rank to (its LOCAL_RANK's), else the backend's device type (the current device)."""
    kind = BACKEND_DEVICE_TYPES.get(dist.get_backend(group), "cpu")
    if kind == "cpu":
        return torch.device("cpu")
    bound = _BOUND.device if _BOUND is not None else None
    return bound.torch_device if bound is not None and bound.type == kind else torch.device(kind)


def all_reduce_mean(value: float, group=None) -> float:
    """Average a python number over a process group (a no-op outside a distributed run)."""
    if not dist.is_initialized():
        return float(value)
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=comm_device(group))
    dist.all_reduce(tensor, group=group)
    return float(tensor.item()) / dist.get_world_size(group)
