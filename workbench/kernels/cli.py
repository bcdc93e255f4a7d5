"""``workbench kernels``: list the kernel implementations usable here, check them, or benchmark them.

    workbench kernels list  [--device auto] [--json]
    workbench kernels check [--device auto] [--dtypes fp32,bf16] [--ops ...] [--impls ...] [--json]
    workbench kernels bench [--device auto] [--dtype fp32] [--sizes small] [--mode forward|train] [--out DIR]

``list`` shows every op x implementation, whether it runs here (and why not), and which one is selected (the
``WORKBENCH_KERNELS`` env var overrides, e.g. ``WORKBENCH_KERNELS=attention=reference``). ``check`` runs the
correctness harness (workbench/kernels/correctness.py). ``bench`` writes ``kernels_bench.json`` and a plotly
roofline chart ``kernels_bench_roofline.html`` into --out (default: runs/kernels/).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from workbench.errors import WorkbenchError
from workbench.params import output_folder


def _csv(text: str | None) -> list[str] | None:
    return [item.strip() for item in text.split(",") if item.strip()] if text else None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    lister = sub.add_parser("list", help="implementations per op, available here or why not, and the selection")
    lister.add_argument("--device", default="auto", help="device to list for: auto, cpu, cuda, npu, ...")
    lister.add_argument("--json", action="store_true", help="print JSON instead of a table")

    check = sub.add_parser("check", help="every implementation against the reference, forward and backward")
    check.add_argument("--device", default="auto")
    check.add_argument("--dtypes", default="fp32,bf16", help="comma-separated: fp32, bf16, fp16")
    check.add_argument("--ops", default=None, help="comma-separated ops (default: all)")
    check.add_argument("--impls", default=None, help="comma-separated implementations (default: all available)")
    check.add_argument("--json", action="store_true")

    bench = sub.add_parser("bench", help="time each op x implementation; GFLOP/s, GB/s, %% of roofline; JSON + chart")
    bench.add_argument("--device", default="auto")
    bench.add_argument("--dtype", default=None, help="fp32, bf16 or fp16 (default: the device's training dtype)")
    bench.add_argument("--sizes", default="small", help="size preset: tiny, small (cpu), large (gpu/npu)")
    bench.add_argument("--ops", default=None, help="comma-separated ops (default: all)")
    bench.add_argument("--impls", default=None, help="comma-separated implementations (default: all available)")
    bench.add_argument("--mode", default="forward", choices=("forward", "train"))
    bench.add_argument("--repeats", type=int, default=5)
    bench.add_argument("--moe-experts", default="8,16,32,64", help="expert counts for the grouped-vs-loop sweep")
    bench.add_argument("--threads", type=int, default=None, help="torch cpu threads (1: steadier on shared machines)")
    bench.add_argument("--no-probe", action="store_true", help="do not probe peaks (roofline %% unknown off-catalog)")
    bench.add_argument("--out", type=output_folder, default="runs/kernels",
                       help="folder for kernels_bench.json and the roofline HTML")
    bench.add_argument("--json", action="store_true", help="print the JSON instead of the table")


def list_rows(device: str = "auto") -> tuple[str, list[dict]]:
    from workbench.device import DeviceUnavailableError, get_device
    from workbench.device.detect import SUPPORTED_DEVICE_TYPES
    from workbench.kernels import availability_table

    try:
        device_type = get_device(device).type
    except DeviceUnavailableError:
        # Listing for a device this machine lacks is still useful: it shows what would run there and what is
        # missing here (e.g. "torch_npu is not installed").
        device_type = str(device).split(":")[0].strip().lower()
        if device_type not in SUPPORTED_DEVICE_TYPES:
            raise
    return device_type, availability_table(device_type)


def format_list(device_type: str, rows: list[dict]) -> str:
    lines = [f"kernels on {device_type} (* = selected; override with WORKBENCH_KERNELS=op=impl,...)", ""]
    lines.append(f"  {'op':<22}{'impl':<11}{'status':<10}why not / what")
    errors = sorted({row["selection_error"] for row in rows if row["selection_error"]})
    lines += [f"! {error}" for error in errors]
    for row in rows:
        mark = "*" if row["selected"] else " "
        status = "ok" if row["available"] else "-"
        lines.append(f"{mark} {row['op']:<22}{row['impl']:<11}{status:<10}{row['reason'] or row['description']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.action == "list":
        device_type, rows = list_rows(args.device)
        print(json.dumps(rows, indent=2) if args.json else format_list(device_type, rows))
        return 0
    if args.action == "check":
        return _check(args)
    return _bench(args)


def _check(args) -> int:
    from workbench.device import get_device
    from workbench.device.detect import parse_dtype
    from workbench.kernels.correctness import check_all

    dev = get_device(args.device)
    dtypes = tuple(parse_dtype(d) for d in _csv(args.dtypes) or ["fp32"])
    results = check_all(str(dev.torch_device), _csv(args.ops), _csv(args.impls), dtypes)
    if not results:  # "0/0 checks passed" and exit 0 read as a pass
        raise WorkbenchError(f"nothing to check on {dev.type}: none of the chosen implementations "
                             f"({args.impls or 'all'}) of {args.ops or 'any op'} runs here "
                             f"(`workbench kernels list` says why)")
    if args.json:
        print(json.dumps([r.as_dict() for r in results], indent=2))
    else:
        print(f"{'op':<22}{'impl':<11}{'case':<34}{'dtype':<6}{'fwd err':>10}{'bwd err':>10}{'tol':>8}  ok")
        for r in results:
            print(f"{r.op:<22}{r.impl:<11}{r.case[:33]:<34}{r.dtype:<6}{r.forward_error:>10.2e}"
                  f"{r.backward_error:>10.2e}{r.tolerance:>8.0e}  {'yes' if r.passed else 'NO ' + r.note}")
    failed = [r for r in results if not r.passed]
    # with --json the summary goes to stderr, so stdout is one JSON document (as `kernels bench --json` does)
    print(f"{len(results) - len(failed)}/{len(results)} checks passed on {dev.torch_device}",
          file=sys.stderr if args.json else sys.stdout)
    return 1 if failed else 0


def _bench(args) -> int:
    from workbench.device import get_device
    from workbench.device.detect import parse_dtype
    from workbench.kernels.bench import format_table, run_benchmark, write_outputs

    if args.repeats < 1:
        raise WorkbenchError(f"--repeats must be >= 1, got {args.repeats}")
    if args.threads is not None:
        if args.threads < 1:
            raise WorkbenchError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    dev = get_device(args.device)
    dtype = parse_dtype(args.dtype) if args.dtype else dev.training_dtype
    try:
        experts = tuple(int(e) for e in _csv(args.moe_experts) or [])
    except ValueError:
        raise WorkbenchError(f"--moe-experts must be comma-separated integers, got {args.moe_experts!r}") from None
    out = Path(args.out)
    if out.exists() and not out.is_dir():  # found now, not after the whole benchmark has run
        raise WorkbenchError(f"--out {str(out)!r} is a file; give a folder for the JSON and HTML")
    result = run_benchmark(str(dev.torch_device), dtype, args.sizes, _csv(args.ops), _csv(args.impls), args.mode,
                           args.repeats, allow_probe=not args.no_probe, moe_experts=experts)
    paths = write_outputs(result, out)
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    # with --json, stdout holds only the JSON (pipe it to jq / json.load); the note goes to stderr
    wrote = f"{paths['json']} and {paths['html']}" if paths.get("html") else f"{paths['json']} ({paths.get('note')})"
    print(f"\nwrote {wrote}", file=sys.stderr if args.json else sys.stdout)
    return 0
