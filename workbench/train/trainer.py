"""The training loop: ``Trainer`` (one ``train_step()`` at a time) and ``train(config)`` (the whole run).

```
trainer = Trainer(TrainConfig(preset="glm4-tiny", steps=200))
metrics = trainer.train_step()      # one optimizer step (all micro-steps), returns loss, lr, grad_norm, tok/s, MFU
summary = trainer.fit()             # loop + eval + checkpoints + samples + summary.json
```
Each step's phases run inside ``torch.profiler.record_function("workbench/data" | "workbench/forward" |
"workbench/backward" | "workbench/optimizer")`` so a profiler attributes step time (workbench/profiling drives
``train_step`` directly).

Seams for workbench/distributed (single-process behaviour in brackets):
- ``Trainer(..., parallelize=fn)``: ``fn(model, device, config) -> model`` runs right after the model is built
  (identity); ``config.parallel`` is the string it reads ("dp=1");
- rank and world size come only from ``torch.distributed.is_initialized()`` (0 and 1); the loader shards the
  global batch by them; only rank 0 writes metrics, checkpoints, samples and summary;
- model/optimizer state-dict get/set live in workbench/train/checkpoint.py (``set_state_dict_functions``).
Used by ``workbench train``, ``make demo`` and notebooks/01_training.ipynb.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch.profiler import record_function

from workbench.data import TokenLoader, build_tokenizer, load_corpus, load_tokenizer, pack_corpus
from workbench.data.corpus import pre_v2_hash
from workbench.device.detect import check_training_dtype, dtype_name, parse_dtype
from workbench.errors import WorkbenchError
from workbench.results import write_json_atomic
from workbench.train import checkpoint as ckpt
from workbench.train.config import TrainConfig
from workbench.train.metrics import MetricsLogger, mfu, progress_enabled, read_metrics
from workbench.train.optim import build_optimizer
from workbench.train.run_lock import holds_run_folder, lock_run_folder, unlock_run_folder
from workbench.train.sampling import generate
from workbench.train.schedule import WarmupCosine


def dist_rank_world() -> tuple[int, int]:
    """(rank, world size) from torch.distributed when a process group exists, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def mean_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """Average ``values`` over the data-parallel ranks (one all-reduce), so the logged loss is the global batch's,
    not rank 0's shard's; unchanged in a single process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        values = values.clone()
        dist.all_reduce(values)
        values /= dist.get_world_size()
    return values


def model_max_positions(model_config: Any) -> int | None:
    """The model's number of positions; None for a caller-supplied model whose config does not say."""
    value = getattr(model_config, "max_position_embeddings", None)
    return value if isinstance(value, int) and value > 0 else None


def _is_run_folder_or_empty(folder: Path) -> bool:
    """A folder a new run may write into: missing, empty, or an earlier run's (its lock file, its checkpoints, or a
    config.json with the run's settings). `--out .` in a project, or an exported transformers folder, is neither."""
    if not folder.is_dir() or all(entry.name.startswith(".") for entry in folder.iterdir()):  # (.DS_Store, ...)
        return True
    from workbench.train.run_lock import LOCK_FILE

    if (folder / LOCK_FILE).exists() or (folder / "checkpoints").exists():  # (checkpoints: its own checks follow)
        return True
    try:
        return "train" in json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return False


def build_model_config(config: TrainConfig, vocab_size: int):
    """The preset's ModelConfig with the tokenizer's vocab and the user's overrides; checks seq_len fits."""
    from workbench.model import get_preset, list_presets

    names = list(list_presets())
    if config.preset not in names:
        raise WorkbenchError(f"unknown preset {config.preset!r}; choose one of: {', '.join(names)}")
    base = get_preset(config.preset)
    fields = {f.name for f in dataclasses.fields(base)}
    bad = sorted(set(config.model_overrides) - fields)
    if bad:
        raise WorkbenchError(f"unknown model setting(s) {bad} for preset {config.preset!r}; "
                             f"known: {', '.join(sorted(fields))}")
    overrides = dict(config.model_overrides)
    if "vocab_size" in overrides:  # it was recorded in config.json, then replaced by the tokenizer's without a word
        raise WorkbenchError(f"--model vocab_size={overrides['vocab_size']}: the vocabulary comes from the tokenizer "
                             f"(--tokenizer byte: 257 tokens; --tokenizer bpe --bpe-vocab-size N); leave it out")
    depth = overrides.get("num_layers")
    if isinstance(depth, int) and depth > 0 and "indexer_types" not in overrides and base.indexer_types is not None:
        # GLM-5's per-layer DSA indexer pattern ("full" / "shared") follows a new depth, repeated: num_layers=2
        # on glm5-tiny failed with "indexer_types has 4 entries", and a tuple cannot be written in an override
        overrides["indexer_types"] = tuple(base.indexer_types[i % len(base.indexer_types)] for i in range(depth))
    model_config = dataclasses.replace(base, **{**overrides, "vocab_size": vocab_size})
    unread = model_config.unread_fields()
    ignored = [f"{name} ({unread[name]})" for name in config.model_overrides if name in unread]
    if ignored:
        raise WorkbenchError(f"--model sets what preset {config.preset!r} would not read, so nothing would change: "
                             + "; ".join(ignored) + ". Leave it out, or also change what turns it on")
    limit = model_max_positions(model_config)
    if limit is not None and config.seq_len > limit:
        raise WorkbenchError(f"seq_len {config.seq_len} is beyond the {limit} positions of preset {config.preset!r}; "
                             f"use --seq-len <= {limit}")
    return model_config


