"""``torch`` implementations: the same ops through PyTorch's fused kernels instead of written-out math.

- attention: ``F.scaled_dot_product_attention`` (flash / memory-efficient / math backend, whichever torch picks),
  GQA through ``enable_gqa``, the DSA top-k pattern and bottom-right causal alignment as a boolean ``attn_mask``;
- moe: sort tokens by expert -> one grouped GEMM for all experts (``torch._grouped_mm`` where it runs for this
  device and dtype, else one GEMM per contiguous split) -> unpermute; no per-expert routing masks or gathers;
- cross_entropy: vocabulary-chunked, with a custom autograd function that keeps only [N, chunk] logits alive
  (online logsumexp forward, recompute in backward), so the full [N, V] logits never exist; chosen by size:
  small logits (under LOGITS_BUDGET_BYTES) take the plain fused formula, which measured faster;
- rms_norm: ``F.rms_norm`` (a fused kernel on accelerators; on cpu it measured no faster than the reference, so
  it is registered below the reference there and must be asked for).

swiglu has no ``torch`` variant (PyTorch has no fused SwiGLU); its ``autograd`` variant, rope's ``torch`` variant,
the cpu-default rms_norm and the gathered sparse_mqa_attention (hand-written backwards) live in
``torch_autograd_ops.py``; the cpu-default sparse_mqa_attention (sparse-matrix products) in ``sparse_csr_ops.py``.
Used through the registry by ``workbench.model``; compared in notebooks/02_kernels.ipynb.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F

from workbench.kernels.reference import count_rows_per_expert, topk_to_mask
from workbench.kernels.registry import register, register_compile_probe, resolve

TORCH_DEVICES = ("cpu", "cuda", "xpu", "mps", "npu")
PRIORITY = 20  # above reference (0); the npu fused ops (30) win on npu


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a matmul on ``x`` runs in: autocast's when it is on for x's device, else x's own. Ops that
    autocast does not know (``torch._grouped_mm``, matmuls inside a custom autograd backward) cast to it
    explicitly, so they compute what the reference computes under the same autocast."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


# --------------------------------------------------------------------------------------------------------------
# rms_norm
# --------------------------------------------------------------------------------------------------------------
# On cpu F.rms_norm measured no faster than the eager reference (torch 2.13, 1 and 2 threads, 1024x512 to
# 8192x2048: within +-10%), so the reference stays the cpu default; on accelerators F.rms_norm is a fused kernel.
@register("rms_norm", "torch", devices=TORCH_DEVICES, priority=PRIORITY, device_priority={"cpu": -5})
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """F.rms_norm in fp32 (fused on accelerators), cast back to the input dtype like the reference."""
    return F.rms_norm(x.float(), (x.shape[-1],), weight.float(), eps).to(x.dtype)


# --------------------------------------------------------------------------------------------------------------
# attention
# --------------------------------------------------------------------------------------------------------------
def attention_keep_mask(q_len: int, k_len: int, causal: bool, topk_indices: torch.Tensor | None,
                        device: torch.device) -> torch.Tensor | None:
    """Boolean keep-mask (True = attend) broadcastable to [B, H, Sq, Sk], or None when nothing is masked.

    Causal is bottom-right aligned like the reference (query i sees keys <= i + Sk - Sq), which is what a decode
    step with a KV cache needs; SDPA's own ``is_causal`` is top-left aligned, so it is only used when Sq == Sk.
    """
    keep = None
    if causal:
        keep = torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(diagonal=k_len - q_len)
    if topk_indices is not None:
        sparse = topk_to_mask(topk_indices, k_len)[:, None]  # [B, 1, Sq, Sk]
        keep = sparse if keep is None else keep & sparse
    return keep


@register("attention", "torch", devices=TORCH_DEVICES, priority=PRIORITY)
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True, scale: float | None = None,
              topk_indices: torch.Tensor | None = None) -> torch.Tensor:
    """F.scaled_dot_product_attention with GQA (enable_gqa) and DSA top-k as a boolean mask."""
    q_len, k_len = q.shape[-2], k.shape[-2]
    gqa = q.shape[1] != k.shape[1]
    v_dim = v.shape[-1]
    if v_dim < q.shape[-1] and q.device.type == "cpu":
        # MLA: v is narrower than q/k (v_head_dim < nope + rope). CPU flash attention needs one head dim, else SDPA
        # falls back to the math path (materialised [B, H, S, S] scores, softmax, masks): zero-padding v to the
        # q/k width and slicing the output back measured 3-4x faster forward + backward (glm5-tiny at S=1024).
        v = F.pad(v, (0, q.shape[-1] - v_dim))
    if topk_indices is None and (not causal or q_len == k_len):
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale, enable_gqa=gqa)
        return out[..., :v_dim] if out.shape[-1] != v_dim else out
    keep = attention_keep_mask(q_len, k_len, causal, topk_indices, q.device)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=scale, enable_gqa=gqa)[..., :v_dim]
    # A query whose every key is masked (possible with top-k slots all -1) gives NaN in some SDPA backends; the
    # reference defines its output as zeros. torch.where keeps the gradient of those rows at zero, not NaN.
    empty_rows = ~keep.any(dim=-1, keepdim=True)  # [B or 1, 1, Sq, 1]
    # the usual case, skipped where the check is free of syncs: on cpu, outside torch.compile (read back, the
    # answer broke the graph in every DSA layer)
    if out.device.type == "cpu" and not torch.compiler.is_compiling() and not empty_rows.any():
        return out
    return torch.where(empty_rows, torch.zeros((), dtype=out.dtype, device=out.device), out)


# --------------------------------------------------------------------------------------------------------------
# moe: permute -> grouped GEMMs -> unpermute
# --------------------------------------------------------------------------------------------------------------
class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the incoming gradient contiguous.

    ``torch._grouped_mm``'s CPU backward rejects expanded (stride-0) gradients, e.g. from ``out.sum()``."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


# (device type, dtype) -> whether torch._grouped_mm runs there: filled by grouped_mm_works, read under compile
_GROUPED_MM_WORKS: dict[tuple[str, torch.dtype], bool] = {}


def grouped_mm_works(device_type: str, dtype: torch.dtype) -> bool:
    """Whether ``torch._grouped_mm`` runs forward and backward here (it is private, and its CUDA kernel needs
    recent GPUs and bf16): tried once per (device type, dtype) on a tiny problem with an empty group."""
    key = (device_type, dtype)
    if key not in _GROUPED_MM_WORKS:
        _GROUPED_MM_WORKS[key] = _grouped_mm_probe_safely(device_type, dtype)
    return _GROUPED_MM_WORKS[key]


def _grouped_mm_probe_safely(device_type: str, dtype: torch.dtype) -> bool:
    if not hasattr(torch, "_grouped_mm"):
        return False
    try:
        # The first call comes from inside a model's forward: maybe under torch.no_grad(), maybe inside activation
        # checkpointing, whose saved-tensor hooks would record the probe's tensors in the first forward but not in
        # the recomputation ("a different number of tensors was saved"). Identity hooks, innermost, keep the probe
        # out of any caller's autograd bookkeeping.
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
            return _grouped_mm_probe(device_type, dtype)
    except Exception:  # not implemented for this device/dtype/alignment: fall back to the slice loop
        return False


def _grouped_mm_probe(device_type: str, dtype: torch.dtype) -> bool:
    x = torch.randn(32, 16, device=device_type, dtype=dtype, requires_grad=True)
    w = torch.randn(3, 16, 16, device=device_type, dtype=dtype, requires_grad=True)
    offs = torch.tensor([16, 16, 32], device=device_type, dtype=torch.int32)
    out = torch._grouped_mm(x, w, offs=offs)
    out.backward(torch.ones_like(out))
    expected = torch.cat([x[:16] @ w[0], x[16:] @ w[2]])
    return bool(torch.allclose(out.float(), expected.float(), rtol=0.05, atol=0.05))


def probe_before_compile(device_type: str) -> None:
    """Run the grouped-GEMM probes for the dtypes training computes in, ahead of torch.compile (the trainer calls
    this through ``registry.resolve_all``): traced, the probe would break the graph."""
    for dtype in (torch.float32, torch.bfloat16):  # the dtypes training may run in (fp16 is refused)
        grouped_mm_works(device_type, dtype)


register_compile_probe(probe_before_compile)


def _aligned16(x_sorted: torch.Tensor, weights_EKN: torch.Tensor) -> bool:
    """``_grouped_mm`` needs every non-unit stride to be a multiple of 16 bytes (e.g. D, F multiples of 4 in fp32),
    of its inputs and of the [M, N] output, whose gradient its backward multiplies (an odd N failed there only)."""
    out_row_bytes = weights_EKN.shape[-1] * weights_EKN.element_size()
    return out_row_bytes % 16 == 0 and all(stride * t.element_size() % 16 == 0 for t in (x_sorted, weights_EKN)
                                           for stride in t.stride() if stride != 1)


def grouped_matmul(x_sorted: torch.Tensor, weights_EKN: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """[M, K] rows grouped by expert (counts[E] rows each, in order) times weights_EKN[e] -> [M, N].

    One ``torch._grouped_mm`` call where it works for this device and dtype (cpu included); otherwise one GEMM
    per expert over ``split``/``unbind`` views. Not ``x[a:b]`` / ``w[e]`` indexing: the backward of each slice or
    select allocates a zero tensor the size of the whole input, which made the reference's backward ~E^2 slow.
    """
    if torch.compiler.is_compiling():
        # Traced, neither path works: torch 2.13's fake-tensor rule for _grouped_mm accepts bf16 only (fp32 on cpu
        # logged a 20-line error per trace and broke the graph), and the per-expert split needs counts.tolist()
        # (data-dependent). So the product enters the graph as one opaque custom op with its own backward, and the
        # routing, permutation and SwiGLU around it compile into the same graph. Which path runs inside it is
        # decided here, from the probe resolve_all ran before compiling; never probed: eagerly, behind a break.
        works = _GROUPED_MM_WORKS.get((x_sorted.device.type, x_sorted.dtype))
        if works is None:
            return _grouped_matmul_eager(x_sorted, weights_EKN, counts)
        return _grouped_mm_op(x_sorted, weights_EKN, counts, works and _aligned16(x_sorted, weights_EKN))
    return _grouped_matmul(x_sorted, weights_EKN, counts)


def _grouped_matmul(x_sorted: torch.Tensor, weights_EKN: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    if grouped_mm_works(x_sorted.device.type, x_sorted.dtype) and _aligned16(x_sorted, weights_EKN):
        offsets = counts.cumsum(0).to(torch.int32)
        return torch._grouped_mm(_ContiguousGrad.apply(x_sorted), weights_EKN, offs=offsets)
    return _split_matmul(x_sorted, weights_EKN, counts)


def _split_matmul(x_sorted: torch.Tensor, weights_EKN: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    pieces = torch.split(x_sorted, counts.tolist())
    outs = [rows @ weight for rows, weight in zip(pieces, weights_EKN.unbind(0)) if rows.shape[0]]
    return torch.cat(outs) if outs else x_sorted.new_zeros(0, weights_EKN.shape[-1])


# torch._disable_dynamo, not torch.compiler.disable: the latter imports dynamo when applied (~1.3 s, paid by every
# `workbench` command that imports the kernels); the former, the lazy twin torch uses for itself, imports it on the
# first call, which happens only under torch.compile, where dynamo is loaded anyway.
_grouped_matmul_eager = torch._disable_dynamo(_grouped_matmul)


# The grouped GEMM as custom ops, for torch.compile only: dynamo and inductor see a black box with a shape rule
# (register_fake) and a backward made of two more such boxes. ``fused``: one torch._grouped_mm, else one GEMM per
# expert. Eager code calls the functions above instead, through autograd's own backward of _grouped_mm.
@torch.library.custom_op("workbench::grouped_mm", mutates_args=())
def _grouped_mm_op(x: torch.Tensor, weights_EKN: torch.Tensor, counts: torch.Tensor, fused: bool) -> torch.Tensor:
    """[M, K] x [E, K, N] -> [M, N]: expert e's counts[e] rows (in order) times weights_EKN[e]."""
    if x.shape[0] == 0:  # an expert-parallel rank nobody routed to (_grouped_mm's empty output has other strides)
        return x.new_zeros(0, weights_EKN.shape[-1])
    if fused:
        return torch._grouped_mm(x, weights_EKN, offs=counts.cumsum(0).to(torch.int32))
    return _split_matmul(x, weights_EKN, counts)


