"""``workbench models``: the model presets with their total and active parameters (counted, never instantiated).

``--json`` prints the same as a JSON list; ``--seq-len`` sets the sequence length of the FLOPs column. A preset
whose positions (``max_position_embeddings``, what ``workbench train`` allows) stop short of it gets no FLOPs ('-'
in the table, null in the JSON, with ``max_seq_len`` beside it): a number there would describe a run that cannot
happen. A length no preset can take is refused.
"""

from __future__ import annotations

import argparse
import json

from workbench.errors import ConfigError
from workbench.model.accounting import count_parameters, flops_per_token
from workbench.model.presets import FULL_SIZE, PUBLISHED, get_preset, list_presets


def _fmt(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def _check_seq_len(seq_len: int, configs: dict) -> None:
    if seq_len < 1:
        raise ConfigError(f"seq_len must be >= 1 (got {seq_len})")
    longest = max(configs, key=lambda name: configs[name].max_position_embeddings)
    limit = configs[longest].max_position_embeddings
    if seq_len > limit:
        raise ConfigError(f"--seq-len {seq_len} is beyond every preset's positions (at most {limit}, {longest})")


def rows(seq_len: int = 4096) -> list[dict]:
    configs = {name: get_preset(name) for name in list_presets()}
    _check_seq_len(seq_len, configs)
    out = []
    for name, c in configs.items():
        p = count_parameters(c)
        fits = seq_len <= c.max_position_embeddings
        kind = ("MLA+DSA" if c.use_dsa else c.attention_type.upper()) + (" MoE" if c.is_moe else " dense")
        out.append({"name": name, "kind": kind, "layers": c.num_layers, "hidden": c.hidden_size,
                    "experts": c.num_experts, "top_k": c.num_experts_per_token if c.is_moe else 0,
                    "mtp_layers": c.mtp_layers, "total": p.total, "main": p.main, "mtp": p.mtp, "active": p.active,
                    "flops_per_token": flops_per_token(c, seq_len).total if fits else None, "seq_len": seq_len,
                    "max_seq_len": c.max_position_embeddings,
                    "full_size": name in FULL_SIZE,
                    "published_total": PUBLISHED.get(name, (None, None))[0],
                    "published_active": PUBLISHED.get(name, (None, None))[1]})
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--seq-len", type=int, default=4096, help="sequence length for the FLOPs column")


def _vocabulary_note() -> str:
    """The tiny presets are counted at their own 2048-token vocabulary, while `workbench train` sizes the embedding
    to its tokenizer: without this line the table's 17.84M for glm4-tiny contradicted train's and README's 16.0M."""
    from workbench.data.tokenizer import ByteTokenizer

    tiny = get_preset("glm4-tiny")
    byte_vocab = ByteTokenizer().vocab_size
    trained = count_parameters(tiny.replace(vocab_size=byte_vocab)).total
    return (f"vocabulary: each preset's own (the tiny presets {tiny.vocab_size}); `workbench train` takes its "
            f"tokenizer's instead (byte-level: {byte_vocab} tokens, so glm4-tiny trains {_fmt(trained)}).")


def run(args: argparse.Namespace) -> int:
    table = rows(args.seq_len)
    if args.json:
        print(json.dumps(table, indent=2))
        return 0
    head = ["preset", "kind", "layers", "hidden", "experts", "total", "w/o MTP", "active", "published",
            f"GFLOP/tok@{args.seq_len}"]
    lines = [head]
    for r in table:
        pub = (f"{_fmt(r['published_total'])}/{_fmt(r['published_active'])}" if r["published_total"] else "-")
        experts = f"{r['experts']} top-{r['top_k']}" if r["experts"] else "-"
        flops = "-" if r["flops_per_token"] is None else f"{r['flops_per_token'] / 1e9:.2f}"
        lines.append([r["name"], r["kind"], str(r["layers"]), str(r["hidden"]), experts, _fmt(r["total"]),
                      _fmt(r["main"]), _fmt(r["active"]), pub, flops])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    for line in lines:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip())
    print("active = per-token params without embedding/LM head and MTP (model-card convention); "
          "total includes MTP layers.")
    print(_vocabulary_note())
    short = [r for r in table if r["flops_per_token"] is None]
    if short:
        names = ", ".join(f"{r['name']} {r['max_seq_len']}" for r in short)
        print(f"- = beyond the preset's max positions ({names}); pass --seq-len {min(r['max_seq_len'] for r in short)} "
              f"to see them.")
    return 0
