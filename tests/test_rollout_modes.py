"""Branching the teacher-forced state equals recomputing every prefix (the paper's code): samples, log-probs,
rewards, loss and gradients, on-policy and off-policy (ratio != 1, clipped tokens), for DeltaNet and LaCT."""

from __future__ import annotations

import copy

import pytest
import torch

from refine_bench.distributed import DistContext
from refine_bench.models.deltanet import DeltaNetForCausalLM
from refine_bench.models.lact import LaCTForCausalLM, lact_tiny_config
from refine_bench.train.config import RefineConfig, TrainConfig
from refine_bench.train.optimization import Example, optimize_items, scan_groups
from refine_bench.train.parallel import DataParallel
from refine_bench.train.refine import (
    clipped_surrogate,
    collect_group_rollouts,
    collect_rollouts,
    group_advantages,
    sequence_terms,
)
from tests.conftest import small_deltanet_config


def deltanet():
    torch.manual_seed(0)
    return DeltaNetForCausalLM(small_deltanet_config()).eval()


def lact():
    torch.manual_seed(0)
    config = lact_tiny_config(vocab_size=97, hidden_size=32, num_attn_heads=2, num_lact_heads=2, lact_chunk_size=16,
                              window_size=16, use_muon=True, muon_fp32=True, intermediate_size=48, w0_w2_low_rank=4)
    return LaCTForCausalLM(config).eval()


def refine(mode: str, **kw) -> RefineConfig:
    base = dict(num_chunks=3, rollout_len=4, num_rollouts=2, margin=8, reward="hybrid", rollout_mode=mode,
                recompute_pads="masked")
    base.update(kw)
    return RefineConfig(**base)


def perturb(model: torch.nn.Module, scale: float) -> None:
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale * (p.std() if p.numel() > 1 else 1.0))


@pytest.mark.parametrize("make,shift", [(deltanet, 0.3), (lact, 1.0)], ids=["deltanet", "lact"])
def test_branch_equals_recompute_on_and_off_policy(make, shift):
    model = make()
    ids = torch.randint(3, 97, (1, 80), generator=torch.Generator().manual_seed(5))
    rolls = {mode: collect_rollouts(model, ids, refine(mode), torch.Generator().manual_seed(11))
             for mode in ("branch", "recompute")}
    a, b = rolls["branch"], rolls["recompute"]
    assert a.starts == b.starts and torch.equal(a.tokens, b.tokens)
    torch.testing.assert_close(a.old_logp, b.old_logp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.rewards, b.rewards, atol=1e-5, rtol=1e-5)

    perturb(model, shift)  # the policy after an optimiser step: the log-ratio moves away from 0
    grads, losses = {}, {}
    for mode, roll in rolls.items():
        model.zero_grad()
        terms = sequence_terms(model, ids, refine(mode), roll)
        loss = terms.ntp_sum / terms.ntp_tokens + 0.2 * terms.rl_sum / terms.rl_tokens
        loss.backward()
        losses[mode] = loss.detach()
        grads[mode] = [p.grad.clone() for p in model.parameters()]
    ratio = torch.exp(a.logp.detach() - a.old_logp)
    adv = group_advantages(a.rewards, a.groups)[:, None]
    clipped = ((ratio > 1.2) & (adv > 0)) | ((ratio < 0.8) & (adv < 0))
    assert (ratio - 1).abs().max() > 0.2 and clipped.any(), "the off-policy check must exercise the clip"
    torch.testing.assert_close(a.logp, b.logp, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(losses["branch"], losses["recompute"], atol=1e-5, rtol=1e-5)
    per_token = clipped_surrogate(a.logp, a.old_logp, group_advantages(a.rewards, a.groups), refine("branch"))
    assert per_token.requires_grad
    for ga, gb in zip(grads["branch"], grads["recompute"], strict=True):
        torch.testing.assert_close(ga, gb, atol=5e-5, rtol=1e-3)


@pytest.mark.parametrize("make", [deltanet, lact], ids=["deltanet", "lact"])
def test_two_ppo_mini_batches_give_the_same_update(make):
    """Through the optimisation pass: rollouts first, then two mini-batches (the second off-policy)."""
    finals = {}
    for mode in ("branch", "recompute"):
        model = make()
        cfg = TrainConfig(arm="refine", steps=1, batch_size=4, mini_batch_size=2, seq_len=70, seed=3,
                          refine=refine(mode))
        items = [Example(torch.randint(3, 97, (70,), generator=torch.Generator().manual_seed(i))) for i in range(4)]
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)  # no Adam: it would amplify float noise
        result = optimize_items(DataParallel(model, None, DistContext()), optimizer, cfg, items, with_rl=True, step=0)
        assert result.metrics["optimizer_steps"] == 2
        finals[mode] = (copy.deepcopy(model.state_dict()), result.metrics)
    for key, value in finals["branch"][0].items():
        torch.testing.assert_close(value, finals["recompute"][0][key], atol=1e-4, rtol=1e-3, msg=key)
    for key in ("loss", "loss_rl", "reward_mean"):
        assert finals["branch"][1][key] == pytest.approx(finals["recompute"][1][key], rel=1e-4, abs=1e-6)


def test_official_lact_pads_pass_through_the_fast_weights():
    """The paper's LaCT ignores the attention mask: recomputing with its pads gives other rewards than masked."""
    model = lact()
    ids = torch.randint(3, 97, (1, 80), generator=torch.Generator().manual_seed(5))
    masked = collect_rollouts(model, ids, refine("recompute"), torch.Generator().manual_seed(11))
    official = collect_rollouts(model, ids, refine("recompute", recompute_pads="official"),
                                torch.Generator().manual_seed(11))
    assert masked.starts == official.starts and len(set(masked.starts)) > 1  # prefixes of different lengths
    assert not torch.allclose(masked.old_logp, official.old_logp, atol=1e-4)


@pytest.mark.parametrize("make", [deltanet, lact], ids=["deltanet", "lact"])
@pytest.mark.parametrize("selection", ["entropy", "argmax"])
def test_group_scan_gives_each_sequence_what_it_gets_alone(make, selection):
    """Sequences sharing one batched teacher-forced pass get the starts, samples, log-probs and rewards they get
    scanned alone with the same generator (entropy sampling waits for the smoothing radius; argmax does not)."""
    model = make()
    ids = torch.randint(3, 97, (3, 80), generator=torch.Generator().manual_seed(9))
    cfg = refine("branch", selection=selection)
    together = collect_group_rollouts(model, ids, cfg, [torch.Generator().manual_seed(20 + b) for b in range(3)])
    for b, got in enumerate(together):
        alone = collect_rollouts(model, ids[b : b + 1], cfg, torch.Generator().manual_seed(20 + b))
        assert got.starts == alone.starts and torch.equal(got.tokens, alone.tokens)
        torch.testing.assert_close(got.old_logp, alone.old_logp, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got.rewards, alone.rewards, atol=1e-5, rtol=1e-5)
    assert len({tuple(r.starts) for r in together}) > 1, "the rows must choose different positions"


def test_scan_groups_share_a_length_within_the_token_budget():
    items = [Example(torch.zeros(n, dtype=torch.long)) for n in (40, 40, 60, 40, 60, 40)]
    assert scan_groups(items, [0, 1, 2, 3, 4, 5], max_tokens=100) == [[0, 1], [3, 5], [2], [4]]
    assert scan_groups(items, [0, 2, 3], max_tokens=10) == [[0], [3], [2]]
    assert scan_groups(items, [1, 3, 5], max_tokens=10**6) == [[1, 3, 5]]
