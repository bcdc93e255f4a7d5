"""The device layer: the one place that knows about torch.cuda, torch.npu and friends.

Every other module asks this package about the hardware: which device to use, which distributed backend goes with
it, how to synchronize and time, how much memory is in use, whether bf16 is fast here (and so which dtype to train
in), and what the peak FLOP/s and memory bandwidth are (from the hardware catalog, or measured by a short probe).
A test fails if ``torch.cuda`` or ``torch.npu`` appears anywhere else in the library.

Used by every notebook; ``notebooks/00_quickstart.ipynb`` shows its device table.
"""

from workbench.device.detect import (
    Device,
    DeviceUnavailableError,
    SUPPORTED_DEVICE_TYPES,
    available_device_types,
    device_table,
    get_device,
)
from workbench.device.probes import PeakEstimate, measure_gemm_peak, measure_memory_bandwidth

__all__ = [
    "Device",
    "DeviceUnavailableError",
    "PeakEstimate",
    "SUPPORTED_DEVICE_TYPES",
    "available_device_types",
    "device_table",
    "get_device",
    "measure_gemm_peak",
    "measure_memory_bandwidth",
]