@_grouped_mm_op.register_fake
def _(x, weights_EKN, counts, fused):
    return x.new_empty(x.shape[0], weights_EKN.shape[-1])


@torch.library.custom_op("workbench::grouped_mm_weight_grad", mutates_args=())
def _grouped_mm_weight_grad_op(grad: torch.Tensor, x: torch.Tensor, counts: torch.Tensor,
                               fused: bool) -> torch.Tensor:
    """Per expert e: grad[rows of e]^T @ x[rows of e] -> [E, N, K] (zeros for an expert without rows): the
    transpose of d weights_EKN, computed in that layout because the experts' parameters are stored [E, N, K]
    (weights_EKN is their transposed view), so the gradient reaches them without a copy."""
    if fused and x.shape[0]:
        return torch._grouped_mm(grad.t(), x, offs=counts.cumsum(0).to(torch.int32))
    sizes = counts.tolist()
    out = grad.new_zeros(len(sizes), grad.shape[1], x.shape[1])
    for expert, (g, rows) in enumerate(zip(torch.split(grad, sizes), torch.split(x, sizes))):
        if rows.shape[0]:
            torch.mm(g.t(), rows, out=out[expert])
    return out


@_grouped_mm_weight_grad_op.register_fake
def _(grad, x, counts, fused):
    return x.new_empty(counts.shape[0], grad.shape[1], x.shape[1])


