"""The REFINE objective for one sequence: NTP on the whole sequence plus GRPO on multi-token rollouts.

The rollouts branch from the fast-weight state that the teacher-forced pass computes anyway
(`forward_with_snapshots`), instead of re-running every prefix from scratch as the paper's code does. The
snapshots keep the autograd graph to the prefix, so the GRPO gradient reaches what the prefix wrote into
the fast weights. Sampling runs without grad on detached copies; a second, grad-carrying pass over the
sampled tokens gives the log-probs and the policy's hidden states.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from refine_bench.models.base import FastWeightPreTrainedModel
from refine_bench.models.cache import FastWeightCache
from refine_bench.train.grpo import clipped_surrogate, group_advantages
from refine_bench.train.rewards import REWARDS, rollout_rewards
from refine_bench.train.selection import STRATEGIES, next_token_entropy, select_rollout_starts, smooth_entropy


@dataclass
class RefineConfig:
    """REFINE hyper-parameters (paper Table 2 / D.1 defaults for mid-training)."""

    num_chunks: int = 8  # c: rollout positions per sequence
    rollout_len: int = 5  # k: tokens per rollout
    num_rollouts: int = 1  # n: rollouts per position
    reward: str = "cosine"
    selection: str = "entropy"
    selection_temperature: float = 1.0
    sample_temperature: float = 1.0
    smooth_kernel: int | None = None  # None: the rollout length k
    margin: int = 20
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float | None = 3.0
    lambda_sft: float = 1.0
    lambda_rl: float = 0.2

    def __post_init__(self) -> None:
        if self.reward not in REWARDS:
            raise ValueError(f"reward must be one of {REWARDS}, got {self.reward!r}")
        if self.selection not in STRATEGIES:
            raise ValueError(f"selection must be one of {STRATEGIES}, got {self.selection!r}")
        for name in ("num_chunks", "rollout_len", "num_rollouts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.rollout_len > self.margin:
            raise ValueError(f"rollout_len ({self.rollout_len}) must not exceed margin ({self.margin})")


@dataclass
class SequenceTerms:
    """Unnormalised loss terms of one sequence; the trainer divides by counts over the whole batch."""

    ntp_sum: torch.Tensor
    ntp_tokens: int
    rl_sum: torch.Tensor
    rl_tokens: int


@dataclass
class Rollouts:
    """The c * n rollouts of one sequence (n consecutive rows per start position)."""

    starts: list[int]
    tokens: torch.Tensor  # [c * n, k]
    old_logp: torch.Tensor  # [c * n, k], from the sampling policy
    logp: torch.Tensor | None  # [c * n, k], on the graph once `sequence_terms` ran
    rewards: torch.Tensor  # [c * n]
    groups: torch.Tensor  # [c * n]
    entropy_mean: float = 0.0


def ntp_sum(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor | None = None,
            targets: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over positions whose target is a real token (pads masked).

    `targets` [B, S] (bool) further restricts the loss to tokens marked as targets (e.g. answer tokens).
    """
    labels = ids[:, 1:]
    losses = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                             reduction="none").view_as(labels)
    keep = torch.ones_like(labels, dtype=torch.bool)
    if mask is not None:
        keep &= (mask[:, 1:] * mask[:, :-1]).bool()
    if targets is not None:
        keep &= targets[:, 1:].bool()
    if mask is None and targets is None:
        return losses.sum(), labels.numel()
    return losses[keep].sum(), int(keep.sum())


