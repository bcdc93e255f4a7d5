"""Imports every implementation module so that its ``@register`` calls run. Add new modules here."""

from workbench.kernels import reference  # noqa: F401
