"""REFINE objective: hand-computed pieces, and branched-state rollouts equal to re-forwarding every prefix."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from refine_bench.train.grpo import clipped_surrogate, group_advantages
from refine_bench.train.refine import RefineConfig, ntp_sum, refine_sequence_terms
from refine_bench.train.rewards import rollout_rewards
from refine_bench.train.selection import next_token_entropy, select_rollout_starts, smooth_entropy


def test_entropy_of_uniform_and_peaked_distributions():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [100.0, 0.0, 0.0, 0.0]])
    h = next_token_entropy(logits)
    assert h[0].item() == pytest.approx(math.log(4))
    assert h[1].item() == pytest.approx(0.0, abs=1e-6)


def test_smoothing_uses_odd_kernel_with_zero_padding():
    h = torch.tensor([[3.0, 0.0, 0.0, 6.0, 0.0]])
    # k = 2 is even -> kernel 3, padding 1, zeros counted at the edges
    torch.testing.assert_close(smooth_entropy(h, 2), torch.tensor([[1.0, 1.0, 2.0, 2.0, 2.0]]))
    torch.testing.assert_close(smooth_entropy(h, 3), smooth_entropy(h, 2))


def test_argmax_selection_and_clamping():
    S = 100
    h = torch.zeros(S)
    h[[10, 30, 60, 95]] = 1.0
    # chunks [0,25) [25,50) [50,75) [75,100): argmax t = 10, 30, 60, 95 -> s = t + 1, clamped to [20, 80]
    assert select_rollout_starts(h, 4, strategy="argmax") == [20, 31, 61, 80]
    # with a left pad of 10 the chunks cover the 90 real tokens only and the lower clamp moves to 30
    assert select_rollout_starts(h, 3, start=10, strategy="argmax") == [30, 61, 80]


def test_entropy_sampling_follows_softmax_weights():
    h = torch.zeros(60)
    h[25] = 50.0  # softmax puts essentially all mass here
    g = torch.Generator().manual_seed(0)
    assert {select_rollout_starts(h, 1, generator=g)[0] for _ in range(20)} == {26}
    with pytest.raises(ValueError, match="too short"):
        select_rollout_starts(torch.zeros(30), 2)


def test_rewards_hand_computed():
    h_gt = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    h_pred = torch.tensor([[[2.0, 0.0], [1.0, 0.0]]])  # cos = 1 and 0 -> mean 0.5
    tokens, target = torch.tensor([[4, 7]]), torch.tensor([[4, 8]])
    assert rollout_rewards("cosine", h_pred, h_gt, tokens, target).item() == pytest.approx(0.5)
    assert rollout_rewards("binary", h_pred, h_gt, tokens, target).item() == pytest.approx(0.5)
    assert rollout_rewards("hybrid", h_pred, h_gt, tokens, target).item() == pytest.approx(1.0)


def test_group_advantages_hand_computed():
    rewards = torch.tensor([1.0, 3.0, 5.0, 5.0])
    adv = group_advantages(rewards, torch.tensor([0, 0, 1, 1]))
    # group 0: mean 2, std sqrt(2); group 1: std 0 -> 0 / 1e-6 = 0
    torch.testing.assert_close(adv, torch.tensor([-1 / (2**0.5 + 1e-6), 1 / (2**0.5 + 1e-6), 0.0, 0.0]))


def test_clipped_surrogate_and_dual_clip_hand_computed():
    logp = torch.log(torch.tensor([[1.5], [0.5], [5.0], [1.0]]))
    old = torch.zeros(4, 1)
    adv = torch.tensor([1.0, 1.0, -1.0, -2.0])
    loss = clipped_surrogate(logp, old, adv, 0.2, 0.2, dual_clip=3.0)
    # ratio 1.5, A=1: min(1.5, 1.2) -> 1.2; ratio 0.5, A=1: min(0.5, 0.8) -> 0.5;
    # ratio 5, A=-1: max(5, 1.2) = 5 -> dual clip caps at 3; ratio 1, A=-2: 2
    torch.testing.assert_close(loss[:, 0], torch.tensor([-1.2, -0.5, 3.0, 2.0]))


def test_ntp_masks_left_padding():
    logits = torch.randn(1, 5, 11)
    ids = torch.tensor([[2, 2, 5, 6, 7]])
    mask = torch.tensor([[0, 0, 1, 1, 1]])
    total, count = ntp_sum(logits, ids, mask)
    ref = F.cross_entropy(logits[0, 2:4], ids[0, 3:5], reduction="sum")
    assert count == 2 and total.item() == pytest.approx(ref.item(), rel=1e-6)


def reference_terms(model, ids, cfg, generator):
    """The paper-code way: re-forward every prefix from scratch for sampling and scoring (no cache)."""
    with torch.no_grad():
        entropy = next_token_entropy(model(ids).logits)[0]
    starts = select_rollout_starts(smooth_entropy(entropy[None], cfg.rollout_len)[0], cfg.num_chunks,
                                   margin=cfg.margin, generator=generator)
    full = model(ids, output_hidden_states=True)
    ntp, ntp_tokens = ntp_sum(full.logits, ids)
    k, n = cfg.rollout_len, cfg.num_rollouts
    toks, logps, rewards = [], [], []
    for s in starts:
        prefix = ids[:, :s].expand(n, -1)
        seq = prefix
        with torch.no_grad():
            for _ in range(k):
                probs = torch.softmax(model(seq).logits[:, -1].float(), -1)
                seq = torch.cat([seq, torch.multinomial(probs, 1, generator=generator)], 1)
        tokens = seq[:, s:]
        out = model(seq, output_hidden_states=True)
        logp = torch.log_softmax(out.logits[:, s - 1 : s + k - 1].float(), -1).gather(-1, tokens[..., None])[..., 0]
        h_pred = out.hidden_states[-1][:, s : s + k]
        h_gt = full.hidden_states[-1][:, s : s + k].detach().expand(n, -1, -1)
        rewards.append(rollout_rewards(cfg.reward, h_pred.detach(), h_gt, tokens, ids[:, s : s + k].expand(n, -1)))
        toks.append(tokens)
        logps.append(logp)
    rewards = torch.cat(rewards)
    groups = torch.arange(len(starts)).repeat_interleave(n) if n > 1 else torch.zeros(len(starts), dtype=torch.long)
    logp = torch.cat(logps)
    per_token = clipped_surrogate(logp, logp.detach(), group_advantages(rewards, groups), cfg.clip_low,
                                  cfg.clip_high, cfg.dual_clip)
    return starts, torch.cat(toks), logp, rewards, ntp / ntp_tokens * cfg.lambda_sft + \
        per_token.mean() * cfg.lambda_rl


@pytest.mark.parametrize("n,reward", [(1, "cosine"), (3, "hybrid")])
def test_branched_rollouts_equal_reforwarding_each_prefix(small_deltanet, n, reward):
    cfg = RefineConfig(num_chunks=3, rollout_len=4, num_rollouts=n, reward=reward, margin=8)
    ids = torch.randint(3, 97, (1, 70), generator=torch.Generator().manual_seed(5))
    params = list(small_deltanet.parameters())

    small_deltanet.zero_grad()
    terms, roll = refine_sequence_terms(small_deltanet, ids, cfg, torch.Generator().manual_seed(11))
    loss = terms.ntp_sum / terms.ntp_tokens * cfg.lambda_sft + terms.rl_sum / terms.rl_tokens * cfg.lambda_rl
    loss.backward()
    ours = [p.grad.clone() for p in params]

    small_deltanet.zero_grad()
    starts, tokens, logp, rewards, ref_loss = reference_terms(small_deltanet, ids, cfg,
                                                              torch.Generator().manual_seed(11))
    ref_loss.backward()
    assert roll.starts == starts
    assert torch.equal(roll.tokens, tokens)
    torch.testing.assert_close(roll.logp, logp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(roll.old_logp, logp.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(roll.rewards, rewards, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)
    for p, a in zip(params, ours, strict=True):
        torch.testing.assert_close(a, p.grad, atol=2e-5, rtol=1e-4)


def test_grpo_gradient_reaches_the_prefix_state(small_deltanet):
    """With λ_SFT = 0 the loss is GRPO alone; it still moves k_proj of layer 0 through the prefix state."""
    cfg = RefineConfig(num_chunks=2, rollout_len=3, num_rollouts=4, reward="cosine", margin=6, lambda_sft=0.0)
    ids = torch.randint(3, 97, (1, 40), generator=torch.Generator().manual_seed(1))
    terms, roll = refine_sequence_terms(small_deltanet, ids, cfg, torch.Generator().manual_seed(2))
    assert roll.rewards.std() > 0
    (terms.rl_sum / terms.rl_tokens).backward()
    assert small_deltanet.model.layers[0].attn.k_proj.weight.grad.abs().sum() > 0