@torch.no_grad()
def _sample(model: FastWeightPreTrainedModel, state: FastWeightCache, first_logits: torch.Tensor, cfg: RefineConfig,
            generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """k tokens per rollout at temperature cfg.sample_temperature (top-p 1, no top-k); also their log-probs."""
    n = cfg.num_rollouts
    logits = first_logits.detach().float().expand(n, -1)
    cache = state.detach().repeat_interleave(n)
    tokens, logps = [], []
    for j in range(cfg.rollout_len):
        logp = torch.log_softmax(logits / cfg.sample_temperature, dim=-1)
        # drawn on the CPU with the sequence's CPU generator: the same samples on any device
        tok = torch.multinomial(logp.exp().cpu(), 1, generator=generator).to(logp.device)
        tokens.append(tok)
        logps.append(logp.gather(-1, tok))
        if j + 1 < cfg.rollout_len:
            out = model(tok, cache=cache, use_cache=True)
            cache, logits = out.cache, out.logits[:, -1].float()
    return torch.cat(tokens, 1), torch.cat(logps, 1)


def _score(model: FastWeightPreTrainedModel, state: FastWeightCache, first_logits: torch.Tensor, tokens: torch.Tensor,
           cfg: RefineConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs [n, k] of the sampled tokens and the policy's hidden states [n, k, D] at them, with grad."""
    out = model(tokens, cache=state.repeat_interleave(tokens.shape[0]), use_cache=True, output_hidden_states=True)
    logits = torch.cat([first_logits.expand(tokens.shape[0], 1, -1), out.logits[:, :-1]], dim=1)
    logp = torch.log_softmax(logits.float() / cfg.sample_temperature, dim=-1).gather(-1, tokens[..., None])[..., 0]
    return logp, out.hidden_states[-1]


def supports_rollouts(length: int, cfg: RefineConfig) -> bool:
    """Whether a sequence of `length` tokens is long enough for cfg.num_chunks rollout positions."""
    return length >= max(cfg.num_chunks, 2 * cfg.margin + 1)


@torch.no_grad()
def collect_rollouts(
    model: FastWeightPreTrainedModel, ids: torch.Tensor, cfg: RefineConfig, generator: torch.Generator | None = None
) -> Rollouts:
    """Rollout phase for one unpadded sequence ids [1, S]: positions, samples, old log-probs, rewards.

    Runs without grad with the current (old) policy; `sequence_terms` later recomputes the log-probs with
    grad, so several optimiser steps can share rollouts collected before the first of them (PPO).
    """
    if ids.dim() != 2 or ids.shape[0] != 1:
        raise ValueError(f"ids must have shape [1, S] (one unpadded sequence), got {list(ids.shape)}")
    entropy = next_token_entropy(model(ids).logits)[0]
    smoothed = smooth_entropy(entropy[None], cfg.smooth_kernel or cfg.rollout_len)[0]
    starts = select_rollout_starts(smoothed, cfg.num_chunks, strategy=cfg.selection,
                                   temperature=cfg.selection_temperature, margin=cfg.margin, generator=generator)
    logits, hidden, snapshots = model.forward_with_snapshots(ids, starts, detach=True)
    k, n = cfg.rollout_len, cfg.num_rollouts
    all_tokens, all_old, all_rewards = [], [], []
    for s, state in zip(starts, snapshots, strict=True):
        tokens, old_logp = _sample(model, state, logits[0, s - 1], cfg, generator)
        _, h_pred = _score(model, state, logits[0, s - 1], tokens, cfg)
        h_gt = hidden[0, s : s + k].expand(n, -1, -1)
        all_rewards.append(rollout_rewards(cfg.reward, h_pred, h_gt, tokens, ids[0, s : s + k].expand(n, -1)))
        all_tokens.append(tokens)
        all_old.append(old_logp)
    rewards = torch.cat(all_rewards)
    positions = torch.arange(len(starts), device=rewards.device).repeat_interleave(n)
    groups = torch.zeros_like(positions) if n == 1 else positions
    return Rollouts(starts, torch.cat(all_tokens), torch.cat(all_old), None, rewards, groups,
                    float(entropy.mean()))


def sequence_terms(
    model: FastWeightPreTrainedModel, ids: torch.Tensor, cfg: RefineConfig, rollouts: Rollouts | None,
    targets: torch.Tensor | None = None,
) -> SequenceTerms:
    """Loss terms with grad for one unpadded sequence: NTP over it (over `targets` [1, S] only, when given),
    plus GRPO on `rollouts` when given.

    The GRPO log-probs come from branching the grad-carrying snapshots of the teacher-forced pass, so the
    gradient flows back through the prefix's fast-weight state. Sets `rollouts.logp`.
    """
    if rollouts is None:
        logits = model(ids).logits
        loss, count = ntp_sum(logits, ids, targets=targets)
        return SequenceTerms(loss, count, logits.new_zeros(()), 0)
    logits, _, snapshots = model.forward_with_snapshots(ids, rollouts.starts, output_hidden_states=False)
    ntp, ntp_tokens = ntp_sum(logits, ids, targets=targets)
    n = cfg.num_rollouts
    logps = []
    for i, (s, state) in enumerate(zip(rollouts.starts, snapshots, strict=True)):
        logp, _ = _score(model, state, logits[0, s - 1], rollouts.tokens[i * n : (i + 1) * n], cfg)
        logps.append(logp)
    rollouts.logp = torch.cat(logps)
    advantages = group_advantages(rollouts.rewards, rollouts.groups).to(rollouts.logp.device)
    per_token = clipped_surrogate(rollouts.logp, rollouts.old_logp, advantages, cfg.clip_low, cfg.clip_high,
                                  cfg.dual_clip)
    return SequenceTerms(ntp, ntp_tokens, per_token.sum(), per_token.numel())


def refine_sequence_terms(
    model: FastWeightPreTrainedModel,
    ids: torch.Tensor,
    cfg: RefineConfig,
    generator: torch.Generator | None = None,
) -> tuple[SequenceTerms, Rollouts]:
    """On-policy REFINE terms for one sequence: collect rollouts, then the grad-carrying loss terms."""
    rollouts = collect_rollouts(model, ids, cfg, generator)
    return sequence_terms(model, ids, cfg, rollouts), rollouts
