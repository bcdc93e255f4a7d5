"""Kernel benchmark: time every available implementation of every op, and place it under the device's roofline.

For each op there is a problem size (a preset, or your own ``BenchSizes``) and an *ideal* cost model:

- FLOPs: the arithmetic the op needs (matmuls 2*m*n*k; causal attention counts only visible query-key pairs);
- bytes: what a perfectly fused kernel must move: read each input once, write each output once.

A measured time t gives achieved GFLOP/s = FLOPs / t and GB/s = bytes / t. The roofline (Williams et al. 2009)
says no kernel can beat t_min = max(FLOPs / peak FLOP/s, bytes / bandwidth); ``pct_of_roofline`` = t_min / t.
Ops whose intensity (FLOPs / byte) sits below the device's ridge point (peak / bandwidth) are memory-bound: only
moving fewer bytes (fusion) makes them faster. Peaks come from the device layer (catalog for known chips, a short
probe otherwise), with their source recorded.

Timing: implementations of one op are run round-robin (warm-up first, then ``repeats`` rounds) and the median is
kept, so a busy shared machine slows them alike and ratios stay meaningful. Mode "forward" runs under no_grad;
"train" runs forward + backward and counts 3x the forward FLOPs and bytes (the usual backward ~ 2x forward).
Used by ``workbench kernels bench``, benchmarks/kernels.py and notebooks/02_kernels.ipynb.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from workbench.errors import WorkbenchError
from workbench.kernels import registry
from workbench.kernels.correctness import _routing


@dataclass(frozen=True)
class BenchSizes:
    """Problem sizes for the benchmark (one model-like layer). Validated on creation."""

    batch: int = 2
    seq: int = 512
    heads: int = 8
    kv_heads: int = 2
    head_dim: int = 64
    hidden: int = 512
    ffn: int = 1024
    tokens: int = 256        # moe tokens
    experts: int = 16
    top_k: int = 2
    expert_ffn: int = 64
    vocab: int = 16384
    ce_rows: int = 512
    topk_slots: int = 64     # DSA keys per query

    def __post_init__(self):
        for name, value in asdict(self).items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"BenchSizes.{name} must be a positive integer, got {value!r}")
        if self.heads % self.kv_heads:
            raise ValueError(f"BenchSizes: kv_heads ({self.kv_heads}) must divide heads ({self.heads})")
        if self.top_k > self.experts:
            raise ValueError(f"BenchSizes: top_k ({self.top_k}) must be <= experts ({self.experts})")
        if self.head_dim % 2:
            raise ValueError(f"BenchSizes: head_dim must be even for RoPE, got {self.head_dim}")


PRESETS = {
    "tiny": BenchSizes(batch=1, seq=64, heads=2, kv_heads=1, head_dim=16, hidden=64, ffn=64, tokens=32,
                       experts=8, top_k=2, expert_ffn=16, vocab=512, ce_rows=32, topk_slots=8),
    "small": BenchSizes(),  # cpu-sized: seconds in total
    "large": BenchSizes(batch=4, seq=4096, heads=32, kv_heads=8, head_dim=128, hidden=4096, ffn=14336,
                        tokens=8192, experts=64, top_k=8, expert_ffn=1536, vocab=151552, ce_rows=8192,
                        topk_slots=2048),  # GPU / NPU-sized
}


@dataclass
class Problem:
    """One op at one size: ``make()`` builds (args, kwargs) on the device; FLOPs and bytes of the ideal kernel."""

    op: str
    label: str
    make: Callable[[], tuple[list, dict]]
    flops: float
    bytes: float
    # positions of the args that get gradients in --mode train (None: every floating-point tensor), as in a model:
    # rope's cos/sin come from the rotary table, and the torch rope refuses to differentiate through them
    grad_args: tuple[int, ...] | None = None


def _visible_pairs(q_len: int, k_len: int, causal: bool) -> int:
    if not causal:
        return q_len * k_len
    offset = k_len - q_len  # query i sees min(k_len, i + 1 + offset) keys
    return sum(max(0, min(k_len, i + 1 + offset)) for i in range(q_len))


def dsa_topk(gen: torch.Generator, batch: int, seq: int, slots: int) -> torch.Tensor:
    """Top-k indices as DSA's indexer gives them: each query picks ``min(slots, visible)`` *distinct* keys among
    those it may see (causal), and marks the rest of its slots unused (-1). The correctness cases' random picks
    (with repeats and random -1s) attended 2-2.5x fewer keys than the FLOPs counted, inflating GFLOP/s."""
    scores = torch.rand(batch, seq, seq, generator=gen)
    scores = scores.masked_fill(torch.ones(seq, seq, dtype=torch.bool).triu(1), float("-inf"))
    values, indices = scores.topk(slots, dim=-1)
    return torch.where(torch.isinf(values), torch.full_like(indices, -1), indices)


def _dsa_pairs(seq: int, slots: int) -> int:
    """(query, key) pairs ``dsa_topk`` keeps per sequence: query i sees i + 1 keys and keeps up to ``slots``."""
    return sum(min(slots, i + 1) for i in range(seq))


def problems(sizes: BenchSizes, device: torch.device, dtype: torch.dtype, ops: list[str] | None = None,
             with_dsa: bool = True) -> list[Problem]:
    """The benchmark problems for ``sizes`` (inputs are created lazily, on ``device`` in ``dtype``)."""
    s = sizes
    es = torch.tensor([], dtype=dtype).element_size()
    gen = torch.Generator().manual_seed(0)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(device=device, dtype=dtype)

    rows = s.batch * s.seq
    out: list[Problem] = []
    out.append(Problem("rms_norm", f"[{rows},{s.hidden}]",
                       lambda: ([rand(rows, s.hidden), rand(s.hidden)], {}),
                       flops=4.0 * rows * s.hidden, bytes=(2 * rows * s.hidden + s.hidden) * es))
    half = s.head_dim // 2
    angles = torch.arange(s.seq)[:, None] / 10000 ** (torch.arange(half) / half)
    x_rope = (s.batch, s.heads, s.seq, s.head_dim)
    out.append(Problem("rope", f"[{s.batch},{s.heads},{s.seq},{s.head_dim}] half",
                       lambda: ([rand(*x_rope), angles.cos().to(device, dtype), angles.sin().to(device, dtype)],
                                {"interleaved": False}),
                       flops=3.0 * math.prod(x_rope), bytes=(2 * math.prod(x_rope) + 2 * s.seq * half) * es,
                       grad_args=(0,)))
    out.append(Problem("swiglu", f"[{rows},{2 * s.ffn}]", lambda: ([rand(rows, 2 * s.ffn)], {}),
                       flops=5.0 * rows * s.ffn, bytes=3 * rows * s.ffn * es))
    pairs = _visible_pairs(s.seq, s.seq, True)
    attn_flops = 2.0 * s.batch * s.heads * pairs * 2 * s.head_dim
    attn_bytes = (2 * s.batch * s.heads * s.seq * s.head_dim + 2 * s.batch * s.kv_heads * s.seq * s.head_dim) * es

    def make_attention(dsa: bool):
        def make():
            q = rand(s.batch, s.heads, s.seq, s.head_dim)
            k = rand(s.batch, s.kv_heads, s.seq, s.head_dim)
            v = rand(s.batch, s.kv_heads, s.seq, s.head_dim)
            kwargs = {"causal": True}
            if dsa:
                kwargs["topk_indices"] = dsa_topk(gen, s.batch, s.seq, min(s.topk_slots, s.seq)).to(device)
            return [q, k, v], kwargs
        return make

    out.append(Problem("attention", f"causal GQA {s.heads}/{s.kv_heads} S={s.seq} D={s.head_dim}",
                       make_attention(False), attn_flops, attn_bytes))
    if with_dsa:
        slots = min(s.topk_slots, s.seq)
        kept = s.batch * _dsa_pairs(s.seq, slots)  # (query, key) pairs attended, over the batch
        out.append(Problem("attention", f"DSA top-{slots} S={s.seq}", make_attention(True),
                           2.0 * s.heads * kept * 2 * s.head_dim, attn_bytes + s.batch * s.seq * slots * 8))
        # the same pattern as DSA runs it over MLA: one shared kv head (MQA), K gathered rows per query
        def make_sparse_mqa():
            topk = dsa_topk(gen, s.batch, s.seq, slots)
            return [rand(s.batch, s.seq, s.heads, s.head_dim), rand(s.batch, s.seq, s.head_dim), topk.to(device),
                    s.head_dim ** -0.5, s.head_dim], {}

        out.append(Problem("sparse_mqa_attention", f"DSA top-{slots} over one kv head (MQA) S={s.seq} H={s.heads}",
                           make_sparse_mqa, 2.0 * s.heads * kept * 2 * s.head_dim,
                           (2 * s.batch * s.seq * s.heads * s.head_dim + kept * s.head_dim) * es
                           + s.batch * s.seq * slots * 8))
    out.append(moe_problem(s, device, dtype, gen))
    out.append(Problem("cross_entropy", f"N={s.ce_rows} V={s.vocab} D={s.hidden}",
                       lambda: ([rand(s.ce_rows, s.hidden), rand(s.vocab, s.hidden, scale=s.hidden ** -0.5),
                                 torch.randint(0, s.vocab, (s.ce_rows,), generator=gen).to(device)], {}),
                       flops=2.0 * s.ce_rows * s.hidden * s.vocab,
                       bytes=(s.ce_rows * s.hidden + s.vocab * s.hidden) * es + s.ce_rows * 8))
    return [p for p in out if ops is None or p.op in ops]


def moe_problem(s: BenchSizes, device, dtype, gen=None) -> Problem:
    gen = gen or torch.Generator().manual_seed(0)
    es = torch.tensor([], dtype=dtype).element_size()
    f = s.expert_ffn

    def make():
        indices, weights = _routing(gen, s.tokens, s.experts, s.top_k)
        x = torch.randn(s.tokens, s.hidden, generator=gen).to(device, dtype)
        w_gate_up = (torch.randn(s.experts, 2 * f, s.hidden, generator=gen) * s.hidden ** -0.5).to(device, dtype)
        w_down = (torch.randn(s.experts, s.hidden, f, generator=gen) * f ** -0.5).to(device, dtype)
        return [x, indices.to(device), weights.to(device, dtype), w_gate_up, w_down], {}

    flops = 2.0 * s.tokens * s.top_k * (s.hidden * 2 * f + f * s.hidden)
    moved = (2 * s.tokens * s.hidden + 3 * s.experts * f * s.hidden) * es + s.tokens * s.top_k * (8 + es)
    return Problem("moe", f"T={s.tokens} E={s.experts} k={s.top_k} D={s.hidden} F={f}", make, flops, moved)


# ----------------------------------------------------------------------------------------------------------------
# timing
# ----------------------------------------------------------------------------------------------------------------
def _call(fn, args, kwargs, train: bool, grad_out=None):
    if not train:
        with torch.no_grad():
            return fn(*args, **kwargs)
    out = fn(*args, **kwargs)
    out = out[0] if isinstance(out, tuple) else out  # (output, detached side outputs): backward through the first
    out.backward(grad_out if grad_out is not None and grad_out.shape == out.shape else torch.ones_like(out))
    return out


def time_round_robin(fns: dict[str, Callable[[], object]], device, repeats: int = 5, warmup: int = 1,
                     min_time_s: float = 0.0) -> dict[str, list[float]]:
    """Seconds per call of each function, interleaved: round r runs every function once, in turn."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    device.synchronize()
    start = time.perf_counter()
    rounds = 0
    while rounds < repeats or time.perf_counter() - start < min_time_s:
        for name, fn in fns.items():
            with device.timer() as t:
                fn()
            times[name].append(t.elapsed_s)
        rounds += 1
    return times


