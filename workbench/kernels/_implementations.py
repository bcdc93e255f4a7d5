"""Imports every implementation module so that its ``@register`` calls run. Add new modules here.

None of these imports a backend at import time (triton and torch_npu are imported on first use), so listing
kernels is cheap and works on any machine.
"""

from workbench.kernels import reference  # noqa: F401
from workbench.kernels import torch_ops  # noqa: F401
from workbench.kernels import torch_autograd_ops  # noqa: F401
from workbench.kernels import sparse_csr_ops  # noqa: F401
from workbench.kernels import npu_ops  # noqa: F401
from workbench.kernels import triton_ops  # noqa: F401