def _grouped_mm_setup_context(ctx, inputs, output):
    x, weights_EKN, counts, ctx.fused = inputs
    ctx.save_for_backward(x, weights_EKN, counts)


def _grouped_mm_backward(ctx, grad):
    x, weights_EKN, counts = ctx.saved_tensors
    grad = grad.contiguous()  # an expanded (stride-0) gradient, e.g. from out.sum(), is rejected by _grouped_mm
    grad_x = grad_w = None
    if ctx.needs_input_grad[0]:
        grad_x = _grouped_mm_op(grad, weights_EKN.transpose(-2, -1), counts, ctx.fused)
    if ctx.needs_input_grad[1]:
        grad_w = _grouped_mm_weight_grad_op(grad, x, counts, ctx.fused).transpose(-2, -1)
    return grad_x, grad_w, None, None


_grouped_mm_op.register_autograd(_grouped_mm_backward, setup_context=_grouped_mm_setup_context)


class _GatherRows(torch.autograd.Function):
    """``x[rows]`` where ``rows`` is a permutation, optionally of rows repeated ``group`` times in a row
    (rows = order // group), with a gather backward instead of autograd's scatter-add (``index_put`` with
    accumulate, ~7% of a glm45-tiny step on cpu): with ``inverse`` = the inverse permutation of ``order``,
    grad_x[t] = sum_j grad[inverse[t * group + j]]."""

    @staticmethod
    def forward(ctx, x, rows, inverse, group):
        ctx.save_for_backward(inverse)
        ctx.group = group
        return x[rows]

    @staticmethod
    def backward(ctx, grad):
        (inverse,) = ctx.saved_tensors
        grad_x = grad[inverse]
        if ctx.group > 1:
            grad_x = grad_x.view(-1, ctx.group, grad.shape[-1]).sum(dim=1)
        return grad_x, None, None, None


