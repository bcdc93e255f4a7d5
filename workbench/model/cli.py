"""``workbench models``: the model presets with their total and active parameters (counted, never instantiated).

``--json`` prints the same as a JSON list; ``--seq-len`` sets the sequence length of the FLOPs column.
"""

from __future__ import annotations

import argparse
import json

from workbench.model.accounting import count_parameters, flops_per_token
from workbench.model.presets import FULL_SIZE, PUBLISHED, get_preset, list_presets


def _fmt(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def rows(seq_len: int = 4096) -> list[dict]:
    out = []
    for name in list_presets():
        c = get_preset(name)
        p = count_parameters(c)
        kind = ("MLA+DSA" if c.use_dsa else c.attention_type.upper()) + (" MoE" if c.is_moe else " dense")
        out.append({"name": name, "kind": kind, "layers": c.num_layers, "hidden": c.hidden_size,
                    "experts": c.num_experts, "top_k": c.num_experts_per_token if c.is_moe else 0,
                    "mtp_layers": c.mtp_layers, "total": p.total, "main": p.main, "mtp": p.mtp, "active": p.active,
                    "flops_per_token": flops_per_token(c, seq_len).total, "seq_len": seq_len,
                    "full_size": name in FULL_SIZE,
                    "published_total": PUBLISHED.get(name, (None, None))[0],
                    "published_active": PUBLISHED.get(name, (None, None))[1]})
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--seq-len", type=int, default=4096, help="sequence length for the FLOPs column")


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
        lines.append([r["name"], r["kind"], str(r["layers"]), str(r["hidden"]), experts, _fmt(r["total"]),
                      _fmt(r["main"]), _fmt(r["active"]), pub, f"{r['flops_per_token'] / 1e9:.2f}"])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    for line in lines:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip())
    print("active = per-token params without embedding/LM head and MTP (model-card convention); "
          "total includes MTP layers.")
    return 0
