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
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin

from refine_bench.errors import UserInputError
from refine_bench.kernels import (
    LaCTPlan,
    apply_rope,
    init_lact_state,
    lact_swiglu,
    make_lact_plan,
    rope_cos_sin,
    window_attention,
)
from refine_bench.models.base import FastWeightPreTrainedModel
from refine_bench.models.cache import FastWeightCache
from refine_bench.models.config import FastWeightConfig
from refine_bench.models.layers import RMSNorm

BASE_LR = 1e-3  # the repo's: softplus(0 + inv_softplus(base lr)) = base lr, the learning rate at a zero projection
FW_NORM_EPS = 1e-5  # fla's RMSNorm default, used by the repo for ttt_norm and q/k norms
L2_EPS = 1e-5

def inv_softplus(y: float) -> float:
    """x such that softplus(x) = y."""
    return y + math.log(-math.expm1(-y))


class LaCTConfig(FastWeightConfig):
    """Configuration read from / written as the LaCT repo's `lact_swiglu` config.json.

    Speed-only switches of the repo (fuse_norm, fuse_swiglu, fuse_cross_entropy, use_fused_kernel,
    last_layer_fuse_norm) are kept and ignored; the fast-weight state is always float32 (fp32_states).
    Additions: muon_fp32 runs Muon's Newton-Schulz iteration in float32 instead of the repo's bfloat16;
    compile_fast_weights runs the fast-weight chunk update through torch.compile (for long GPU runs);
    fast_weight_base_lr is the fast weights' per-token learning rate at a zero lr_proj output (the repo
    hard-codes 1e-3, sized for its 2,048-token chunks: an update sums over its chunk's tokens);
    zero_init_ttt_scale starts ttt_scale_proj at zero, so the fast-weight branch's output gate silu(0) = 0
    is closed at initialisation and opens as training finds it useful (the repo draws it at random).
    The defaults of both are the repo's.
    """

    model_type = "lact_swiglu"
    fixed_options: ClassVar[dict[str, Any]] = {
        "ttt_prenorm": False,
        "ttt_loss_type": "dot_product",
        "lr_parameterization": "mamba",
        "lr_dim": 1,
        "hidden_act": "swish",
    }

    num_attn_heads: int = 32
    num_lact_heads: int = 4
    inter_multi: float = 1
    qkv_bias: bool = False
    attn_qk_norm: bool = False
    lact_chunk_size: int = 2048
    use_muon: bool = False
    qkv_silu: bool = True
    no_v_silu: bool = False
    learnable_ttt_scale: bool = True
    use_momentum: bool = True
    ttt_nope: bool = False
    w0_w2_low_rank: int = -1
    window_size: int = 2048
    rope_theta: float = 10000.0
    initializer_range: float = 0.006
    fw_init_gain: float = 0.5
    muon_fp32: bool = False
    compile_fast_weights: bool = False
    fast_weight_base_lr: float = BASE_LR
    zero_init_ttt_scale: bool = False

    def validate_shapes(self) -> None:
        """Raise UserInputError naming the field for settings this implementation cannot run."""
        super().validate_shapes()
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
        lr = self.fast_weight_base_lr
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < 1e3:
            raise UserInputError(f"LaCTConfig.fast_weight_base_lr must be a number in (0, 1000), got {lr!r}")
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
                 seen: torch.Tensor | None = None, keep_state: bool = False) -> StepContext:
    """The shared per-forward context for T new tokens after `seen` [B] real tokens (None: a fresh start);
    keep_state: whether the layers return their new state (a cache is being kept)."""
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
    return StepContext(mask, positions, cos, sin, num_pads, plan, keep_state)


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
            self.q_norm = RMSNorm(h, eps=FW_NORM_EPS, kernels=config)
            self.k_norm = RMSNorm(h, eps=FW_NORM_EPS, kernels=config)
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
        self.ttt_norm = RMSNorm(d, eps=FW_NORM_EPS, kernels=config)
        if config.use_momentum:
            self.momentum_proj = nn.Sequential(nn.Linear(h, H), nn.Sigmoid())
        self.base_lr_inv = inv_softplus(float(config.fast_weight_base_lr))
        self.reset_fast_weights()

    @classmethod
    def context(cls, config: LaCTConfig, x: torch.Tensor, attention_mask: torch.Tensor | None,
                cache: FastWeightCache | None) -> StepContext:
        """Positions, RoPE angles and the chunk plan, shared by all layers (every layer has seen the same tokens)."""
        first = cache[0] if cache is not None else None
        return step_context(config, x.shape[0], x.shape[1], x.device, attention_mask,
                            None if first is None else first["seen"], keep_state=cache is not None)

    def reset_fast_weights(self) -> None:
        """The repo's initialisation of the initial fast weights and the q/k scale and offset (and the closed
        output gate when config.zero_init_ttt_scale)."""
        with torch.no_grad():
            self.qk_scale.fill_(1.0)
            self.qk_offset.zero_()
            if self.config.zero_init_ttt_scale and self.config.learnable_ttt_scale:
                self.ttt_scale_proj.weight.zero_()
                self.ttt_scale_proj.bias.zero_()
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
        # On CUDA with 16-bit activations (a bf16 model, or bf16 autocast) the fast-weight matmuls run under bf16
        # autocast as in the LaCT repo; everywhere else exactly in float32. The state itself stays float32.
        low_precision = q.is_cuda and q.dtype in (torch.bfloat16, torch.float16)
        fw_o, fw_state = lact_swiglu(fq.reshape(B, T, H, -1), fk.reshape(B, T, H, -1), fv.view(B, T, H, -1),
                                     lr, fw_state, mom, ctx.mask, use_muon=cfg.use_muon, plan=ctx.plan,
                                     muon_dtype=None if cfg.muon_fp32 else torch.bfloat16,
                                     autocast_dtype=torch.bfloat16 if low_precision else None,
                                     compile=cfg.compile_fast_weights)
        ttt = self.ttt_norm(fw_o.to(x.dtype))
        if cfg.learnable_ttt_scale:
            ttt = ttt * F.silu(self.ttt_scale_proj(x))[..., None]
        out = self.o_proj(o_attn.reshape(B, T, h) + ttt.reshape(B, T, h))
        if not ctx.keep_state:
            return out, None
        fw_state.update(attn_k=attn_cache["k"], attn_v=attn_cache["v"], attn_pos=attn_cache["pos"])
        return out, fw_state


class LaCTForCausalLM(FastWeightPreTrainedModel, GenerationMixin):
    """LaCT causal LM; `from_pretrained` loads checkpoints saved with the LaCT repo's key names."""

    config_class = LaCTConfig
    mixer_class = LaCTAttention


def __getattr__(name: str) -> Any:
    # Temporary: the named configs moved to `models.zoo_configs`; kept importable from here until every caller
    # (tests/test_rollout_modes.py) imports them from there.
    if name in ("lact_tiny_config", "lact_760m_config"):
        from refine_bench.models import zoo_configs

        return getattr(zoo_configs, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
