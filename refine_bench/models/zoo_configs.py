"""Every named model's architecture, in one place (the zoo in `models.zoo` refers to these by name).

Each function takes keyword overrides, so tests and scripts can derive a variant of a named shape.
"""

from __future__ import annotations

from typing import Any

from refine_bench.models.deltanet import DeltaNetConfig
from refine_bench.models.lact import LaCTConfig
from refine_bench.models.tokenizer import TINY_VOCAB_SIZE


def deltanet_1_3b_config(**overrides: Any) -> DeltaNetConfig:
    """fla-hub/delta_net-1.3B-100B: hidden 2048, 24 layers, 16 heads, MLP 5632, vocab 32000."""
    kwargs = dict(vocab_size=32000, hidden_size=2048, num_hidden_layers=24, num_heads=16, hidden_ratio=4,
                  conv_size=4, max_position_embeddings=2048)
    return DeltaNetConfig(**{**kwargs, **overrides})


def deltanet_tiny_config(**overrides: Any) -> DeltaNetConfig:
    """A 2-layer DeltaNet for CPUs and CI (the tiny tokenizer's vocabulary)."""
    kwargs = dict(vocab_size=TINY_VOCAB_SIZE, hidden_size=128, num_hidden_layers=2, num_heads=2, hidden_ratio=4,
                  intermediate_size=256, conv_size=4, max_position_embeddings=1 << 16, chunk_size=64)
    return DeltaNetConfig(**{**kwargs, **overrides})


def lact_760m_config(**overrides: Any) -> LaCTConfig:
    """The LaCT repo's 760M config (configs/760M_lact_swiglu_nh4_fwlow_rank_momentum.json)."""
    kwargs = dict(
        hidden_size=1536, num_hidden_layers=24, num_attn_heads=24, num_lact_heads=4, inter_multi=1,
        qkv_bias=False, attn_qk_norm=False, qkv_silu=True, lact_chunk_size=2048, window_size=2048,
        use_muon=False, learnable_ttt_scale=True, w0_w2_low_rank=32, fw_init_gain=0.5, use_momentum=True,
        rope_theta=1_000_000.0, norm_eps=1e-6, max_position_embeddings=32768, initializer_range=0.02,
        tie_word_embeddings=False, vocab_size=32000, bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )
    return LaCTConfig(**{**kwargs, **overrides})


def lact_tiny_config(**overrides: Any) -> LaCTConfig:
    """A 2-layer LaCT for CPUs and CI: chunk 64 so the fast weights update on short inputs, window 64."""
    kwargs = dict(
        hidden_size=128, num_hidden_layers=2, num_attn_heads=4, num_lact_heads=2, inter_multi=1,
        lact_chunk_size=64, window_size=64, use_muon=False, use_momentum=True, w0_w2_low_rank=8,
        learnable_ttt_scale=True, rope_theta=1_000_000.0, intermediate_size=256, vocab_size=TINY_VOCAB_SIZE,
        max_position_embeddings=1 << 16, initializer_range=0.02, bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )
    return LaCTConfig(**{**kwargs, **overrides})


# The project-pretrained small models (`make small-models`, shipped under refine_bench/models/assets/<name>/).
# These shapes are what `make small-models` pretrains from; whoever changes them rebuilds the shipped weights
# (a test compares them with the shipped config.json when the files exist).


def deltanet_small_config(**overrides: Any) -> DeltaNetConfig:
    """Small DeltaNet: 4 layers, hidden 256, 4 heads of 64, the tiny tokenizer's vocabulary."""
    kwargs = dict(vocab_size=TINY_VOCAB_SIZE, hidden_size=256, num_hidden_layers=4, num_heads=4, hidden_ratio=4,
                  conv_size=4, max_position_embeddings=1 << 16, chunk_size=64)
    return DeltaNetConfig(**{**kwargs, **overrides})


def lact_small_config(**overrides: Any) -> LaCTConfig:
    """Small LaCT: 4 layers, hidden 256, chunk and window 128 so short training texts update the fast weights.

    The fast weights' base learning rate is 0.1, not the LaCT repo's 1e-3 (sized for 2,048-token chunks of wider
    heads): at 1e-3 a 128-token chunk moved them by 0.1-0.4 % and the trained model recalled nothing through
    them (`scripts/probe_far_recall.py`, README, Models); at 0.1, 5 % per chunk at init."""
    kwargs = dict(
        hidden_size=256, num_hidden_layers=4, num_attn_heads=4, num_lact_heads=2, inter_multi=1,
        lact_chunk_size=128, window_size=128, use_muon=False, use_momentum=True, w0_w2_low_rank=16,
        learnable_ttt_scale=True, rope_theta=1_000_000.0, vocab_size=TINY_VOCAB_SIZE, fast_weight_base_lr=0.1,
        max_position_embeddings=1 << 16, initializer_range=0.02, bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )
    return LaCTConfig(**{**kwargs, **overrides})
