"""DeltaNet as a transformers model with fla's state-dict layout (`fla-hub/delta_net-1.3B-100B` loads as is).

Token mixer per layer: q, k, v projections through causal depthwise short convolutions with SiLU, q and k
L2-normalised, beta = sigmoid(b_proj x), the delta rule, per-head RMSNorm on the output, o_proj.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from transformers import GenerationMixin, PretrainedConfig

from refine_bench.errors import UserInputError
from refine_bench.kernels import causal_depthwise_conv1d, delta_rule
from refine_bench.models.base import FastWeightPreTrainedModel
from refine_bench.models.cache import FastWeightCache
from refine_bench.models.config_options import check_fixed_options, take_fixed_options
from refine_bench.models.layers import RMSNorm, SwiGLUMLP, l2_normalize, swiglu_intermediate_size

# Options of fla's DeltaNetConfig this implementation covers, with the only value it supports.
_FIXED_OPTIONS = {
    "use_gate": False,
    "use_beta": True,
    "use_short_conv": True,
    "qk_activation": "silu",
    "qk_norm": "l2",
    "allow_neg_eigval": False,
    "attn": None,
    "attnres_block_size": None,
    "use_l2warp": False,
    "hidden_act": "swish",
}


class DeltaNetConfig(PretrainedConfig):
    """Configuration compatible with fla's `delta_net` config.json (extra fla keys are kept and ignored)."""

    model_type = "delta_net"

    def __init__(
        self,
        vocab_size: int = 32000,
        hidden_size: int = 2048,
        num_hidden_layers: int = 24,
        num_heads: int = 16,
        expand_k: float = 1.0,
        expand_v: float = 1.0,
        hidden_ratio: float = 4,
        intermediate_size: int | None = None,
        conv_size: int = 4,
        norm_eps: float = 1e-6,
        max_position_embeddings: int = 2048,
        initializer_range: float = 0.02,
        chunk_size: int = 64,
        kernel_backend: str = "auto",
        use_cache: bool = True,
        bos_token_id: int = 1,
        eos_token_id: int = 2,
        pad_token_id: int | None = 2,
        tie_word_embeddings: bool = False,
        **kwargs: Any,
    ) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_heads = num_heads
        self.expand_k = expand_k
        self.expand_v = expand_v
        self.hidden_ratio = hidden_ratio
        self.intermediate_size = intermediate_size
        self.conv_size = conv_size
        self.norm_eps = norm_eps
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.chunk_size = chunk_size
        self.kernel_backend = kernel_backend
        self.use_cache = use_cache
        take_fixed_options(self, kwargs, _FIXED_OPTIONS)
        super().__init__(bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                         tie_word_embeddings=tie_word_embeddings, **kwargs)
        self.validate_shapes()

    def validate_shapes(self) -> None:
        """Raise UserInputError for settings this implementation cannot run."""
        check_fixed_options(self, _FIXED_OPTIONS)
        key_dim, value_dim = self.hidden_size * self.expand_k, self.hidden_size * self.expand_v
        if key_dim != int(key_dim) or int(key_dim) % self.num_heads or int(value_dim) % self.num_heads:
            raise UserInputError(
                f"DeltaNetConfig: hidden_size*expand_k ({key_dim}) and hidden_size*expand_v ({value_dim}) must be "
                f"integers divisible by num_heads ({self.num_heads})"
            )
        if self.conv_size < 1:
            raise UserInputError(f"DeltaNetConfig.conv_size must be >= 1, got {self.conv_size}")
        if self.chunk_size < 1:
            raise UserInputError(f"DeltaNetConfig.chunk_size must be >= 1, got {self.chunk_size}")

    @property
    def mlp_intermediate_size(self) -> int:
        return self.intermediate_size or swiglu_intermediate_size(self.hidden_size, self.hidden_ratio)


