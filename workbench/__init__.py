"""workbench: train GLM-family language models on whatever accelerator is at hand.

The library is thin on purpose; each subpackage has one job and a docstring naming the notebook that uses it:

- ``workbench.device``      one answer to every hardware question (device, backend, dtype, timers, peaks)
- ``workbench.model``       GLM-4 dense, GLM-4.5 MoE, GLM-5 (MLA + DSA + MTP) and their exact accounting
- ``workbench.kernels``     per-device kernel registry (reference / torch / triton / npu)
- ``workbench.data``        corpus -> tokenizer -> packed token file -> loader
- ``workbench.train``       the trainer, checkpoints, metrics and MFU
- ``workbench.distributed`` launcher and DDP / FSDP2 / TP / PP / EP plans applied to an unchanged model
- ``workbench.profiling``   traces, op tables, step breakdowns
- ``workbench.hardware``    accelerator catalog
- ``workbench.perfmodel``   analytical simulator of cluster-scale training
"""

__version__ = "0.1.0"