@dataclass
class Peaks:
    flops: float | None
    flops_source: str
    bandwidth: float | None
    bandwidth_source: str

    @property
    def ridge(self) -> float | None:
        """FLOPs per byte where a kernel stops being memory-bound."""
        return self.flops / self.bandwidth if self.flops and self.bandwidth else None


def device_peaks(device, dtype: torch.dtype, allow_probe: bool = True) -> Peaks:
    flops = device.peak_flops(dtype, allow_probe=allow_probe)
    bandwidth = device.memory_bandwidth(allow_probe=allow_probe)
    return Peaks(flops.value, flops.source, bandwidth.value, bandwidth.source)


def roofline_row(problem: Problem, seconds: float, peaks: Peaks, mode_factor: float) -> dict:
    flops, moved = problem.flops * mode_factor, problem.bytes * mode_factor
    row = {"flops": flops, "bytes": moved, "intensity": flops / moved, "time_ms": seconds * 1e3,
           "gflops": flops / seconds / 1e9, "gbytes_s": moved / seconds / 1e9}
    bounds = []
    if peaks.flops:
        bounds.append(flops / peaks.flops)
    if peaks.bandwidth:
        bounds.append(moved / peaks.bandwidth)
    row["bound_ms"] = max(bounds) * 1e3 if bounds else None
    row["pct_of_roofline"] = 100.0 * max(bounds) / seconds if bounds else None
    if peaks.ridge:
        row["bound_by"] = "memory" if row["intensity"] < peaks.ridge else "compute"
    else:
        row["bound_by"] = None
    return row


