"""Distributed training on a device mesh, through PyTorch's own engine (torchrun, DeviceMesh, DDP, FSDP2, DTensor
tensor parallel, torch.distributed.pipelining), plus expert parallel with all_to_all.

One module per job, picotron style:
- ``layout.py``   parse and validate ``--parallel dp=2,tp=1,pp=1,ep=1``;
- ``mesh.py``     join the process group (backend from the device layer) and build the named DeviceMesh;
- ``ddp.py``, ``fsdp.py``, ``tp.py``, ``pp.py``, ``ep.py``: one parallelism each, applied to the unchanged model;
- ``parallelize.py`` composes them from a layout;
- ``teaching/``   hand-written DDP (naive -> bucketed -> overlapped) and ZeRO-1, to read next to torch's;
- ``comm_bench.py`` the ``workbench comm-bench`` command; ``launcher/`` + ``launch_cli.py`` ``workbench launch``;
- ``runner.py``   a minimal loop comparing layouts with one process; ``train_hooks.py`` what ``workbench train``
                  does under torchrun.
Notebook: notebooks/03_distributed.ipynb.
"""

from workbench.distributed.launcher import LaunchConfig, LaunchResult, launch, write_rank_results
from workbench.distributed.layout import ParallelLayout, parse_layout
from workbench.distributed.mesh import build_mesh, destroy_distributed, init_distributed
from workbench.distributed.parallelize import ParallelModel, parallelize

__all__ = ["LaunchConfig", "LaunchResult", "ParallelLayout", "ParallelModel", "build_mesh", "destroy_distributed",
           "init_distributed", "launch", "parallelize", "parse_layout", "write_rank_results"]
