"""Training: config, trainer (with ``train_step`` for profilers), optimizers incl. Muon, schedule, checkpoints, MFU.

```
from workbench.train import TrainConfig, Trainer, train
summary = train(TrainConfig(preset="glm4-tiny", steps=200, out_dir="runs/demo"))
```
The CLI is ``workbench train`` (workbench/train/cli.py); the notebook is notebooks/01_training.ipynb.
How the distributed package plugs in: see the module docstring of workbench/train/trainer.py.
Names are imported lazily, so ``workbench train`` can set OpenMP settings before torch loads.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "TrainConfig": "workbench.train.config",
    "Muon": "workbench.train.optim", "build_optimizer": "workbench.train.optim",
    "newton_schulz_orthogonalize": "workbench.train.optim",
    "WarmupCosine": "workbench.train.schedule", "lr_multiplier": "workbench.train.schedule",
    "Trainer": "workbench.train.trainer", "train": "workbench.train.trainer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'workbench.train' has no attribute {name!r}")
