"""LaCT fast-weight update and sliding-window attention kernels against their naive references (fp32, CPU)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from refine_bench.kernels import (
    apply_rope,
    init_lact_state,
    lact_swiglu,
    lact_swiglu_naive,
    make_lact_plan,
    newton_schulz5_naive,
    rope_cos_sin,
    window_attention,
    window_attention_naive,
    zeropower_newton_schulz5,
)

H, D, DH = 2, 8, 12


def _inputs(B: int, T: int, seed: int = 0, momentum: bool = True):
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(B, T, H, D, generator=g), dim=-1)
    k = F.normalize(torch.randn(B, T, H, D, generator=g), dim=-1)
    v = torch.randn(B, T, H, D, generator=g)
    lr = F.softplus(torch.randn(B, T, H, 3, generator=g) - 1.0)
    mom = torch.sigmoid(torch.randn(B, T, H, generator=g)) if momentum else None
    return q, k, v, lr, mom


def _weights(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    w0 = torch.randn(H, DH, D, generator=g) / math.sqrt(D)
    w1 = torch.randn(H, D, DH, generator=g) / math.sqrt(DH)
    w2 = torch.randn(H, DH, D, generator=g) / math.sqrt(D)
    return w0, w1, w2


def _f(w0, w1, w2, x):  # x [L, d]
    return (F.silu(x @ w0.T) * (x @ w2.T)) @ w1.T


@pytest.mark.parametrize("use_momentum,use_muon,muon_dtype",
                         [(False, False, None), (True, False, None), (True, True, None), (False, True, torch.bfloat16)])
def test_update_matches_plain_loop(use_momentum, use_muon, muon_dtype):
    C, T, B = 5, 17, 2
    w = _weights()
    q, k, v, lr, mom = _inputs(B, T, momentum=use_momentum)
    state = init_lact_state(*w, batch_size=B, chunk_size=C, use_momentum=use_momentum)
    o, new_state = lact_swiglu(q, k, v, lr, state, mom, use_muon=use_muon, muon_dtype=muon_dtype)
    ref_o, ref_w = lact_swiglu_naive(*w, q, k, v, lr, mom, chunk_size=C, use_muon=use_muon, muon_dtype=muon_dtype)
    torch.testing.assert_close(o, ref_o, atol=1e-5, rtol=1e-5)
    for name, ref in zip(("w0", "w1", "w2"), ref_w, strict=True):
        torch.testing.assert_close(new_state[name], ref, atol=1e-5, rtol=1e-5)
    # 17 tokens, chunk 5: 3 completed chunks, 2 tokens pending
    assert new_state["seen"].tolist() == [T, T]
    torch.testing.assert_close(new_state["k"][:, :, :2], k[:, 15:].transpose(1, 2))
    assert new_state["k"][:, :, 2:].abs().sum() == 0


def test_short_sequences_leave_weights_unchanged_and_long_ones_update():
    C = 8
    w = _weights()
    state = init_lact_state(*w, batch_size=1, chunk_size=C, use_momentum=True)
    q, k, v, lr, mom = _inputs(1, C - 1)
    o, short = lact_swiglu(q, k, v, lr, state, mom)
    for name, w_i in zip(("w0", "w1", "w2"), w, strict=True):
        assert torch.equal(short[name][0], w_i)
    # outputs are the initial fast weights applied to the queries
    torch.testing.assert_close(o[0, :, 0], _f(w[0][0], w[1][0], w[2][0], q[0, :, 0]))
    q, k, v, lr, mom = _inputs(1, C + 1)
    _, long = lact_swiglu(q, k, v, lr, state, mom)
    for name, w_i in zip(("w0", "w1", "w2"), w, strict=True):
        assert (long[name][0] - w_i).abs().max() > 1e-4
        # rows keep their initial norms
        torch.testing.assert_close(long[name][0].norm(dim=-1), w_i.norm(dim=-1), atol=1e-4, rtol=1e-4)


def _assert_states_close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-5, msg=key)


@pytest.mark.parametrize("use_muon", [False, True])
@pytest.mark.parametrize("splits", [[1], [3], [5], [7], [10], [12, 13], [2, 9, 16]])
def test_state_carry_across_splits_equals_one_call(splits, use_muon):
    C, T, B = 5, 19, 2
    w = _weights()
    q, k, v, lr, mom = _inputs(B, T)
    state = init_lact_state(*w, batch_size=B, chunk_size=C, use_momentum=True)
    o_full, s_full = lact_swiglu(q, k, v, lr, state, mom, use_muon=use_muon)
    cuts = [0, *splits, T]
    outs, s = [], state
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        o, s = lact_swiglu(q[:, a:b], k[:, a:b], v[:, a:b], lr[:, a:b], s, mom[:, a:b], use_muon=use_muon)
        outs.append(o)
    torch.testing.assert_close(torch.cat(outs, dim=1), o_full, atol=1e-5, rtol=1e-5)
    _assert_states_close(s, s_full)


def test_token_by_token_equals_one_call():
    C, T = 4, 11
    w = _weights()
    q, k, v, lr, mom = _inputs(1, T)
    state = init_lact_state(*w, batch_size=1, chunk_size=C, use_momentum=True)
    o_full, s_full = lact_swiglu(q, k, v, lr, state, mom)
    s, outs = state, []
    for t in range(T):
        o, s = lact_swiglu(q[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1], lr[:, t:t + 1], s, mom[:, t:t + 1])
        outs.append(o)
    torch.testing.assert_close(torch.cat(outs, dim=1), o_full, atol=1e-5, rtol=1e-5)
    _assert_states_close(s, s_full)


def test_left_padding_and_rows_at_different_offsets():
    """Row 0 left-padded by 3, row 1 not; then both continue from states at different chunk offsets.
    Each row must equal the same row processed alone without padding."""
    C, T, pad = 4, 10, 3
    w = _weights()
    q, k, v, lr, mom = _inputs(2, T)
    mask = torch.ones(2, T, dtype=torch.long)
    mask[0, :pad] = 0
    for x in (q, k, v, lr, mom):  # garbage at the pads must not matter
        x[0, :pad] = 100.0
    state = init_lact_state(*w, batch_size=2, chunk_size=C, use_momentum=True)
    plan = make_lact_plan(state["seen"], mask, T, C)
    assert not plan.uniform and plan.completed.tolist() == [1, 2]
    o, s = lact_swiglu(q, k, v, lr, state, mom, mask, use_muon=True)
    q2, k2, v2, lr2, mom2 = _inputs(2, 6, seed=5)
    o_next, s_next = lact_swiglu(q2, k2, v2, lr2, s, mom2, use_muon=True)
    assert s_next["seen"].tolist() == [13, 16]
    for row, start in ((0, pad), (1, 0)):
        single = init_lact_state(*w, batch_size=1, chunk_size=C, use_momentum=True)
        sl = slice(row, row + 1)
        o_r, s_r = lact_swiglu(q[sl, start:], k[sl, start:], v[sl, start:], lr[sl, start:], single,
                               mom[sl, start:], use_muon=True)
        torch.testing.assert_close(o[sl, start:], o_r, atol=1e-5, rtol=1e-5)
        o_r2, s_r2 = lact_swiglu(q2[sl], k2[sl], v2[sl], lr2[sl], s_r, mom2[sl], use_muon=True)
        torch.testing.assert_close(o_next[sl], o_r2, atol=1e-5, rtol=1e-5)
        _assert_states_close({key: val[sl] for key, val in s_next.items()}, s_r2)
    assert o[0, :pad].abs().sum() == 0


def test_update_is_differentiable_like_the_plain_loop():
    """Gradients of the kernel's hand-written chunk step agree with autograd through the naive loop, for every
    input including the initial fast weights (their row norms included)."""
    C, T = 4, 10
    w = _weights()
    q, k, v, lr, mom = _inputs(1, T)
    grads = []
    for run in ("kernel", "naive"):
        leaves = [x.clone().requires_grad_(True) for x in (*w, q, k, v, lr, mom)]
        w0, w1, w2, q1, k1, v1, lr1, mom1 = leaves
        if run == "kernel":
            state = init_lact_state(w0, w1, w2, batch_size=1, chunk_size=C, use_momentum=True)
            o, _ = lact_swiglu(q1, k1, v1, lr1, state, mom1)
        else:
            o, _ = lact_swiglu_naive(w0, w1, w2, q1, k1, v1, lr1, mom1, chunk_size=C)
        grads.append(torch.autograd.grad(o.square().sum(), leaves))
    names = ("w0", "w1", "w2", "q", "k", "v", "lr", "momentum")
    for name, a, b in zip(names, *grads, strict=True):
        assert b.abs().sum() > 0, name
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)


def test_newton_schulz_orthogonalises():
    g = torch.randn(3, 12, 8, generator=torch.Generator().manual_seed(0))
    x = zeropower_newton_schulz5(g)
    assert x.shape == g.shape
    sv = torch.linalg.svdvals(x)
    assert sv.min() > 0.5 and sv.max() < 1.3  # the quintic iteration maps singular values near 1
    torch.testing.assert_close(x[1], newton_schulz5_naive(g[1]), atol=1e-5, rtol=1e-5)


def test_bad_chunk_size_and_shapes_raise():
    w = _weights()
    with pytest.raises(ValueError, match="chunk_size"):
        init_lact_state(*w, batch_size=1, chunk_size=0, use_momentum=False)
    state = init_lact_state(*w, batch_size=1, chunk_size=4, use_momentum=False)
    q, k, v, lr, _ = _inputs(1, 3, momentum=False)
    with pytest.raises(ValueError, match="lr"):
        lact_swiglu(q, k, v, lr[..., :2], state)
    with pytest.raises(ValueError, match="momentum"):
        lact_swiglu(q, k, v, lr, state, torch.rand(1, 3, H))


# ----------------------------------------------------------------------------------------------------------
# attention


def test_rope_hand_computed_and_relative():
    x = torch.tensor([[[[1.0, 0.0]]]])  # [B, T, H, D=2]: inv_freq = 1, angle = position
    cos, sin = rope_cos_sin(torch.tensor([[3]]), 2, 10000.0)
    torch.testing.assert_close(apply_rope(x, cos, sin)[0, 0, 0], torch.tensor([math.cos(3.0), math.sin(3.0)]))
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, 16, generator=g), torch.randn(1, 1, 1, 16, generator=g)

    def dot(pq, pk):
        cq, sq = rope_cos_sin(torch.tensor([[pq]]), 16, 1e6)
        ck, sk = rope_cos_sin(torch.tensor([[pk]]), 16, 1e6)
        return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum()

    torch.testing.assert_close(dot(7, 2), dot(105, 100), atol=1e-4, rtol=1e-4)


def test_window_attention_blocked_padded_and_cached():
    B, T, Hh, Dd, window = 2, 23, 2, 4, 5
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, T, Hh, Dd, generator=g) for _ in range(3))
    pos = torch.arange(T).expand(B, T)
    ref = window_attention_naive(q, k, v, window)
    o, _ = window_attention(q, k, v, pos, window, query_block=4)
    torch.testing.assert_close(o, ref, atol=1e-5, rtol=1e-5)
    # short sequence: the is_causal fast path
    o_short, _ = window_attention(q[:, :4], k[:, :4], v[:, :4], pos[:, :4], window)
    torch.testing.assert_close(o_short, ref[:, :4], atol=1e-5, rtol=1e-5)
    # left padding by 3 on row 0: its real tokens equal the unpadded row's first T-3 outputs
    pad = 3
    pos_p = torch.stack([torch.cat([torch.full((pad,), -1), torch.arange(T - pad)]), torch.arange(T)])
    qp, kp, vp = (torch.cat([torch.full((1, pad, Hh, Dd), 50.0), x[:1, : T - pad]], dim=1) for x in (q, k, v))
    qp, kp, vp = (torch.cat([a, b[1:]]) for a, b in ((qp, q), (kp, k), (vp, v)))
    o_p, cache = window_attention(qp, kp, vp, pos_p, window, return_cache=True, num_pads=pad, query_block=4)
    torch.testing.assert_close(o_p[0, pad:], ref[0, : T - pad], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(o_p[1], ref[1], atol=1e-5, rtol=1e-5)
    assert cache["pos"].tolist() == [[16, 17, 18, 19], [19, 20, 21, 22]]
    # decoding with the cache: prefix of 9 tokens, then one token at a time
    t0 = 9
    _, cache = window_attention(q[:, :t0], k[:, :t0], v[:, :t0], pos[:, :t0], window, return_cache=True)
    for t in range(t0, T):
        o_t, cache = window_attention(q[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1], pos[:, t:t + 1], window,
                                      cache=cache, return_cache=True)
        torch.testing.assert_close(o_t[:, 0], ref[:, t], atol=1e-5, rtol=1e-5)
    # a cache shorter than the window (2 tokens seen) is left-filled with empty slots
    _, small = window_attention(q[:, :2], k[:, :2], v[:, :2], pos[:, :2], window, return_cache=True)
    assert small["pos"].tolist() == [[-1, -1, 0, 1]] * 2
    with pytest.raises(ValueError, match="window"):
        window_attention(q, k, v, pos, 0)


@pytest.mark.parametrize("window", [7, 64, 100])
def test_window_attention_default_blocks_match_naive(window):
    # 300 queries in blocks of max(64, window): block edges fall inside windows, and the last block is partial
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 300, 2, 8, generator=g) for _ in range(3))
    o, _ = window_attention(q, k, v, torch.arange(300)[None], window)
    torch.testing.assert_close(o, window_attention_naive(q, k, v, window), atol=1e-5, rtol=1e-5)