# Names the batch stream TokenLoader draws for a (seed, step): bump it whenever that stream changes, so a checkpoint
# from before the change is refused on --resume instead of continuing on other batches. v2: windows may end on a
# split's last token.
LOADER_VERSION = "random-windows-v2"

# fp32 weights + fp32 gradients + AdamW's two fp32 moments (bf16 autocast keeps fp32 master weights too)
TRAINING_BYTES_PER_PARAM = 16


def check_fits_in_memory(model_config: Any, device: Any, world_size: int = 1) -> None:
    """Refuse, before allocating anything, a model whose weights, gradients and optimizer state alone exceed the
    device's memory (e.g. a full-size GLM preset on one machine: glm-5 would ask for ~12 TB). ``world_size`` divides
    the need, as a fully sharded layout would: a lower bound, so this never refuses a run that could fit."""
    from workbench.model.accounting import count_parameters

    available = device.total_memory_bytes()
    if not available:
        return
    params = count_parameters(model_config).total
    need = params * TRAINING_BYTES_PER_PARAM / max(1, world_size)
    if need > available:
        raise WorkbenchError(
            f"{model_config.name}: {params / 1e9:.1f}B parameters need ~{need / 2**30:,.0f} GiB for weights, gradients "
            f"and AdamW state{' per rank' if world_size > 1 else ''}; {device.name} has {available / 2**30:,.0f} GiB. "
            f"Train a tiny preset (glm4-tiny, glm45-tiny, glm5-tiny) or shrink this one with --model / "
            f"model_overrides (the full-size presets are for accounting and the performance model)")


def apply_activation_checkpointing(model: torch.nn.Module) -> int:
    """Recompute each transformer block in backward instead of storing its activations. Returns blocks wrapped."""
    from torch.utils.checkpoint import checkpoint

    blocks = None
    for name in ("layers", "blocks", "h"):
        holder = getattr(model, name, None) or getattr(getattr(model, "model", None), name, None)
        if isinstance(holder, torch.nn.ModuleList):
            blocks = holder
            break
    if blocks is None:
        raise WorkbenchError("activation checkpointing: the model has no `layers`/`blocks` ModuleList to wrap")
    for block in blocks:
        forward = block.forward

        def checkpointed(*args, _forward=forward, **kwargs):
            return checkpoint(_forward, *args, use_reentrant=False, **kwargs)

        block.forward = checkpointed
    return len(blocks)


@contextlib.contextmanager
def sigint_deferred():
    """Hold Ctrl-C (SIGINT) until the block ends, then deliver it to the handler that was there before.

    A step's optimizer update and its bookkeeping (step counter, tokens, metrics record) must happen together: Ctrl-C
    between them left a model one update ahead of its step counter, and fit() called again applied that step a
    second time. Python lets only the main thread install handlers; elsewhere (and where SIGINT is ignored or was
    not set from Python) this does nothing."""
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous in (None, signal.SIG_IGN):
        yield
        return
    caught: list[Any] = []
    signal.signal(signal.SIGINT, lambda signum, frame: caught.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            if callable(previous):
                previous(signal.SIGINT, caught[0])  # the default handler raises KeyboardInterrupt here
            else:
                signal.raise_signal(signal.SIGINT)  # SIG_DFL: end the process, as the signal would have


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (int, float, str, bool)) or value is None


