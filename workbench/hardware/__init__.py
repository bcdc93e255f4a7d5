"""Hardware catalog: accelerators with peak FLOP/s, memory, interconnect and power, each with source and confidence.

The device layer reads it to name a known chip's peak; the performance model (``workbench.perfmodel``) and
notebooks/05_hardware_comparison.ipynb read it to compare chips.
"""

from workbench.hardware.catalog import Chip, find_chip, load_catalog, match_device_name

__all__ = ["Chip", "find_chip", "load_catalog", "match_device_name"]
