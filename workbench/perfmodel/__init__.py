"""Performance model: an analytical, calibrated simulator of cluster-scale LLM training.

``simulate(spec: dict) -> dict`` prices a training configuration (model, cluster of catalog chips, parallel layout
or ``"auto"``) and returns step time with a breakdown, memory per device, tokens/s per chip, MFU, and time and
energy to train. Method, calibration and blind spots: workbench/perfmodel/README.md. CLI: ``workbench simulate
SPEC.json``. Notebook: notebooks/05_hardware_comparison.ipynb.
"""

from workbench.perfmodel.api import simulate
from workbench.perfmodel.efficiency import Efficiency, default_efficiency
from workbench.perfmodel.shapes import (ModelShape, preset_names, shape_from_config, shape_from_dims,
                                        shape_from_preset)
from workbench.perfmodel.spec import InfeasibleError, Layout, LayoutError, MemoryCapacityError, parse_spec

__all__ = ["Efficiency", "InfeasibleError", "Layout", "LayoutError", "MemoryCapacityError", "ModelShape",
           "default_efficiency", "parse_spec", "preset_names", "shape_from_config", "shape_from_dims",
           "shape_from_preset", "simulate"]
