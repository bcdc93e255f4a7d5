"""Hand-written data parallelism, to read side by side with torch's DistributedDataParallel and ZeRO:

- ``ddp_naive.py``      one all-reduce per parameter after backward (simple, many small messages);
- ``ddp_bucketed.py``   gradients packed into ~25 MB buckets, one all-reduce per bucket (few large messages);
- ``ddp_overlap.py``    buckets all-reduced asynchronously from backward hooks, overlapping communication with
                        the rest of backward (what torch DDP does);
- ``zero1.py``          ZeRO stage 1: each rank keeps optimizer state for, and updates, only its shard of the
                        parameters, then broadcasts them (Rajbhandari et al. 2020).
benchmarks/teaching_ddp.py times them against torch DDP in one run; notebooks/03_distributed.ipynb explains them.
"""

from workbench.distributed.teaching.ddp_bucketed import BucketedDDP
from workbench.distributed.teaching.ddp_naive import NaiveDDP
from workbench.distributed.teaching.ddp_overlap import OverlappedDDP
from workbench.distributed.teaching.zero1 import ZeRO1Optimizer

__all__ = ["BucketedDDP", "NaiveDDP", "OverlappedDDP", "ZeRO1Optimizer"]
