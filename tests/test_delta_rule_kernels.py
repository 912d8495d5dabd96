"""The delta-rule kernels agree with each other (the token recurrence is the reference) and with fla's
pure-PyTorch references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from refine_bench.kernels import causal_depthwise_conv1d, delta_rule, delta_rule_chunked, delta_rule_recurrent


def make_inputs(B=2, T=37, H=3, K=16, V=8, seed=0, with_state=True):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=g)
    k = F.normalize(torch.randn(B, T, H, K, generator=g), dim=-1)
    v = torch.randn(B, T, H, V, generator=g)
    beta = torch.rand(B, T, H, generator=g)
    h0 = torch.randn(B, H, K, V, generator=g) if with_state else None
    return q, k, v, beta, h0


def grads_of(kernel, inputs, autocast=False, **kw):
    leaves = [x.detach().clone().requires_grad_(True) if x is not None else None for x in inputs]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):  # backward runs outside, as in training
        o, s = kernel(*leaves, **kw)
    g = torch.Generator().manual_seed(1)
    loss = (o * torch.randn(o.shape, generator=g)).sum() + (s * torch.randn(s.shape, generator=g)).sum()
    loss.backward()
    return o.detach(), s.detach(), [x.grad for x in leaves if x is not None]


@pytest.mark.parametrize("T,chunk", [(1, 16), (16, 16), (37, 16), (100, 32)])
@pytest.mark.parametrize("with_state", [False, True])
def test_chunked_equals_recurrent_outputs_states_and_grads(T, chunk, with_state):
    inputs = make_inputs(T=T, with_state=with_state)
    o_r, s_r, g_r = grads_of(delta_rule_recurrent, inputs)
    o_c, s_c, g_c = grads_of(delta_rule_chunked, inputs, chunk_size=chunk)
    torch.testing.assert_close(o_c, o_r, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s_c, s_r, atol=1e-5, rtol=1e-5)
    for a, b in zip(g_c, g_r, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_matches_fla_reference_recurrence():
    naive = pytest.importorskip("fla.ops.delta_rule.naive")
    q, k, v, beta, h0 = make_inputs(T=45)
    o_ref, s_ref = naive.delta_rule_recurrence(*(x.transpose(1, 2) for x in (q, k, v, beta)), initial_state=h0)
    o, s = delta_rule_chunked(q, k, v, beta, h0, chunk_size=16)
    torch.testing.assert_close(o, o_ref.transpose(1, 2), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s, s_ref, atol=1e-5, rtol=1e-5)


def test_matches_fla_reference_chunk_gated_with_zero_gate():
    naive = pytest.importorskip("fla.ops.gated_delta_rule.naive")
    q, k, v, beta, h0 = make_inputs(T=64)
    g = torch.zeros(beta.shape)
    o_ref, s_ref = naive.naive_chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=16, initial_state=h0,
                                                      output_final_state=True)
    o, s = delta_rule_chunked(q, k, v, beta, h0, chunk_size=32)
    torch.testing.assert_close(o, o_ref.to(o.dtype), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s, s_ref.float(), atol=1e-5, rtol=1e-5)


def test_state_carry_across_split_equals_one_pass():
    q, k, v, beta, h0 = make_inputs(T=50)
    o_full, s_full = delta_rule_chunked(q, k, v, beta, h0, chunk_size=16)
    t = 21
    o1, s1 = delta_rule_chunked(q[:, :t], k[:, :t], v[:, :t], beta[:, :t], h0, chunk_size=16)
    o2, s2 = delta_rule_recurrent(q[:, t:], k[:, t:], v[:, t:], beta[:, t:], s1)
    torch.testing.assert_close(torch.cat([o1, o2], 1), o_full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s2, s_full, atol=1e-5, rtol=1e-5)


def test_hand_computed_single_step():
    # K = V = 1: S1 = S0 + beta * k * (v - S0 * k); o = S1 * q * scale (scale = 1 for K = 1)
    q, k, v = (torch.tensor(x).view(1, 1, 1, 1) for x in (2.0, 1.0, 3.0))
    beta = torch.tensor(0.5).view(1, 1, 1)
    s0 = torch.tensor(1.0).view(1, 1, 1, 1)
    o, s = delta_rule_chunked(q, k, v, beta, s0, chunk_size=4)
    assert s.item() == pytest.approx(1.0 + 0.5 * (3.0 - 1.0))
    assert o.item() == pytest.approx(2.0 * 2.0)


def test_bf16_close_to_fp32():
    q, k, v, beta, h0 = make_inputs(T=64)
    o32, s32 = delta_rule(q, k, v, beta, h0)
    o16, s16 = delta_rule(*(x.bfloat16() for x in (q, k, v, beta)), h0.bfloat16())
    assert o16.dtype == torch.bfloat16 and s16.dtype == torch.float32
    rel = (o16.float() - o32).norm() / o32.norm()
    assert rel < 0.02


@pytest.mark.parametrize(
    "bad,match",
    [
        (lambda q, k, v, b, h: (q, k[:, :, :, :-1], v, b, h), r"k must have shape \[B, T, H, K\]"),
        (lambda q, k, v, b, h: (q, k, v[:, :-1], b, h), r"v must have shape \[B, T, H, V\]"),
        (lambda q, k, v, b, h: (q, k, v, b[..., None], h), r"beta must have shape \[B, T, H\]"),
        (lambda q, k, v, b, h: (q, k, v, b, h[:, :, :-1]), r"initial_state must have shape \[B, H, K, V\]"),
        (lambda q, k, v, b, h: (q.long(), k, v, b, h), r"q must be float32, bfloat16 or float16"),
    ],
)
def test_bad_shapes_name_the_argument(bad, match):
    with pytest.raises(ValueError, match=match):
        delta_rule(*bad(*make_inputs(T=5)))


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="kernel backend"):
        delta_rule(*make_inputs(T=3), backend="cuda-magic")


@pytest.mark.parametrize("mode", ["chunk", "recurrent"])
def test_float32_arithmetic_under_bf16_autocast(mode):
    """Under autocast the kernels still compute in float32: outputs, state and gradients equal the plain run."""
    inputs = make_inputs(T=40)
    o, s, g = grads_of(delta_rule, inputs, mode=mode, chunk_size=16)
    o_ac, s_ac, g_ac = grads_of(delta_rule, inputs, autocast=True, mode=mode, chunk_size=16)
    assert o_ac.dtype == torch.float32 and s_ac.dtype == torch.float32
    torch.testing.assert_close(o_ac, o, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(s_ac, s, atol=1e-6, rtol=1e-6)
    for a, b in zip(g_ac, g, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_zero_length_sequence_returns_the_initial_state():
    q, k, v, beta, h0 = make_inputs(T=0)
    for kernel in (delta_rule_chunked, delta_rule_recurrent):
        o, s = kernel(q, k, v, beta, h0)
        assert o.shape == (2, 0, 3, 8)
        torch.testing.assert_close(s, h0)


@pytest.mark.parametrize("T", [1, 5, 40])
def test_short_conv_matches_padded_conv1d_and_carries_state(T):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, T, 6, generator=g)
    w = torch.randn(6, 1, 4, generator=g)
    ref = F.silu(F.conv1d(x.transpose(1, 2), w, padding=3, groups=6)[..., :T]).transpose(1, 2)
    y, state = causal_depthwise_conv1d(x, w)
    torch.testing.assert_close(y, ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(state, F.pad(x.transpose(1, 2), (3, 0))[..., -3:])
    if T > 1:
        t = T // 2
        y1, s1 = causal_depthwise_conv1d(x[:, :t], w)
        y2, s2 = causal_depthwise_conv1d(x[:, t:], w, s1)
        torch.testing.assert_close(torch.cat([y1, y2], 1), ref, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(s2, state)


@pytest.mark.parametrize("T,H,D,chunk", [(128, 2, 16, 16), (128, 2, 16, 8), (96, 3, 8, 32)])
def test_chunked_flop_count_matches_the_hand_count(T, H, D, chunk):
    """`bench kernels` divides by the chunked kernel's executed flops. By hand, per chunk of C tokens and head
    (K = V = D), the forward's multiply-adds are K_b K^T, T^-1 K_b, T^-1 V_b, Q K^T, (Q K^T) u: 5 C^2 D, and
    W S, the state update, Q S: 3 C D^2; backward, two products per forward product plus the inverse's two
    C^3 ones. The effective (recurrent-form) count is 18 D^2 per token and head."""
    from refine_bench.bench.kernels_bench import delta_rule_flops

    effective, executed = delta_rule_flops(T=T, H=H, D=D, chunk_size=chunk)
    forward_macs = 5 * chunk**2 * D + 3 * chunk * D**2
    per_chunk_and_head = 2 * (3 * forward_macs + 2 * chunk**3)
    assert executed == per_chunk_and_head * (T // chunk) * H
    assert effective == 18 * D * D * T * H
