"""Named model configs: tiny ones that train on a CPU, and the released GLM shapes (built on meta, for accounting).

Full-size shapes follow the released config.json files as mirrored by transformers' ``Glm4MoeConfig`` and
``GlmMoeDsaConfig`` (GLM-4.5, GLM-4.5-Air, GLM-5). Used by ``workbench models``, the trainer
(notebook 01_training), the distributed notebook and the performance model.
"""

from __future__ import annotations

from workbench.errors import ConfigError
from workbench.model.config import ModelConfig

_TINY_VOCAB = 2048  # a small BPE; the trainer overrides it from its tokenizer with config.replace(vocab_size=...)
# The aux-loss-free balancing step of the tiny MoE presets. DeepSeek-V3's 1e-3 (kept by the full-size presets) is
# tuned for hundreds of thousands of steps; in the few hundred a tiny run has it barely moves the biases: glm45-tiny
# at 8 x 128 tokens still sent one expert 3.3x its share after 150 steps (1.12x at 1e-2, balanced from step ~75).
_TINY_BIAS_UPDATE_RATE = 1e-2

PRESETS: dict[str, ModelConfig] = {
    # dense GLM-4 style: GQA, partial interleaved RoPE, SwiGLU
    "glm4-tiny": ModelConfig(
        name="glm4-tiny", vocab_size=_TINY_VOCAB, hidden_size=512, num_layers=6, intermediate_size=1280,
        num_heads=8, num_kv_heads=2, head_dim=64, partial_rotary_factor=0.5, rope_interleaved=True,
        attention_bias=True, max_position_embeddings=2048),
    # the same dense GLM-4 block at ~95M parameters: a single-GPU size, and the dense case of the CPU MFU benchmark
    # (benchmarks/train_throughput.py): at hidden 1024 the GEMMs dominate a step far more than at 512
    "glm4-small": ModelConfig(
        name="glm4-small", vocab_size=_TINY_VOCAB, hidden_size=1024, num_layers=8, intermediate_size=2816,
        num_heads=16, num_kv_heads=4, head_dim=64, partial_rotary_factor=0.5, rope_interleaved=True,
        attention_bias=True, max_position_embeddings=4096),
    # GLM-4.5 style: GQA + QK-norm + QKV bias + partial RoPE 0.5, MoE (sigmoid, shared expert), MTP
    "glm45-tiny": ModelConfig(
        name="glm45-tiny", vocab_size=_TINY_VOCAB, hidden_size=256, num_layers=4, intermediate_size=768,
        num_heads=4, num_kv_heads=2, head_dim=64, partial_rotary_factor=0.5, attention_bias=True, use_qk_norm=True,
        num_experts=8, num_experts_per_token=2, num_shared_experts=1, moe_intermediate_size=256, first_k_dense=1,
        routed_scaling=2.5, mtp_layers=1, max_position_embeddings=2048, bias_update_rate=_TINY_BIAS_UPDATE_RATE),
    # GLM-5 style: MLA + DSA (top-32 keys, every other layer shares its indexer) + MoE + MTP
    "glm5-tiny": ModelConfig(
        name="glm5-tiny", vocab_size=_TINY_VOCAB, hidden_size=256, num_layers=4, intermediate_size=768,
        attention_type="mla", num_heads=4, q_lora_rank=128, kv_lora_rank=64, qk_nope_head_dim=32,
        qk_rope_head_dim=16, v_head_dim=32, rope_interleaved=True,
        index_n_heads=4, index_head_dim=32, index_topk=32, indexer_types=("full", "shared", "full", "shared"),
        num_experts=8, num_experts_per_token=2, num_shared_experts=1, moe_intermediate_size=256, first_k_dense=1,
        routed_scaling=2.5, mtp_layers=1, max_position_embeddings=2048, bias_update_rate=_TINY_BIAS_UPDATE_RATE),
    # ---- released shapes (meta device only)
    "glm-4.5": ModelConfig(
        name="glm-4.5", vocab_size=151552, hidden_size=5120, num_layers=92, intermediate_size=12288,
        num_heads=96, num_kv_heads=8, head_dim=128, partial_rotary_factor=0.5, rope_theta=1e6,
        attention_bias=True, use_qk_norm=True, num_experts=160, num_experts_per_token=8, num_shared_experts=1,
        moe_intermediate_size=1536, first_k_dense=3, routed_scaling=2.5, mtp_layers=1,
        max_position_embeddings=131072),
    "glm-4.5-air": ModelConfig(
        name="glm-4.5-air", vocab_size=151552, hidden_size=4096, num_layers=46, intermediate_size=10944,
        num_heads=96, num_kv_heads=8, head_dim=128, partial_rotary_factor=0.5, rope_theta=1e6,
        attention_bias=True, use_qk_norm=False, num_experts=128, num_experts_per_token=8, num_shared_experts=1,
        moe_intermediate_size=1408, first_k_dense=1, routed_scaling=1.0, mtp_layers=1,
        max_position_embeddings=131072),
    "glm-5": ModelConfig(
        name="glm-5", vocab_size=154880, hidden_size=6144, num_layers=78, intermediate_size=12288,
        attention_type="mla", num_heads=64, q_lora_rank=2048, kv_lora_rank=512, qk_nope_head_dim=192,
        qk_rope_head_dim=64, v_head_dim=256, rope_theta=1e6, rope_interleaved=True,
        index_n_heads=32, index_head_dim=128, index_topk=2048,
        num_experts=256, num_experts_per_token=8, num_shared_experts=1, moe_intermediate_size=2048,
        first_k_dense=3, routed_scaling=2.5, mtp_layers=1, max_position_embeddings=202752),
}

FULL_SIZE = ("glm-4.5", "glm-4.5-air", "glm-5")

# Published (total, active) parameter counts, for the accounting tests and `workbench models`. Counted here
# (accounting.count_parameters; main = without the MTP layer, active without embedding/LM head):
#   glm-5        main 743.91B (-0.01%), with MTP 753.86B (= the 753.9B checkpoint figure), active 39.88B
#   glm-4.5      main 352.80B (-0.62%), with MTP 356.79B (+0.50%): the card's 355B fits either within 1%; active 32.08B
#   glm-4.5-air  main 106.85B (+0.80%), with MTP 109.23B (+3.0%): the 106B excludes MTP; active 12.18B (+1.5%)
PUBLISHED = {"glm-4.5": (355e9, 32e9), "glm-4.5-air": (106e9, 12e9), "glm-5": (744e9, 40e9)}


def list_presets() -> list[str]:
    return list(PRESETS)


def get_preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; valid presets: {', '.join(PRESETS)}")
    return PRESETS[name]
