"""The layer stack every fast-weight model shares: embeddings, pre-norm blocks (token mixer + SwiGLU MLP), final
norm, the recurrent cache carried layer by layer, and optional per-block activation checkpointing.

A model supplies only its token mixer class, an nn.Module with
  - `__init__(config, layer_idx)`;
  - `context(config, x, attention_mask, cache)` (classmethod): the per-forward facts all layers share (the
    padding mask, positions, a chunk plan, ...), computed once;
  - `forward(x, ctx, state) -> (out, new_state)`: state is the layer's cache entry (None on a fresh start);
    new_state is the entry after these tokens (it may be None when `ctx` says no cache is kept);
  - optionally `decode_stack(config, blocks, x, ctx, states) -> (x, new_states) | None` (classmethod): every block
    at once for a step without autograd that continues a cache (a decoded token), computing what the blocks'
    loop computes, or None where it cannot serve (then the loop runs).
Key names follow fla: `layers.N.attn_norm`, `layers.N.attn`, `layers.N.mlp_norm`, `layers.N.mlp`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from refine_bench.models.cache import FastWeightCache
from refine_bench.models.config import FastWeightConfig
from refine_bench.models.layers import RMSNorm, SwiGLUMLP


class FastWeightBlock(nn.Module):
    """x + mixer(norm(x)), then + MLP(norm(x))."""

    def __init__(self, config: FastWeightConfig, mixer: nn.Module) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.hidden_size, eps=config.norm_eps, kernels=config)
        self.attn = mixer
        self.mlp_norm = RMSNorm(config.hidden_size, eps=config.norm_eps, kernels=config)
        self.mlp = SwiGLUMLP(config.hidden_size, config.mlp_intermediate_size, kernels=config)

    def forward(self, x: torch.Tensor, ctx: Any, state: dict | None) -> tuple[torch.Tensor, dict | None]:
        h, new_state = self.attn(self.attn_norm(x), ctx, state)
        x = x + h
        return x + self.mlp(self.mlp_norm(x)), new_state


class FastWeightBackbone(nn.Module):
    """Embeddings, blocks and the final norm (`model.` in the state dict)."""

    def __init__(self, config: FastWeightConfig, mixer_class: type[nn.Module]) -> None:
        super().__init__()
        self.config = config
        self.mixer_class = mixer_class
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            [FastWeightBlock(config, mixer_class(config, i)) for i in range(config.num_hidden_layers)]
        )
        self.norm = RMSNorm(config.hidden_size, eps=config.norm_eps, kernels=config)
        self.gradient_checkpointing = False
        self.checkpoint_kwargs: dict[str, Any] = {}

    def forward(
        self,
        input_ids: torch.LongTensor | None,
        inputs_embeds: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        cache: FastWeightCache | None,
        output_hidden_states: bool,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None, FastWeightCache | None]:
        """(last hidden after the final norm, all hidden states or None, the cache updated in place or None).

        attention_mask covers the current tokens only (1 = real, 0 = padding), or is None.
        """
        x = self.embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        ctx = self.mixer_class.context(self.config, x, attention_mask, cache)
        # Recompute each block in the backward pass instead of keeping its activations. Non-reentrant
        # checkpointing takes the nested cache entries as they are and keeps gradients exact, also those that
        # reach a block's input state through a snapshot branched off it (REFINE's rollouts).
        recompute = self.gradient_checkpointing and torch.is_grad_enabled()
        decode_stack = getattr(self.mixer_class, "decode_stack", None)
        if cache is not None and not output_hidden_states and not recompute and decode_stack is not None:
            stepped = decode_stack(self.config, self.layers, x, ctx, cache.layers)
            if stepped is not None:
                x, new_states = stepped
                for i, new_state in enumerate(new_states):
                    cache.update(i, new_state)
                cache.seen_tokens += x.shape[1]
                return self.norm(x), None, cache
        all_hidden = [x] if output_hidden_states else None
        for i, layer in enumerate(self.layers):
            state = cache[i] if cache is not None else None
            if recompute:
                x, new_state = checkpoint(layer, x, ctx, state, use_reentrant=False, **self.checkpoint_kwargs)
            else:
                x, new_state = layer(x, ctx, state)
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
