"""DeltaNet as a transformers model with fla's state-dict layout (`fla-hub/delta_net-1.3B-100B` loads as is).

Token mixer per layer: q, k, v projections through causal depthwise short convolutions with SiLU, q and k
L2-normalised, beta = sigmoid(b_proj x), the delta rule, per-head RMSNorm on the output, o_proj.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules import module as torch_module
from transformers import GenerationMixin

from refine_bench.errors import UserInputError
from refine_bench.kernels import (
    BACKENDS,
    causal_depthwise_conv1d,
    compiled_cpu_applies,
    delta_rule,
    delta_rule_step,
    deltanet_decode_stack_cpu,
    deltanet_decode_step_cpu,
    resolve_backend,
)
from refine_bench.models.backbone import FastWeightBlock
from refine_bench.models.base import FastWeightPreTrainedModel
from refine_bench.models.cache import FastWeightCache
from refine_bench.models.config import FastWeightConfig
from refine_bench.models.layers import (
    COMPILED_MAX_ROWS,
    RMSNorm,
    SwiGLUMLP,
    l2_normalize,
    plain_linears,
    unhooked,
)

# Sequences up to this length take the token recurrence, longer ones the chunked kernel.
RECURRENT_MAX_LEN = 16


class DeltaNetConfig(FastWeightConfig):
    """Configuration compatible with fla's `delta_net` config.json (extra fla keys are kept and ignored).

    chunk_size and kernel_backend ('auto' | 'torch' | 'cpp' | 'fla') choose how the delta rule is computed, not
    what.
    """

    model_type = "delta_net"
    fixed_options: ClassVar[dict[str, Any]] = {
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

    num_heads: int = 16
    expand_k: float = 1.0
    expand_v: float = 1.0
    conv_size: int = 4
    chunk_size: int = 64
    kernel_backend: str = "auto"

    def validate_shapes(self) -> None:
        super().validate_shapes()
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
        if self.kernel_backend not in BACKENDS:
            raise UserInputError(f"DeltaNetConfig.kernel_backend must be one of {BACKENDS}, got "
                                 f"{self.kernel_backend!r}")

    @property
    def allows_compiled_cpu_kernels(self) -> bool:
        """`torch` (and `fla`) keep every op on torch; `auto` and `cpp` allow the compiled CPU kernels."""
        return self.kernel_backend in ("auto", "cpp")


class ShortConv(nn.Module):
    """Depthwise causal convolution weight [C, 1, W] (fla's `*_conv1d.weight`); the mixer runs q, k and v
    through one convolution over their concatenated channels."""

    def __init__(self, channels: int, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels, 1, width))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)


class DeltaNetAttention(nn.Module):
    """The DeltaNet token mixer; its cache entry is {'recurrent_state' [B, H, K, V], 'conv_state': the short
    convolution's last inputs [B, 2 key_dim + value_dim, conv_size - 1] (q, k, v channels in that order)}."""

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
        self.o_norm = RMSNorm(self.head_v_dim, eps=config.norm_eps, kernels=config)
        self.o_proj = nn.Linear(self.value_dim, config.hidden_size, bias=False)

    @classmethod
    def context(cls, config: DeltaNetConfig, x: torch.Tensor, attention_mask: torch.Tensor | None,
                cache: FastWeightCache | None) -> torch.Tensor | None:
        """All DeltaNet layers need from a forward is the padding mask of the current tokens."""
        return attention_mask

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None, state: dict | None
    ) -> tuple[torch.Tensor, dict]:
        B, T, _ = x.shape
        if T == 1 and mask is None and state is not None and self._can_decode_fused(x):
            return self._decode_token(x, state)
        H, key_dim = self.num_heads, self.key_dim
        qkv = torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], dim=-1)
        # The kernels' input dtype: the projections' (under autocast the autocast dtype, not x's).
        dtype = qkv.dtype
        beta = self.b_proj(x).float().sigmoid()
        if mask is not None:
            # Padded positions feed zeros to the convolutions and beta = 0 to the delta rule, so the state
            # after a left-padded prompt equals the state after the unpadded one.
            qkv = qkv * mask[:, :, None].to(dtype)
            beta = beta * mask[:, :, None].float()
        conv_weight = torch.cat([self.q_conv1d.weight, self.k_conv1d.weight, self.v_conv1d.weight])
        qkv, conv_state = causal_depthwise_conv1d(qkv, conv_weight, state["conv_state"] if state else None,
                                                  activation="silu")
        qk = l2_normalize(qkv[..., : 2 * key_dim].view(B, T, 2 * H, self.head_k_dim)).to(dtype)
        q, k = qk[:, :, :H], qk[:, :, H:]
        v = qkv[..., 2 * key_dim :].view(B, T, H, self.head_v_dim)
        o, recurrent_state = delta_rule(
            q, k, v, beta.to(dtype) if dtype != torch.float32 else beta,
            state["recurrent_state"] if state is not None else None,
            mode="recurrent" if T <= RECURRENT_MAX_LEN else "chunk", backend=self.config.kernel_backend,
            chunk_size=self.config.chunk_size,
        )
        o = self.o_norm(o).reshape(B, T, self.value_dim)
        new_state = {"recurrent_state": recurrent_state, "conv_state": conv_state}
        return self.o_proj(o), new_state

    @classmethod
    def decode_stack(cls, config: DeltaNetConfig, blocks: nn.ModuleList, x: torch.Tensor, ctx: torch.Tensor | None,
                     states: list[dict | None]) -> tuple[torch.Tensor, list[dict]] | None:
        """A decoded token through every block in one compiled call (`deltanet_decode_stack_cpu`): float32 CPU
        decoding of up to COMPILED_MAX_ROWS rows without autograd or padding, when the backend allows the compiled
        CPU kernels and every block is the plain DeltaNet block without hooks; else None (the per-block path
        serves)."""
        # more rows (a batch of rollouts) are a matmul's job: the compiled stack computes row by row, 2x slower
        # than the per-block path at 32 rows of deltanet-small
        if (ctx is not None or x.shape[1] != 1 or x.shape[0] > COMPILED_MAX_ROWS or torch.is_grad_enabled()
                or x.device.type != "cpu" or x.dtype != torch.float32 or torch_module._global_forward_hooks
                or torch_module._global_forward_pre_hooks or not config.allows_compiled_cpu_kernels):
            return None
        tensors, eps, conv_states, recurrent_states = [], [], [], []
        for block, state in zip(blocks, states, strict=True):
            plain = _plain_block_tensors(block) if state is not None else None
            if plain is None:
                return None
            tensors += plain[0]
            eps += plain[1]
            conv_states.append(state["conv_state"])
            recurrent_states.append(state["recurrent_state"])
        if not compiled_cpu_applies(*tensors, *conv_states, *recurrent_states):
            return None
        scale = blocks[0]._modules["attn"].head_k_dim ** -0.5
        out, conv_states, recurrent_states = deltanet_decode_stack_cpu(x[:, 0], tensors, conv_states,
                                                                       recurrent_states, eps, scale)
        return out[:, None], [{"recurrent_state": r, "conv_state": c}
                              for r, c in zip(recurrent_states, conv_states, strict=True)]

    def _can_decode_fused(self, x: torch.Tensor) -> bool:
        """The fused token step reads the projection weights directly: only for plain, unhooked nn.Linear
        projections (an adapter or a hook wrapping them takes the general path), off fla."""
        if not plain_linears(self.q_proj, self.k_proj, self.v_proj, self.b_proj):
            return False
        return x.device.type != "cuda" or resolve_backend(self.config.kernel_backend, x.device) != "fla"

    def _can_decode_compiled(self, x: torch.Tensor, state: dict) -> bool:
        """The compiled token step (`deltanet_decode_step_cpu`) serves float32 CPU decoding without autograd
        when the backend allows the fused CPU kernel and it is built."""
        return self.config.allows_compiled_cpu_kernels and compiled_cpu_applies(
            x, state["conv_state"], state["recurrent_state"], self.o_norm.weight, self.q_conv1d.weight,
            self.k_conv1d.weight, self.v_conv1d.weight, self.q_proj.weight, self.k_proj.weight, self.v_proj.weight,
            self.b_proj.weight)

    def _decode_token(self, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        """One token continuing a cache, in as few tensor operations as the math allows: at decode time the
        per-operation overhead is the cost, not the arithmetic. Computes what `forward` computes (q, k, v and
        beta from one matmul, the short convolution as one product with its window)."""
        if self._can_decode_compiled(x, state):
            o, conv_state, recurrent_state = deltanet_decode_step_cpu(
                x[:, 0], (self.q_proj.weight, self.k_proj.weight, self.v_proj.weight, self.b_proj.weight),
                (self.q_conv1d.weight, self.k_conv1d.weight, self.v_conv1d.weight), state["conv_state"],
                state["recurrent_state"], self.o_norm.weight, self.o_norm.eps, self.head_k_dim**-0.5)
            return self.o_proj(o[:, None]), {"recurrent_state": recurrent_state, "conv_state": conv_state}
        B, H, K = x.shape[0], self.num_heads, self.key_dim
        C = 2 * K + self.value_dim
        weight = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight, self.b_proj.weight])
        proj = F.linear(x[:, 0], weight)  # [B, C + H]
        dtype = proj.dtype
        window = torch.cat([state["conv_state"].to(dtype), proj[:, :C, None]], dim=-1)  # [B, C, conv_size]
        conv_weight = torch.cat([self.q_conv1d.weight, self.k_conv1d.weight, self.v_conv1d.weight])[:, 0]
        qkv = F.silu((window * conv_weight.to(dtype)).sum(-1))
        qk = l2_normalize(qkv[:, : 2 * K].view(B, 2 * H, self.head_k_dim)).to(dtype).float()
        v = qkv[:, 2 * K :].view(B, H, self.head_v_dim).float()
        beta = proj[:, C:].float().sigmoid()
        o, recurrent_state = delta_rule_step(qk[:, :H], qk[:, H:], v, beta, state["recurrent_state"].float(),
                                             self.head_k_dim**-0.5)
        o = self.o_norm(o.to(dtype)).reshape(B, 1, self.value_dim)
        return self.o_proj(o), {"recurrent_state": recurrent_state, "conv_state": window[..., 1:]}


