"""REFINE, step by step as the paper's method section states it, for one sequence x_1..x_S.

1. entropy       H_t = -sum_v p(v | x_<=t) log p(v | x_<=t), from one teacher-forced pass (H_t is about x_{t+1})
2. smoothing     H~ = AvgPool1d(H, window = k or k + 1, stride 1, zero padding window // 2)
3. positions     split the tokens into c equal chunks; in each, draw t ~ softmax(H~_t / tau) (or uniform, or
                 argmax / argmin of the raw H); the rollout starts at s = clamp(t + 1, margin, S - margin)
4. rollouts      from the state after x_<s, sample k tokens, n times per position (`rollout_engine`)
5. rewards       cosine: mean_j cos(h_pred_j, h_gt_j); binary: mean_j [y_j = x_{s+j}]; hybrid: their sum
6. advantages    A = (r - mean_g r) / (std_g r + 1e-6) within each group g (the c*n rollouts of the sequence
                 when n = 1, else the n rollouts of one position)
7. surrogate     rho = exp(clamp(log pi - log pi_old)); L_RL = token-mean of max(-rho A, -clip(rho) A), capped
                 at -dual_clip * A when A < 0
8. loss          L = lambda_SFT * NTP + lambda_RL * L_RL

`collect_rollouts` runs steps 1-6 without grad with the current policy; `sequence_terms` runs the grad-carrying
part (NTP and the log-probs of step 7) for a later PPO mini-batch. Loss terms are returned as sums with their
counts, so the caller can normalise over a whole mini-batch whatever the split across ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from refine_bench.train.config import RefineConfig


# 1 --------------------------------------------------------------------------------------------- entropy
def next_token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """H_t = -sum_v p_t(v) log p_t(v) for logits [..., T, V]; float32 [..., T]."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


