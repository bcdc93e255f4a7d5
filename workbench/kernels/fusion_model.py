"""Why fusion matters, on paper: a roofline estimate of one decoder layer with and without fused kernels.

For a catalogued chip (workbench/hardware/accelerators.csv) we take dense bf16 peak FLOP/s and HBM bandwidth,
and estimate a Llama/GLM-style layer's forward time as the sum of its GEMMs (compute-bound: FLOPs / peak) and its
elementwise ops (memory-bound: bytes / bandwidth). Eager PyTorch runs each elementwise op as several passes over
HBM (RMSNorm: square, mean, rsqrt-mul, weight-mul; RoPE: slice, 2 mul, add, cat per tensor; SwiGLU: silu, mul);
a fused kernel reads its inputs once and writes its output once. The pass counts below are stated assumptions,
not measurements; the point is the *share* of a layer spent moving bytes, and how it changes from chip to chip.
Attention's score matrix is left out (FlashAttention removes it on every chip). Used by notebooks/02_kernels.ipynb.
"""

from __future__ import annotations

from dataclasses import dataclass

from workbench.hardware import find_chip

# HBM passes over an activation of the op's width: (eager, fused). One pass = read or write the tensor once.
PASSES = {
    "rms_norm (x2 per layer)": (8, 2),   # x^2 (r+w), mean (r), x*rstd (r+w), *weight (r+w) -> out (w) ~ 8; fused r+w
    "rope (q and k)": (10, 2),           # 2 halves read, 4 products, 2 sums, cat (r+w) ~ 10; fused r+w
    "swiglu": (7, 3),                    # silu (r+w), mul (2r+w) on [T, F] ... ~ 7; fused reads 2F, writes F = 3
    "residual adds (x2)": (3, 3),        # a + b -> c is already one pass of 3 tensors
}


@dataclass(frozen=True)
class LayerShape:
    tokens: int = 8192
    hidden: int = 4096
    ffn: int = 14336
    heads: int = 32
    kv_heads: int = 8
    head_dim: int = 128
    dtype_bytes: int = 2

    def __post_init__(self):
        if min(self.tokens, self.hidden, self.ffn, self.heads, self.kv_heads, self.head_dim, self.dtype_bytes) < 1:
            raise ValueError(f"LayerShape fields must be positive: {self}")


def chip_roofline(name: str) -> dict:
    """Peak bf16 FLOP/s, HBM bytes/s and ridge point (FLOP per byte) of a catalogued chip, with the source."""
    chip = find_chip(name)
    peak, bandwidth = chip.peak_flops("bf16"), (chip.hbm_tb_s or 0) * 1e12
    if not peak or not bandwidth:
        raise ValueError(f"{chip.chip}: the catalog lacks bf16 peak or HBM bandwidth")
    return {"chip": chip.chip, "peak_flops": peak, "bandwidth": bandwidth, "ridge": peak / bandwidth,
            "source": chip.source, "confidence": chip.confidence}


def layer_estimate(name: str, shape: LayerShape = LayerShape()) -> dict:
    """Estimated forward time of one layer on chip ``name``: GEMMs, and elementwise ops eager vs fused."""
    roof = chip_roofline(name)
    t, d, f = shape.tokens, shape.hidden, shape.ffn
    q_width = shape.heads * shape.head_dim
    kv_width = shape.kv_heads * shape.head_dim
    gemm_flops = 2 * t * d * (q_width + 2 * kv_width) + 2 * t * q_width * d + 2 * t * d * 3 * f  # qkv, o, mlp
    widths = {"rms_norm (x2 per layer)": 2 * d, "rope (q and k)": q_width + kv_width, "swiglu": f,
              "residual adds (x2)": 2 * d}
    eager_bytes = sum(PASSES[k][0] * widths[k] for k in PASSES) * t * shape.dtype_bytes
    fused_bytes = sum(PASSES[k][1] * widths[k] for k in PASSES) * t * shape.dtype_bytes
    gemm_s = gemm_flops / roof["peak_flops"]
    eager_s, fused_s = eager_bytes / roof["bandwidth"], fused_bytes / roof["bandwidth"]
    return {
        **roof,
        "gemm_ms": gemm_s * 1e3, "elementwise_eager_ms": eager_s * 1e3, "elementwise_fused_ms": fused_s * 1e3,
        "eager_share": eager_s / (gemm_s + eager_s), "fused_share": fused_s / (gemm_s + fused_s),
        "layer_speedup_from_fusion": (gemm_s + eager_s) / (gemm_s + fused_s),
    }
