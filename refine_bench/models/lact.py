"""LaCT (large-chunk test-time training) as a transformers model with the LaCT repo's `lact_swiglu` layout.

Each layer mixes tokens twice from one shared qkv projection: sliding-window softmax attention with RoPE, and
a per-head SwiGLU fast-weight MLP that is applied to the queries and updated once per chunk of
`lact_chunk_size` tokens (see `refine_bench.kernels.lact`). The two outputs are summed before o_proj.

The decode cache holds, per layer: the fast weights as of the last completed chunk (+ momentum and initial
row norms), the partial chunk's keys/values/learning rates, the last window - 1 attention keys/values, and
the per-row count of real tokens. A generated token costs O(window + chunk) work, plus one chunk update
when its chunk completes. Padding (attention_mask == 0) is dropped everywhere: a left-padded row behaves
exactly like the unpadded sequence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PretrainedConfig

from refine_bench.errors import UserInputError
from refine_bench.kernels.attention import apply_rope, rope_cos_sin, window_attention
from refine_bench.kernels.lact import LaCTPlan, init_lact_state, lact_swiglu, make_lact_plan
from refine_bench.models.base import FastWeightPreTrainedModel
from refine_bench.models.cache import FastWeightCache
from refine_bench.models.config_options import check_fixed_options, take_fixed_options
from refine_bench.models.layers import RMSNorm, SwiGLUMLP, swiglu_intermediate_size

BASE_LR = 1e-3  # softplus(0 + inv_softplus(BASE_LR)) = BASE_LR: the learning rate at a zero projection
FW_NORM_EPS = 1e-5  # fla's RMSNorm default, used by the repo for ttt_norm and q/k norms
L2_EPS = 1e-5

# Options of the repo's config that this implementation covers only at one value.
_FIXED_OPTIONS = {
    "ttt_prenorm": False,
    "ttt_loss_type": "dot_product",
    "lr_parameterization": "mamba",
    "lr_dim": 1,
    "hidden_act": "swish",
}


def inv_softplus(y: float) -> float:
    """x such that softplus(x) = y."""
    return y + math.log(-math.expm1(-y))


class LaCTConfig(PretrainedConfig):
    """Configuration read from / written as the LaCT repo's `lact_swiglu` config.json.

    Speed-only switches of the repo (fuse_norm, fuse_swiglu, fuse_cross_entropy, use_fused_kernel,
    last_layer_fuse_norm) are kept and ignored; the fast-weight state is always float32 (fp32_states).
    One addition: muon_fp32 runs Muon's Newton-Schulz iteration in float32 instead of the repo's bfloat16.
    """

    model_type = "lact_swiglu"

    def __init__(
        self,
        hidden_size: int = 2048,
        num_hidden_layers: int = 24,
        num_attn_heads: int = 32,
        num_lact_heads: int = 4,
        inter_multi: float = 1,
        qkv_bias: bool = False,
        attn_qk_norm: bool = False,
        lact_chunk_size: int = 2048,
        use_muon: bool = False,
        qkv_silu: bool = True,
        no_v_silu: bool = False,
        learnable_ttt_scale: bool = True,
        use_momentum: bool = True,
        ttt_nope: bool = False,
        w0_w2_low_rank: int = -1,
        window_size: int = 2048,
        rope_theta: float = 10000.0,
        max_position_embeddings: int = 2048,
        hidden_ratio: float = 4,
        intermediate_size: int | None = None,
        initializer_range: float = 0.006,
        norm_eps: float = 1e-6,
        use_cache: bool = True,
        pad_token_id: int | None = 2,
        bos_token_id: int = 1,
        eos_token_id: int = 2,
        tie_word_embeddings: bool = False,
        vocab_size: int = 32000,
        fw_init_gain: float = 0.5,
        muon_fp32: bool = False,
        **kwargs: Any,
    ) -> None:
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attn_heads = num_attn_heads
        self.num_lact_heads = num_lact_heads
        self.inter_multi = inter_multi
        self.qkv_bias = qkv_bias
        self.attn_qk_norm = attn_qk_norm
        self.lact_chunk_size = lact_chunk_size
        self.use_muon = use_muon
        self.qkv_silu = qkv_silu
        self.no_v_silu = no_v_silu
        self.learnable_ttt_scale = learnable_ttt_scale
        self.use_momentum = use_momentum
        self.ttt_nope = ttt_nope
        self.w0_w2_low_rank = w0_w2_low_rank
        self.window_size = window_size
        self.rope_theta = rope_theta
        self.max_position_embeddings = max_position_embeddings
        self.hidden_ratio = hidden_ratio
        self.intermediate_size = intermediate_size
        self.initializer_range = initializer_range
        self.norm_eps = norm_eps
        self.use_cache = use_cache
        self.vocab_size = vocab_size
        self.fw_init_gain = fw_init_gain
        self.muon_fp32 = muon_fp32
        take_fixed_options(self, kwargs, _FIXED_OPTIONS)
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                         tie_word_embeddings=tie_word_embeddings, **kwargs)
        self.validate_shapes()

    def validate_shapes(self) -> None:
        """Raise UserInputError naming the field for settings this implementation cannot run."""
        check_fixed_options(self, _FIXED_OPTIONS)
        for key in ("hidden_size", "num_hidden_layers", "num_attn_heads", "num_lact_heads", "vocab_size",
                    "max_position_embeddings", "lact_chunk_size", "window_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserInputError(f"LaCTConfig.{key} must be a positive integer, got {value!r}")
        for key in ("lact_chunk_size", "window_size"):
            if getattr(self, key) > self.max_position_embeddings:
                raise UserInputError(
                    f"LaCTConfig.{key}={getattr(self, key)} exceeds max_position_embeddings="
                    f"{self.max_position_embeddings}: it would never take effect within the model's context"
                )
        if self.hidden_size % self.num_attn_heads or (self.hidden_size // self.num_attn_heads) % 2:
            raise UserInputError(
                f"LaCTConfig.hidden_size ({self.hidden_size}) must be divisible by num_attn_heads "
                f"({self.num_attn_heads}) into an even head dim (RoPE)"
            )
        if self.hidden_size % self.num_lact_heads:
            raise UserInputError(
                f"LaCTConfig.hidden_size ({self.hidden_size}) must be divisible by num_lact_heads "
                f"({self.num_lact_heads})"
            )
        if self.fw_hidden_dim < 1:
            raise UserInputError(f"LaCTConfig.inter_multi={self.inter_multi} gives an empty fast-weight MLP")
        if self.w0_w2_low_rank == 0 or not isinstance(self.w0_w2_low_rank, int):
            raise UserInputError(f"LaCTConfig.w0_w2_low_rank must be -1 (full) or a positive rank, "
                                 f"got {self.w0_w2_low_rank!r}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attn_heads

    @property
    def fw_head_dim(self) -> int:
        return self.hidden_size // self.num_lact_heads

    @property
    def fw_hidden_dim(self) -> int:
        return int(self.fw_head_dim * self.inter_multi)

    @property
    def mlp_intermediate_size(self) -> int:
        return self.intermediate_size or swiglu_intermediate_size(self.hidden_size, self.hidden_ratio)


class LowRankFastWeight(nn.Module):
    """Initial fast weight W = w_left @ w_right + 0.5 I per head (the repo's low-rank parameterisation)."""

    def __init__(self, num_heads: int, out_features: int, in_features: int, rank: int, init_gain: float) -> None:
        super().__init__()
        self.init_gain = init_gain
        self.w_left = nn.Parameter(torch.empty(num_heads, out_features, rank))
        self.w_right = nn.Parameter(torch.empty(num_heads, rank, in_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.w_left, std=self.init_gain / math.sqrt(self.w_left.shape[-1]))
        nn.init.normal_(self.w_right, std=self.init_gain / math.sqrt(self.w_right.shape[-1]))

    def forward(self) -> torch.Tensor:
        w = self.w_left @ self.w_right
        eye = torch.eye(w.shape[1], w.shape[2], device=w.device, dtype=w.dtype)
        return w + 0.5 * eye


@dataclass
class StepContext:
    """Per-forward facts shared by all layers: positions, RoPE angles, padding, the chunk plan."""

    mask: torch.Tensor | None
    positions: torch.Tensor  # [B, T], -1 at padding
    cos: torch.Tensor
    sin: torch.Tensor
    num_pads: int
    plan: LaCTPlan
    keep_state: bool


def step_context(config: LaCTConfig, B: int, T: int, device: torch.device, mask: torch.Tensor | None = None,
                 seen: torch.Tensor | None = None) -> StepContext:
    """The shared per-forward context for T new tokens after `seen` [B] real tokens (None: a fresh start)."""
    seen = torch.zeros(B, dtype=torch.long, device=device) if seen is None else seen
    if mask is not None:
        mask = mask.to(device=device, dtype=torch.long)
        idx = mask.cumsum(dim=1) - 1
        positions = torch.where(mask.bool(), seen[:, None] + idx, torch.full_like(idx, -1))
        num_pads = int((T - mask.sum(dim=1)).max())
    else:
        positions = seen[:, None] + torch.arange(T, device=device)
        num_pads = 0
    cos, sin = rope_cos_sin(positions, config.head_dim, float(config.rope_theta))
    plan = make_lact_plan(seen, mask, T, config.lact_chunk_size)
    return StepContext(mask, positions, cos, sin, num_pads, plan, keep_state=False)


class LaCTAttention(nn.Module):
    """One LaCT token mixer (`attn.` in the state dict)."""

    def __init__(self, config: LaCTConfig, layer_idx: int) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        h, H = config.hidden_size, config.num_lact_heads
        d, dh = config.fw_head_dim, config.fw_hidden_dim
        self.qkv = nn.Linear(h, 3 * h, bias=config.qkv_bias)
        if config.attn_qk_norm:
            self.q_norm = RMSNorm(h, eps=FW_NORM_EPS)
            self.k_norm = RMSNorm(h, eps=FW_NORM_EPS)
        self.o_proj = nn.Linear(h, h, bias=False)
        if config.w0_w2_low_rank > 0:
            self.w0 = LowRankFastWeight(H, dh, d, config.w0_w2_low_rank, config.fw_init_gain)
            self.w2 = LowRankFastWeight(H, dh, d, config.w0_w2_low_rank, config.fw_init_gain)
        else:
            self.w0 = nn.Parameter(torch.empty(H, dh, d))
            self.w2 = nn.Parameter(torch.empty(H, dh, d))
        self.w1 = nn.Parameter(torch.empty(H, d, dh))
        self.lr_proj = nn.Linear(h, 3 * H)
        self.qk_scale = nn.Parameter(torch.ones(h, 2))
        self.qk_offset = nn.Parameter(torch.zeros(h, 2))
        if config.learnable_ttt_scale:
            self.ttt_scale_proj = nn.Linear(h, H)
        self.ttt_norm = RMSNorm(d, eps=FW_NORM_EPS)
        if config.use_momentum:
            self.momentum_proj = nn.Sequential(nn.Linear(h, H), nn.Sigmoid())
        self.base_lr_inv = inv_softplus(BASE_LR)
        self.reset_fast_weights()

    def reset_fast_weights(self) -> None:
        """The repo's initialisation of the initial fast weights and the q/k scale and offset."""
        with torch.no_grad():
            self.qk_scale.fill_(1.0)
            self.qk_offset.zero_()
        for w in (self.w0, self.w2):
            if isinstance(w, LowRankFastWeight):
                w.reset_parameters()
            else:
                nn.init.normal_(w, std=1.0 / math.sqrt(w.shape[-1]))
        nn.init.normal_(self.w1, std=1.0 / math.sqrt(self.w1.shape[-1]))

    def initial_fast_weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        w0 = self.w0() if isinstance(self.w0, LowRankFastWeight) else self.w0
        w2 = self.w2() if isinstance(self.w2, LowRankFastWeight) else self.w2
        return w0, self.w1, w2

    def forward(self, x: torch.Tensor, ctx: StepContext, state: dict | None) -> tuple[torch.Tensor, dict | None]:
        cfg = self.config
        B, T, h = x.shape
        H, nh = cfg.num_lact_heads, cfg.num_attn_heads
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        if cfg.attn_qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        fq = q * self.qk_scale[:, 0] + self.qk_offset[:, 0]
        fk = k * self.qk_scale[:, 1] + self.qk_offset[:, 1]
        fv = v

        attn_cache = None if state is None else {"k": state["attn_k"], "v": state["attn_v"], "pos": state["attn_pos"]}
        o_attn, attn_cache = window_attention(
            apply_rope(q.view(B, T, nh, -1), ctx.cos, ctx.sin), apply_rope(k.view(B, T, nh, -1), ctx.cos, ctx.sin),
            v.view(B, T, nh, -1), ctx.positions, cfg.window_size, cache=attn_cache, return_cache=ctx.keep_state,
            num_pads=ctx.num_pads,
        )

        if cfg.qkv_silu:
            fq, fk = F.silu(fq), F.silu(fk)
            fv = fv if cfg.no_v_silu else F.silu(fv)
        fq, fk = (t.view(B, T, H, -1) for t in (fq, fk))
        fq = fq / (fq.norm(dim=-1, keepdim=True) + L2_EPS)
        fk = fk / (fk.norm(dim=-1, keepdim=True) + L2_EPS)
        if not cfg.ttt_nope:  # same rotary as attention, over attention-head-sized slices
            fq = apply_rope(fq.reshape(B, T, nh, -1), ctx.cos, ctx.sin)
            fk = apply_rope(fk.reshape(B, T, nh, -1), ctx.cos, ctx.sin)
        lr = F.softplus(self.lr_proj(x).float() + self.base_lr_inv).view(B, T, H, 3)
        mom = self.momentum_proj(x).float() if cfg.use_momentum else None
        if state is None:
            fw_state = init_lact_state(*self.initial_fast_weights(), batch_size=B, chunk_size=cfg.lact_chunk_size,
                                       use_momentum=cfg.use_momentum)
        else:
            fw_state = {key: val for key, val in state.items() if not key.startswith("attn_")}
        with _fast_weight_precision(x):
            fw_o, fw_state = lact_swiglu(fq.reshape(B, T, H, -1), fk.reshape(B, T, H, -1), fv.view(B, T, H, -1),
                                         lr, fw_state, mom, ctx.mask, use_muon=cfg.use_muon, plan=ctx.plan,
                                         muon_dtype=None if cfg.muon_fp32 else torch.bfloat16)
        ttt = self.ttt_norm(fw_o.to(x.dtype))
        if cfg.learnable_ttt_scale:
            ttt = ttt * F.silu(self.ttt_scale_proj(x))[..., None]
        out = self.o_proj(o_attn.reshape(B, T, h) + ttt.reshape(B, T, h))
        if not ctx.keep_state:
            return out, None
        fw_state.update(attn_k=attn_cache["k"], attn_v=attn_cache["v"], attn_pos=attn_cache["pos"])
        return out, fw_state


def _fast_weight_precision(x: torch.Tensor):
    """On CUDA with 16-bit activations, run the fast-weight matmuls in bf16 autocast as the LaCT repo does
    (the state itself stays float32); everywhere else compute exactly in float32."""
    if x.is_cuda and x.dtype in (torch.bfloat16, torch.float16):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


class LaCTBlock(nn.Module):
    def __init__(self, config: LaCTConfig, layer_idx: int) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.attn = LaCTAttention(config, layer_idx)
        self.mlp_norm = RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.mlp = SwiGLUMLP(config.hidden_size, config.mlp_intermediate_size)

    def forward(self, x: torch.Tensor, ctx: StepContext | None = None,
                state: dict | None = None) -> tuple[torch.Tensor, dict | None]:
        """One block; without `ctx`, a fresh unpadded sequence (as the GPU throughput script calls it)."""
        if ctx is None:
            ctx = step_context(self.attn.config, x.shape[0], x.shape[1], x.device)
        h, new_state = self.attn(self.attn_norm(x), ctx, state)
        x = x + h
        x = x + self.mlp(self.mlp_norm(x))
        return x, new_state


class LaCTModel(nn.Module):
    """Embeddings, LaCT blocks and the final norm (repo key names under `model.`)."""

    def __init__(self, config: LaCTConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([LaCTBlock(config, i) for i in range(config.num_hidden_layers)])
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
        B, T = x.shape[:2]
        first = cache[0] if cache is not None else None
        ctx = step_context(self.config, B, T, x.device, attention_mask, None if first is None else first["seen"])
        ctx.keep_state = cache is not None
        all_hidden = [x] if output_hidden_states else None
        for i, layer in enumerate(self.layers):
            x, new_state = layer(x, ctx, cache[i] if cache is not None else None)
            if cache is not None:
                cache.update(i, new_state)
            if all_hidden is not None:
                all_hidden.append(x)
        x = self.norm(x)
        if all_hidden is not None:
            all_hidden[-1] = x
        if cache is not None:
            cache.seen_tokens += T
        return x, tuple(all_hidden) if all_hidden is not None else None, cache


class LaCTForCausalLM(FastWeightPreTrainedModel, GenerationMixin):
    """LaCT causal LM; `from_pretrained` loads checkpoints saved with the LaCT repo's key names."""

    config_class = LaCTConfig
    _no_split_modules = ["LaCTBlock"]

    def __init__(self, config: LaCTConfig) -> None:
        super().__init__(config)
        self.model = LaCTModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, LaCTAttention):
            module.reset_fast_weights()
        elif isinstance(module, RMSNorm):
            with torch.no_grad():
                module.weight.fill_(1.0)


def lact_760m_config(**overrides: Any) -> LaCTConfig:
    """The LaCT repo's 760M config (configs/760M_lact_swiglu_nh4_fwlow_rank_momentum.json)."""
    kwargs = dict(
        hidden_size=1536, num_hidden_layers=24, num_attn_heads=24, num_lact_heads=4, inter_multi=1,
        qkv_bias=False, attn_qk_norm=False, qkv_silu=True, lact_chunk_size=2048, window_size=2048,
        use_muon=False, learnable_ttt_scale=True, w0_w2_low_rank=32, fw_init_gain=0.5, use_momentum=True,
        rope_theta=1_000_000.0, norm_eps=1e-6, max_position_embeddings=32768, initializer_range=0.02,
        tie_word_embeddings=False, vocab_size=32000, bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )
    kwargs.update(overrides)
    return LaCTConfig(**kwargs)


def lact_tiny_config(**overrides: Any) -> LaCTConfig:
    """A 2-layer LaCT for CPUs and CI: chunk 64 so the fast weights update on short inputs, window 64."""
    kwargs = dict(
        hidden_size=128, num_hidden_layers=2, num_attn_heads=4, num_lact_heads=2, inter_multi=1,
        lact_chunk_size=64, window_size=64, use_muon=False, use_momentum=True, w0_w2_low_rank=8,
        learnable_ttt_scale=True, rope_theta=1_000_000.0, intermediate_size=256, vocab_size=512,
        max_position_embeddings=1 << 16, initializer_range=0.02, bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )
    kwargs.update(overrides)
    return LaCTConfig(**kwargs)