# 2 --------------------------------------------------------------------------------------------- smoothing
def smooth_entropy(entropy: torch.Tensor, window: int) -> torch.Tensor:
    """Average pooling of [T] or [B, T] with an odd `window` (k + 1 when k is even), stride 1, zero padding
    window // 2 (zeros count in the average, as in torch's AvgPool1d)."""
    size = window if window % 2 == 1 else window + 1
    x = entropy.float()
    flat = x.reshape(-1, 1, x.shape[-1])
    return F.avg_pool1d(flat, size, stride=1, padding=size // 2).reshape(x.shape)


# 3 --------------------------------------------------------------------------------------------- positions
def chunk_bounds(length: int, num_chunks: int, start: int = 0) -> list[int]:
    """Edges of `num_chunks` equal chunks of the tokens start..length-1 (c + 1 integers)."""
    return torch.linspace(start, length, num_chunks + 1).round().long().tolist()


def start_range(lo: int, hi: int, length: int, margin: int) -> tuple[int, int]:
    """The lowest and highest rollout start a chunk [lo, hi) can give: clamp(t + 1, margin, S - margin)."""
    def clamp(s: int) -> int:
        return min(max(s, margin), length - margin)

    return clamp(lo + 1), clamp(hi)


def select_start(entropy: torch.Tensor, lo: int, hi: int, length: int, cfg: RefineConfig,
                 generator: torch.Generator | None) -> int:
    """Rollout start for the chunk [lo, hi): t drawn by cfg.selection from `entropy` (the chunk's values, raw or
    smoothed as the strategy needs), s = clamp(t + 1, margin, S - margin)."""
    h = entropy[lo:hi].float().cpu()  # drawn on the CPU generator: the same positions on any device
    if cfg.selection == "entropy":
        t = int(torch.multinomial(torch.softmax(h / cfg.selection_temperature, -1), 1, generator=generator))
    elif cfg.selection == "uniform":
        t = int(torch.randint(hi - lo, (1,), generator=generator))
    elif cfg.selection == "argmax":
        t = int(h.argmax())
    else:
        t = int(h.argmin())
    return min(max(lo + t + 1, cfg.margin), length - cfg.margin)


def selection_entropy(raw: torch.Tensor, cfg: RefineConfig) -> torch.Tensor:
    """The entropy the strategy selects on: smoothed for `entropy` sampling (and for argmax/argmin with
    smooth_argmax), raw otherwise (the paper's code)."""
    smoothed = cfg.selection == "entropy" or (cfg.selection in ("argmax", "argmin") and cfg.smooth_argmax)
    return smooth_entropy(raw, cfg.smoothing_window) if smoothed else raw.float()


def selection_radius(cfg: RefineConfig) -> int:
    """How far past a chunk the entropies must be known before its position can be chosen."""
    smoothed = cfg.selection == "entropy" or (cfg.selection in ("argmax", "argmin") and cfg.smooth_argmax)
    return cfg.smoothing_window // 2 if smoothed else 0


def select_positions(entropy: torch.Tensor, cfg: RefineConfig, generator: torch.Generator | None) -> list[int]:
    """Rollout starts s_1..s_c for one sequence from its raw next-token entropies [S]."""
    length = entropy.shape[-1]
    if length < cfg.min_sequence_length():
        raise ValueError(f"sequence of {length} tokens is too short for {cfg.num_chunks} chunks with a margin of "
                         f"{cfg.margin}")
    h = selection_entropy(entropy, cfg)
    bounds = chunk_bounds(length, cfg.num_chunks)
    return [select_start(h, lo, hi, length, cfg, generator) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]


# 5 --------------------------------------------------------------------------------------------- rewards
@torch.no_grad()
def rollout_rewards(kind: str, h_pred: torch.Tensor, h_gt: torch.Tensor, tokens: torch.Tensor,
                    target: torch.Tensor) -> torch.Tensor:
    """Rewards [R] of R rollouts: hidden states h_pred, h_gt [R, k, D], tokens and ground truth [R, k]."""
    cosine = F.cosine_similarity(h_pred.float(), h_gt.float(), dim=-1).mean(-1)
    binary = (tokens == target).float().mean(-1)
    return {"cosine": cosine, "binary": binary, "hybrid": cosine + binary}[kind]


def rollout_groups(num_positions: int, num_rollouts: int) -> torch.Tensor:
    """GRPO group of each rollout: all c*n rollouts of the sequence when n = 1, else one group per position."""
    positions = torch.arange(num_positions).repeat_interleave(num_rollouts)
    return torch.zeros_like(positions) if num_rollouts == 1 else positions


# 6 --------------------------------------------------------------------------------------------- advantages
def group_advantages(rewards: torch.Tensor, groups: torch.Tensor, single: str = "raw",
                     eps: float = 1e-6) -> torch.Tensor:
    """A = (r - mean_g) / (std_g + eps), std the unbiased sample std. A group of one has no spread: the paper's
    code then uses mean 0 and std 1 (A = r, `single="raw"`); `single="zero"` gives it no signal."""
    adv = torch.zeros_like(rewards, dtype=torch.float32)
    for g in groups.unique():
        idx = groups == g
        r = rewards[idx].float()
        if r.numel() < 2:
            adv[idx] = r if single == "raw" else 0.0
            continue
        adv[idx] = (r - r.mean()) / (r.std() + eps)
    return adv


# 7 --------------------------------------------------------------------------------------------- surrogate
def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, cfg: RefineConfig
                      ) -> torch.Tensor:
    """Per-token PPO loss [R, k] for log-probs [R, k] and advantages [R] (broadcast over the k tokens):
    max(-rho A, -clip(rho, 1 - low, 1 + high) A), capped at -dual_clip * A where A < 0, with
    rho = exp(clamp(logp - old_logp, -clamp, clamp))."""
    adv = advantages[:, None].to(logp.dtype)
    log_ratio = logp - old_logp
    if cfg.log_ratio_clamp is not None:
        log_ratio = log_ratio.clamp(-cfg.log_ratio_clamp, cfg.log_ratio_clamp)
    ratio = torch.exp(log_ratio)
    loss = torch.maximum(-ratio * adv, -ratio.clamp(1 - cfg.clip_low, 1 + cfg.clip_high) * adv)
    if cfg.dual_clip is not None:
        loss = torch.where(adv < 0, torch.minimum(loss, -cfg.dual_clip * adv), loss)
    return loss


