"""``workbench info``: what this machine is, what the workbench will use on it, and how fast it is.

Prints the device table, library versions, the training dtype, and the measured fp32 GEMM peak and memory
bandwidth (a few seconds of probing, cached per machine) as a table, or as JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import sys

from workbench import cpu_allocator
from workbench.device.detect import _import_torch_npu, device_table, dtype_name, get_device
from workbench.device.probes import measure_gemm_peak, measure_memory_bandwidth

LIBRARIES = ("torch", "torch-npu", "triton", "numpy", "transformers", "tokenizers", "safetensors", "plotly",
             "ipywidgets", "papermill", "jupyterlab")


def library_versions() -> dict[str, str | None]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def collect_info(device: str = "auto", probe: bool = True) -> dict:
    """Everything ``workbench info`` shows, as a JSON-able dict. ``probe=False`` skips the timing probes."""
    from workbench import __version__

    dev = get_device(device)
    info = {
        "workbench": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "devices": device_table(),
        "selected": dev.describe(),
        "libraries": library_versions(),
        "torch_npu_status": _import_torch_npu()[1] or "loaded",
        "cpu_allocator": cpu_allocator.describe(),
    }
    dtype = dev.training_dtype
    peak = dev.peak_flops(dtype, allow_probe=probe)
    info["peak_flops"] = {"dtype": dtype_name(dtype), "value": peak.value, "source": peak.source}
    info["memory_bandwidth"] = dev.memory_bandwidth(allow_probe=probe).as_dict()
    if probe:
        # Always measure here too (a datasheet peak is not what this machine reaches).
        flops, how = measure_gemm_peak(dev, dtype)
        bandwidth, bw_how = measure_memory_bandwidth(dev)
        info["measured"] = {"gemm_flops": flops, "gemm_source": how, "bandwidth_bytes_s": bandwidth,
                            "bandwidth_source": bw_how}
    return info


def format_table(info: dict) -> str:
    lines = [f"workbench {info['workbench']}  python {info['python']}  {info['platform']}", "", "devices:"]
    header = f"  {'type':5} {'available':9} {'count':5} {'backend':7} {'dtype':5} name / reason"
    lines.append(header)
    for row in info["devices"]:
        detail = row["name"] if row["available"] else row["reason"]
        lines.append(f"  {row['type']:5} {str(row['available']):9} {row['count']:<5} {row['dist_backend']:7} "
                     f"{row['training_dtype'] or '-':5} {detail}")
    sel = info["selected"]
    lines += ["", f"selected: {sel['torch_device']} ({sel['name']}), training dtype {sel['training_dtype']} "
                  f"[{sel['training_dtype_source']}]"]
    peak = info["peak_flops"]
    value = "unknown" if peak["value"] is None else f"{peak['value'] / 1e9:,.1f} GFLOP/s"
    lines.append(f"peak {peak['dtype']} FLOP/s used for MFU: {value}  [{peak['source']}]")
    if "measured" in info:
        m = info["measured"]
        lines.append(f"measured GEMM peak: {m['gemm_flops'] / 1e9:,.1f} GFLOP/s  [{m['gemm_source']}]")
        lines.append(f"measured memory bandwidth: {m['bandwidth_bytes_s'] / 1e9:,.1f} GB/s  [{m['bandwidth_source']}]")
    lines += ["", "libraries:"]
    lines += [f"  {name:13} {version or 'not installed'}" for name, version in info["libraries"].items()]
    lines.append(f"  torch_npu status: {info['torch_npu_status']}")
    alloc = info["cpu_allocator"]
    lines.append(f"cpu allocator: {alloc['in_use']}" + (f"  ({alloc['hint']})" if alloc["hint"] else ""))
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="device to describe: auto, cpu, cuda, npu, xpu, mps")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--no-probe", action="store_true",
                        help="skip the GEMM peak and bandwidth probes (a CPU with bf16 instructions still runs the "
                             "short bf16-vs-fp32 check that picks its training dtype, once, cached)")


def run(args: argparse.Namespace) -> int:
    info = collect_info(args.device, probe=not args.no_probe)
    if args.json:
        json.dump(info, sys.stdout, indent=2)
        print()
    else:
        print(format_table(info))
    return 0