class ShortConv(nn.Module):
    """Depthwise causal convolution weight [C, 1, W] (fla's `*_conv1d.weight`)."""

    def __init__(self, channels: int, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels, 1, width))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)

    def forward(self, x: torch.Tensor, state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        return causal_depthwise_conv1d(x, self.weight, state, activation="silu")


class DeltaNetAttention(nn.Module):
    """The DeltaNet token mixer; its cache entry is {'recurrent_state', 'conv_state': (q, k, v)}."""

    def __init__(self, config: DeltaNetConfig, layer_idx: int) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_heads
        self.key_dim = int(config.hidden_size * config.expand_k)
        self.value_dim = int(config.hidden_size * config.expand_v)
        self.head_k_dim = self.key_dim // config.num_heads
        self.head_v_dim = self.value_dim // config.num_heads
        self.q_proj = nn.Linear(config.hidden_size, self.key_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, self.key_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, self.value_dim, bias=False)
        self.b_proj = nn.Linear(config.hidden_size, config.num_heads, bias=False)
        self.q_conv1d = ShortConv(self.key_dim, config.conv_size)
        self.k_conv1d = ShortConv(self.key_dim, config.conv_size)
        self.v_conv1d = ShortConv(self.value_dim, config.conv_size)
        self.o_norm = RMSNorm(self.head_v_dim, eps=config.norm_eps)
        self.o_proj = nn.Linear(self.value_dim, config.hidden_size, bias=False)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None, state: dict | None
    ) -> tuple[torch.Tensor, dict]:
        B, T, _ = x.shape
        q_in, k_in, v_in = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        beta = self.b_proj(x).float().sigmoid()
        if mask is not None:
            # Padded positions feed zeros to the convolutions and beta = 0 to the delta rule, so the state
            # after a left-padded prompt equals the state after the unpadded one.
            m = mask[:, :, None].to(x.dtype)
            q_in, k_in, v_in = q_in * m, k_in * m, v_in * m
            beta = beta * m.float()
        conv_q, conv_k, conv_v = state["conv_state"] if state is not None else (None, None, None)
        q, conv_q = self.q_conv1d(q_in, conv_q)
        k, conv_k = self.k_conv1d(k_in, conv_k)
        v, conv_v = self.v_conv1d(v_in, conv_v)
        q = l2_normalize(q.view(B, T, self.num_heads, self.head_k_dim)).to(x.dtype)
        k = l2_normalize(k.view(B, T, self.num_heads, self.head_k_dim)).to(x.dtype)
        v = v.view(B, T, self.num_heads, self.head_v_dim)
        mode = "recurrent" if T <= 16 else "chunk"
        o, recurrent_state = delta_rule(
            q, k, v, beta.to(x.dtype) if x.dtype != torch.float32 else beta,
            state["recurrent_state"] if state is not None else None,
            mode=mode, backend=self.config.kernel_backend, chunk_size=self.config.chunk_size,
        )
        o = self.o_norm(o).reshape(B, T, self.value_dim)
        new_state = {"recurrent_state": recurrent_state, "conv_state": (conv_q, conv_k, conv_v)}
        return self.o_proj(o), new_state


class DeltaNetBlock(nn.Module):
    def __init__(self, config: DeltaNetConfig, layer_idx: int) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.attn = DeltaNetAttention(config, layer_idx)
        self.mlp_norm = RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.mlp = SwiGLUMLP(config.hidden_size, config.mlp_intermediate_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, state: dict | None) -> tuple[torch.Tensor, dict]:
        h, new_state = self.attn(self.attn_norm(x), mask, state)
        x = x + h
        x = x + self.mlp(self.mlp_norm(x))
        return x, new_state


class DeltaNetModel(nn.Module):
    """Embeddings, DeltaNet blocks and the final norm (fla key names under `model.`)."""

    def __init__(self, config: DeltaNetConfig) -> None:
        super().__init__()
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([DeltaNetBlock(config, i) for i in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, eps=config.norm_eps)

    def forward(
        self,
        input_ids: torch.LongTensor | None,
        inputs_embeds: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        cache: FastWeightCache | None,
        output_hidden_states: bool,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None, FastWeightCache | None]:
        x = self.embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        all_hidden = [x] if output_hidden_states else None
        for i, layer in enumerate(self.layers):
            x, new_state = layer(x, attention_mask, cache[i] if cache is not None else None)
            if cache is not None:
                cache.update(i, new_state)
            if all_hidden is not None:
                all_hidden.append(x)
        x = self.norm(x)
        if all_hidden is not None:
            all_hidden[-1] = x
        if cache is not None:
            cache.seen_tokens += x.shape[1]
        return x, tuple(all_hidden) if all_hidden is not None else None, cache


class DeltaNetForCausalLM(FastWeightPreTrainedModel, GenerationMixin):
    """DeltaNet causal LM; `from_pretrained` loads fla checkpoints (old `attn.norm` key mapped to `attn.o_norm`)."""

    config_class = DeltaNetConfig
    _no_split_modules = ["DeltaNetBlock"]
    _checkpoint_renames = {".attn.norm.weight": ".attn.o_norm.weight"}

    def __init__(self, config: DeltaNetConfig) -> None:
        super().__init__(config)
        self.model = DeltaNetModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()
