"""The GLM model family: config, presets, modules and exact accounting.

``from workbench.model import ModelConfig, build_model, get_preset, list_presets, ModelOutput``.
Used by every notebook that builds a model, the trainer, the distributed launcher and the performance model.
"""

from workbench.model.config import ModelConfig
from workbench.model.glm import GLMForCausalLM, ModelOutput, build_model
from workbench.model.presets import FULL_SIZE, PUBLISHED, get_preset, list_presets

__all__ = ["FULL_SIZE", "GLMForCausalLM", "ModelConfig", "ModelOutput", "PUBLISHED", "build_model", "get_preset",
           "list_presets"]
