"""Ascend chip generations from the SoC name torch_npu reports (``torch.npu.get_device_name()``).

The names follow torch_npu's ``SocVersion`` table (c10_npu/NPUVariables.h), which numbers them by generation:

    100-104  Ascend910PremiumA, Ascend910ProA, Ascend910A, Ascend910ProB, Ascend910B   first Ascend 910 (2019)
    200-205  Ascend310P1 ... Ascend310P7                                                  inference cards
    220-225  Ascend910B1, B2, B2C, B3, B4, B4_1                                           Atlas A2 (the 910B)
    240-243  Ascend310B1 ... B4                                                           edge modules
    250-255  Ascend910_9391, _9392, _9381, _9382, _9372, _9362 (older builds: 910C1-C4)  Atlas A3 (the 910C)
    260      Ascend950 (CANN also reports Ascend910_95xx, e.g. Ascend910_9599)             Ascend 950

Two consequences the rest of the workbench depends on:
- a plain "Ascend910B" (no digit) is SoC 104, a first-generation 910, not the 2023 Ascend 910B; torch_npu's
  bf16 support starts at Ascend910B1;
- an Atlas A3 device is one *die* of a two-die 910C package, so its peak FLOP/s is half the package's.

Huawei's torch_npu API reference lists the fused operators the npu kernels call (npu_rms_norm, npu_rotary_mul,
npu_swiglu, npu_fusion_attention, npu_grouped_matmul) for the Atlas A2 and A3 training series; other generations
use the torch implementations. Pure Python: importable without torch_npu. Used by ``workbench.kernels.npu_ops``
(notebook 02 lists its choices); the hardware catalog matches the same names through its own
``device_name_patterns`` column (tests/test_device.py keeps the two in agreement).
"""

from __future__ import annotations

import re

FIRST_910 = "Ascend 910 (first generation)"
A2 = "Atlas A2 (Ascend 910B)"
A3 = "Atlas A3 (Ascend 910C die)"
A5 = "Ascend 950"
INFERENCE_310 = "Ascend 310 (inference)"

# the generations for which Huawei documents the fused training operators the npu kernels use
FUSED_OPERATOR_GENERATIONS = (A2, A3)

_RULES = (  # (pattern on the lower-cased name without spaces, generation); the first match wins
    (r"ascend910(premiuma|proa|a|prob|b)$", FIRST_910),
    (r"ascend910b\d", A2),
    (r"ascend910_93\d\d|ascend910c\d", A3),
    (r"ascend950|ascend910_95\d\d", A5),  # CANN also names the 950 parts Ascend910_95xx (e.g. Ascend910_9599)
    (r"ascend310", INFERENCE_310),
)


def ascend_generation(device_name: str) -> str | None:
    """The generation of an Ascend SoC name ('Ascend910B2' -> Atlas A2), or None when the name is not one we know."""
    name = device_name.lower().replace(" ", "")
    for pattern, generation in _RULES:
        if re.match(pattern, name):
            return generation
    return None


def fused_operators_problem(device_name: str) -> str | None:
    """Why the fused torch_npu operators should not be used on ``device_name``, or None when they are documented for
    it (Atlas A2 / A3)."""
    generation = ascend_generation(device_name)
    if generation in FUSED_OPERATOR_GENERATIONS:
        return None
    known = f"a {generation}" if generation else "not an Ascend SoC name the workbench knows"
    return (f"torch_npu documents its fused operators for Atlas A2/A3 (Ascend910B1-B4, Ascend910_93xx) only; "
            f"this device reports {device_name!r} ({known}), so the torch implementations run")


__all__ = ["A2", "A3", "A5", "FIRST_910", "FUSED_OPERATOR_GENERATIONS", "INFERENCE_310", "ascend_generation",
           "fused_operators_problem"]
