"""``torch`` rope and ``autograd`` rms_norm: the reference math with a hand-written backward.

Eager autograd of the written-out reference pays for its readability in the backward: RoPE's slices and
``stack``/``cat`` each allocate a zero tensor the size of the whole head and copy into it, and RMSNorm saves and
differentiates five elementwise steps. Both ops have short closed-form gradients, so these versions compute the
forward into one preallocated output and write the backward by hand:

- rope: a rotation by angle ``theta`` is orthogonal, so its backward is the rotation by ``-theta`` (the same
  kernel with ``-sin``); nothing but cos/sin is saved.
- rms_norm: with r = rsqrt(mean(x^2) + eps) and xhat = x r, y = xhat w gives
  dx = r (g w - xhat mean(g w xhat)) and dw = sum over rows of g xhat; saves x and r only.

Measured on the 2-core CPU (benchmarks/README.md, "Training throughput"). Used through the registry by
``workbench.model``; compared in notebooks/02_kernels.ipynb.
"""

from __future__ import annotations

import torch

from workbench.kernels import reference
from workbench.kernels.registry import register

DEVICES = ("cpu", "cuda", "xpu", "mps", "npu")


# --------------------------------------------------------------------------------------------------------------
# rope
# --------------------------------------------------------------------------------------------------------------
def _rotate_into(out: torch.Tensor, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool) -> None:
    """out[..., :2h] = x rotated by (cos, sin) [S, h] (half-split or interleaved pairs); out[..., 2h:] = x's rest."""
    half = cos.shape[-1]
    if interleaved:  # pairs (0, 1), (2, 3), ...: strided views instead of stack + flatten
        x1, x2, o1, o2 = x[..., 0:2 * half:2], x[..., 1:2 * half:2], out[..., 0:2 * half:2], out[..., 1:2 * half:2]
    else:
        x1, x2, o1, o2 = x[..., :half], x[..., half:2 * half], out[..., :half], out[..., half:2 * half]
    torch.mul(x1, cos, out=o1)
    o1.addcmul_(x2, sin, value=-1.0)   # out1 = x1 cos - x2 sin
    torch.mul(x2, cos, out=o2)
    o2.addcmul_(x1, sin)               # out2 = x2 cos + x1 sin
    if x.shape[-1] > 2 * half:         # partial RoPE: the remaining channels pass through
        out[..., 2 * half:].copy_(x[..., 2 * half:])


class _Rope(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, cos, sin, interleaved):
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)  # contiguous, like the reference's cat
        _rotate_into(out, x, cos, sin, interleaved)
        ctx.save_for_backward(cos, sin)
        ctx.interleaved = interleaved
        return out

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        grad_x = torch.empty(grad.shape, dtype=grad.dtype, device=grad.device)
        _rotate_into(grad_x, grad, cos, -sin, ctx.interleaved)  # the transpose of a rotation is the inverse one
        return grad_x, None, None, None


@register("rope", "torch", devices=DEVICES, priority=20)
def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool = False) -> torch.Tensor:
    """RoPE into one preallocated output, backward = the inverse rotation (no slice/cat zero-fills)."""
    if cos.requires_grad or sin.requires_grad:
        raise ValueError("torch rope: cos/sin must not require grad (they come from the rotary table); "
                         "use the reference rope to differentiate through the angles")
    if torch.compiler.is_compiling():  # inductor fuses the written-out math itself (and rejects mul(out=) here)
        return reference.rope(x, cos, sin, interleaved)
    return _Rope.apply(x, cos, sin, interleaved)


# --------------------------------------------------------------------------------------------------------------
# rms_norm
# --------------------------------------------------------------------------------------------------------------
class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        x32 = x.float()
        rstd = torch.rsqrt(x32.square().mean(dim=-1, keepdim=True) + eps)  # [..., 1]
        out = (x32 * rstd).mul_(weight.float())
        ctx.save_for_backward(x, weight, rstd)
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        x, weight, rstd = ctx.saved_tensors
        xhat = x.float() * rstd
        g = grad.float()
        grad_weight = (g * xhat).reshape(-1, x.shape[-1]).sum(0) if ctx.needs_input_grad[1] else None
        gw = g * weight.float()
        mean_gx = (gw * xhat).mean(dim=-1, keepdim=True)
        grad_x = gw.sub_(xhat.mul_(mean_gx)).mul_(rstd)  # r (g w - xhat mean(g w xhat))
        return grad_x.to(x.dtype), None if grad_weight is None else grad_weight.to(weight.dtype), None


@register("rms_norm", "autograd", devices=DEVICES, priority=10)
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The reference RMSNorm (fp32 math, cast back) with a closed-form backward that saves x and rstd only."""
    return _RMSNorm.apply(x, weight, eps)


__all__ = ["rms_norm", "rope"]
