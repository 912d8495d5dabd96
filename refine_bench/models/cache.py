"""Recurrent state of a fast-weight model, one dict of tensors per layer, usable as a generation cache.

The cache duck-types what transformers' `generate` needs (`get_seq_length`, `is_linear`,
`reorder_cache`, `batch_repeat_interleave`, `batch_select_indices`) and adds what REFINE needs: copies
that keep or drop the autograd graph, and branching one prefix state into several rollouts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

LayerState = dict[str, Any]


def _map(value: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, tuple | list):
        return type(value)(_map(v, fn) for v in value)
    if isinstance(value, dict):
        return {k: _map(v, fn) for k, v in value.items()}
    return value


class FastWeightCache:
    """Per-layer recurrent state plus the number of tokens consumed so far."""

    is_compileable = False
    is_croppable = False

    def __init__(self, num_layers: int, seen_tokens: int = 0) -> None:
        self.layers: list[LayerState | None] = [None] * num_layers
        self.seen_tokens = seen_tokens

    # transformers' generation interface -------------------------------------------------------------
    @property
    def is_linear(self) -> list[bool]:
        """All layers are recurrent: the cache does not grow with the sequence (transformers reads this)."""
        return [True] * len(self.layers)

    def get_seq_length(self, layer_idx: int | None = 0, cache_position: Any = None) -> int:
        return self.seen_tokens

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, layer_idx: int) -> LayerState | None:
        return self.layers[layer_idx]

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._apply_inplace(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._apply_inplace(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.reorder_cache(indices)

    # state API used by the trainer --------------------------------------------------------------------
    def update(self, layer_idx: int, state: LayerState) -> None:
        """Replace layer `layer_idx`'s state (the layer computes the new state functionally)."""
        self.layers[layer_idx] = state

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> FastWeightCache:
        """A new cache with `fn` applied to every tensor (batch dimension first)."""
        out = FastWeightCache(len(self.layers), self.seen_tokens)
        out.layers = [_map(layer, fn) for layer in self.layers]
        return out

    def clone(self, detach: bool = False) -> FastWeightCache:
        """Copy the state; with detach=False the copy stays on the autograd graph of what produced it."""
        return self.map((lambda t: t.detach().clone()) if detach else (lambda t: t.clone()))

    def detach(self) -> FastWeightCache:
        return self.map(lambda t: t.detach())

    def repeat_interleave(self, repeats: int) -> FastWeightCache:
        """Branch every batch row into `repeats` consecutive rows (rollouts), keeping the graph."""
        return self.map(lambda t: t.repeat_interleave(repeats, dim=0))

    def index_select(self, indices: torch.Tensor | list[int]) -> FastWeightCache:
        """Rows `indices` of the batch, keeping the graph."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.map(lambda t: t.index_select(0, idx.to(t.device)))

    def _apply_inplace(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.layers = [_map(layer, fn) for layer in self.layers]

