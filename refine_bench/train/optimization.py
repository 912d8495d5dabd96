"""One optimisation pass over a list of sequences, shared by the trainer and test-time training.

REFINE rollouts for every sequence are collected first with the current policy (PPO's old policy); then the
list is consumed in mini-batches, one optimiser step each. Every sequence's loss is normalised by token counts
of its whole mini-batch, so the step does not depend on how sequences are spread over ranks. Random draws for
a sequence come from a generator seeded by (seed, step, index): the same samples on any number of ranks and
after a resume. A step whose loss, gradient norm or sampling distribution is not finite is skipped and counted.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import torch

from refine_bench.distributed import DistContext
from refine_bench.train.config import TrainConfig
from refine_bench.train.parallel import DataParallel
from refine_bench.train.precision import autocast
from refine_bench.train.refine import Rollouts, collect_group_rollouts, combined_loss, sequence_terms

# Sequences whose rollout scans run as one batched pass hold at most this many tokens together: the paper's
# 16K-token sequences scan one at a time (what `bench train --memory` measures), shorter ones share a pass.
# Each row keeps its own boundary states, so this bounds the scan's state memory too.
SCAN_TOKENS = 16384


@dataclass
class Example:
    """One training sequence without padding. `targets` marks the tokens that are training targets (None:
    every token after the first); for a (prompt, answer) pair, `prompt_len` tokens are the prompt."""

    ids: torch.Tensor  # [S]
    targets: torch.Tensor | None = None  # [S] bool
    prompt_len: int | None = None

    def target_count(self) -> int:
        return int(self.targets[1:].sum()) if self.targets is not None else len(self.ids) - 1

    def prompt(self) -> Example:
        """The prompt alone, every token a target (post-training's nested arms train on it first)."""
        return Example(self.ids[: self.prompt_len])


@dataclass
class PassResult:
    """What one optimisation pass produced."""

    metrics: dict[str, float]
    rollouts: dict[int, Rollouts] = field(default_factory=dict)
    ntp_only: list[int] = field(default_factory=list)  # asked for REFINE, too short for its rollouts

    @property
    def skipped_steps(self) -> int:
        return int(self.metrics.get("skipped_steps", 0))


def sequence_generator(seed: int, step: int, index: int) -> torch.Generator:
    """The random stream of one sequence in one step, independent of ranks and batching."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1_000_003 + index)


def _non_finite_draw(error: RuntimeError) -> bool:
    text = str(error)
    return "probability tensor contains" in text or "invalid multinomial distribution" in text


def optimize_items(
    engine: DataParallel,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    items: list[Example],
    *,
    with_rl: bool,
    step: int,
    mini_batch: int | None = None,
    precision: str = "fp32",
    stack: bool = True,
) -> PassResult:
    """One pass over `items` (see the module docstring). Items too short for REFINE's chunks get NTP only; a
    mini-batch with no target token makes no step (so no weight decay either). With `stack`, sequences without
    rollouts of one length share a forward (`forward_groups`); the loss is the same sum either way."""
    model, dist = engine.model, engine.dist
    rcfg = config.refine
    device = next(model.parameters()).device
    local = list(dist.shard(len(items)))
    can_rl = [with_rl and len(it.ids) >= rcfg.min_sequence_length() for it in items]
    rollouts: dict[int, Rollouts] = {}
    if with_rl:
        model.eval()
        try:
            with engine.gathered(), autocast(precision, device):
                for group in scan_groups(items, [i for i in local if can_rl[i]]):
                    generators = [sequence_generator(config.seed, step, i) for i in group]
                    ids = torch.stack([items[i].ids for i in group])
                    rollouts.update(zip(group, collect_group_rollouts(model, ids, rcfg, generators), strict=True))
        except RuntimeError as exc:
            if not _non_finite_draw(exc):
                raise
            rollouts = {}
        bad = torch.tensor([float(len(rollouts) < sum(can_rl[i] for i in local))])
        if float(dist.all_reduce_max(bad)) > 0:  # a non-finite sampling distribution on some rank
            return PassResult({"skipped_steps": 1.0, "optimizer_steps": 0.0, "loss": math.nan, "loss_ntp": math.nan,
                               "grad_norm": math.nan, "non_finite_sampling": 1.0})
    mini = min(mini_batch or config.optimizer_mini_batch, len(items))
    per_rollout_tokens = rcfg.num_chunks * rcfg.num_rollouts * rcfg.rollout_len
    totals = torch.zeros(4, dtype=torch.float64)  # ntp loss, ntp tokens, rl loss, rl tokens
    grad_norms, skipped = [], 0
    model.train()
    for lo in range(0, len(items), mini):
        members = range(lo, min(lo + mini, len(items)))
        ntp_tokens = sum(items[i].target_count() for i in members)
        rl_count = sum(can_rl[i] for i in members) * per_rollout_tokens
        if ntp_tokens == 0 and rl_count == 0:
            continue
        optimizer.zero_grad(set_to_none=True)
        mine = [i for i in members if i in set(local)]
        counts = (ntp_tokens, rl_count)
        groups = forward_groups(items, mine, rollouts) if stack else [[i] for i in mine]
        with engine.gathered():
            for position, group in enumerate(groups):
                loss_fn = functools.partial(_group_loss, group=[items[i] for i in group],
                                            rollouts=rollouts.get(group[0]), config=config, with_rl=with_rl,
                                            counts=counts, scale=engine.loss_scale, totals=totals,
                                            precision=precision, device=device)
                with engine.sync(position == len(groups) - 1):
                    engine.loss(loss_fn).backward()
            engine.reduce_gradients()
        norm = engine.clip_grad_norm(config.grad_clip)
        if math.isfinite(norm):
            optimizer.step()
            grad_norms.append(norm)
        else:  # non-finite loss or gradient: skip the step, keep the weights
            skipped += 1
        optimizer.zero_grad(set_to_none=True)
    dist.all_reduce_sum(totals)
    metrics = {
        "loss_ntp": float(totals[0] / max(totals[1], 1)),
        "grad_norm": sum(grad_norms) / len(grad_norms) if grad_norms else math.nan,
        "optimizer_steps": float(len(grad_norms)),
        "skipped_steps": float(skipped),
    }
    ntp_only = [i for i in range(len(items)) if with_rl and not can_rl[i]]
    if with_rl:
        metrics["loss_rl"] = float(totals[2] / max(totals[3], 1))
        metrics["loss"] = rcfg.lambda_sft * metrics["loss_ntp"] + rcfg.lambda_rl * metrics["loss_rl"]
        metrics["sequences_without_rollouts"] = float(len(ntp_only))
        metrics.update(reward_stats(rollouts, dist))
    else:
        metrics["loss"] = metrics["loss_ntp"]
    return PassResult(metrics, rollouts, ntp_only)


def scan_groups(items: list[Example], indices: list[int], max_tokens: int = SCAN_TOKENS) -> list[list[int]]:
    """`indices` grouped for the rollout scan: sequences of one length, in order of first appearance, at most
    `max_tokens` tokens per group (at least one sequence)."""
    by_length: dict[int, list[list[int]]] = {}
    for i in indices:
        groups = by_length.setdefault(len(items[i].ids), [[]])
        if groups[-1] and (len(groups[-1]) + 1) * len(items[i].ids) > max_tokens:
            groups.append([])
        groups[-1].append(i)
    return [g for groups in by_length.values() for g in groups]


def forward_groups(items: list[Example], indices: list[int], rollouts: dict[int, Rollouts]) -> list[list[int]]:
    """`indices` grouped for forwards: a sequence with rollouts alone (its branches follow its own states), the
    others stacked by (length, whether targets are marked), in order of first appearance."""
    groups: dict[object, list[int]] = {}
    for i in indices:
        key = ("rollouts", i) if i in rollouts else (len(items[i].ids), items[i].targets is None)
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def _group_loss(model, *, group: list[Example], rollouts: Rollouts | None, config: TrainConfig, with_rl: bool,
                counts: tuple[int, int], scale: float, totals: torch.Tensor, precision: str,
                device: torch.device) -> torch.Tensor:
    """The share of its mini-batch loss (normalised by the mini-batch's counts) of a group of sequences run as one
    forward [G, S], times `scale`; adds their unnormalised terms to `totals`."""
    ids = torch.stack([item.ids for item in group])
    targets = None if group[0].targets is None else torch.stack([item.targets for item in group])
    with autocast(precision, device):
        terms = sequence_terms(model, ids, config.refine, rollouts, targets=targets)
    loss = combined_loss(terms.ntp_sum, counts[0], terms.rl_sum, counts[1], config.refine if with_rl else None)
    totals.add_(torch.tensor([float(terms.ntp_sum.detach()), terms.ntp_tokens,
                              float(terms.rl_sum.detach()) if terms.rl_sum is not None else 0.0, terms.rl_tokens],
                             dtype=torch.float64))
    return loss * scale


def reward_stats(rollouts: dict[int, Rollouts], dist: DistContext) -> dict[str, float]:
    """Reward mean/std, the fraction of groups with zero reward spread (no learning signal) and the mean
    next-token entropy of the sequences, over all ranks."""
    rewards = torch.cat([r.rewards.double().cpu() for r in rollouts.values()]) if rollouts else torch.zeros(0)
    zero, groups = 0, 0
    for r in rollouts.values():
        for g in r.groups.unique():
            vals = r.rewards[r.groups == g]
            zero += int(vals.numel() < 2 or float(vals.std()) == 0.0)
            groups += 1
    entropy = sum(r.entropy_mean for r in rollouts.values())
    sums = torch.tensor([float(rewards.sum()), float(rewards.square().sum()), rewards.numel(), zero, groups,
                         entropy, len(rollouts)], dtype=torch.float64)
    dist.all_reduce_sum(sums)
    n = max(float(sums[2]), 1.0)
    mean = float(sums[0]) / n
    var = max(float(sums[1]) / n - mean**2, 0.0) * n / max(n - 1, 1)
    return {"reward_mean": mean, "reward_std": var**0.5, "frac_reward_zero_std": float(sums[3] / max(sums[4], 1)),
            "entropy_mean": float(sums[5] / max(sums[6], 1))}