def run_benchmark(device: str = "cpu", dtype: torch.dtype = torch.float32, sizes: BenchSizes | str = "small",
                  ops: list[str] | None = None, impls: list[str] | None = None, mode: str = "forward",
                  repeats: int = 5, allow_probe: bool = True, peaks: Peaks | None = None,
                  moe_experts: tuple[int, ...] = (8, 16, 32, 64)) -> dict:
    """Benchmark every available implementation; returns a JSON-able dict (rows, peaks, comparisons)."""
    from workbench.device import get_device
    from workbench.device.detect import dtype_name

    if mode not in ("forward", "train"):
        raise ValueError(f"mode must be 'forward' or 'train', got {mode!r}")
    registry.check_choice(ops, impls)
    if any(not isinstance(n, int) or n < 1 for n in moe_experts):
        raise ValueError(f"moe_experts must be positive integers, got {list(moe_experts)}")
    if isinstance(sizes, str):
        if sizes not in PRESETS:
            raise ValueError(f"unknown size preset {sizes!r}; choose one of {', '.join(PRESETS)}")
        sizes = PRESETS[sizes]
    dev = get_device(device)
    peaks = peaks or device_peaks(dev, dtype, allow_probe)
    train = mode == "train"
    factor = 3.0 if train else 1.0
    rows = []
    for problem in problems(sizes, dev.torch_device, dtype, ops):
        rows += _bench_problem(problem, dev, impls, train, repeats, peaks, factor)
    if not rows:
        raise WorkbenchError(f"nothing to benchmark on {dev.type}: none of the chosen implementations "
                             f"({', '.join(impls or ['all'])}) of {', '.join(ops or ['any op'])} runs here "
                             f"(`workbench kernels list` says why)")
    comparisons = []
    # the sweep compares the grouped path with the per-expert loop: it runs only when both were chosen
    sweep = (ops is None or "moe" in ops) and (not impls or {"reference", "torch"} <= set(impls))
    if sweep and moe_experts:
        for n_experts in moe_experts:  # grouped vs per-expert loop as experts grow (same total expert FLOPs)
            scaled = replace(sizes, experts=n_experts, top_k=min(sizes.top_k, n_experts))
            problem = moe_problem(scaled, dev.torch_device, dtype)
            moe_rows = _bench_problem(problem, dev, ["reference", "torch"], train, repeats, peaks, factor)
            by_impl = {r["impl"]: r for r in moe_rows}
            if "reference" in by_impl and "torch" in by_impl:
                comparisons.append(_comparison("moe torch (grouped) vs reference (per-expert loop)", problem.label,
                                               by_impl["reference"], by_impl["torch"], experts=n_experts))
    for row in rows:
        if row["op"] == "attention" and row["impl"] == "torch":
            ref = [r for r in rows if r["op"] == "attention" and r["case"] == row["case"] and r["impl"] == "reference"]
            if ref:
                comparisons.append(_comparison("attention torch (SDPA) vs reference", row["case"], ref[0], row))
    return {
        "device": dev.describe() | {"torch_version": torch.__version__, "threads": torch.get_num_threads()},
        "dtype": dtype_name(dtype), "mode": mode, "sizes": asdict(sizes), "repeats": repeats,
        "peaks": asdict(peaks) | {"ridge_flops_per_byte": peaks.ridge},
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "rows": rows, "comparisons": comparisons,
    }


