"""Kernel benchmark from a script: every op x implementation on one device, with the correctness check first.

    python benchmarks/kernels.py                          # this machine's default device, 'small' sizes
    python benchmarks/kernels.py --device cuda --sizes large --dtype bf16
    python benchmarks/kernels.py --mode train --threads 1 --out runs/kernels

Runs unchanged on cpu, cuda and npu: the same correctness suite (workbench/kernels/correctness.py) and the same
benchmark (workbench/kernels/bench.py) as ``workbench kernels check`` / ``workbench kernels bench``. Writes
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
    from workbench.kernels.correctness import check_all

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
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)

    dev = get_device(args.device)
    dtype = parse_dtype(args.dtype) if args.dtype else dev.training_dtype
    import torch

    print(f"# kernels on {dev.torch_device} ({dev.name}), {dtype_name(dtype)}, sizes={args.sizes}, mode={args.mode}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} cpu threads")
    if not args.skip_check:
        results = check_all(str(dev.torch_device), dtypes=(dtype,) if dtype != parse_dtype("fp32") else
                            (dtype, parse_dtype("bf16")))
        failed = [r for r in results if not r.passed]
        print(f"correctness: {len(results) - len(failed)}/{len(results)} checks passed")
        for r in failed:
            print(f"  FAILED {r.op}/{r.impl} {r.case} {r.dtype}: fwd {r.forward_error:.2e} bwd {r.backward_error:.2e}"
                  f" tol {r.tolerance:.0e} {r.note}")
    experts = tuple(int(e) for e in args.moe_experts.split(",") if e.strip())
    ops = [op.strip() for op in args.ops.split(",") if op.strip()] if args.ops else None
    result = run_benchmark(str(dev.torch_device), dtype, args.sizes, ops, mode=args.mode, repeats=args.repeats,
                           moe_experts=experts)
    print(format_table(result))
    paths = write_outputs(result, args.out)
    print(f"\nwrote {paths['json']} and {paths['html']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
