"""Training throughput: the workbench next to HF transformers on identical configs, in one process, plus MFU.

    python benchmarks/train_throughput.py [--device auto] [--batch-size 8] [--seq-len 256] [--steps 6] [--threads N]
        [--compile] [--cases glm4-dense,glm4-small-dense,glm45-tiny,glm5-tiny,glm5-tiny-s1024,glm5-tiny-s2048] [--out figures/train_throughput.json]

For each case it builds the workbench model and the transformers model from the same ModelConfig (through
``workbench.interop.hf.config_to_hf``), then times full training steps (forward + backward + AdamW step) of the
two *interleaved* (wb, hf, wb, hf, ...), so background load on a shared machine hits both alike; the median step
time of each gives tokens/s. MFU = tokens/s * FLOPs per token (workbench.model.accounting, PaLM convention) / the
fp32 GEMM peak measured in this same run. The peak is probed (a 2048^3 GEMM, ~0.1 s) in every timed round, right
before that round's two steps, and MFU divides by the median of those probes: on a machine shared with other jobs
the GEMM speed drifts by 20% and more over minutes, and pairing each step with a probe taken under the same load
is the same idea as interleaving the two models. ``workbench_mfu_vs_best_peak`` divides by the best probe of the
whole run instead (a square-GEMM probe before and after all cases, and every in-round probe): the strictest
reading, reported next to it.
Without transformers installed (a device python with only torch) it times the workbench alone: the ``hf_*`` fields,
``ratio`` and the ratio targets are null, and the JSON's ``note`` (and stderr) says so.
Cases (MTP is off in all of them because transformers' GLM models ignore the MTP layer; identical work otherwise):
- ``glm4-dense``: the glm4-tiny shape (hidden 512, 6 layers, GQA, SwiGLU) with half-split RoPE (what transformers'
  GLM expresses), against ``Glm4MoeForCausalLM`` with every layer dense. Context, no target.
- ``glm4-small-dense``: the same block at hidden 1024, 8 layers (~95M parameters). Target: workbench MFU >= 0.75.
- ``glm45-tiny``: against ``Glm4MoeForCausalLM`` (sdpa; transformers 5 runs its experts as grouped GEMMs by
  default). Target: >= 1.5x its tokens/s.
- ``glm5-tiny``: against ``GlmMoeDsaForCausalLM`` at 8 x 256 (sequence = 8 x index_topk). Context, no target.
- ``glm5-tiny-s1024``, ``glm5-tiny-s2048``: the same 2048 tokens per step as 2 x 1024 and 1 x 2048 (sequence 32x
  and 64x index_topk, where DSA's sparsity matters: the workbench gathers each query's top-k latent rows,
  transformers runs dense masked attention). 64x is GLM-5's own ratio (top-2048 keys at a 128k context), so the
  2x target is judged on ``glm5-tiny-s2048``; s1024 is context.
On a CUDA/NPU device it also times the workbench in bf16 autocast and reports MFU against the catalog bf16 peak.
``--compile`` also times both models under ``torch.compile`` (the same four-way interleaving; 20-100 s of compiling
per case on a 2-core CPU): ``workbench_compiled_*``, ``hf_compiled_*`` and ``ratio_compiled`` (compiled against
compiled). The targets stay judged on the default, eager, ratio: comparing a compiled workbench with an eager
transformers would credit the workbench with what torch.compile does for either library.
Writes the JSON to ``--out`` (atomically) after every case, with ``"complete": false`` and each finished case's
row printed as it ends, so a run cut off by a time limit keeps what it measured; the end adds the probe after all
cases (``workbench_mfu_vs_best_peak``), marks it complete and prints the whole object.
A benchmark, not a test: numbers depend on the machine and load.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's workbench, not an installed one

from workbench.cpu_allocator import loaded_allocator  # noqa: E402
from workbench.device import get_device, measure_gemm_peak  # noqa: E402
from workbench.kernels.registry import resolve_all  # noqa: E402
from workbench.model import build_model, get_preset  # noqa: E402
from workbench.model.accounting import flops_per_token  # noqa: E402
from workbench.results import write_json_atomic  # noqa: E402

VOCAB = 2048
NO_TRANSFORMERS = ("transformers is not installed: timing the workbench alone (hf_* fields, ratio and the ratio "
                   "targets are null)")
CASES = {
    # context row: the glm4-tiny shape (hidden 512); at this width elementwise work is a visible share of a step
    "glm4-dense": dict(preset="glm4-tiny", changes=dict(rope_interleaved=False), hf="Glm4MoeForCausalLM",
                       target=None),
    # the dense MFU target: glm4-small (hidden 1024, ~95M parameters)
    "glm4-small-dense": dict(preset="glm4-small", changes=dict(rope_interleaved=False), hf="Glm4MoeForCausalLM",
                             target=("mfu", 0.75)),
    "glm45-tiny": dict(preset="glm45-tiny", changes=dict(mtp_layers=0), hf="Glm4MoeForCausalLM",
                       target=("ratio", 1.5)),
    # context row: at S = 256 = 8 x index_topk sparse attention saves little, and "auto" runs the masked path
    "glm5-tiny": dict(preset="glm5-tiny", changes=dict(mtp_layers=0), hf="GlmMoeDsaForCausalLM", target=None),
    # the same preset at the same 2048 tokens per step in longer sequences, whatever --batch-size / --seq-len say:
    # context at 2 x 1024 (sequence = 32 x index_topk); the DSA target at 1 x 2048 (64 x index_topk: GLM-5's own
    # ratio at a 128k context with its top-2048, the regime DSA is built for)
    "glm5-tiny-s1024": dict(preset="glm5-tiny", changes=dict(mtp_layers=0), hf="GlmMoeDsaForCausalLM",
                            target=None, batch_size=2, seq_len=1024),
    "glm5-tiny-s2048": dict(preset="glm5-tiny", changes=dict(mtp_layers=0), hf="GlmMoeDsaForCausalLM",
                            target=("ratio", 2.0), batch_size=1, seq_len=2048),
}


def hf_model(config, class_name: str, device):
    import transformers

    from workbench.interop.hf import config_to_hf

    d = config_to_hf(config)
    d.pop("workbench_config", None)
    d.pop("architectures", None)
    kind = d.pop("model_type")
    hf_config = transformers.AutoConfig.for_model(kind, **d)
    model = getattr(transformers, class_name)._from_config(hf_config, attn_implementation="sdpa")
    return model.to(device.torch_device).train()


def make_step(model, optimizer, batch, kind: str, autocast):
    """One training step of ``model``; ``kind`` "workbench..." or "hf..." says how it takes its labels."""
    x, y = batch
    kind = "workbench" if kind.startswith("workbench") else "hf"

    def step() -> None:
        with autocast():
            if kind == "workbench":
                loss = model(x, labels=y).loss
            else:  # transformers shifts the labels itself: pass the unshifted sequence
                loss = model(input_ids=x, labels=x).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if kind == "workbench" and hasattr(model, "update_expert_bias"):
            model.update_expert_bias()

    return step


def timed(step, device) -> float:
    device.synchronize()
    start = time.perf_counter()
    step()
    device.synchronize()
    return time.perf_counter() - start


def probe_peak(device) -> float:
    """The fp32 GEMM FLOP/s right now: one square 2048 GEMM, repeated for ~0.1 s."""
    return measure_gemm_peak(device, torch.float32, sizes=(2048,), min_time_s=0.1)[0]


def transformers_version() -> str | None:
    """transformers' version, or None where it is not installed (a device python with torch only): the workbench
    side of every case needs only torch, so it is still timed, and the HF side is reported as null."""
    try:
        import transformers
    except ImportError:
        return None
    return transformers.__version__


def run_case(name: str, spec: dict, device, batch_size: int, seq_len: int, steps: int, warmup: int,
             compile_too: bool = False, with_hf: bool = True) -> dict:
    batch_size, seq_len = spec.get("batch_size", batch_size), spec.get("seq_len", seq_len)  # per-case shapes win
    config = get_preset(spec["preset"]).replace(vocab_size=VOCAB, **spec["changes"])
    torch.manual_seed(0)
    x = torch.randint(0, VOCAB, (batch_size, seq_len + 1), device=device.torch_device)
    batch = (x[:, :-1].contiguous(), x[:, 1:].contiguous())
    fused = device.supports_fused_adamw()
    models = {"workbench": build_model(config).to(device.torch_device).train()}
    if with_hf:
        models["hf"] = hf_model(config, spec["hf"], device)
    if compile_too:  # copies (same weights, so the same routing), so the compiled and eager steps train apart
        resolve_all(device.type)  # as the trainer does before compiling (kernel lookups and probes out of the graph)
        for kind in list(models):
            models[f"{kind}_compiled"] = copy.deepcopy(models[kind])
    fp32 = torch.autocast(device.type, enabled=False) if device.type != "cpu" else None
    null = (lambda: fp32) if fp32 is not None else (lambda: __import__("contextlib").nullcontext())
    step_fns = {}
    for kind, model in models.items():
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused)
        step_fns[kind] = make_step(torch.compile(model) if kind.endswith("compiled") else model, opt, batch, kind,
                                   null)
    for _ in range(warmup):  # (compiles the compiled ones)
        for fn in step_fns.values():
            fn()
    times, peaks = {k: [] for k in step_fns}, []
    for _ in range(steps):  # interleaved: load spikes hit both models and the peak probe alike
        peaks.append(probe_peak(device))
        for kind, fn in step_fns.items():
            times[kind].append(timed(fn, device))
    tokens = batch_size * seq_len
    fpt = flops_per_token(config, seq_len).total
    result = {"case": name, "preset": spec["preset"], "changes": spec["changes"],
              "hf_class": spec["hf"] if with_hf else None,
              "batch_size": batch_size, "seq_len": seq_len, "flops_per_token": fpt,
              "params": sum(p.numel() for p in models["workbench"].parameters()),
              "hf_params": sum(p.numel() for p in models["hf"].parameters()) if with_hf else None}
    kinds = ("workbench", "hf") + (("workbench_compiled", "hf_compiled") if compile_too else ())
    for kind in kinds:  # the HF kinds are null without transformers
        median = statistics.median(times[kind]) if kind in times else None
        result[f"{kind}_step_s"] = median
        result[f"{kind}_tokens_per_s"] = tokens / median if median else None
    result["ratio"] = _ratio(result, "workbench", "hf")
    if compile_too:
        result["ratio_compiled"] = _ratio(result, "workbench_compiled", "hf_compiled")
    result["gemm_peak_in_rounds_flops"] = statistics.median(peaks)
    result["gemm_peak_in_rounds_range"] = [min(peaks), max(peaks)]
    if device.type != "cpu":  # bf16 autocast on accelerators, MFU against the catalog's bf16 peak
        model = models["workbench"]
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused)
        fn = make_step(model, opt, batch, "workbench", lambda: device.autocast(torch.bfloat16))
        for _ in range(warmup):
            fn()
        t = statistics.median(timed(fn, device) for _ in range(steps))
        peak = device.peak_flops(torch.bfloat16)
        result.update(bf16_tokens_per_s=tokens / t, bf16_mfu=tokens / t * fpt / peak.value if peak.value else None,
                      bf16_peak_source=peak.source)
    return result


def _ratio(result: dict, ours: str, theirs: str) -> float | None:
    """ours / theirs tokens/s, or None when the HF side was not timed."""
    if result[f"{theirs}_tokens_per_s"] is None:
        return None
    return result[f"{ours}_tokens_per_s"] / result[f"{theirs}_tokens_per_s"]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    fixed = " and ".join(f"{n} ({c['batch_size']} x {c['seq_len']})" for n, c in CASES.items() if "seq_len" in c)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=8, help=f"sequences per step ({fixed} ignore --batch-size "
                   "and --seq-len: their shapes are fixed)")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per sequence (see --batch-size)")
    p.add_argument("--steps", type=int, default=6, help="timed steps per model (median is reported)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--cases", default=",".join(CASES),
                   help=f"comma-separated, from {', '.join(CASES)}; {fixed} ignore --batch-size and --seq-len")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's default)")
    p.add_argument("--compile", action="store_true",
                   help="also time both models under torch.compile (compiled against compiled)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "figures" / "train_throughput.json"))
    args = p.parse_args(argv)
    names = check_args(p, args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = get_device(args.device)
    hf_version = transformers_version()
    if hf_version is None:
        print(NO_TRANSFORMERS, file=sys.stderr)
    peaks = [measure_gemm_peak(device, torch.float32)]
    rows = []
    out = Path(args.out)
    for i, name in enumerate(names, 1):  # each case is kept (file and stdout) as it finishes: a timeout loses no case
        row = run_case(name, CASES[name], device, args.batch_size, args.seq_len, args.steps, args.warmup,
                       args.compile, with_hf=hf_version is not None)
        rows.append(score_case(row))
        write_json_atomic(out, make_report(device, rows, None, hf_version, complete=False))
        print(f"# case {i}/{len(names)} done (partial report in {out}): {json.dumps(row)}", flush=True)
    peaks.append(measure_gemm_peak(device, torch.float32))
    best = max(peaks + [(row["gemm_peak_in_rounds_range"][1], "an in-round probe at n=2048") for row in rows])
    for row in rows:  # the strictest reading needs every case's probes and the one after them all
        row["workbench_mfu_vs_best_peak"] = row["workbench_tokens_per_s"] * row["flops_per_token"] / best[0]
    report = make_report(device, rows, best, hf_version, complete=True)
    write_json_atomic(out, report)
    print(json.dumps(report, indent=2))
    return report


def check_args(parser: argparse.ArgumentParser, args) -> list[str]:
    """Every argument checked before any model is built or probe run (a bad value used to surface as a traceback,
    some only after minutes of earlier cases); returns the case names. One line per problem, via parser.error."""
    for name, low in (("steps", 1), ("warmup", 0), ("batch_size", 1), ("seq_len", 1)):
        if getattr(args, name) < low:
            parser.error(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(args, name)}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    names = [c.strip() for c in args.cases.split(",") if c.strip()]
    if not names:
        parser.error(f"--cases names no case; choose from {', '.join(CASES)}")
    unknown = [n for n in names if n not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    for name in names:  # the cases that take --seq-len must fit their preset's positions
        limit = get_preset(CASES[name]["preset"]).max_position_embeddings
        seq_len = CASES[name].get("seq_len", args.seq_len)
        if seq_len > limit:
            parser.error(f"--seq-len {seq_len} exceeds {name}'s max_position_embeddings ({limit})")
    return names


def score_case(row: dict) -> dict:
    """MFU against the case's own in-round probes and its target: all that one finished case needs, so a partial
    report already says it. ``workbench_mfu_vs_best_peak`` stays None until every case has run."""
    peak = row["gemm_peak_in_rounds_flops"]
    row["workbench_mfu"] = row["workbench_tokens_per_s"] * row["flops_per_token"] / peak
    hf = row["hf_tokens_per_s"]  # None without transformers
    row["hf_mfu"] = hf * row["flops_per_token"] / peak if hf is not None else None
    row["workbench_mfu_vs_best_peak"] = None
    if CASES[row["case"]]["target"] is None:  # a context row: measured, no goal attached
        row["target"], row["target_met"] = None, None
        return row
    kind, goal = CASES[row["case"]]["target"]
    row["target"] = f"{'MFU' if kind == 'mfu' else 'tokens/s ratio'} >= {goal}"
    value = row["workbench_mfu"] if kind == "mfu" else row["ratio"]
    row["target_met"] = value >= goal if value is not None else None  # a ratio needs the HF side
    return row


def make_report(device, rows: list[dict], best: tuple[float, str] | None, hf_version: str | None,
                complete: bool) -> dict:
    """The JSON object; ``complete`` is False (and the run's best peak None) while cases are still to come."""
    peak, peak_detail = best if best else (None, None)
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "complete": complete,
        "machine": f"{device.name} ({platform.machine()}), {torch.get_num_threads()} threads" if device.type == "cpu"
        else f"{device.name}",
        "device": device.type, "dtype": "fp32", "torch": torch.__version__,
        "omp": {k: os.environ.get(k, "(default)") for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")},
        "transformers": hf_version,
        "cpu_allocator": loaded_allocator(),  # jemalloc under `make bench` when setup could fetch it
        "gemm_peak_flops": peak,
        "gemm_peak_source": f"{peak_detail} (the best probe of the run: before, after and within the cases)"
        if best else "not yet: the probe after the last case sets it",
        "mfu_definition": "tokens/s x FLOPs/token / the median fp32 GEMM probe of the case's timed rounds "
                          "(workbench_mfu_vs_best_peak: / gemm_peak_flops)",
        "cases": rows,
    }
    if hf_version is None:
        report["note"] = NO_TRANSFORMERS
    return report


if __name__ == "__main__":
    main()
