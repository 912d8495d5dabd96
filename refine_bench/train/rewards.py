"""REFINE step 5: one scalar reward per rollout of k tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F

REWARDS = ("cosine", "binary", "hybrid")


def rollout_rewards(
    kind: str, h_pred: torch.Tensor, h_gt: torch.Tensor, tokens: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """Rewards [R] for R rollouts.

    cosine: mean over the k tokens of cos(h_pred, h_gt) (hidden states [R, k, D]);
    binary: fraction of the k sampled tokens equal to the ground truth (tokens, target [R, k]);
    hybrid: cosine + binary.
    """
    if kind not in REWARDS:
        raise ValueError(f"reward must be one of {REWARDS}, got {kind!r}")
    with torch.no_grad():
        cosine = F.cosine_similarity(h_pred.float(), h_gt.float(), dim=-1).mean(-1)
        binary = (tokens == target).float().mean(-1)
    return {"cosine": cosine, "binary": binary, "hybrid": cosine + binary}[kind]