class Trainer:
    """Owns the model, optimizer, schedule, data and run folder of one training run."""

    def __init__(self, config: TrainConfig, model: torch.nn.Module | None = None, model_config: Any = None,
                 parallelize: Callable | None = None, callbacks: Iterable[Callable[[dict], None]] = (),
                 log: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.rank, self.world_size = dist_rank_world()
        self.is_main_process = self.rank == 0
        # one voice per run: under data parallelism every rank would print each step (with its own tokens/s)
        say = log or (lambda message: print(message, file=sys.stderr, flush=True))
        self.log = say if self.is_main_process else (lambda message: None)
        self.callbacks = list(callbacks)
        from workbench.distributed.mesh import process_device  # under torchrun: the device init_distributed bound

        self.device = process_device(config.device)
        self.run_dir = Path(config.out_dir)
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise WorkbenchError(f"--out {str(self.run_dir)!r} is a file; the run folder must be a folder (new or "
                                 f"holding a run to --resume)")
        held_before = holds_run_folder(self.run_dir)  # a notebook cell run again: the folder is already ours
        try:
            self._build(model, model_config, parallelize)
        except BaseException:  # a refused or failed setup must not keep the folder locked for the whole process
            if hasattr(self, "metrics"):
                self.metrics.close()
            if self.is_main_process and not held_before:
                unlock_run_folder(self.run_dir)
            raise

    def _build(self, model, model_config, parallelize) -> None:
        config = self.config
        self.ckpt_dir = self.run_dir / "checkpoints"
        # fp16 (WORKBENCH_DTYPE=fp16) is refused here, before the run folder is touched: nothing scales the loss
        self.dtype = check_training_dtype(self.device.training_dtype, "WORKBENCH_DTYPE")
        self.metrics = MetricsLogger(self.run_dir / "metrics.jsonl", enabled=self.is_main_process)
        if self.is_main_process and not _is_run_folder_or_empty(self.run_dir):  # (before the lock file is made)
            raise WorkbenchError(f"{self.run_dir} holds files of something other than a training run (its "
                                 "config.json, tokenizer.json, ... would be overwritten); choose a new or empty --out")
        if self.is_main_process and self.run_dir.is_dir():  # before reading its checkpoints (a new folder: below)
            lock_run_folder(self.run_dir)

        resume_from = self._find_resume_checkpoint()
        self._setup_data(resume_from is not None)

        # model: the preset (or a given module, e.g. a tiny stand-in in tests), built on the device
        torch.manual_seed(config.seed)
        if model is None:
            from workbench.model import build_model

            if model_config is None:
                model_config = build_model_config(config, self.tokenizer.vocab_size)
            else:  # the caller's own ModelConfig (it was silently replaced by the preset's), with the data's vocab
                model_config = dataclasses.replace(model_config, vocab_size=self.tokenizer.vocab_size)
            check_fits_in_memory(model_config, self.device, self.world_size)
            model = build_model(model_config)
        elif model_config is None:  # e.g. from_hf(path): its own config, else nothing recorded it (no MFU, no
            from workbench.model import ModelConfig  # shape in config.json or the checkpoints, "preset" the default)

            own = getattr(model, "config", None)
            model_config = own if isinstance(own, ModelConfig) else None
        # what summary.json calls the model: the preset's name, or a given model's own (not TrainConfig's default)
        self.model_name = getattr(model_config, "name", None) or type(model).__name__
        vocab = getattr(model_config, "vocab_size", None) or getattr(getattr(model, "config", None), "vocab_size",
                                                                      None)
        if vocab is not None and vocab < self.tokenizer.vocab_size:  # else the first step dies in an IndexError
            raise WorkbenchError(f"the model's vocabulary ({vocab} tokens) is smaller than the tokenizer's "
                                 f"({self.tokenizer.vocab_size}): token ids would index past its embedding")
        if self.is_main_process:
            lock_run_folder(self.run_dir)  # creates a new run folder, now that the settings proved good
            ckpt.check_checkpoint_folder(self.ckpt_dir)
        if self._tokenizer_is_new and self.is_main_process:
            self.tokenizer.save(self.run_dir)
        self.model_config = model_config
        self.raw_model = model.to(self.device.torch_device)
        if config.seq_len > (model_max_positions(model_config) or config.seq_len):
            raise WorkbenchError(f"seq_len {config.seq_len} is beyond the model's positions")
        if config.activation_checkpointing:  # before parallelize: FSDP-style wrappers must see the final blocks
            apply_activation_checkpointing(self.raw_model)
        # the seam for workbench/distributed: DDP/FSDP/... wrap or shard the model here (single process: identity)
        self.model = (parallelize or (lambda m, device, cfg: m))(self.raw_model, self.device, config)
        if config.compile:
            from workbench.kernels.registry import resolve_all

            resolve_all(self.device.type)  # cached now, so the compiled graph never traces a kernel lookup
            self.model = torch.compile(self.model)
        self.optimizer = build_optimizer(self.raw_model, config.optimizer, lr=config.lr,
                                         weight_decay=config.weight_decay, betas=(config.beta1, config.beta2),
                                         muon_lr=config.muon_lr, device=self.device)
        self.scheduler = WarmupCosine(self.optimizer, config.steps, config.warmup_steps, config.min_lr_ratio)
        if config.warmup_steps >= config.steps:  # (self.log is silent on ranks other than 0)
            self.log(f"warning: warmup_steps ({config.warmup_steps}) >= steps ({config.steps}): the lr rises to "
                     f"{self.scheduler.multiplier(config.steps - 1):.0%} of --lr at the last step and never decays; "
                     f"set warmup_steps (--warmup-steps) below steps, e.g. "
                     f"{min(max(1, config.steps // 10), config.steps - 1)}")
        self.params = [p for p in self.raw_model.parameters() if p.requires_grad]
        self.num_params = sum(p.numel() for p in self.raw_model.parameters())
        self.flops_per_token = self._flops_per_token()
        self.peak = self.device.peak_flops(self.dtype)
        # MFU is per device (PaLM, torchtitan): the tokens/s of all ranks against the peak of all their devices.
        # On a CPU host the launcher gives each rank cores // nproc threads, and the probe measures that share.
        self.peak_all_ranks = self.peak.value * self.world_size if self.peak.value else None
        self.step = 0
        self.tokens_seen = 0
        self.steps_this_process = 0  # the first one pays for warm-up (allocations, compilation): kept out of tokens/s
        self.checkpointed_step: int | None = None  # the step of the checkpoint on disk that this state equals
        self._applying: int | None = None  # a step whose optimizer update began but was never committed (an error)
        self._follow_up: dict[str, Any] | None = None  # a step's record whose eval/checkpoint/callbacks are due
        self.history: list[dict[str, Any]] = []
        if resume_from is not None:
            self._load(resume_from)
        elif self.is_main_process:
            self.metrics.reset()

    # ---- setup ------------------------------------------------------------------------------------------------
    def _find_resume_checkpoint(self) -> Path | None:
        if not self.config.resume:
            if ckpt.list_checkpoints(self.ckpt_dir):
                raise WorkbenchError(f"{self.run_dir} already holds checkpoints; pass --resume to continue that run, "
                                     f"or choose another --out")
            return None
        found = ckpt.latest_good_checkpoint(self.ckpt_dir, warn=lambda m: self.log(f"warning: {m}"))
        if found is None:
            self.log(f"--resume: no usable checkpoint in {self.ckpt_dir}; starting from step 0")
        return found

    def _setup_data(self, resuming: bool) -> None:
        c = self.config
        corpus = load_corpus(c.data)
        self._tokenizer_is_new = not (resuming and (self.run_dir / "tokenizer.json").exists())
        if not self._tokenizer_is_new:
            self.tokenizer = load_tokenizer(self.run_dir)  # the exact tokenizer of the run, never re-trained
        else:
            self.tokenizer = build_tokenizer(c.tokenizer, corpus.documents, c.bpe_vocab_size)
        self.packed = pack_corpus(corpus, self.tokenizer, c.val_fraction)
        self.corpus_source = corpus.source
        # a checkpoint from before the length-prefixed corpus hash names the data by the old hash (see _load)
        self._pre_v2_corpus_sha = pre_v2_hash(corpus.documents, self.tokenizer.kind) if resuming else None
        dev = self.device.torch_device
        self.train_loader = TokenLoader(self.packed.train, c.batch_size, c.seq_len, seed=c.seed, rank=self.rank,
                                        world_size=self.world_size, device=dev, name="train")
        self.val_loader = TokenLoader(self.packed.val, c.batch_size, c.seq_len, seed=c.seed + 1, rank=self.rank,
                                      world_size=self.world_size, device=dev, name="val")

    def _flops_per_token(self) -> float | None:
        try:
            from workbench.model.accounting import flops_per_token

            counted = flops_per_token(self.model_config, self.config.seq_len)
            return float(getattr(counted, "total", counted))  # FlopsPerToken(total=..., ...) or a number
        except Exception:  # a stand-in model without a ModelConfig: MFU is reported as unknown
            return None

    # ---- one step ---------------------------------------------------------------------------------------------
    def _forward(self, x: torch.Tensor, y: torch.Tensor):
        with self._compile_errors_explained(), self._tracing_settings(), self.device.autocast(self.dtype):
            return self.model(x, labels=y)

    def _tracing_settings(self):
        """dynamo settings for this run's compiled forward, only while it runs (they are process-wide).

        With activation checkpointing: the MoE blocks count expert loads (and MLA keeps its indexer loss) in
        attributes set in forward. Eager checkpointing sets them again while recomputing in backward; dynamo cannot,
        so it broke the graph in every such block. Skipping them in the recompute is what the bias update needs
        anyway: it uses sign(mean - load), which the double count of eager recomputation leaves alone."""
        if not (self.config.compile and self.config.activation_checkpointing):
            return contextlib.nullcontext()
        return torch._dynamo.config.patch(skip_fwd_side_effects_in_bwd_under_checkpoint=True)

    @contextlib.contextmanager
    def _compile_errors_explained(self):
        """torch.compile compiles at the first forward and backward; when it cannot (no working C++ compiler, an
        unsupported op) that is the user's setting, not a bug: one line that says so instead of 100 lines of
        inductor traceback."""
        try:
            yield
        except Exception as exc:
            if not (self.config.compile and type(exc).__module__.startswith(("torch._dynamo", "torch._inductor"))):
                raise
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            if type(exc).__name__ == "TorchRuntimeError":
                # dynamo ran an op of the model on fake tensors and the op itself failed (a shape mismatch, a bad
                # setting): usually the model's error, which eager PyTorch raises too, not the compiler's
                raise WorkbenchError(f"an op failed while torch.compile traced the model ({first_line[:300]}); run "
                                     f"without --compile: if it fails there too, the model or its settings are at "
                                     f"fault, not the compiler") from exc
            raise WorkbenchError(f"torch.compile failed ({type(exc).__name__}: {first_line[:300]}); run without "
                                 f"--compile") from exc

    def _start_step(self) -> None:
        """Forget what an interrupted step left behind: its gradients (the re-run step would add its own on top) and
        the MoE blocks' expert-load counts (the balancing-bias update would count its micro-batches twice). Refuse
        to go on from a step whose optimizer update began and failed: the model is between two steps."""
        if self._applying is not None:
            raise WorkbenchError(f"step {self._applying + 1} was interrupted while the optimizer applied it (an error "
                                 f"raised inside the update), so the model is between two steps; continue from the "
                                 f"last checkpoint with a new Trainer(config.replace(resume=True)) (--resume)")
        self.optimizer.zero_grad(set_to_none=True)
        for module in self.raw_model.modules():
            counts = getattr(module, "load_accum", None)
            if isinstance(counts, torch.Tensor):
                module.load_accum = torch.zeros_like(counts)

    def train_step(self) -> dict[str, Any]:
        """One optimizer step over ``grad_accum`` micro-batches. Returns this step's metrics (also logged).

        Safe to interrupt (Ctrl-C in a notebook): before the update nothing is kept (the next call starts the step
        afresh); the update and its bookkeeping run with Ctrl-C held until they are done."""
        c = self.config
        self._start_step()  # (a step Ctrl-C stopped before its update is simply trained again)
        step = self.step
        lr = self.scheduler.apply(step)
        self.model.train()
        start = time.perf_counter()
        loss_sum = torch.zeros((), device=self.device.torch_device)
        lm_sum = torch.zeros((), device=self.device.torch_device)
        for micro in range(c.grad_accum):
            with record_function("workbench/data"):
                x, y = self.train_loader.batch(step, micro)
            with record_function("workbench/forward"):
                out = self._forward(x, y)
                loss = out.loss / c.grad_accum
            with record_function("workbench/backward"), self._compile_errors_explained():
                loss.backward()
            loss_sum += out.loss.detach().float()
            lm = getattr(out, "lm_loss", None)
            lm_sum += (lm if lm is not None else out.loss).detach().float()
        with sigint_deferred():
            return self._apply_step(loss_sum, lm_sum, lr, start)

    def _apply_step(self, loss_sum: torch.Tensor, lm_sum: torch.Tensor, lr: float, start: float) -> dict[str, Any]:
        """The optimizer update and everything that must go with it (train_step holds Ctrl-C across it)."""
        c = self.config
        with record_function("workbench/optimizer"):
            max_norm = c.grad_clip if c.grad_clip > 0 else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
            self._applying = self.step  # cleared once the step counter moved: set, the update may be half done
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            expert = {}
            update_bias = getattr(self.raw_model, "update_expert_bias", None)
            if update_bias is not None:
                expert = update_bias(rate=c.expert_bias_rate) or {}
        loss_mean, lm_mean = mean_over_ranks(torch.stack([loss_sum, lm_sum]) / c.grad_accum).tolist()
        self.device.synchronize()
        elapsed = time.perf_counter() - start
        tokens = c.batch_size * c.seq_len * c.grad_accum * self.world_size
        self.step += 1
        self.tokens_seen += tokens
        self._applying = None
        tok_s = tokens / elapsed
        record = {
            "kind": "train", "step": self.step, "loss": loss_mean, "lm_loss": lm_mean,
            "lr": lr, "grad_norm": float(grad_norm), "step_time_s": elapsed, "tokens_per_s": tok_s,
            "mfu": mfu(tok_s, self.flops_per_token, self.peak_all_ranks), "peak_source": self.peak.source,
            "tokens_seen": self.tokens_seen,
        }
        if self.steps_this_process == 0:
            record["process_warmup"] = True
        self.steps_this_process += 1
        if "muon" in getattr(self.optimizer, "optimizers", {}):
            record["muon_lr"] = self.optimizer.optimizers["muon"].param_groups[0]["lr"]
        mem = self.device.memory_stats()
        record["memory_bytes"] = mem.get("allocated_bytes")
        record["peak_memory_bytes"] = mem.get("peak_bytes")
        record["memory_source"] = mem.get("source")  # e.g. the CUDA caching allocator, or this process's RSS
        if expert:
            record["expert"] = expert
        if not math.isfinite(loss_mean):
            raise WorkbenchError(f"loss became {loss_mean} at step {self.step}; lower --lr or raise warmup_steps")
        self.metrics.log(record)
        self.history.append(record)
        self._follow_up = record
        return record

    # ---- eval, sampling, checkpoints ---------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, loader: TokenLoader | None = None) -> float:
        """Mean LM loss over ``eval_batches`` fixed validation batches (the same batches at every eval), logged
        to metrics.jsonl. With ``loader`` (e.g. a ``TokenLoader`` over another corpus's packed tokens) it only
        returns that loss: a foreign number in the run's eval records was later taken for its validation loss."""
        self.model.eval()
        losses = []
        for i in range(self.config.eval_batches):
            x, y = (loader or self.val_loader).batch(i)
            out = self._forward(x, y)
            lm = getattr(out, "lm_loss", None)
            losses.append((lm if lm is not None else out.loss).float())
        self.model.train()
        val = float(mean_over_ranks(torch.stack(losses).mean()))
        if loader is not None:
            return val
        record = {"kind": "eval", "step": self.step, "val_loss": val}
        self.metrics.log(record)
        self.history.append(record)
        return val

    def sample(self, prompt: str | None = None, max_new_tokens: int | None = None, seed: int | None = None,
               temperature: float = 0.8, top_k: int | None = 40, top_p: float | None = None) -> str:
        prompt = self.config.sample_prompt if prompt is None else prompt
        # an empty prompt starts where every document starts: after an end-of-text token
        prompt_ids = self.tokenizer.encode(prompt) or [self.tokenizer.eos_id]
        new_tokens = self.config.sample_tokens if max_new_tokens is None else max_new_tokens  # 0 means none
        ids = generate(self.raw_model, prompt_ids, new_tokens,
                       context=self.config.seq_len, temperature=temperature, top_k=top_k, top_p=top_p,
                       seed=self.config.seed if seed is None else seed, device=self.device.torch_device,
                       stop_id=self.tokenizer.eos_id, autocast=lambda: self.device.autocast(self.dtype))
        return prompt + self.tokenizer.decode(ids)

    def trainer_state(self) -> dict[str, Any]:
        return {
            "step": self.step, "tokens_seen": self.tokens_seen, "scheduler": self.scheduler.state_dict(),
            "data": {"next_step": self.step, "seed": self.config.seed, "loader": LOADER_VERSION,
                     "pack": self.packed.meta, "world_size": self.world_size},
            "rng": ckpt.capture_rng_state(self.device), "config": self.config.to_dict(),
            "model_config": _as_dict(self.model_config), "tokenizer": self.tokenizer.identity,
            "dtype": _dtype_name(self.dtype),  # compared on --resume: another precision is another trajectory
        }

    def save_checkpoint(self) -> Path | None:
        """Write this step's checkpoint (rank 0). The step counts as checkpointed only once the save returned: a
        save that failed (disk full, Ctrl-C) is made again by the next fit(), not skipped."""
        path = None
        if self.is_main_process:
            path = ckpt.save_checkpoint(self.ckpt_dir, self.step, self.raw_model, self.optimizer,
                                        self.trainer_state(), keep_last=self.config.keep_last)
        self.checkpointed_step = self.step
        return path

    def _load(self, path: Path) -> None:
        state = ckpt.verify_checkpoint(path)
        self._refuse_another_run(state, path)
        ckpt.load_checkpoint(path, self.raw_model, self.optimizer, self.device)
        self.scheduler.load_state_dict(state["scheduler"])
        step, saved_steps = int(state["step"]), self.scheduler.total_steps
        if saved_steps != self.config.steps:  # --steps may extend a run: the cosine stretches from here on
            before = self.scheduler.multiplier(step)
            self.scheduler.total_steps = self.config.steps
            self.log(f"--steps changed from {saved_steps} to {self.config.steps}: the schedule now decays over "
                     f"{self.config.steps} steps, so at step {step} the lr moves from {before:.0%} to "
                     f"{self.scheduler.multiplier(step):.0%} of --lr (the run no longer follows the "
                     f"{saved_steps}-step trajectory)")
        ckpt.restore_rng_state(state["rng"], self.device)
        self.step, self.tokens_seen = step, int(state["tokens_seen"])
        self.checkpointed_step = self.step
        self.metrics.truncate_after(self.step)
        if self.metrics.path.exists():
            self.history = read_metrics(self.metrics.path)
        self.log(f"resumed from {path} at step {self.step}")

    def _refuse_another_run(self, state: dict[str, Any], path: Path) -> None:
        """Raise ``WorkbenchError`` unless resuming from this checkpoint continues the same run: the settings, the
        corpus (by content), --steps, tokenizer, data loader, number of ranks and model it was written with."""
        saved = TrainConfig.from_dict(state["config"])
        different = self.config.trajectory_mismatch(saved)
        # The data setting is compared by content, not by its spelling: the same file given by another (relative)
        # path resumes; an edited file behind the same path does not (it would silently train on other tokens).
        saved_pack = state.get("data", {}).get("pack", {})
        saved_corpus = saved_pack.get("corpus_sha256")
        current = self.packed.meta.get("corpus_sha256")
        if saved_corpus is not None and "corpus_hash" not in saved_pack:  # written before the length-prefixed hash
            if saved_corpus != self._pre_v2_corpus_sha:
                raise WorkbenchError(f"--resume: the checkpoint in {path} was written by an earlier workbench and "
                                     f"its data does not give the same tokens now (another corpus, or one this "
                                     f"version splits or tokenizes differently); start a new --out")
            current = saved_corpus
        same_corpus = saved_corpus is None or saved_corpus == current
        if not same_corpus:
            raise WorkbenchError(f"--resume: the data ({self.corpus_source}) is not the corpus the checkpoint in "
                                 f"{path} trained on (its content hash differs); restore that data or start a new --out")
        different = [name for name in different if not (name == "data" and same_corpus)]
        if isinstance(state.get("model_config"), dict):  # the model itself is compared below, field by field: other
            different = [name for name in different if name != "model_overrides"]  # overrides may build the same
        if different:
            raise WorkbenchError(f"--resume: settings {different} differ from the checkpoint in {path}; "
                                 f"resume with the same settings or start a new --out")
        self._check_precision(state, saved, path)
        if int(state["step"]) > self.config.steps:
            raise WorkbenchError(f"--resume: the checkpoint in {path} is at step {state['step']}, beyond --steps "
                                 f"{self.config.steps}; pass --steps >= {state['step']}")
        if state.get("tokenizer") != self.tokenizer.identity:
            raise WorkbenchError(f"--resume: the tokenizer in {self.run_dir} differs from the checkpoint's")
        data = state.get("data", {})
        if data.get("loader", LOADER_VERSION) != LOADER_VERSION:
            raise WorkbenchError(f"--resume: the checkpoint in {path} was written with data loader "
                                 f"{data['loader']!r}; this version draws other batches ({LOADER_VERSION!r}), so the "
                                 f"run cannot continue as it would have; start a new --out")
        if data.get("world_size", self.world_size) != self.world_size:
            raise WorkbenchError(f"--resume: the checkpoint in {path} was written by {data['world_size']} rank(s), "
                                 f"this run has {self.world_size}; the global batch would change. Resume with the "
                                 f"same number of ranks")
        saved_model = state.get("model_config")
        current_model = json.loads(json.dumps(_as_dict(self.model_config)))  # tuples -> lists, as saved
        # fields this model never reads do not change its trajectory: a run trained with such an override (before
        # they were refused) resumes without it, and the hint never asks for an override that is now refused
        unread = set(self.model_config.unread_fields()) if hasattr(self.model_config, "unread_fields") else set()
        changed = sorted(k for k in set(saved_model or {}) | set(current_model or {})
                         if k not in unread and (saved_model or {}).get(k) != (current_model or {}).get(k))
        if isinstance(saved_model, dict) and isinstance(current_model, dict) and changed:
            # a preset default that moved (glm45-tiny's bias_update_rate did) can be set back field by field
            restore = ",".join(f"{k}={json.dumps(saved_model[k])}" for k in changed
                               if k in saved_model and k != "name" and _is_scalar(saved_model[k]))
            hint = f"; to continue it, add --model '{restore}'" if restore else ""
            raise WorkbenchError(f"--resume: the model differs from the checkpoint's in {changed} (the preset "
                                 f"changed since?){hint}; or resume with the code and settings that wrote {path}")

    def _check_precision(self, state: dict[str, Any], saved: TrainConfig, path: Path) -> None:
        """Refuse another training dtype than the checkpoint's: it comes from WORKBENCH_DTYPE or from the machine's
        bf16 verdict, so a resume elsewhere (or in another shell) went on in another precision without a word, and
        config.json then said the whole run had used it. A checkpoint that does not record it is not compared.
        --compile switched on or off only warns: the kernels round differently, a change in the last bits."""
        trained, current = state.get("dtype"), _dtype_name(self.dtype)
        if trained is not None and trained != current:
            forced = os.environ.get("WORKBENCH_DTYPE", "").strip()
            why = f"WORKBENCH_DTYPE={forced}" if forced else "this machine's default"
            setting = dtype_name(parse_dtype(trained))  # the WORKBENCH_DTYPE spelling of the checkpoint's dtype
            raise WorkbenchError(f"--resume: the checkpoint in {path} trained in {trained}, this run would train in "
                                 f"{current} ({why}); resume with WORKBENCH_DTYPE={setting} to continue the same run, "
                                 f"or start a new --out")
        if saved.compile != self.config.compile:
            self.log(f"warning: --resume with --compile {'on' if self.config.compile else 'off'}, but the checkpoint "
                     f"in {path} trained with it {'on' if saved.compile else 'off'}: compiled and eager kernels round "
                     f"differently, so the losses will differ in the last digits from a run that never switched")

    # ---- the loop ---------------------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train to ``config.steps``: log, evaluate, checkpoint, sample; write summary.json. Returns the summary.
        Called again after an interruption (Ctrl-C in a notebook), it continues from where training stopped."""
        if self.is_main_process:  # again: the previous fit() released it when it was interrupted
            lock_run_folder(self.run_dir)
        self.device.reset_peak_memory()  # this run's peak, not an earlier run's in the same process
        try:
            return self._fit()
        finally:  # also after an error (a NaN loss, Ctrl-C in a notebook): the folder's checkpoints stay resumable
            self.close()

    def close(self) -> None:
        """Release the run folder (its lock, the metrics file) without training: a Trainer built only to profile
        or inspect (notebook 04) held the folder for the kernel's whole life. ``fit()`` takes it again."""
        self.metrics.close()
        if self.is_main_process:
            unlock_run_folder(self.run_dir)

    def _fit(self) -> dict[str, Any]:
        c = self.config
        if self.is_main_process:
            from workbench.distributed.train_hooks import effective_parallel

            # the layout as it ran: under a launch the default "dp=1" trains every rank data parallel (config.json
            # recorded "dp=1" for a run that trained dp=2)
            train_settings = {**c.to_dict(), "parallel": effective_parallel(c.parallel, self.world_size)}
            write_json_atomic(self.run_dir / "config.json", {
                "train": train_settings, "world_size": self.world_size, "model": _as_dict(self.model_config),
                "device": str(self.device.torch_device),
                "dtype": str(self.dtype), "mfu_peak": self.peak.as_dict(), "flops_per_token": self.flops_per_token,
                "params": self.num_params, "optimizer": getattr(self.optimizer, "implementation", "")})
        bar = None
        if progress_enabled(c.progress) and self.is_main_process:
            from tqdm.auto import tqdm

            bar = tqdm(total=c.steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        started = time.perf_counter()
        try:
            while True:
                if self._follow_up is not None:  # also a step whose follow-up an interruption cut short
                    self._follow_step(self._follow_up, bar is None)
                if self.step >= c.steps:
                    break
                if c.time_limit_s is not None and time.perf_counter() - started > c.time_limit_s:
                    self.log(f"time limit of {c.time_limit_s:g} s reached after {self.step} steps; finishing")
                    break
                record = self.train_step()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{record['lm_loss']:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
                elif self.step % c.log_every == 0 or self.step == 1:
                    self.log(_format_record(record, c.steps))
        finally:
            if bar is not None:
                bar.close()
        last = self.history[-1] if self.history else {}
        if last.get("kind") == "eval" and last.get("step") == self.step:
            # this step is evaluated already: in the loop (a time limit stopped right after an eval), or by the run
            # this one resumed after it had finished; its callbacks saw it then
            val = last["val_loss"]
        else:
            val = self.evaluate()
            for callback in self.callbacks:
                callback({"kind": "eval", "step": self.step, "val_loss": val})
        if self.step != self.checkpointed_step:
            self.save_checkpoint()
        summary = self.summary(val)
        if self.is_main_process:
            samples = [self.sample(seed=c.seed + i) for i in range(2)] if c.sample_tokens else []
            summary["samples"] = samples
            (self.run_dir / "samples.txt").write_text("\n\n---\n\n".join(samples) + "\n", encoding="utf-8")
            summary["figures"] = self.write_figures()
            write_json_atomic(self.run_dir / "summary.json", summary)
        return summary

    def _follow_step(self, record: dict[str, Any], say_eval: bool) -> None:
        """The eval, checkpoint and callbacks due after the step of ``record``. fit() runs them after each step, and
        again when Ctrl-C cut them short (fit() called once more): each part that was done already is skipped."""
        c = self.config
        if c.eval_every and self.step % c.eval_every == 0 and self.step < c.steps:
            last = self.history[-1] if self.history else {}
            if last.get("kind") == "eval" and last.get("step") == self.step:
                val = last["val_loss"]
            else:
                val = self.evaluate()
                if say_eval:
                    self.log(f"step {self.step}: val_loss {val:.4f}")
            record = {**record, "val_loss": val}
        due = c.ckpt_every and self.step % c.ckpt_every == 0 and self.step < c.steps
        if due and self.checkpointed_step != self.step:
            self.save_checkpoint()
        self._follow_up = None
        for callback in self.callbacks:
            callback(record)

    def summary(self, val_loss: float) -> dict[str, Any]:
        train = [r for r in self.history if r.get("kind") == "train"]
        tail = train[-max(1, min(10, len(train) // 10)):]
        # the first step of each process pays for warm-up (allocations, compilation): a resumed run has one more,
        # and with --compile it was 20-30x a normal step, so tokens/s and MFU came out 5-7x low
        timed = [r for i, r in enumerate(train) if i > 0 and not r.get("process_warmup")] or train
        total_time = sum(r["step_time_s"] for r in timed)
        tok_s = sum(r["step_time_s"] * r["tokens_per_s"] for r in timed) / total_time if total_time else 0.0
        return {
            "preset": self.model_name, "steps": self.step, "device": str(self.device.torch_device),
            "device_name": self.device.name, "dtype": str(self.dtype).replace("torch.", ""),
            "params": self.num_params, "tokens_seen": self.tokens_seen,
            "first_train_loss": train[0]["lm_loss"] if train else None,
            "final_train_loss": sum(r["lm_loss"] for r in tail) / len(tail) if tail else None,
            "final_val_loss": val_loss, "tokens_per_s": tok_s, "flops_per_token": self.flops_per_token,
            "mfu": mfu(tok_s, self.flops_per_token, self.peak_all_ranks), "peak_flops": self.peak.value,
            "world_size": self.world_size,
            "peak_memory_bytes": max((r["peak_memory_bytes"] for r in train if r.get("peak_memory_bytes")),
                                     default=None),
            "memory_source": next((r["memory_source"] for r in train if r.get("memory_source")), None),
            "peak_source": self.peak.source, "optimizer": getattr(self.optimizer, "implementation", ""),
            "tokenizer": self.tokenizer.identity, "vocab_size": self.tokenizer.vocab_size,
            "data": self.corpus_source, "run_dir": str(self.run_dir.resolve()),
        }

    def write_figures(self) -> dict[str, str]:
        """run_dir/figures/loss.html: train and validation loss against step."""
        from workbench.train.plots import loss_figure
        from workbench.viz import save_figure

        return save_figure(loss_figure(self.history), self.run_dir / "figures" / "loss.html")


def _dtype_name(dtype: Any) -> str:
    return str(dtype).replace("torch.", "")


def _as_dict(obj: Any) -> Any:
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def _format_record(r: dict[str, Any], total: int) -> str:
    """One log line. ``loss`` is the LM loss (what the summary and the figures show); when the model trains on
    auxiliary terms too (MTP, MoE balance, DSA indexer), the total it backpropagates follows in brackets."""
    mfu_text = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "n/a"
    total_text = f" (total {r['loss']:.4f})" if r["loss"] != r["lm_loss"] else ""
    return (f"step {r['step']}/{total}: loss {r['lm_loss']:.4f}{total_text}  lr {r['lr']:.2e}  "
            f"grad_norm {r['grad_norm']:.2f}  {r['tokens_per_s']:,.0f} tok/s  MFU {mfu_text}")


def train(config: TrainConfig, **kwargs: Any) -> dict[str, Any]:
    """Build a ``Trainer`` for ``config`` and run it to the end. Returns the summary (also in summary.json)."""
    return Trainer(config, **kwargs).fit()
