"""Kernel benchmark from a script: every op x implementation on one device, with the correctness check first.

    python benchmarks/kernels.py                          # this machine's default device, 'small' sizes
    python benchmarks/kernels.py --device cuda --sizes large --dtype bf16
    python benchmarks/kernels.py --mode train --threads 1 --out runs/kernels

Runs unchanged on cpu, cuda and npu: the same correctness suite (workbench/kernels/correctness.py) and the same
benchmark (workbench/kernels/bench.py) as ``workbench kernels check`` / ``workbench kernels bench``; the check
covers the ``--ops`` benchmarked, its results go into the JSON (``correctness``), a failed check makes the exit
status 1 (as the CLI's), and the failing kernels' rows are flagged ``check_failed`` without a speed-up. Writes
``kernels_bench.json`` and ``kernels_bench_roofline.html`` to --out; paste the printed table into
benchmarks/README.md ("Kernels") with the date and machine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def main(argv: list[str] | None = None) -> int:
    from workbench.device import get_device
    from workbench.device.detect import dtype_name, parse_dtype
    from workbench.kernels.bench import format_table, run_benchmark, write_outputs

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default=None, help="fp32, bf16, fp16 (default: the device's training dtype)")
    parser.add_argument("--sizes", default="small", help="tiny, small (cpu), large (gpu / npu)")
    parser.add_argument("--mode", default="forward", choices=("forward", "train"))
    parser.add_argument("--ops", default=None, help="comma-separated ops (default: all)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--moe-experts", default="8,16,32,64")
    parser.add_argument("--skip-check", action="store_true", help="skip the correctness suite")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (1 gives steadier numbers on a machine shared with other jobs)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "figures"))
    args = parser.parse_args(argv)
    ops, experts = check_args(parser, args)
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    dev = get_device(args.device)
    dtype = parse_dtype(args.dtype) if args.dtype else dev.training_dtype

    print(f"# kernels on {dev.torch_device} ({dev.name}), {dtype_name(dtype)}, sizes={args.sizes}, mode={args.mode}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} cpu threads")
    correctness = None if args.skip_check else run_check(str(dev.torch_device), dtype, ops)
    result = run_benchmark(str(dev.torch_device), dtype, args.sizes, ops, mode=args.mode, repeats=args.repeats,
                           moe_experts=experts)
    flag_failed(result, correctness)
    print(format_table(result))
    paths = write_outputs(result, args.out)
    print(f"\nwrote {paths['json']}" + (f" and {paths['html']}" if paths["html"] else f" ({paths['note']})"))
    if correctness and correctness["failed"]:
        print(f"{len(correctness['failed'])} correctness check(s) failed: exit 1 (their kernels' rows are flagged "
              "check_failed, without a speed-up)")
        return 1
    return 0


def check_args(parser: argparse.ArgumentParser, args) -> tuple[list[str] | None, tuple[int, ...]]:
    """Every argument checked before the correctness suite and the benchmark run (a bad --sizes used to be found
    only after the whole suite); returns (ops or None for all, MoE expert counts). One line each, via parser.error."""
    from workbench.device.detect import parse_dtype
    from workbench.errors import WorkbenchError
    from workbench.kernels.bench import PRESETS
    from workbench.kernels.registry import check_choice

    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.sizes not in PRESETS:
        parser.error(f"--sizes must be one of {', '.join(PRESETS)}, got {args.sizes!r}")
    if args.dtype:
        try:
            parse_dtype(args.dtype)
        except ValueError as e:
            parser.error(f"--dtype: {e}")
    ops = [op.strip() for op in args.ops.split(",") if op.strip()] if args.ops else None
    try:
        check_choice(ops, None)
    except WorkbenchError as e:
        parser.error(f"--ops: {e}")
    try:
        experts = tuple(int(e) for e in args.moe_experts.split(",") if e.strip())
    except ValueError:
        experts = (0,)
    if any(n < 1 for n in experts):
        parser.error(f"--moe-experts must be comma-separated positive integers, got {args.moe_experts!r}")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        parser.error(f"--out {args.out!r} is a file; give a folder for the JSON and HTML")
    return ops, experts


def run_check(device: str, dtype, ops: list[str] | None) -> dict:
    """The correctness suite of the benchmarked ops (as ``workbench kernels check``), printed and returned for the
    JSON: {"passed", "total", "failed": [each failed check]}. fp32 runs are also checked in bf16."""
    from workbench.device.detect import parse_dtype
    from workbench.kernels.correctness import check_all

    fp32 = parse_dtype("fp32")
    results = check_all(device, ops, dtypes=(dtype,) if dtype != fp32 else (dtype, parse_dtype("bf16")))
    failed = [r for r in results if not r.passed]
    print(f"correctness: {len(results) - len(failed)}/{len(results)} checks passed")
    for r in failed:
        print(f"  FAILED {r.op}/{r.impl} {r.case} {r.dtype}: fwd {r.forward_error:.2e} bwd {r.backward_error:.2e}"
              f" tol {r.tolerance:.0e} {r.note}")
    return {"passed": len(results) - len(failed), "total": len(results), "failed": [r.as_dict() for r in failed]}


def flag_failed(result: dict, correctness: dict | None) -> None:
    """Record the check in ``result`` and flag what it invalidates: a row whose implementation (or whose op's
    reference) failed gets ``check_failed`` and no speed-up, and comparisons involving it move to
    ``comparisons_of_failed_kernels``. A wrong kernel's speed is no result. ``check_failed`` is None unchecked."""
    result["correctness"] = correctness  # None with --skip-check
    bad = {(f["op"], f["impl"]) for f in correctness["failed"]} if correctness else set()
    for row in result["rows"]:
        row["check_failed"] = (row["op"], row["impl"]) in bad if correctness else None
        if row["check_failed"] or (row["op"], "reference") in bad:
            row["speedup_vs_reference"] = None
    # comparisons (attention / moe: torch vs reference) name their op first in "what"
    failed_cmp = [c for c in result["comparisons"]
                  if {(c["what"].split()[0], "torch"), (c["what"].split()[0], "reference")} & bad]
    result["comparisons"] = [c for c in result["comparisons"] if c not in failed_cmp]
    if failed_cmp:
        result["comparisons_of_failed_kernels"] = failed_cmp

if __name__ == "__main__":
    sys.exit(main())
