"""Triton kernels: FlashAttention-2 forward and backward (causal, GQA), fused RMSNorm, SwiGLU and RoPE.

Imported lazily by ``triton_ops.py`` on first use, because Triton decides at ``@triton.jit`` time whether to compile
for a GPU or to run in its interpreter: ``TRITON_INTERPRET=1`` must be set before this module is imported, and
then the kernels run on cpu tensors (slowly, one program at a time), which is how the tests check them.

Each op is a ``torch.autograd.Function`` whose forward and backward launch one kernel each (attention's backward
launches three: delta = rowsum(dO * O), dK/dV per key block, dQ per query block; no atomics). Every kernel
accumulates in fp32 and stores in the input dtype. Compiled on a GPU they have NOT been run by this project yet:
CI covers them under the interpreter only (tests/test_kernels_triton.py).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl


def _block(n: int, minimum: int = 16) -> int:
    return max(minimum, triton.next_power_of_2(n))


# ==============================================================================================================
# RMSNorm: one program per row
# ==============================================================================================================
@triton.jit
def _rms_norm_fwd(X, W, Y, RSTD, stride_x, stride_y, D, eps, BLOCK_D: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK_D)
    mask = cols < D
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / D + eps)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + row * stride_y + cols, (x * rstd * w).to(Y.dtype.element_ty), mask=mask)
    tl.store(RSTD + row, rstd)


@triton.jit
def _rms_norm_bwd(X, W, DY, DX, DW_PARTIAL, RSTD, stride_x, stride_dy, stride_dx, N, D, ROWS_PER_PROGRAM,
                  BLOCK_D: tl.constexpr):
    # dx = rstd * (w*dy - xhat * mean(xhat * w*dy)); dw = sum over rows of dy * xhat (partial sums per program).
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_D)
    mask = cols < D
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for i in range(0, ROWS_PER_PROGRAM):
        row = pid * ROWS_PER_PROGRAM + i
        if row < N:
            x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(DY + row * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
            rstd = tl.load(RSTD + row)
            xhat = x * rstd
            wdy = w * dy
            dx = rstd * (wdy - xhat * (tl.sum(xhat * wdy, axis=0) / D))
            tl.store(DX + row * stride_dx + cols, dx.to(DX.dtype.element_ty), mask=mask)
            dw += dy * xhat
    tl.store(DW_PARTIAL + pid * D + cols, dw, mask=mask)


class RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).contiguous()
        weight = weight.contiguous()  # the kernels read W + cols: a strided weight (w[::2]) gave wrong outputs
        n_rows, dim = x2.shape
        y = torch.empty_like(x2)
        rstd = torch.empty(n_rows, dtype=torch.float32, device=x.device)
        _rms_norm_fwd[(n_rows,)](x2, weight, y, rstd, x2.stride(0), y.stride(0), dim, eps, BLOCK_D=_block(dim))
        ctx.save_for_backward(x2, weight, rstd)
        ctx.shape = shape
        return y.reshape(shape)

    @staticmethod
    def backward(ctx, dy):
        x2, weight, rstd = ctx.saved_tensors
        n_rows, dim = x2.shape
        dy2 = dy.reshape(-1, dim).contiguous()
        dx = torch.empty_like(x2)
        rows_per_program = max(1, triton.cdiv(n_rows, 64))
        n_programs = triton.cdiv(n_rows, rows_per_program)
        dw_partial = torch.empty(n_programs, dim, dtype=torch.float32, device=x2.device)
        _rms_norm_bwd[(n_programs,)](x2, weight, dy2, dx, dw_partial, rstd, x2.stride(0), dy2.stride(0),
                                     dx.stride(0), n_rows, dim, rows_per_program, BLOCK_D=_block(dim))
        return dx.reshape(ctx.shape), dw_partial.sum(0).to(weight.dtype), None


# ==============================================================================================================
# SwiGLU: elementwise over [rows, F], reading gate and up from the two halves of [rows, 2F]
# ==============================================================================================================
@triton.jit
def _swiglu_fwd(X, Y, stride_x, stride_y, F, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < F
    gate = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(X + row * stride_x + F + cols, mask=mask, other=0.0).to(tl.float32)
    y = gate * tl.sigmoid(gate) * up
    tl.store(Y + row * stride_y + cols, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _swiglu_bwd(X, DY, DX, stride_x, stride_dy, stride_dx, F, BLOCK: tl.constexpr):
    # d gate = dy * up * sig * (1 + gate * (1 - sig));  d up = dy * silu(gate)
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < F
    gate = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(X + row * stride_x + F + cols, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(DY + row * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
    sig = tl.sigmoid(gate)
    d_gate = dy * up * sig * (1.0 + gate * (1.0 - sig))
    d_up = dy * gate * sig
    tl.store(DX + row * stride_dx + cols, d_gate.to(DX.dtype.element_ty), mask=mask)
    tl.store(DX + row * stride_dx + F + cols, d_up.to(DX.dtype.element_ty), mask=mask)


class SwiGLUFunction(torch.autograd.Function):
    BLOCK = 1024

    @staticmethod
    def forward(ctx, x):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).contiguous()
        n_rows, width = x2.shape
        half = width // 2
        y = torch.empty(n_rows, half, dtype=x.dtype, device=x.device)
        block = min(SwiGLUFunction.BLOCK, _block(half))
        _swiglu_fwd[(n_rows, triton.cdiv(half, block))](x2, y, x2.stride(0), y.stride(0), half, BLOCK=block)
        ctx.save_for_backward(x2)
        ctx.shape = shape
        return y.reshape(*shape[:-1], half)

    @staticmethod
    def backward(ctx, dy):
        (x2,) = ctx.saved_tensors
        n_rows, width = x2.shape
        half = width // 2
        dy2 = dy.reshape(-1, half).contiguous()
        dx = torch.empty_like(x2)
        block = min(SwiGLUFunction.BLOCK, _block(half))
        _swiglu_bwd[(n_rows, triton.cdiv(half, block))](x2, dy2, dx, x2.stride(0), dy2.stride(0), dx.stride(0),
                                                        half, BLOCK=block)
        return dx.reshape(ctx.shape)


# ==============================================================================================================
# RoPE: one program per row of x (a row = one position of one head); angles indexed by the row's position
# ==============================================================================================================
@triton.jit
def _rope_kernel(X, COS, SIN, Y, stride_x, stride_y, stride_c, SEQ, HALF, sin_sign,
                 INTERLEAVED: tl.constexpr, BLOCK: tl.constexpr):
    # y1 = x1 cos - x2 sin, y2 = x2 cos + x1 sin. The backward is the same rotation by -angle (sin_sign = -1).
    row = tl.program_id(0)
    pos = row % SEQ
    i = tl.arange(0, BLOCK)
    mask = i < HALF
    if INTERLEAVED:
        idx1 = 2 * i
        idx2 = 2 * i + 1
    else:
        idx1 = i
        idx2 = i + HALF
    x1 = tl.load(X + row * stride_x + idx1, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(X + row * stride_x + idx2, mask=mask, other=0.0).to(tl.float32)
    c = tl.load(COS + pos * stride_c + i, mask=mask, other=0.0).to(tl.float32)
    s = sin_sign * tl.load(SIN + pos * stride_c + i, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + row * stride_y + idx1, (x1 * c - x2 * s).to(Y.dtype.element_ty), mask=mask)
    tl.store(Y + row * stride_y + idx2, (x2 * c + x1 * s).to(Y.dtype.element_ty), mask=mask)


def _rope_launch(x, cos, sin, interleaved, sin_sign):
    half = cos.shape[-1]
    seq = x.shape[-2]
    # The kernel indexes angles by position only: cos must be [S, half] (or broadcast to it, e.g. [1, 1, S, half]).
    cos2 = cos.reshape(-1, half)
    sin2 = sin.reshape(-1, half)
    if cos2.shape[0] != seq:
        raise ValueError(f"triton rope wants cos/sin of shape [S, R/2] = [{seq}, {half}] (or with leading 1s), got "
                         f"{tuple(cos.shape)}; use the reference for per-batch angles")
    cos2, sin2 = cos2.to(x.dtype).contiguous(), sin2.to(x.dtype).contiguous()
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    y = x2.clone()  # channels past 2*half (partial RoPE) pass through; the kernel overwrites the rotary ones
    _rope_kernel[(x2.shape[0],)](x2, cos2, sin2, y, x2.stride(0), y.stride(0), cos2.stride(0), seq, half,
                                 float(sin_sign), INTERLEAVED=bool(interleaved), BLOCK=_block(half))
    return y.reshape(x.shape), cos2, sin2


class RopeFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, cos, sin, interleaved):
        y, cos2, sin2 = _rope_launch(x, cos, sin, interleaved, 1.0)
        ctx.save_for_backward(cos2, sin2)
        ctx.interleaved = interleaved
        return y

    @staticmethod
    def backward(ctx, dy):
        cos2, sin2 = ctx.saved_tensors
        dx, _, _ = _rope_launch(dy, cos2, sin2, ctx.interleaved, -1.0)
        return dx, None, None, None  # angles are buffers, not trained


# ==============================================================================================================
# FlashAttention-2 (Dao 2023): forward keeps running max / sum per query row; backward recomputes P per tile
# ==============================================================================================================
@triton.jit
def _mm(a, b, UPCAST: tl.constexpr):
    # Triton 3.9's interpreter mis-reads bf16 operands of tl.dot (it multiplies the raw bits), so under the
    # interpreter (cpu tensors) operands are upcast to fp32 first. Compiled GPU kernels keep bf16 operands with
    # fp32 accumulation, as FlashAttention does.
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b)
@triton.jit
def _attn_fwd(Q, K, V, O, LSE,
              sqb, sqh, sqs, skb, skh, sks, svb, svh, svs, sob, soh, sos,
              H, GROUP, SQ, SK, DQK, DV, scale, offset,
              CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr, UPCAST: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    kvh = h // GROUP  # GQA: this query head reads kv head h // group
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    dqk = tl.arange(0, BLOCK_DQK)
    dv = tl.arange(0, BLOCK_DV)
    q = tl.load(Q + b * sqb + h * sqh + rows[:, None] * sqs + dqk[None, :],
                mask=(rows[:, None] < SQ) & (dqk[None, :] < DQK), other=0.0)
    m = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_DV), dtype=tl.float32)
    k_end = SK
    if CAUSAL:  # keys after the last row's diagonal are never visible: skip those blocks
        k_end = tl.minimum(SK, (pid_m + 1) * BLOCK_M + offset)
    for start in range(0, k_end, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        k = tl.load(K + b * skb + kvh * skh + cols[:, None] * sks + dqk[None, :],
                    mask=(cols[:, None] < SK) & (dqk[None, :] < DQK), other=0.0)
        s = _mm(q, tl.trans(k), UPCAST) * scale  # [BLOCK_M, BLOCK_N] in fp32
        visible = cols[None, :] < SK
        if CAUSAL:
            visible = visible & (cols[None, :] <= rows[:, None] + offset)
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m - m_safe)
        l = l * alpha + tl.sum(p, axis=1)
        v = tl.load(V + b * svb + kvh * svh + cols[:, None] * svs + dv[None, :],
                    mask=(cols[:, None] < SK) & (dv[None, :] < DV), other=0.0)
        acc = acc * alpha[:, None] + _mm(p.to(v.dtype), v, UPCAST)
        m = m_new
    empty = l == 0.0  # no visible key: output 0 and lse = +inf, so the backward's exp(s - lse) is 0
    out = acc / tl.where(empty, 1.0, l)[:, None]
    lse = tl.where(empty, float("inf"), m + tl.log(tl.where(empty, 1.0, l)))
    tl.store(O + b * sob + h * soh + rows[:, None] * sos + dv[None, :], out.to(O.dtype.element_ty),
             mask=(rows[:, None] < SQ) & (dv[None, :] < DV))
    tl.store(LSE + bh * SQ + rows, lse, mask=rows < SQ)


@triton.jit
def _attn_bwd_delta(O, DO, DELTA, SQ, DV, BLOCK_M: tl.constexpr, BLOCK_DV: tl.constexpr):
    # delta_i = sum_d dO_id * O_id  (= sum_j P_ij dP_ij), one value per query row; O and dO are contiguous here.
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    dv = tl.arange(0, BLOCK_DV)
    mask = (rows[:, None] < SQ) & (dv[None, :] < DV)
    offs = bh * SQ * DV + rows[:, None] * DV + dv[None, :]
    o = tl.load(O + offs, mask=mask, other=0.0).to(tl.float32)
    do = tl.load(DO + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(DELTA + bh * SQ + rows, tl.sum(o * do, axis=1), mask=rows < SQ)


@triton.jit
def _attn_bwd_dkdv(Q, K, V, DO, LSE, DELTA, DK, DV_OUT,
                   H, GROUP, SQ, SK, DQK, DV, scale, offset,
                   CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr, UPCAST: tl.constexpr):
    # One program per (key block, query head): loop over query blocks; dK, dV are written per query head and the
    # host sums each GQA group afterwards. All tensors are contiguous [B, H*, S, D] here.
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    kvh = h // GROUP
    HKV = H // GROUP
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    dqk = tl.arange(0, BLOCK_DQK)
    dv = tl.arange(0, BLOCK_DV)
    kv_base = (b * HKV + kvh) * SK
    k = tl.load(K + (kv_base + cols[:, None]) * DQK + dqk[None, :],
                mask=(cols[:, None] < SK) & (dqk[None, :] < DQK), other=0.0)
    v = tl.load(V + (kv_base + cols[:, None]) * DV + dv[None, :],
                mask=(cols[:, None] < SK) & (dv[None, :] < DV), other=0.0)
    dk = tl.zeros((BLOCK_N, BLOCK_DQK), dtype=tl.float32)
    dvacc = tl.zeros((BLOCK_N, BLOCK_DV), dtype=tl.float32)
    q_start = 0
    if CAUSAL:  # queries before this block's first key (minus the offset) never see it
        q_start = tl.maximum(0, pid_n * BLOCK_N - offset) // BLOCK_M * BLOCK_M
    for start in range(q_start, SQ, BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        q_base = bh * SQ
        q = tl.load(Q + (q_base + rows[:, None]) * DQK + dqk[None, :],
                    mask=(rows[:, None] < SQ) & (dqk[None, :] < DQK), other=0.0)
        do = tl.load(DO + (q_base + rows[:, None]) * DV + dv[None, :],
                     mask=(rows[:, None] < SQ) & (dv[None, :] < DV), other=0.0)
        lse = tl.load(LSE + q_base + rows, mask=rows < SQ, other=float("inf"))
        delta = tl.load(DELTA + q_base + rows, mask=rows < SQ, other=0.0)
        s = _mm(q, tl.trans(k), UPCAST) * scale
        visible = (cols[None, :] < SK) & (rows[:, None] < SQ)
        if CAUSAL:
            visible = visible & (cols[None, :] <= rows[:, None] + offset)
        p = tl.where(visible, tl.exp(s - lse[:, None]), 0.0)        # [BLOCK_M, BLOCK_N], recomputed
        dvacc += _mm(tl.trans(p.to(do.dtype)), do, UPCAST)
        dp = _mm(do, tl.trans(v), UPCAST).to(tl.float32)
        ds = p * (dp - delta[:, None]) * scale
        dk += _mm(tl.trans(ds.to(q.dtype)), q, UPCAST)
    out_base = bh * SK
    tl.store(DK + (out_base + cols[:, None]) * DQK + dqk[None, :], dk,
             mask=(cols[:, None] < SK) & (dqk[None, :] < DQK))
    tl.store(DV_OUT + (out_base + cols[:, None]) * DV + dv[None, :], dvacc,
             mask=(cols[:, None] < SK) & (dv[None, :] < DV))


@triton.jit
def _attn_bwd_dq(Q, K, V, DO, LSE, DELTA, DQ,
                 H, GROUP, SQ, SK, DQK, DV, scale, offset,
                 CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr, UPCAST: tl.constexpr):
    # One program per (query block, query head): loop over key blocks, dQ = sum_j dS_ij k_j.
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    kvh = h // GROUP
    HKV = H // GROUP
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    dqk = tl.arange(0, BLOCK_DQK)
    dv = tl.arange(0, BLOCK_DV)
    q_base = bh * SQ
    q = tl.load(Q + (q_base + rows[:, None]) * DQK + dqk[None, :],
                mask=(rows[:, None] < SQ) & (dqk[None, :] < DQK), other=0.0)
    do = tl.load(DO + (q_base + rows[:, None]) * DV + dv[None, :],
                 mask=(rows[:, None] < SQ) & (dv[None, :] < DV), other=0.0)
    lse = tl.load(LSE + q_base + rows, mask=rows < SQ, other=float("inf"))
    delta = tl.load(DELTA + q_base + rows, mask=rows < SQ, other=0.0)
    dq = tl.zeros((BLOCK_M, BLOCK_DQK), dtype=tl.float32)
    kv_base = (b * HKV + kvh) * SK
    k_end = SK
    if CAUSAL:
        k_end = tl.minimum(SK, (pid_m + 1) * BLOCK_M + offset)
    for start in range(0, k_end, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        k = tl.load(K + (kv_base + cols[:, None]) * DQK + dqk[None, :],
                    mask=(cols[:, None] < SK) & (dqk[None, :] < DQK), other=0.0)
        v = tl.load(V + (kv_base + cols[:, None]) * DV + dv[None, :],
                    mask=(cols[:, None] < SK) & (dv[None, :] < DV), other=0.0)
        s = _mm(q, tl.trans(k), UPCAST) * scale
        visible = (cols[None, :] < SK) & (rows[:, None] < SQ)
        if CAUSAL:
            visible = visible & (cols[None, :] <= rows[:, None] + offset)
        p = tl.where(visible, tl.exp(s - lse[:, None]), 0.0)
        dp = _mm(do, tl.trans(v), UPCAST).to(tl.float32)
        ds = p * (dp - delta[:, None]) * scale
        dq += _mm(ds.to(k.dtype), k, UPCAST)
    tl.store(DQ + (q_base + rows[:, None]) * DQK + dqk[None, :], dq.to(DQ.dtype.element_ty),
             mask=(rows[:, None] < SQ) & (dqk[None, :] < DQK))


class FlashAttentionFunction(torch.autograd.Function):
    """FlashAttention-2 forward + backward. Block sizes: 64 on a GPU, 16 under the interpreter (tiny tests)."""

    @staticmethod
    def _blocks(device: torch.device) -> tuple[int, int]:
        return (16, 16) if device.type == "cpu" else (64, 64)

    @staticmethod
    def forward(ctx, q, k, v, causal, scale):
        batch, n_heads, q_len, d_qk = q.shape
        n_kv, k_len, d_v = k.shape[1], k.shape[2], v.shape[-1]
        if n_heads % n_kv:
            raise ValueError(f"GQA needs kv heads ({n_kv}) to divide query heads ({n_heads})")
        scale = scale if scale is not None else 1.0 / math.sqrt(d_qk)
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        out = torch.empty(batch, n_heads, q_len, d_v, dtype=q.dtype, device=q.device)
        lse = torch.empty(batch * n_heads, q_len, dtype=torch.float32, device=q.device)
        block_m, block_n = FlashAttentionFunction._blocks(q.device)
        grid = (triton.cdiv(q_len, block_m), batch * n_heads)
        _attn_fwd[grid](q, k, v, out, lse, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3],
                        n_heads, n_heads // n_kv, q_len, k_len, d_qk, d_v, scale, k_len - q_len,
                        CAUSAL=bool(causal), BLOCK_M=block_m, BLOCK_N=block_n,
                        BLOCK_DQK=_block(d_qk), BLOCK_DV=_block(d_v), UPCAST=q.device.type == "cpu")
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.causal, ctx.scale = bool(causal), scale
        return out

    @staticmethod
    def backward(ctx, d_out):
        q, k, v, out, lse = ctx.saved_tensors
        batch, n_heads, q_len, d_qk = q.shape
        n_kv, k_len, d_v = k.shape[1], k.shape[2], v.shape[-1]
        group = n_heads // n_kv
        d_out = d_out.contiguous()
        block_m, block_n = FlashAttentionFunction._blocks(q.device)
        common = dict(CAUSAL=ctx.causal, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_DQK=_block(d_qk),
                      BLOCK_DV=_block(d_v), UPCAST=q.device.type == "cpu")
        delta = torch.empty_like(lse)
        _attn_bwd_delta[(triton.cdiv(q_len, block_m), batch * n_heads)](
            out, d_out, delta, q_len, d_v, BLOCK_M=block_m, BLOCK_DV=_block(d_v))
        # dK, dV per *query* head in fp32, summed over each GQA group below (simple, and no atomics).
        dk = torch.empty(batch, n_heads, k_len, d_qk, dtype=torch.float32, device=q.device)
        dv = torch.empty(batch, n_heads, k_len, d_v, dtype=torch.float32, device=q.device)
        args = (n_heads, group, q_len, k_len, d_qk, d_v, ctx.scale, k_len - q_len)
        _attn_bwd_dkdv[(triton.cdiv(k_len, block_n), batch * n_heads)](q, k, v, d_out, lse, delta, dk, dv,
                                                                        *args, **common)
        dq = torch.empty_like(q)
        _attn_bwd_dq[(triton.cdiv(q_len, block_m), batch * n_heads)](q, k, v, d_out, lse, delta, dq,
                                                                      *args, **common)
        dk = dk.view(batch, n_kv, group, k_len, d_qk).sum(2).to(k.dtype)
        dv = dv.view(batch, n_kv, group, k_len, d_v).sum(2).to(v.dtype)
        return dq, dk, dv, None, None
