"""Op categories: which bucket of a training step an op's time belongs to, decided from its name (and its parents).

Categories (in the order tables and charts show them): matmul, attention, norm, elementwise, moe (routing and
dispatch), communication, optimizer, data, other. An op is first matched by its own name against the patterns
below (aten::mm, scaled_dot_product_attention, rms_norm, nccl/gloo/hccl, ...). Then it may inherit the category of
the nearest enclosing op or annotation: every op inside ``Optimizer.step`` is optimizer time, every op inside a
data phase is data time, the ``aten::bmm`` inside a decomposed attention is attention time. MoE routing contexts
pass their category to everything but matmuls (expert GEMMs are still matmul work).
Used by ``workbench.profiling.tables`` and, through it, notebooks/04_profiling.ipynb.
"""

from __future__ import annotations

import re
from typing import Iterable

CATEGORIES = ("matmul", "attention", "norm", "elementwise", "moe", "communication", "optimizer", "data", "other")

# First match wins, so the order matters: communication before everything (an all-reduce inside the optimizer is
# still communication), attention before matmul ("flash_attention" must not read as a GEMM).
_PATTERNS: list[tuple[str, re.Pattern]] = [
    ("communication", re.compile(
        # broadcast_ but not aten::broadcast_tensors / broadcast_to (shape ops, e.g. in mse_loss): no communication
        r"nccl|gloo|hccl|c10d|all_?reduce|all_?gather|reduce_?scatter|all_?to_?all|broadcast_(?!to\b|tensors\b)"
        r"|record_param_comms|hcom_"  # hcom_: HCCL's collectives in torch_npu traces (hcom_allReduce__12_0_1)
        r"|^(aten::)?_?(send|recv|barrier)\b", re.I)),
    ("data", re.compile(r"dataloader|_next_data|collate|pin_memory|^workbench/data$", re.I)),
    ("optimizer", re.compile(
        r"^optimizer\.|optimizer\.step|zero_grad|_foreach_|_fused_adam|_fused_sgd|adamw?\b|clip_grad|^workbench/optimizer$",
        re.I)),
    ("moe", re.compile(r"moe|expert|router|routing|token_?(dispatch|combine)|grouped_m(m|atmul)|aten::topk\b|aten::histc|aten::bincount",
                       re.I)),
    ("attention", re.compile(r"attention|flash|fmha|sdpa|fusion_attention|attn", re.I)),
    ("norm", re.compile(r"rms_?norm|layer_?norm|group_?norm|batch_?norm|native_norm", re.I)),
    ("matmul", re.compile(
        r"^aten::(mm|addmm|bmm|baddbmm|addbmm|matmul|linear|einsum|_scaled_mm|addmv|mv|dot|_int_mm)$"
        r"|(mm|addmm|bmm|linear)backward|gemm|gemv|cublas|cutlass|xmma|matmul", re.I)),
    ("elementwise", re.compile(
        r"^aten::(add|sub|mul|div|neg|abs|exp|log|pow|sqrt|rsqrt|reciprocal|sigmoid|tanh|relu|gelu|silu|softmax|_softmax"
        r"|log_softmax|_log_softmax|where|masked_fill|clamp|clamp_min|clamp_max|maximum|minimum|sum|mean|max|min|amax"
        r"|var|std|norm|cumsum|copy_|_to_copy|to|fill_|zero_|zeros_like|ones_like|cat|stack|nll_loss|nll_loss_forward"
        r"|nll_loss_backward|cross_entropy_loss|embedding|embedding_backward|embedding_dense_backward|index_select"
        r"|gather|scatter|scatter_add|index|index_put_|dropout|native_dropout|triu|tril|lerp|addcmul|addcdiv|sign"
        r"|square|erf|cos|sin|contiguous|clone|_log_softmax_backward_data|_softmax_backward_data|gelu_backward"
        r"|silu_backward|threshold_backward|sigmoid_backward|tanh_backward|mul_|add_|div_|sub_)_?$"
        r"|elementwise|vectorized|reduce_kernel|unrolled_elementwise|cross_?entropy|swiglu", re.I)),
]

# Categories an enclosing op or annotation hands down to the ops inside it (see the module docstring).
_INHERITED = {"communication", "optimizer", "data", "attention", "norm", "moe"}
_MOE_KEEPS = {"matmul"}  # inside an MoE context, matmuls stay matmuls


def categorize_name(name: str) -> str:
    """The category of one op name on its own, without looking at its parents."""
    for category, pattern in _PATTERNS:
        if pattern.search(name):
            return category
    return "other"


# Names whose own category is only a guess: a top-k is MoE routing, unless it runs inside something else (GLM-5's
# DSA indexer picks each query's keys with one, which is attention work). Without Python frames (``with_stack``)
# there is no context to tell, and every top-k counts as moe.
_WEAK = re.compile(r"^aten::topk$")


def categorize(name: str, ancestors: Iterable[str] = ()) -> str:
    """The category of op ``name`` given the names of its enclosing ops/annotations, innermost first."""
    own = categorize_name(name)
    if own in ("communication", "optimizer", "data"):
        return own
    ancestors = list(ancestors)  # (read twice below)
    if _WEAK.search(name):
        context = next((c for c in map(categorize_name, ancestors) if c in _INHERITED), None)
        return context or own
    for parent in ancestors:
        inherited = categorize_name(parent)
        if inherited not in _INHERITED:
            continue
        if inherited == "moe" and own in _MOE_KEEPS:
            return own
        if inherited == own:
            return own
        if own in ("matmul", "elementwise", "other") or inherited in ("communication", "optimizer", "data"):
            return inherited
        return own  # e.g. a norm inside attention stays norm
    return own