def _comparison(what: str, case: str, reference: dict, other: dict, **extra) -> dict:
    """Speedup of ``other`` over ``reference`` from medians, and from minima (the least-disturbed run: on a
    machine shared with other jobs, noise only ever adds time)."""
    return {"what": what, "case": case, **extra,
            "reference_ms": reference["time_ms"], "torch_ms": other["time_ms"],
            "speedup": reference["time_ms"] / other["time_ms"],
            "speedup_of_minima": reference["time_min_ms"] / other["time_min_ms"]}


def _bench_problem(problem: Problem, dev, impls, train, repeats, peaks, factor) -> list[dict]:
    device_type = dev.type
    available = {name: impl for name, impl in registry.implementations(problem.op).items()
                 if impl.unavailable_reason(device_type) is None and (not impls or name in impls)}
    if not available:
        return []
    args, kwargs = problem.make()
    if train:
        args = [a.detach().requires_grad_(True) if isinstance(a, torch.Tensor) and a.is_floating_point()
                and (problem.grad_args is None or i in problem.grad_args) else a for i, a in enumerate(args)]
    fns = {name: (lambda fn=impl.fn: _call(fn, args, kwargs, train)) for name, impl in available.items()}
    times = time_round_robin(fns, dev, repeats=repeats)
    rows = []
    for name, samples in times.items():
        seconds = statistics.median(samples)
        row = {"op": problem.op, "impl": name, "case": problem.label, "repeats": len(samples),
               "time_min_ms": min(samples) * 1e3}
        row.update(roofline_row(problem, seconds, peaks, factor))
        rows.append(row)
    ref = next((r for r in rows if r["impl"] == "reference"), None)
    for row in rows:
        row["speedup_vs_reference"] = ref["time_ms"] / row["time_ms"] if ref else None
    return rows