def _plain_block_tensors(block: nn.Module) -> tuple[list[torch.Tensor], list[float]] | None:
    """A DeltaNet block's tensors and norm eps in `deltanet_decode_stack_cpu`'s order, or None when anything in it
    is not the plain module the compiled stack computes (an adapter, a hook, a bias, another class)."""
    # `_modules` / `_parameters` directly: nn.Module.__getattr__ would cost more than the arithmetic here
    if type(block) is not FastWeightBlock:
        return None
    parts = block._modules
    attn_norm, attn, mlp_norm, mlp = parts["attn_norm"], parts["attn"], parts["mlp_norm"], parts["mlp"]
    if not (type(attn_norm) is RMSNorm and type(mlp_norm) is RMSNorm and type(attn) is DeltaNetAttention
            and type(mlp) is SwiGLUMLP):
        return None
    a, m = attn._modules, mlp._modules
    linears = (a["q_proj"], a["k_proj"], a["v_proj"], a["b_proj"], a["o_proj"], m["gate_proj"], m["up_proj"],
               m["down_proj"])
    convs, o_norm = (a["q_conv1d"], a["k_conv1d"], a["v_conv1d"]), a["o_norm"]
    if (not plain_linears(*linears) or any(lin._parameters["bias"] is not None for lin in linears)
            or type(o_norm) is not RMSNorm or not all(type(c) is ShortConv for c in convs)
            or not unhooked(block, attn_norm, attn, mlp_norm, mlp, o_norm, *convs)):
        return None
    weight = [mod._parameters["weight"] for mod in (attn_norm, *linears[:4], *convs, o_norm, linears[4], mlp_norm,
                                                    *linears[5:])]
    return weight, [attn_norm.eps, o_norm.eps, mlp_norm.eps]


class DeltaNetForCausalLM(FastWeightPreTrainedModel, GenerationMixin):
    """DeltaNet causal LM; `from_pretrained` loads fla checkpoints (old `attn.norm` key mapped to `attn.o_norm`)."""

    config_class = DeltaNetConfig
    mixer_class = DeltaNetAttention
    _checkpoint_renames = {".attn.norm.weight": ".attn.o_norm.weight"}
