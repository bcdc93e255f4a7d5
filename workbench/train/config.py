"""``TrainConfig``: every setting of a training run, validated up front with messages that say how to fix them.

Saved as run_dir/config.json and inside every checkpoint; ``--resume`` checks that the settings which decide the
loss trajectory (model, data, batch, seed, optimizer) match the checkpoint's. Used by the trainer, the CLI,
``make demo`` and notebooks/01_training.ipynb.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

from workbench.errors import ConfigError
from workbench.typecheck import field_type_problems

OPTIMIZERS = ("adamw", "muon")
TOKENIZERS = ("byte", "bpe")
MIN_BPE_VOCAB, MAX_BPE_VOCAB = 300, 2**24  # 2**24: far above any LM vocabulary (GLM: 151,552), below overflow

# Settings that must equal the checkpoint's on --resume (steps, eval/ckpt cadence, progress, out_dir may change).
# `compile` is not among them: toggling it only warns (kernels round differently, a change in the last bits);
# the training dtype, which is no setting here (WORKBENCH_DTYPE, the machine), is refused by the trainer.
TRAJECTORY_FIELDS = ("preset", "model_overrides", "data", "tokenizer", "bpe_vocab_size", "val_fraction",
                     "batch_size", "seq_len", "grad_accum", "lr", "min_lr_ratio", "warmup_steps", "weight_decay",
                     "beta1", "beta2", "grad_clip", "optimizer", "muon_lr", "seed", "expert_bias_rate")


@dataclass
class TrainConfig:
    # model
    preset: str = "glm4-tiny"
    model_overrides: dict[str, Any] = field(default_factory=dict)  # e.g. {"num_layers": 1}; vocab comes from data
    # data
    data: str = "default"  # "default", a UTF-8 text/JSONL file or folder, or "hf:NAME[:SPLIT]"
    tokenizer: str = "byte"  # "byte" or "bpe" (trained on the corpus, saved in the run folder)
    bpe_vocab_size: int = 2048
    val_fraction: float = 0.05
    # batch
    steps: int = 200
    batch_size: int = 16  # per micro-step (and per rank when data-parallel)
    seq_len: int = 128
    grad_accum: int = 1
    # optimizer and schedule
    optimizer: str = "adamw"  # "adamw" or "muon" (Muon on 2-D hidden weights, AdamW on the rest)
    lr: float = 3e-3
    muon_lr: float = 0.02
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 20
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 disables clipping
    expert_bias_rate: float | None = None  # MoE aux-loss-free bias update speed (None: the model's default)
    # device and speed
    device: str = "auto"
    compile: bool = False
    activation_checkpointing: bool = False
    parallel: str = "dp=1"  # parsed by workbench/distributed; the single-process path ignores it
    # bookkeeping
    seed: int = 1337
    out_dir: str = "runs/train"
    eval_every: int = 50  # 0: only at the end
    eval_batches: int = 4
    ckpt_every: int = 100  # 0: only at the end
    keep_last: int = 2
    log_every: int = 1
    progress: bool = True
    sample_tokens: int = 200
    sample_prompt: str = "Once upon a time"
    resume: bool = False
    time_limit_s: float | None = None  # stop early (eval, checkpoint, summary as usual) once training took this long

    def __post_init__(self) -> None:
        types = field_type_problems(self)  # the checks below compare numbers: they need the right types first
        if types:
            raise ConfigError("bad training config: " + "; ".join(types))
        problems = []

        def need(ok: bool, message: str) -> None:
            if not ok:
                problems.append(message)

        for name in ("steps", "batch_size", "seq_len", "grad_accum", "keep_last", "eval_batches", "log_every"):
            value = getattr(self, name)
            need(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                 f"{name} must be a positive integer, got {value!r}")
        for name in ("warmup_steps", "eval_every", "ckpt_every", "sample_tokens", "seed"):
            value = getattr(self, name)
            need(isinstance(value, int) and not isinstance(value, bool) and value >= 0,
                 f"{name} must be an integer >= 0, got {value!r}")
        need(all(math.isfinite(v) and v > 0 for v in (self.lr, self.muon_lr)),
             f"lr and muon_lr must be finite and > 0, got {self.lr}, {self.muon_lr}")
        need(not isinstance(self.seed, int) or self.seed < 2**63, f"seed must be below 2**63, got {self.seed}")
        need(0.0 <= self.min_lr_ratio <= 1.0, f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        need(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, f"betas must be in [0, 1), got {self.beta1}, {self.beta2}")
        need(self.grad_clip >= 0, f"grad_clip must be >= 0 (0 disables it), got {self.grad_clip}")
        need(self.optimizer in OPTIMIZERS, f"optimizer must be one of {list(OPTIMIZERS)}, got {self.optimizer!r}")
        need(self.tokenizer in TOKENIZERS, f"tokenizer must be one of {list(TOKENIZERS)}, got {self.tokenizer!r}")
        need(self.tokenizer != "bpe" or MIN_BPE_VOCAB <= self.bpe_vocab_size <= MAX_BPE_VOCAB,
             f"bpe_vocab_size must be in [{MIN_BPE_VOCAB}, {MAX_BPE_VOCAB}] (256 bytes + merges; ids are stored as "
             f"uint32), got {self.bpe_vocab_size}")
        need(0.0 < self.val_fraction < 0.5, f"val_fraction must be in (0, 0.5), got {self.val_fraction}")
        need(isinstance(self.parallel, str), f"parallel must be a string like 'dp=1', got {self.parallel!r}")
        need(isinstance(self.model_overrides, dict), "model_overrides must be a dict of ModelConfig fields")
        need(self.time_limit_s is None or self.time_limit_s > 0, "time_limit_s must be > 0 or None")
        need(self.expert_bias_rate is None or self.expert_bias_rate >= 0,
             f"expert_bias_rate must be >= 0 or None, got {self.expert_bias_rate}")
        # an empty out_dir (an unset $OUT in a script) trained into the working directory, a checkout's root
        need(bool(self.out_dir.strip()), "out_dir (--out) must not be empty")
        # "--out=~/x" reaches us unexpanded (the shell expands ~ only at the start of a word): a literal "~" folder
        self.out_dir = os.path.expanduser(self.out_dir)
        if problems:
            raise ConfigError("bad training config: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    @staticmethod
    def parse_overrides(text: str | dict | None) -> dict[str, Any]:
        """"hidden_size=64,num_layers=2" (notebook / CLI strings) -> {"hidden_size": 64, "num_layers": 2}.

        Values are JSON where they parse (64, 0.5, true, null, ["full","shared"]); Python's True / False / None are
        accepted too; ``[full,shared]`` is a list of words; anything else stays a string. ModelConfig checks the
        types, so a value of the wrong kind is reported by name."""
        if text is None or isinstance(text, dict):
            return dict(text or {})
        out: dict[str, Any] = {}
        for item in _split_outside_brackets(str(text)):
            if not item.strip():
                continue
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"model override {item.strip()!r} is not KEY=VALUE (e.g. 'num_layers=2')")
            out[key.strip()] = _parse_value(value.strip())
        return out

    def trajectory_mismatch(self, other: "TrainConfig") -> list[str]:
        """Names of settings that differ from ``other`` and would change the loss trajectory."""
        ignored = set()  # settings the run never reads: changing them cannot change its trajectory
        if self.tokenizer == other.tokenizer == "byte":
            ignored.add("bpe_vocab_size")
        if self.optimizer == other.optimizer == "adamw":
            ignored.add("muon_lr")
        return [name for name in TRAJECTORY_FIELDS
                if name not in ignored and getattr(self, name) != getattr(other, name)]


_WORDS = {"true": True, "false": False, "none": None, "null": None}


def _parse_value(text: str) -> Any:
    if text.lower() in _WORDS:
        return _WORDS[text.lower()]
    try:
        return json.loads(text)
    except ValueError:
        pass
    if text.startswith("[") and text.endswith("]"):  # [full,shared]: a list of bare words
        return [_parse_value(word.strip()) for word in text[1:-1].split(",") if word.strip()]
    return text


def _split_outside_brackets(text: str) -> list[str]:
    """Split on commas that are not inside [...]: "a=1,b=[x,y]" -> ["a=1", "b=[x,y]"]."""
    items, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return items