# ----------------------------------------------------------------------------------------------------------------
# outputs: JSON and a plotly roofline chart
# ----------------------------------------------------------------------------------------------------------------
def roofline_figure(result: dict, title: str | None = None):
    """A log-log roofline: attainable GFLOP/s = min(peak, intensity * bandwidth), one marker per (op, impl)."""
    import plotly.graph_objects as go

    peaks = result["peaks"]
    fig = go.Figure()
    rows = result["rows"]
    if rows and peaks.get("flops") and peaks.get("bandwidth"):
        lo = min(r["intensity"] for r in rows) / 4
        hi = max(max(r["intensity"] for r in rows) * 4, 4 * peaks["flops"] / peaks["bandwidth"])
        xs = [lo * (hi / lo) ** (i / 100) for i in range(101)]
        fig.add_trace(go.Scatter(x=xs, y=[min(peaks["flops"], x * peaks["bandwidth"]) / 1e9 for x in xs],
                                 mode="lines", name="roofline", line={"color": "black"},
                                 hovertext=f"peak: {peaks['flops_source']}<br>bandwidth: {peaks['bandwidth_source']}"))
    for impl in sorted({r["impl"] for r in rows}):
        mine = [r for r in rows if r["impl"] == impl]
        fig.add_trace(go.Scatter(
            x=[r["intensity"] for r in mine], y=[r["gflops"] for r in mine], mode="markers+text", name=impl,
            text=[r["op"] for r in mine], textposition="top center", marker={"size": 10},
            hovertext=[f"{r['op']} {r['case']}: {r['time_ms']:.3g} ms, {r['gflops']:.3g} GFLOP/s, "
                       f"{r['gbytes_s']:.3g} GB/s" for r in mine]))
    device = result["device"]
    fig.update_layout(
        title=title or f"Kernel roofline: {device['name']} ({result['dtype']}, {result['mode']})",
        xaxis={"type": "log", "title": "arithmetic intensity (FLOP / byte, ideal fused kernel)"},
        yaxis={"type": "log", "title": "achieved GFLOP/s"}, template="plotly_white")
    return fig


