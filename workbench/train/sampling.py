"""Text sampling from a (trained) model: temperature, top-k and top-p (nucleus), with its own seeded generator.

No KV cache (the models here are small and this is for eyeballing progress): each new token re-runs the model on
the last ``context`` tokens. A private ``torch.Generator`` is used, so sampling never moves the global RNG and a
run's loss trajectory is the same with or without samples. Used by the trainer and notebooks/01_training.ipynb.
"""

from __future__ import annotations

import math

import torch


@torch.no_grad()
def generate(model: torch.nn.Module, prompt_ids: list[int], max_new_tokens: int, context: int,
             temperature: float = 0.8, top_k: int | None = 40, seed: int = 0, device: torch.device | str = "cpu",
             stop_id: int | None = None, autocast=None, top_p: float | None = None) -> list[int]:
    """Continue ``prompt_ids`` by up to ``max_new_tokens`` tokens; stops early at ``stop_id``. Returns new ids.

    ``temperature`` 0 picks the most likely token (greedy). ``top_k`` keeps the k most likely tokens, ``top_p`` the
    smallest set of most likely tokens whose probability reaches p (both may be given; None or 0 / 1.0 = off).
    ``context`` is how many of the last tokens the model sees (its trained sequence length); ``prompt_ids`` must
    hold at least one token."""
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if not prompt_ids:
        raise ValueError("generate needs at least one prompt token (e.g. the tokenizer's end-of-text id)")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if not (isinstance(context, int) and context >= 1):
        raise ValueError(f"context must be a positive number of tokens, got {context!r}")
    if top_k is not None and not (isinstance(top_k, int) and top_k >= 0):
        raise ValueError(f"top_k must be an integer >= 0 (0 or None = off), got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"top_p must be in (0, 1] (None or 1.0 = off), got {top_p!r}")
    was_training = model.training
    model.eval()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    new: list[int] = []
    try:
        for _ in range(max_new_tokens):
            window = ids[:, -context:]
            if autocast is not None:
                with autocast():
                    out = model(window)
            else:
                out = model(window)
            logits = getattr(out, "logits", out)[:, -1, :].float().cpu()
            if temperature == 0:
                nxt = int(logits.argmax(-1))
            else:
                # shifted so the largest is 0 first: a tiny temperature then sends the rest to -inf (greedy),
                # where dividing raw logits overflowed to inf - inf = nan
                logits = (logits - logits.max(-1, keepdim=True).values) / temperature
                if top_k:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                if top_p is not None and top_p < 1:
                    logits = _keep_nucleus(logits, top_p)
                nxt = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=gen))
            if stop_id is not None and nxt == stop_id:
                break
            new.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]], device=ids.device)], dim=1)
    finally:
        model.train(was_training)
    return new


def _keep_nucleus(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """``logits`` with every token outside the nucleus set to -inf: the most likely tokens, in order, up to and
    including the one whose cumulative probability first reaches ``top_p`` (so the most likely token always stays)."""
    sorted_logits, order = torch.sort(logits, descending=True)
    cumulative = torch.softmax(sorted_logits, -1).cumsum(-1)
    outside = cumulative - torch.softmax(sorted_logits, -1) >= top_p  # the mass before this token already reached p
    return logits.masked_fill(outside.scatter(-1, order, outside), float("-inf"))