@register("moe", "torch", devices=TORCH_DEVICES, priority=PRIORITY)
def moe(x: torch.Tensor, expert_indices: torch.Tensor, expert_weights: torch.Tensor, w_gate_up: torch.Tensor,
        w_down: torch.Tensor) -> torch.Tensor:
    """Sort (token, slot) pairs by expert, run all experts as grouped GEMMs, unpermute and weight."""
    n_tokens, top_k = expert_indices.shape
    n_experts = w_gate_up.shape[0]
    flat_experts = expert_indices.reshape(-1)                        # [T*k], slot j of token t at t*k + j
    order = torch.argsort(flat_experts, stable=True)                 # permutation grouping rows by expert
    counts = count_rows_per_expert(flat_experts, n_experts)         # rows per expert
    dtype = compute_dtype(x)
    inverse = torch.argsort(order)                                   # row of (token, slot) t*k + j after sorting
    x_sorted = _GatherRows.apply(x, order // top_k, inverse, top_k).to(dtype)                 # permute: [T*k, D]
    activation = resolve("swiglu", x.device.type)  # the registry's swiglu (no cat of gradient halves on cpu)
    hidden = activation(grouped_matmul(x_sorted, w_gate_up.to(dtype).transpose(1, 2), counts))  # [T*k, F]
    y_sorted = grouped_matmul(hidden, w_down.to(dtype).transpose(1, 2), counts)               # [T*k, D]
    # Unpermute with an inverse-permutation gather (deterministic, unlike a scatter-add), then weight the k slots.
    y = _GatherRows.apply(y_sorted, inverse, order, 1).view(n_tokens, top_k, y_sorted.shape[-1])  # -1 fails on 0 rows
    return (y * expert_weights.to(y.dtype)[..., None]).sum(dim=1).to(x.dtype)


# --------------------------------------------------------------------------------------------------------------
# cross_entropy, chunked over the vocabulary
# --------------------------------------------------------------------------------------------------------------
DEFAULT_VOCAB_CHUNK = 8192


class ChunkedCrossEntropy(torch.autograd.Function):
    """Mean CE of logits = hidden @ weight^T without materialising [N, V]: only [N, chunk] at a time.

    Forward keeps a running logsumexp per row, merged chunk by chunk with logaddexp (the online softmax
    normaliser of Milakov & Gimelshein 2018, as in FlashAttention), plus the target logit. Backward recomputes each chunk's
    logits: d loss / d logits = (softmax - onehot(label)) / n_valid, then folds it into d hidden and d weight.
    """

    @staticmethod
    def forward(ctx, hidden, weight, labels, ignore_index, chunk_size):
        n_rows, vocab = hidden.shape[0], weight.shape[0]
        valid = labels != ignore_index
        # as F.cross_entropy: never a silent wrong loss. Reading the answer back waits for the device (a host sync
        # per micro-batch) and breaks a compiled graph, so, like check_topk_indices, only on cpu and in eager mode
        if hidden.device.type == "cpu" and not torch.compiler.is_compiling() and \
                bool((valid & ((labels < 0) | (labels >= vocab))).any()):
            raise IndexError(f"cross_entropy: a label is outside [0, {vocab}) (and is not ignore_index)")
        safe_labels = torch.where(valid, labels, torch.zeros_like(labels))
        mm_dtype = compute_dtype(hidden)  # the backward recomputes the logits in this same dtype
        lse = hidden.new_full((n_rows,), float("-inf"), dtype=torch.float32)   # running logsumexp per row
        target_logit = hidden.new_zeros((n_rows,), dtype=torch.float32)
        for start in range(0, vocab, chunk_size):
            w_chunk = weight[start:start + chunk_size].to(mm_dtype)
            logits = (hidden.to(mm_dtype) @ w_chunk.t()).float()  # [N, chunk]: all of the logits that exist
            # log(sum_all exp) = logaddexp(log(sum_seen exp), log(sum_chunk exp)): the online logsumexp
            lse = torch.logaddexp(lse, torch.logsumexp(logits, dim=-1))
            in_chunk = (safe_labels >= start) & (safe_labels < start + logits.shape[1])
            picked = logits.gather(1, (safe_labels - start).clamp(0, logits.shape[1] - 1)[:, None])[:, 0]
            target_logit = torch.where(in_chunk, picked, target_logit)
        n_valid = valid.sum()
        loss = torch.where(valid, lse - target_logit, torch.zeros_like(lse)).sum() / n_valid  # 0/0 = nan, like F
        ctx.save_for_backward(hidden, weight, safe_labels, valid, lse, n_valid)
        ctx.chunk_size, ctx.mm_dtype = chunk_size, mm_dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        hidden, weight, labels, valid, lse, n_valid = ctx.saved_tensors
        chunk = ctx.chunk_size
        # [N, 1]; ignored rows get no gradient. clamp: with every label ignored the loss is nan (0/0, like F), but its
        # gradient is 0 as F's is, not 0/0 = nan in every weight
        row_scale = (valid.float() * grad_loss / n_valid.clamp(min=1))[:, None]
        grad_hidden = torch.zeros_like(hidden, dtype=torch.float32)
        grad_weight = torch.empty_like(weight, dtype=torch.float32)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        hidden_mm = hidden.to(ctx.mm_dtype)
        for start in range(0, weight.shape[0], chunk):
            w_chunk = weight[start:start + chunk]
            # recompute this chunk's logits and turn them into softmax in place: exp(logit - lse)
            grad_logits = (hidden_mm @ w_chunk.to(ctx.mm_dtype).t()).float().sub_(lse[:, None]).exp_()
            in_chunk = (labels >= start) & (labels < start + w_chunk.shape[0])
            grad_logits[rows[in_chunk], labels[in_chunk] - start] -= 1.0  # softmax - onehot(label)
            grad_logits.mul_(row_scale)
            grad_hidden += grad_logits @ w_chunk.float()
            grad_weight[start:start + chunk] = grad_logits.t() @ hidden.float()
        return grad_hidden.to(hidden.dtype), grad_weight.to(weight.dtype), None, None, None


# Below this many bytes of fp32 logits the plain fused formula runs: on this CPU chunking measured 1.2x slower
# forward and 1.4x slower forward+backward at N=512, V=16384 (the price of the recompute), so it is used only where
# the full logits would be big. GLM's 151k vocabulary at 8192 tokens is 5 GB of logits: chunked.
LOGITS_BUDGET_BYTES = 256 * 2**20


@register("cross_entropy", "torch", devices=TORCH_DEVICES, priority=PRIORITY)
def cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100,
                  chunk_size: int | None = None) -> torch.Tensor:
    """LM head + cross-entropy; vocabulary-chunked (N x chunk logits at a time) when the full logits are big.

    ``chunk_size=None`` chooses by size: the plain fused formula when N x V fp32 logits fit in
    ``LOGITS_BUDGET_BYTES``, else chunks of ``DEFAULT_VOCAB_CHUNK``. An explicit ``chunk_size`` always chunks.
    """
    vocab = weight.shape[0]
    if chunk_size is None:
        if hidden.shape[0] * vocab * 4 <= LOGITS_BUDGET_BYTES:
            return F.cross_entropy((hidden @ weight.t()).float(), labels, ignore_index=ignore_index)
        chunk_size = DEFAULT_VOCAB_CHUNK
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return ChunkedCrossEntropy.apply(hidden, weight, labels, ignore_index, int(min(chunk_size, vocab)))


__all__ = ["attention", "attention_keep_mask", "cross_entropy", "grouped_matmul",
           "grouped_mm_works", "moe", "probe_before_compile",
           "rms_norm", "ChunkedCrossEntropy", "DEFAULT_VOCAB_CHUNK", "LOGITS_BUDGET_BYTES"]
