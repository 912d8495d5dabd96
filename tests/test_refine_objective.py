"""REFINE objective: hand-computed pieces, the paper-code conventions, and rollouts equal to an independent
re-forward-everything reference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from refine_bench.errors import UserInputError
from refine_bench.train.config import RefineConfig
from refine_bench.train.refine import (
    clipped_surrogate,
    collect_rollouts,
    combined_loss,
    group_advantages,
    next_token_entropy,
    ntp_sum,
    rollout_rewards,
    select_positions,
    sequence_terms,
    smooth_entropy,
)
from refine_bench.train.rollout_engine import sample_continuations


def test_entropy_of_uniform_and_peaked_distributions():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [100.0, 0.0, 0.0, 0.0]])
    h = next_token_entropy(logits)
    assert h[0].item() == pytest.approx(math.log(4))
    assert h[1].item() == pytest.approx(0.0, abs=1e-6)


def test_smoothing_uses_odd_window_with_zero_padding():
    h = torch.tensor([3.0, 0.0, 0.0, 6.0, 0.0])
    # k = 2 is even -> window 3, padding 1, zeros counted at the edges
    torch.testing.assert_close(smooth_entropy(h, 2), torch.tensor([1.0, 1.0, 2.0, 2.0, 2.0]))
    torch.testing.assert_close(smooth_entropy(h, 3), smooth_entropy(h, 2))


def test_argmax_selects_on_raw_entropy_and_clamps():
    S = 100
    h = torch.zeros(S)
    h[[10, 30, 60, 95]] = 1.0
    h[70:75] = 0.8  # a broad bump that wins after smoothing but not raw
    cfg = RefineConfig(num_chunks=4, rollout_len=5, selection="argmax")
    # chunks [0,25) [25,50) [50,75) [75,100): raw argmax t = 10, 30, 60, 95 -> s = t + 1, clamped to [20, 80]
    assert select_positions(h, cfg, None) == [20, 31, 61, 80]
    smoothed = select_positions(h, RefineConfig(num_chunks=4, rollout_len=5, selection="argmax", smooth_argmax=True),
                                None)
    # smoothed (window 5): a lone peak spreads to 0.2 over t-2..t+2 (first maximum wins: 28 -> s 29); the bump
    # is 0.8 at t = 72 (s 73) and still 0.32 at t = 75 in the last chunk (s 76)
    assert smoothed == [20, 29, 73, 76]
    argmin = select_positions(-h, RefineConfig(num_chunks=4, rollout_len=5, selection="argmin"), None)
    assert argmin == [20, 31, 61, 80]


def test_entropy_sampling_follows_the_smoothed_softmax():
    h = torch.zeros(60)
    h[25] = 250.0  # smoothed over a window of 5: 50 at t = 23..27, so the draw stays in that window
    cfg = RefineConfig(num_chunks=1, rollout_len=5, margin=20)
    g = torch.Generator().manual_seed(0)
    drawn = {select_positions(h, cfg, g)[0] for _ in range(40)}
    assert drawn <= {24, 25, 26, 27, 28} and len(drawn) > 1
    with pytest.raises(ValueError, match="too short"):
        select_positions(torch.zeros(30), RefineConfig(num_chunks=2), None)


def test_rewards_hand_computed():
    h_gt = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    h_pred = torch.tensor([[[2.0, 0.0], [1.0, 0.0]]])  # cos = 1 and 0 -> mean 0.5
    tokens, target = torch.tensor([[4, 7]]), torch.tensor([[4, 8]])
    assert rollout_rewards("cosine", h_pred, h_gt, tokens, target).item() == pytest.approx(0.5)
    assert rollout_rewards("binary", h_pred, h_gt, tokens, target).item() == pytest.approx(0.5)
    assert rollout_rewards("hybrid", h_pred, h_gt, tokens, target).item() == pytest.approx(1.0)


def test_group_advantages_hand_computed_and_groups_of_one():
    rewards = torch.tensor([1.0, 3.0, 5.0, 5.0, 0.7])
    adv = group_advantages(rewards, torch.tensor([0, 0, 1, 1, 2]))
    # group 0: mean 2, std sqrt(2); group 1: std 0 -> 0; group 2 alone: the raw reward (mean 0, std 1)
    expected = torch.tensor([-1 / (2**0.5 + 1e-6), 1 / (2**0.5 + 1e-6), 0.0, 0.0, 0.7])
    torch.testing.assert_close(adv, expected)
    zero = group_advantages(rewards, torch.tensor([0, 0, 1, 1, 2]), single="zero")
    assert zero[4].item() == 0.0


def test_clipped_surrogate_dual_clip_and_log_ratio_clamp_hand_computed():
    logp = torch.log(torch.tensor([[1.5], [0.5], [5.0], [1.0]]))
    old = torch.zeros(4, 1)
    adv = torch.tensor([1.0, 1.0, -1.0, -2.0])
    loss = clipped_surrogate(logp, old, adv, RefineConfig())
    # ratio 1.5, A=1: min(1.5, 1.2) -> 1.2; ratio 0.5, A=1: min(0.5, 0.8) -> 0.5;
    # ratio 5, A=-1: max(5, 1.2) = 5 -> dual clip caps at 3; ratio 1, A=-2: 2
    torch.testing.assert_close(loss[:, 0], torch.tensor([-1.2, -0.5, 3.0, 2.0]))
    # a log-ratio of 50 is clamped to 20 before exp: finite where exp(50) * A would overflow float16 ranges
    huge = clipped_surrogate(torch.tensor([[-50.0]]), torch.zeros(1, 1), torch.tensor([1.0]), RefineConfig())
    assert huge.item() == pytest.approx(-math.exp(-20))
    unclamped = clipped_surrogate(torch.tensor([[-50.0]]), torch.zeros(1, 1), torch.tensor([1.0]),
                                  RefineConfig(log_ratio_clamp=None))
    assert unclamped.item() == pytest.approx(-math.exp(-50))


def test_ntp_masks_left_padding_and_combined_loss():
    logits = torch.randn(1, 5, 11)
    ids = torch.tensor([[2, 2, 5, 6, 7]])
    mask = torch.tensor([[0, 0, 1, 1, 1]])
    total, count = ntp_sum(logits, ids, mask=mask)
    ref = F.cross_entropy(logits[0, 2:4], ids[0, 3:5], reduction="sum")
    assert count == 2 and total.item() == pytest.approx(ref.item(), rel=1e-6)
    cfg = RefineConfig(lambda_sft=1.0, lambda_rl=0.2)
    assert combined_loss(torch.tensor(6.0), 3, torch.tensor(4.0), 8, cfg).item() == pytest.approx(2.0 + 0.1)
    assert combined_loss(torch.tensor(6.0), 3, None, 8, RefineConfig(lambda_sft=0.5)).item() == pytest.approx(1.0)


def test_bad_refine_settings_are_named():
    for kwargs, message in [({"rollout_len": 0}, "rollout_len must be"), ({"lambda_rl": -1.0}, "lambda_rl"),
                            ({"sample_temperature": 0.0}, "sampling temperature"), ({"reward": "bleu"}, "reward"),
                            ({"selection": "topk"}, "selection"), ({"rollout_mode": "cache"}, "rollout mode"),
                            ({"rollout_len": 25}, "must not exceed the margin")]:
        with pytest.raises(UserInputError, match=message):
            RefineConfig(**kwargs)


def test_rollouts_never_sample_eos_unless_allowed(small_deltanet):
    eos = small_deltanet.config.eos_token_id
    state = small_deltanet(torch.tensor([[5, 6, 7]]), use_cache=True).cache
    logits = torch.full((1, 97), -30.0)
    logits[0, eos] = 30.0  # EOS has essentially all the mass
    cfg = RefineConfig(num_chunks=1, rollout_len=3, num_rollouts=4, margin=8)
    tokens, old, _ = sample_continuations(small_deltanet, state, logits, cfg, torch.Generator().manual_seed(0))
    assert not (tokens[:, 0] == eos).any()
    assert old[0, 0].item() < -50  # log-probs are the policy's own (EOS included), not the masked sampler's
    allowed = RefineConfig(num_chunks=1, rollout_len=3, num_rollouts=4, margin=8, rollout_eos=True)
    tokens, _, _ = sample_continuations(small_deltanet, state, logits, allowed, torch.Generator().manual_seed(0))
    assert (tokens[:, 0] == eos).all()


def reference_rollouts(model, ids, cfg, generator):
    """An independent computation: every prefix re-forwarded from scratch without a cache, token by token."""
    with torch.no_grad():
        full = model(ids, output_hidden_states=True)
    starts = select_positions(next_token_entropy(full.logits[0]), cfg, generator)
    n, k = cfg.num_rollouts, cfg.rollout_len
    rows = [ids[0, :s] for s in starts for _ in range(n)]
    tokens = []
    eos = model.config.eos_token_id
    with torch.no_grad():
        for _ in range(k):
            last = torch.stack([model(r[None]).logits[0, -1].float() for r in rows])
            probs = torch.softmax(last / cfg.sample_temperature, -1)
            probs[:, eos] = 0.0
            tok = torch.multinomial(probs, 1, generator=generator)
            tokens.append(tok)
            rows = [torch.cat([r, t]) for r, t in zip(rows, tok, strict=True)]
    tokens = torch.cat(tokens, 1)
    logps, h_pred = [], []
    for r in rows:
        out = model(r[None], output_hidden_states=True)
        logps.append(torch.log_softmax(out.logits[0, -k - 1 : -1].float(), -1).gather(-1, r[-k:, None])[:, 0])
        h_pred.append(out.hidden_states[-1][0, -k:])
    h_gt = torch.stack([full.hidden_states[-1][0, s : s + k] for s in starts]).repeat_interleave(n, 0)
    target = torch.stack([ids[0, s : s + k] for s in starts]).repeat_interleave(n, 0)
    rewards = rollout_rewards(cfg.reward, torch.stack(h_pred).detach(), h_gt, tokens, target)
    return starts, tokens, torch.stack(logps), rewards


@pytest.mark.parametrize("n,reward", [(1, "cosine"), (3, "hybrid")])
def test_branched_rollouts_equal_an_independent_reforward(small_deltanet, n, reward):
    cfg = RefineConfig(num_chunks=3, rollout_len=4, num_rollouts=n, reward=reward, margin=8)
    ids = torch.randint(3, 97, (1, 70), generator=torch.Generator().manual_seed(5))
    roll = collect_rollouts(small_deltanet, ids, cfg, torch.Generator().manual_seed(11))
    starts, tokens, logp, rewards = reference_rollouts(small_deltanet, ids, cfg, torch.Generator().manual_seed(11))
    assert roll.starts == starts
    assert torch.equal(roll.tokens, tokens)
    torch.testing.assert_close(roll.old_logp, logp.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(roll.rewards, rewards, atol=1e-5, rtol=1e-5)
    terms = sequence_terms(small_deltanet, ids, cfg, roll)
    torch.testing.assert_close(roll.logp, logp, atol=1e-5, rtol=1e-5)
    assert terms.rl_tokens == 3 * n * 4


def test_grpo_gradient_reaches_the_prefix_state(small_deltanet):
    """With lambda_SFT = 0 the loss is GRPO alone; it still moves k_proj of layer 0 through the prefix state."""
    cfg = RefineConfig(num_chunks=2, rollout_len=3, num_rollouts=4, reward="cosine", margin=6, lambda_sft=0.0)
    ids = torch.randint(3, 97, (1, 40), generator=torch.Generator().manual_seed(1))
    roll = collect_rollouts(small_deltanet, ids, cfg, torch.Generator().manual_seed(2))
    assert roll.rewards.std() > 0
    terms = sequence_terms(small_deltanet, ids, cfg, roll)
    (terms.rl_sum / terms.rl_tokens).backward()
    assert small_deltanet.model.layers[0].attn.k_proj.weight.grad.abs().sum() > 0