# 8 --------------------------------------------------------------------------------------------- loss
def ntp_sum(logits: torch.Tensor, ids: torch.Tensor, targets: torch.Tensor | None = None,
            mask: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy and its token count for logits [B, T, V] and ids [B, T].

    `mask` [B, T] drops padding (a target counts when it and its context token are real); `targets` [B, T]
    (bool) keeps only tokens marked as training targets (e.g. answer tokens).
    """
    labels = ids[:, 1:]
    losses = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                             reduction="none").view_as(labels)
    if mask is None and targets is None:
        return losses.sum(), labels.numel()
    keep = torch.ones_like(labels, dtype=torch.bool)
    if mask is not None:
        keep &= (mask[:, 1:] * mask[:, :-1]).bool()
    if targets is not None:
        keep &= targets[:, 1:].bool()
    return losses[keep].sum(), int(keep.sum())


def combined_loss(ntp: torch.Tensor, ntp_count: int, rl: torch.Tensor | None, rl_count: int,
                  cfg: RefineConfig | None) -> torch.Tensor:
    """lambda_SFT * NTP / ntp_count + lambda_RL * L_RL / rl_count, the counts taken over the whole mini-batch
    (`cfg` None: plain NTP / ntp_count; `rl` None: a sequence too short for rollouts, NTP term only)."""
    if cfg is None:
        return ntp / max(ntp_count, 1)
    loss = cfg.lambda_sft * ntp / max(ntp_count, 1)
    return loss if rl is None else loss + cfg.lambda_rl * rl / max(rl_count, 1)


@dataclass
class Rollouts:
    """The c * n rollouts of one sequence (n consecutive rows per start position), from the sampling policy."""

    starts: list[int]
    tokens: torch.Tensor  # [c * n, k]
    old_logp: torch.Tensor  # [c * n, k]
    rewards: torch.Tensor  # [c * n]
    groups: torch.Tensor  # [c * n]
    entropy_mean: float = 0.0
    logp: torch.Tensor | None = None  # [c * n, k], on the graph once `sequence_terms` ran

    @property
    def num_tokens(self) -> int:
        return self.tokens.numel()


@dataclass
class SequenceTerms:
    """Unnormalised loss terms of one sequence; the caller divides by counts over the whole mini-batch."""

    ntp_sum: torch.Tensor
    ntp_tokens: int
    rl_sum: torch.Tensor | None
    rl_tokens: int


def collect_rollouts(model, ids: torch.Tensor, cfg: RefineConfig, generator: torch.Generator | None = None
                     ) -> Rollouts:
    """Steps 1-6 for one unpadded sequence ids [1, S] with the current policy (no grad)."""
    return collect_group_rollouts(model, ids, cfg, [generator])[0]


@torch.no_grad()
def collect_group_rollouts(model, ids: torch.Tensor, cfg: RefineConfig,
                           generators: list[torch.Generator | None]) -> list[Rollouts]:
    """Steps 1-6 for B unpadded sequences of one length, ids [B, S], each with its own generator: the
    teacher-forced pass runs batched, the rollouts per sequence. Each sequence gets what it would get alone."""
    from refine_bench.train.rollout_engine import rollout_engine

    engine = rollout_engine(cfg)
    k, n = cfg.rollout_len, cfg.num_rollouts
    out = []
    for b, scan in enumerate(engine.scan_group(model, ids, cfg, generators)):
        row = ids[b : b + 1]
        tokens, old_logp, h_pred = engine.sample(model, row, scan, cfg, generators[b])
        h_gt = torch.stack([scan.hidden[s : s + k] for s in scan.starts]).repeat_interleave(n, 0)
        target = torch.stack([row[0, s : s + k] for s in scan.starts]).repeat_interleave(n, 0)
        rewards = rollout_rewards(cfg.reward, h_pred, h_gt, tokens, target)
        out.append(Rollouts(scan.starts, tokens, old_logp, rewards,
                            rollout_groups(len(scan.starts), n).to(rewards.device), float(scan.entropy.mean())))
    return out


def sequence_terms(model, ids: torch.Tensor, cfg: RefineConfig, rollouts: Rollouts | None,
                   targets: torch.Tensor | None = None) -> SequenceTerms:
    """The grad-carrying terms of one unpadded sequence ids [1, S]: NTP (over `targets` [1, S] only, when
    given), plus step 7 on `rollouts` when given, whose log-probs flow back through the prefix's state."""
    from refine_bench.train.rollout_engine import rollout_engine

    if rollouts is None:
        logits = model(ids).logits
        ntp, count = ntp_sum(logits, ids, targets=targets)
        return SequenceTerms(ntp, count, None, 0)
    logits, logp = rollout_engine(cfg).score(model, ids, rollouts, cfg)
    ntp, count = ntp_sum(logits, ids, targets=targets)
    rollouts.logp = logp
    advantages = group_advantages(rollouts.rewards, rollouts.groups, cfg.single_rollout_advantage).to(logp.device)
    per_token = clipped_surrogate(logp, rollouts.old_logp.to(logp.device), advantages, cfg)
    return SequenceTerms(ntp, count, per_token.sum(), per_token.numel())
