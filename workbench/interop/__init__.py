"""Interoperability with other ecosystems' checkpoint formats (``hf``: transformers GLM checkpoints)."""
