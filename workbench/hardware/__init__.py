"""Hardware catalog: accelerators with peak FLOP/s, memory, interconnect and power, each with source and confidence.

The device layer reads it to name a known chip's peak; the performance model (``workbench.perfmodel``) and
notebooks/05_hardware_comparison.ipynb read it to compare chips. Custom chips come from a dict or a file
(``chip_from_dict``, ``load_chip_file``, ``register_chip``); ``this_machine()`` builds one from measured probes.
"""

from workbench.hardware.catalog import (
    Chip,
    FieldSource,
    UnknownChipError,
    all_chips,
    catalog_table,
    chip_from_dict,
    find_chip,
    load_catalog,
    load_chip_file,
    match_device_name,
    register_chip,
    unregister_chip,
)
from workbench.hardware.this_machine import measure_gloo_allreduce, this_machine

__all__ = [
    "Chip", "FieldSource", "UnknownChipError", "all_chips", "catalog_table", "chip_from_dict", "find_chip",
    "load_catalog", "load_chip_file", "match_device_name", "measure_gloo_allreduce", "register_chip",
    "this_machine", "unregister_chip",
]
