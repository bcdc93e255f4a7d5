"""Correctness harness: every implementation against the eager reference, forward and backward, several shapes
and dtypes, on any device.

How one check works: inputs are drawn on cpu from a seeded generator, rounded to the dtype under test and moved to
the device. The *golden* answer is the ``reference`` implementation run in fp32 on those same (rounded) inputs; the
implementation under test runs in the dtype under test. Both get the same random output gradient. The error is

    max |impl - golden| / max |golden|       (for the output, and for every input gradient)

i.e. relative to the tensor's scale, so one tolerance per dtype fits every op:

    fp32: 1e-4 (2e-3 for Triton on cuda, whose tl.dot uses TF32 by default)     bf16: 3e-2     fp16: 1e-2

bf16 keeps 8 mantissa bits (relative rounding 2^-9 ~ 0.002 per element); sums over a few hundred terms and
the rounding of intermediates (logits, probabilities) stay well inside 3e-2, which still catches a wrong mask or a
missing term (those give errors of order 1). Used by tests/test_kernels*.py, notebooks/02_kernels.ipynb and
``workbench kernels check``.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import Callable, ContextManager

import torch

from workbench.kernels import registry

TOLERANCES = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 1e-2}
TF32_TOLERANCE = 2e-3


def tolerance(dtype: torch.dtype, impl: str, device_type: str) -> float:
    if dtype == torch.float32 and impl == "triton" and device_type == "cuda":
        return TF32_TOLERANCE
    return TOLERANCES[dtype]


@dataclass
class Case:
    """One set of inputs for an op: ``make(generator)`` returns (args, kwargs); ``grad_args`` are the positions
    of the arguments whose gradients are compared (e.g. rope's cos/sin are buffers, not trained)."""

    name: str
    make: Callable[[torch.Generator], tuple[list, dict]]
    grad_args: tuple[int, ...]
    # a context the implementation under test runs in (not the golden reference): e.g. a tiny logits budget, so
    # cross_entropy takes the vocabulary-chunked path it uses for GLM's 151k vocabulary on these small inputs
    around: Callable[[], ContextManager] | None = None


def _randn(gen, *shape, scale=1.0):
    return torch.randn(*shape, generator=gen) * scale


def _routing(gen, tokens, experts, top_k):
    scores = torch.rand(tokens, experts, generator=gen)
    weights, indices = scores.topk(top_k, dim=-1)
    return indices, weights / weights.sum(-1, keepdim=True)


def _topk(gen, batch, q_len, k_len, slots):
    # Each query picks `slots` keys among those it may see (causal), with some unused (-1) slots.
    idx = torch.randint(0, k_len, (batch, q_len, slots), generator=gen)
    visible_max = torch.arange(q_len)[None, :, None] + (k_len - q_len)
    idx = torch.minimum(idx, visible_max)
    unused = torch.rand(batch, q_len, slots, generator=gen) < 0.2
    return torch.where(unused, torch.full_like(idx, -1), idx)


def _angles(seq, half, base=10000.0):
    inv = 1.0 / base ** (torch.arange(half) / half)
    angles = torch.arange(seq)[:, None] * inv[None, :]
    return angles.cos(), angles.sin()


def _rope_case(name, shape, half, interleaved):
    def make(gen):
        cos, sin = _angles(shape[-2], half)
        return [_randn(gen, *shape), cos, sin, interleaved], {}
    return Case(name, make, (0,))


def _attention_case(name, batch, heads, kv_heads, q_len, k_len, d_qk, d_v, causal, topk_slots=0):
    def make(gen):
        q = _randn(gen, batch, heads, q_len, d_qk)
        k = _randn(gen, batch, kv_heads, k_len, d_qk)
        v = _randn(gen, batch, kv_heads, k_len, d_v)
        kwargs = {"causal": causal}
        if topk_slots:
            kwargs["topk_indices"] = _topk(gen, batch, q_len, k_len, topk_slots)
        return [q, k, v], kwargs
    return Case(name, make, (0, 1, 2))


def _sparse_mqa_case(name, batch, heads, q_len, k_len, dim, v_dim, slots):
    def make(gen):
        topk = _topk(gen, batch, q_len, k_len, slots)
        topk[:, :, 0] = torch.arange(q_len) + (k_len - q_len)  # every query keeps at least one key (itself)
        return [_randn(gen, batch, q_len, heads, dim), _randn(gen, batch, k_len, dim), topk, dim ** -0.5, v_dim], {}
    return Case(name, make, (0, 1))


def _moe_case(name, tokens, dim, ffn, experts, top_k):
    def make(gen):
        indices, weights = _routing(gen, tokens, experts, top_k)
        return [_randn(gen, tokens, dim), indices, weights, _randn(gen, experts, 2 * ffn, dim, scale=dim ** -0.5),
                _randn(gen, experts, dim, ffn, scale=ffn ** -0.5)], {}
    # the routing weights' gradient too: in the model it is what trains the router
    return Case(name, make, (0, 2, 3, 4))


@contextlib.contextmanager
def _chunked_cross_entropy(chunk: int):
    """Make the torch cross_entropy chunk even tiny logits, ``chunk`` vocabulary rows at a time."""
    from workbench.kernels import torch_ops

    saved = torch_ops.LOGITS_BUDGET_BYTES, torch_ops.DEFAULT_VOCAB_CHUNK
    torch_ops.LOGITS_BUDGET_BYTES, torch_ops.DEFAULT_VOCAB_CHUNK = 0, chunk
    try:
        yield
    finally:
        torch_ops.LOGITS_BUDGET_BYTES, torch_ops.DEFAULT_VOCAB_CHUNK = saved


def _ce_case(name, rows, dim, vocab, ignored, ignore_index=-100, chunk=None):
    def make(gen):
        labels = torch.randint(0, vocab, (rows,), generator=gen)
        labels[:ignored] = ignore_index
        kwargs = {} if ignore_index == -100 else {"ignore_index": ignore_index}
        return [_randn(gen, rows, dim), _randn(gen, vocab, dim, scale=dim ** -0.5), labels], kwargs
    return Case(name, make, (0, 1), around=(lambda: _chunked_cross_entropy(chunk)) if chunk else None)


CASES: dict[str, list[Case]] = {
    "rms_norm": [
        Case("[4,32]", lambda g: ([_randn(g, 4, 32), 1 + _randn(g, 32, scale=0.1)], {}), (0, 1)),
        Case("[2,3,48]", lambda g: ([_randn(g, 2, 3, 48, scale=3.0), 1 + _randn(g, 48, scale=0.1)], {}), (0, 1)),
    ],
    "rope": [
        _rope_case("half [2,3,8,16]", (2, 3, 8, 16), 8, False),
        _rope_case("interleaved [2,3,8,16]", (2, 3, 8, 16), 8, True),
        _rope_case("partial half R=8 of 16", (2, 3, 8, 16), 4, False),
        _rope_case("partial interleaved R=8 of 16", (2, 3, 8, 16), 4, True),
    ],
    "swiglu": [
        Case("[4,48]", lambda g: ([_randn(g, 4, 48)], {}), (0,)),
        Case("[2,3,32]", lambda g: ([_randn(g, 2, 3, 32, scale=2.0)], {}), (0,)),
    ],
    "attention": [
        _attention_case("causal MHA", 1, 2, 2, 16, 16, 16, 16, True),
        _attention_case("causal GQA 4/2, S=24", 2, 4, 2, 24, 24, 16, 16, True),
        _attention_case("non-causal, Dv != Dqk", 1, 2, 1, 12, 12, 32, 16, False),
        _attention_case("causal decode Sq=4 < Sk=20", 1, 2, 2, 4, 20, 16, 16, True),
        _attention_case("DSA top-4 causal GQA", 2, 4, 2, 16, 16, 16, 16, True, topk_slots=4),
    ],
    "sparse_mqa_attention": [
        _sparse_mqa_case("H=4 S=16 K=4 D=24 Dv=16", 2, 4, 16, 16, 24, 16, 4),
        _sparse_mqa_case("H=2 decode Sq=3 < Sk=20 K=8", 1, 2, 3, 20, 16, 16, 8),
    ],
    "moe": [
        _moe_case("T=24 E=8 k=2", 24, 16, 8, 8, 2),
        _moe_case("T=10 E=4 k=1", 10, 16, 8, 4, 1),
    ],
    "cross_entropy": [
        _ce_case("N=12 V=50, 3 ignored", 12, 16, 50, 3),
        _ce_case("N=6 V=20000", 6, 16, 20000, 1),
        _ce_case("N=10 V=300, ignore_index=7", 10, 16, 300, 3, ignore_index=7),
        _ce_case("N=12 V=300 in ragged chunks of 64", 12, 16, 300, 2, chunk=64),
    ],
}


@dataclass
class CheckResult:
    op: str
    impl: str
    case: str
    dtype: str
    device: str
    forward_error: float
    backward_error: float
    tolerance: float
    passed: bool
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def _relative_error(actual: torch.Tensor, golden: torch.Tensor) -> float:
    actual, golden = actual.detach().double().cpu(), golden.detach().double().cpu()
    if actual.shape != golden.shape:
        return float("inf")
    finite = torch.isfinite(golden)
    if not torch.equal(torch.isfinite(actual), finite):
        return float("inf")
    # non-finite entries must match exactly (nan where nan, +inf where +inf); the finite ones are compared as usual.
    # Comparing only where the nans were let [nan, 100, -5] pass as [nan, 1, 2].
    a_bad, g_bad = actual[~finite], golden[~finite]
    if not bool(((a_bad == g_bad) | (torch.isnan(a_bad) & torch.isnan(g_bad))).all()):
        return float("inf")
    if not finite.any():
        return 0.0
    actual, golden = actual[finite], golden[finite]
    scale = golden.abs().max().item()
    return (actual - golden).abs().max().item() / max(scale, 1e-12)


def _prepare(args: list, dtype: torch.dtype, device: str, grad_args: tuple[int, ...]) -> list:
    """Floating tensors -> dtype on device; the compared ones require grad. Integer tensors just move."""
    out = []
    for i, a in enumerate(args):
        if isinstance(a, torch.Tensor):
            a = a.to(device=device, dtype=dtype) if a.is_floating_point() else a.to(device)
            if i in grad_args:
                a = a.detach().requires_grad_(True)
        out.append(a)
    return out


def run_case(op: str, impl: str, case: Case, dtype: torch.dtype, device: str = "cpu",
             fn: Callable | None = None, seed: int = 0) -> CheckResult:
    """Check one implementation (``fn``, default: the registered one) on one case and dtype."""
    fn = fn or registry.implementations(op)[impl].fn
    golden_fn = registry.implementations(op)["reference"].fn
    args, kwargs = case.make(torch.Generator().manual_seed(seed))
    # Round inputs to the dtype first, so the golden answer sees exactly what the implementation sees.
    rounded = [a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
    kwargs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    golden_args = _prepare(rounded, torch.float32, device, case.grad_args)
    test_args = _prepare(rounded, dtype, device, case.grad_args)
    golden, golden_extra = _split_outputs(golden_fn(*golden_args, **kwargs))
    grad_out = torch.randn(golden.shape, generator=torch.Generator().manual_seed(seed + 1)).to(device)
    golden_grads = torch.autograd.grad(golden.float(), [golden_args[i] for i in case.grad_args],
                                       grad_out, allow_unused=True)
    try:  # a crash, forward or backward, is a failed check with the reason, not a crashed table
        with case.around() if case.around is not None else contextlib.nullcontext():
            out, extra = _split_outputs(fn(*test_args, **kwargs))
            test_grads = torch.autograd.grad(out, [test_args[i] for i in case.grad_args], grad_out.to(out.dtype),
                                             allow_unused=True)
    except Exception as exc:
        return CheckResult(op, impl, case.name, _dtype_name(dtype), device, float("inf"), float("inf"),
                           tolerance(dtype, impl, device.split(":")[0]), False, f"{type(exc).__name__}: {exc}")
    forward_error = max([_relative_error(out.float(), golden.float())]
                        + [_relative_error(a.float(), b.float()) for a, b in zip(extra, golden_extra)])
    backward_error = 0.0
    note = ""
    for position, g_test, g_gold in zip(case.grad_args, test_grads, golden_grads):
        if g_test is None or g_gold is None:
            note = f"no gradient for argument {position}"
            backward_error = float("inf")
            continue
        backward_error = max(backward_error, _relative_error(g_test.float(), g_gold.float()))
    tol = tolerance(dtype, impl, device.split(":")[0])
    passed = forward_error <= tol and backward_error <= tol
    return CheckResult(op, impl, case.name, _dtype_name(dtype), device, forward_error, backward_error, tol,
                       passed, note)


def _split_outputs(result) -> tuple[torch.Tensor, tuple]:
    """An op returns a tensor, or (differentiable output, detached side outputs...) like sparse_mqa_attention's
    head-summed probabilities: gradients flow through the first, the rest are compared in the forward check."""
    if isinstance(result, tuple):
        return result[0], tuple(result[1:])
    return result, ()


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def check_all(device: str = "cpu", ops: list[str] | None = None, impls: list[str] | None = None,
              dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16)) -> list[CheckResult]:
    """Every available implementation (``reference`` included, as a self-check of the golden path in low
    precision) of every op on ``device``, over all cases and dtypes."""
    device_type = torch.device(device).type
    registry.check_choice(ops, impls)
    results = []
    for op in ops or registry.ops():
        if op not in CASES:
            raise KeyError(f"no correctness cases for op {op!r}; known: {', '.join(CASES)}")
        for name, impl in registry.implementations(op).items():
            if impls and name not in impls:
                continue
            if impl.unavailable_reason(device_type) is not None:
                continue
            for dtype in dtypes:
                for case in CASES[op]:
                    results.append(run_case(op, name, case, dtype, device))
    return results
