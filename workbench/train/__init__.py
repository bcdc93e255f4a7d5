"""Training: config, trainer (with ``train_step`` for profilers), optimizers incl. Muon, schedule, checkpoints, MFU.

```
from workbench.train import TrainConfig, Trainer, train
summary = train(TrainConfig(preset="glm4-tiny", steps=200, out_dir="runs/demo"))
```
The CLI is ``workbench train`` (workbench/train/cli.py); the notebook is notebooks/01_training.ipynb.
How the distributed package plugs in: see the module docstring of workbench/train/trainer.py.
"""

from workbench.train.config import TrainConfig
from workbench.train.optim import Muon, build_optimizer, newton_schulz_orthogonalize
from workbench.train.schedule import WarmupCosine, lr_multiplier
from workbench.train.trainer import Trainer, train

__all__ = ["Muon", "TrainConfig", "Trainer", "WarmupCosine", "build_optimizer", "lr_multiplier",
           "newton_schulz_orthogonalize", "train"]
