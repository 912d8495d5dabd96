"""Checks every fast-weight model of the zoo must pass, shared by the per-model test files."""

from __future__ import annotations

import torch


def greedy_by_full_forwards(model, x: torch.Tensor, n: int) -> torch.Tensor:
    """Argmax of a full forward per step, no cache; once a row emits EOS it continues with pad (= eos), as
    `generate` does."""
    eos = model.config.eos_token_id
    seq, done = x, torch.zeros(x.shape[0], dtype=torch.bool)
    with torch.no_grad():
        for _ in range(n):
            nxt = model(seq).logits[:, -1].argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
            done |= nxt == eos
            seq = torch.cat([seq, nxt[:, None]], 1)
    return seq


def check_cached_generation(model, x: torch.Tensor, n: int) -> None:
    """Cached greedy `generate` feeds the prompt once, then one token per step, and gives the tokens of full
    forwards without a cache."""
    lengths: list[int] = []
    hook = model.model.register_forward_pre_hook(
        lambda mod, args, kwargs: lengths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    try:
        out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False)
    finally:
        hook.remove()
    assert lengths[0] == x.shape[1] and set(lengths[1:]) == {1}
    assert torch.equal(out, greedy_by_full_forwards(model, x, n))


def left_padded_pair(model, short: torch.Tensor, long: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of `short` left-padded to the length of `long`, and `long`; with its attention mask."""
    pad = long.shape[1] - short.shape[1]
    batch = torch.cat([torch.cat([torch.full((1, pad), model.config.pad_token_id), short], 1), long], 0)
    mask = torch.ones_like(batch)
    mask[0, :pad] = 0
    return batch, mask


def check_left_padded_generation(model, short: torch.Tensor, long: torch.Tensor, n: int) -> None:
    """Greedy generation of a left-padded batch equals each row generated alone without a cache."""
    batch, mask = left_padded_pair(model, short, long)
    out = model.generate(batch, attention_mask=mask, max_new_tokens=n, do_sample=False)
    assert torch.equal(out[0, long.shape[1] - short.shape[1]:], greedy_by_full_forwards(model, short, n)[0])
    assert torch.equal(out[1], greedy_by_full_forwards(model, long, n)[0])


def check_snapshots(model, x: torch.Tensor, positions: list[int], state_of, logits_atol: float = 1e-5) -> None:
    """`forward_with_snapshots` gives the full pass's logits and hidden states, and at each position the state
    a pass over the prefix alone ends with (`state_of(cache)`: the tensors compared)."""
    with torch.no_grad():
        logits, hidden, snaps = model.forward_with_snapshots(x, positions)
        full = model(x, output_hidden_states=True)
    torch.testing.assert_close(logits, full.logits, atol=logits_atol, rtol=logits_atol)
    torch.testing.assert_close(hidden, full.hidden_states[-1], atol=1e-5, rtol=1e-5)
    for p, snap in zip(positions, snaps, strict=True):
        with torch.no_grad():
            ref = model(x[:, :p], use_cache=True).cache
        assert snap.get_seq_length() == p
        for a, b in zip(state_of(snap), state_of(ref), strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def check_branch_gradient(model, prefix: torch.Tensor, continuation: torch.Tensor, reached: str) -> None:
    """A loss on a continuation decoded from a branched snapshot (two rollouts) gives the gradients of one pass
    over prefix + continuation: the branch keeps the autograd graph to the prefix's state. `reached` names a
    parameter whose gradient must not be zero."""
    params = dict(model.named_parameters())
    p = prefix.shape[1]
    model.zero_grad()
    _, _, (snap,) = model.forward_with_snapshots(prefix, [p])
    out = model(continuation.repeat(2, 1), cache=snap.repeat_interleave(2), use_cache=True)
    (out.logits.float().logsumexp(-1).sum() / 2).backward()
    split = {k: v.grad.clone() for k, v in params.items()}
    model.zero_grad()
    model(torch.cat([prefix, continuation], 1)).logits[:, p:].float().logsumexp(-1).sum().backward()
    assert split[reached].abs().sum() > 0
    for k, v in params.items():
        torch.testing.assert_close(split[k], v.grad, atol=1e-5, rtol=1e-4, msg=k)
