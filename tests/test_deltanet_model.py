"""DeltaNet model: state carry, cached generation, snapshots and gradients through the prefix state."""

from __future__ import annotations

import pytest
import torch

from refine_bench.models.cache import FastWeightCache
from refine_bench.models.deltanet import DeltaNetConfig
from tests.conftest import small_deltanet_config


def ids(B=2, T=30, vocab=97, seed=0):
    return torch.randint(3, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("t", [1, 7, 8, 13, 29])
def test_forward_in_two_pieces_equals_one(small_deltanet, t):
    x = ids()
    with torch.no_grad():
        full = small_deltanet(x).logits
        a = small_deltanet(x[:, :t], use_cache=True)
        b = small_deltanet(x[:, t:], cache=a.cache, use_cache=True)
    torch.testing.assert_close(torch.cat([a.logits, b.logits], 1), full, atol=1e-5, rtol=1e-5)
    assert b.cache.get_seq_length() == x.shape[1]


def greedy_by_full_forwards(model, x, n):
    seq = x
    with torch.no_grad():
        for _ in range(n):
            nxt = model(seq).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
    return seq


def test_cached_generate_equals_argmax_of_full_forwards_and_feeds_one_token_per_step(small_deltanet):
    x = ids(T=20)
    seen_lengths = []
    hook = small_deltanet.model.register_forward_pre_hook(
        lambda mod, args, kwargs: seen_lengths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    try:
        out = small_deltanet.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=12, do_sample=False)
    finally:
        hook.remove()
    assert seen_lengths[0] == 20 and set(seen_lengths[1:]) == {1}
    assert torch.equal(out, greedy_by_full_forwards(small_deltanet, x, 12))


def test_left_padded_batch_generates_like_each_row_alone(small_deltanet):
    short, long = ids(B=1, T=9, seed=1), ids(B=1, T=15, seed=2)
    pad = small_deltanet.config.pad_token_id
    batch = torch.cat([torch.cat([torch.full((1, 6), pad), short], 1), long], 0)
    mask = torch.cat([torch.cat([torch.zeros(1, 6), torch.ones(1, 9)], 1), torch.ones(1, 15)], 0).long()
    out = small_deltanet.generate(batch, attention_mask=mask, max_new_tokens=10, do_sample=False)
    assert torch.equal(out[0, 6:], greedy_by_full_forwards(small_deltanet, short, 10)[0])
    assert torch.equal(out[1], greedy_by_full_forwards(small_deltanet, long, 10)[0])


def test_snapshots_equal_prefix_states_and_full_logits(small_deltanet):
    x = ids(T=40)
    positions = [5, 17, 33]
    with torch.no_grad():
        logits, hidden, snaps = small_deltanet.forward_with_snapshots(x, positions)
        full = small_deltanet(x, output_hidden_states=True)
    torch.testing.assert_close(logits, full.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hidden, full.hidden_states[-1], atol=1e-5, rtol=1e-5)
    for p, snap in zip(positions, snaps, strict=True):
        with torch.no_grad():
            ref = small_deltanet(x[:, :p], use_cache=True).cache
        assert snap.get_seq_length() == p
        for layer, ref_layer in zip(snap.layers, ref.layers, strict=True):
            torch.testing.assert_close(layer["recurrent_state"], ref_layer["recurrent_state"], atol=1e-5, rtol=1e-5)


def test_branch_gradient_flows_into_prefix_and_matches_unsplit_computation(small_deltanet):
    """A loss on tokens decoded from a branched snapshot gives the same gradients as one pass over
    prefix + continuation: the branch keeps the autograd graph to the prefix's fast-weight state."""
    x = ids(B=1, T=24)
    cont = ids(B=1, T=5, seed=3)
    p = 16
    params = dict(small_deltanet.named_parameters())

    small_deltanet.zero_grad()
    _, _, (snap,) = small_deltanet.forward_with_snapshots(x[:, :p], [p])
    branches = snap.repeat_interleave(2)
    out = small_deltanet(cont.repeat(2, 1), cache=branches, use_cache=True)
    (out.logits.float().logsumexp(-1).sum() / 2).backward()
    split_grads = {k: v.grad.clone() for k, v in params.items()}

    small_deltanet.zero_grad()
    out = small_deltanet(torch.cat([x[:, :p], cont], 1))
    out.logits[:, p:].float().logsumexp(-1).sum().backward()
    assert split_grads["model.layers.0.attn.k_proj.weight"].abs().sum() > 0
    for k, v in params.items():
        torch.testing.assert_close(split_grads[k], v.grad, atol=1e-5, rtol=1e-4, msg=k)


def test_detached_snapshot_blocks_the_gradient(small_deltanet):
    x = ids(B=1, T=12)
    _, _, (snap,) = small_deltanet.forward_with_snapshots(x, [12], detach=True)
    out = small_deltanet(ids(B=1, T=3), cache=snap, use_cache=True)
    out.logits.sum().backward()
    # with the prefix detached, b_proj only sees the 3 continuation tokens: compare with a fresh pass
    g_detached = small_deltanet.model.layers[0].attn.b_proj.weight.grad.clone()
    small_deltanet.zero_grad()
    with torch.no_grad():
        state = small_deltanet(x, use_cache=True).cache
    small_deltanet(ids(B=1, T=3), cache=state, use_cache=True).logits.sum().backward()
    torch.testing.assert_close(g_detached, small_deltanet.model.layers[0].attn.b_proj.weight.grad)


def test_cache_batch_operations():
    a = FastWeightCache(1, seen_tokens=4)
    a.update(0, {"s": torch.arange(3.0)[:, None], "t": (torch.ones(3, 2),)})
    rep = a.repeat_interleave(2)
    assert rep.layers[0]["s"].squeeze(1).tolist() == [0, 0, 1, 1, 2, 2]
    sel = rep.index_select([5, 0])
    assert sel.layers[0]["s"].squeeze(1).tolist() == [2, 0] and sel.seen_tokens == 4
    assert sel.layers[0]["t"][0].shape == (2, 2)


def test_unsupported_config_option_is_named():
    with pytest.raises(ValueError, match="use_gate"):
        DeltaNetConfig(use_gate=True)
    with pytest.raises(ValueError, match="divisible by num_heads"):
        small_deltanet_config(num_heads=3)