def write_outputs(result: dict, out_dir: str | Path, stem: str = "kernels_bench") -> dict[str, str | None]:
    """Write ``<stem>.json`` and the roofline chart ``<stem>_roofline.html`` into ``out_dir``.

    The JSON is the result; the chart needs plotly, which a device machine's python (torch only) may lack. Without
    it ``html`` is None and ``note`` says why, instead of a traceback after the measurements."""
    from workbench.results import write_json_atomic
    from workbench.viz import save_figure

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = write_json_atomic(out_dir / f"{stem}.json", result)
    try:
        figure = roofline_figure(result)
    except ImportError:
        return {"json": str(json_path), "html": None, "note": "plotly is not installed: no roofline chart"}
    written = save_figure(figure, out_dir / f"{stem}_roofline.html")
    return {"json": str(json_path), "html": written["html"]}


def format_table(result: dict) -> str:
    """A plain-text table of the rows (for the CLI)."""
    head = f"{'op':<22}{'impl':<11}{'case':<34}{'ms':>9}{'GFLOP/s':>10}{'GB/s':>9}{'%roof':>7}{'x ref':>7}"
    lines = [head, "-" * len(head)]
    for r in result["rows"]:
        pct = f"{r['pct_of_roofline']:.1f}" if r["pct_of_roofline"] is not None else "-"
        speed = f"{r['speedup_vs_reference']:.2f}" if r["speedup_vs_reference"] else "-"
        lines.append(f"{r['op']:<22}{r['impl']:<11}{r['case'][:33]:<34}{r['time_ms']:>9.3f}{r['gflops']:>10.2f}"
                     f"{r['gbytes_s']:>9.2f}{pct:>7}{speed:>7}")
    peaks = result["peaks"]
    lines.append("")
    lines.append(f"peak FLOP/s: {_fmt(peaks['flops'])} ({peaks['flops_source']})")
    lines.append(f"bandwidth:   {_fmt(peaks['bandwidth'])}B/s ({peaks['bandwidth_source']})")
    for c in result["comparisons"]:
        extra = f" E={c['experts']}" if "experts" in c else ""
        lines.append(f"{c['what']}{extra} [{c['case']}]: {c['speedup']:.2f}x "
                     f"({c['reference_ms']:.3f} ms -> {c['torch_ms']:.3f} ms; minima: {c['speedup_of_minima']:.2f}x)")
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    if value is None:
        return "unknown "
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.3g} "

