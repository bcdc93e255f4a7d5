"""Hand-written data parallelism vs torch DDP, in one run: step time of naive / bucketed / overlapped DDP and ZeRO-1
next to torch's DistributedDataParallel on the same MLP, the same data and the same process group.

    python benchmarks/teaching_ddp.py [--nproc 2] [--dim 512] [--depth 4] [--steps 10] [--bucket-cap-mb 25]

Prints a table (step time, ratio to torch DDP, optimizer-state bytes per rank, max weight difference from one
process) and writes figures/teaching_ddp.json. Ratios, not absolute times, are the point: on CPU processes over
gloo, the gap between per-parameter and bucketed all-reduce is the latency the buckets save.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from workbench.distributed.launcher import LaunchConfig, launch  # noqa: E402
from workbench.results import write_json_atomic  # noqa: E402
from workbench.viz import text_table  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--global-batch", type=int, default=64)
    parser.add_argument("--bucket-cap-mb", type=float, default=25.0)
    parser.add_argument("--out", default=str(REPO / "figures" / "teaching_ddp.json"))
    args = parser.parse_args()
    result = launch(["-m", "workbench.distributed.teaching.compare", "--steps", str(args.steps), "--dim",
                     str(args.dim), "--depth", str(args.depth), "--global-batch", str(args.global_batch),
                     "--bucket-cap-mb", str(args.bucket_cap_mb), "--lr", "0.01"],
                    LaunchConfig(nproc=args.nproc), run_dir=REPO / "runs" / "bench_teaching_ddp", on_line=None,
                    timeout_s=1200).check()
    main_rank = result.results[0]
    torch_ms = next(r["step_s"] for r in main_rank["rows"] if r["strategy"] == "torch_ddp") * 1e3
    rows = [{"strategy": r["strategy"], "step_ms": r["step_s"] * 1e3, "vs_torch_ddp": r["step_s"] * 1e3 / torch_ms,
             "optim_state_MiB": r["optimizer_state_bytes"] / 2**20, "max_param_diff": r["max_param_diff"]}
            for r in main_rank["rows"]]
    print(f"{args.nproc} ranks, MLP dim {args.dim} depth {args.depth} ({main_rank['n_params'] / 1e6:.1f} M params), "
          f"{args.steps} steps, bucket {args.bucket_cap_mb} MB")
    print(text_table(rows))
    write_json_atomic(args.out, {"config": vars(args), "n_params": main_rank["n_params"], "rows": rows})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
