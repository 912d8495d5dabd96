"""REFINE step 6: group-relative advantages and the clipped (dual-clip) policy-gradient surrogate."""

from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, groups: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(r - mean_group) / (std_group + eps) for rewards [R] and integer group ids [R].

    std is the unbiased sample std (as torch.std); a group of one gets advantage 0.
    """
    adv = torch.zeros_like(rewards, dtype=torch.float32)
    for g in groups.unique():
        idx = groups == g
        r = rewards[idx].float()
        if r.numel() < 2:
            continue
        adv[idx] = (r - r.mean()) / (r.std() + eps)
    return adv


def clipped_surrogate(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = 3.0,
) -> torch.Tensor:
    """Per-token PPO loss for logp, old_logp [R, k] and advantages [R] (broadcast over the k tokens).

    loss = -min(ratio * A, clip(ratio, 1 - low, 1 + high) * A); for A < 0 the dual clip bounds the loss
    by -dual_clip * A. Returns [R, k]; the caller aggregates (token mean).
    """
    adv = advantages[:, None].to(logp.dtype)
    ratio = torch.exp(logp - old_logp)
    loss = torch.maximum(-ratio * adv, -ratio.clamp(1 - clip_low, 1 + clip_high) * adv)
    if dual_clip is not None:
        loss = torch.where(adv < 0, torch.minimum(loss, -dual_clip * adv), loss)
    return loss
