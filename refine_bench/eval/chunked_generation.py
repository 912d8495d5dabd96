"""Greedy decoding with a chunked prefill: constant activation memory in the prompt length.

A fast-weight model's state does not grow with the prompt, but one forward pass over a 16K-token prompt still
holds activations for every token. Feeding the prompt in chunks through the recurrent cache bounds that to one
chunk; decoding then proceeds token by token from the cache. Greedy results equal `model.generate`'s
(checked in tests/test_eval_e2e.py); rows that finish (EOS or a stop criterion) are padded, as generate does.
"""

from __future__ import annotations

from typing import Any

import torch


@torch.no_grad()
def greedy_generate(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    *,
    chunk_size: int = 2048,
    eos_token_id: int | None = None,
    pad_token_id: int = 0,
    stopping_criteria: Any = None,
) -> torch.Tensor:
    """Prompt ids followed by up to `max_new_tokens` greedy tokens, shape [B, T + new] (like generate)."""
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    batch, length = input_ids.shape
    cache = None
    for start in range(0, length - 1, chunk_size):
        end = min(start + chunk_size, length - 1)
        out = model(input_ids=input_ids[:, start:end], attention_mask=attention_mask[:, :end], cache=cache,
                    use_cache=True, logits_to_keep=1)
        cache = out.cache if hasattr(out, "cache") else out.past_key_values
    sequences, mask = input_ids, attention_mask
    step_input = input_ids[:, -1:]
    done = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
    for _ in range(max_new_tokens):
        out = model(input_ids=step_input, attention_mask=mask, cache=cache, use_cache=True, logits_to_keep=1)
        cache = out.cache if hasattr(out, "cache") else out.past_key_values
        token = out.logits[:, -1].argmax(dim=-1)
        token = torch.where(done, torch.full_like(token, pad_token_id), token)
        sequences = torch.cat([sequences, token[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        if eos_token_id is not None:
            done |= token == eos_token_id
        if stopping_criteria is not None:
            stop = stopping_criteria(sequences, None)
            done |= stop if isinstance(stop, torch.Tensor) else torch.full_like(done, bool(stop))
        if bool(done.all()):
            break
        step_input = token[:, None]
    return sequences
