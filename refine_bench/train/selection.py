"""REFINE step 1-3: next-token entropies, smoothing, and the choice of rollout start positions."""

from __future__ import annotations

import torch
import torch.nn.functional as F

STRATEGIES = ("entropy", "uniform", "argmax", "argmin")
MIN_MARGIN = 20  # rollout starts are clamped to [start + 20, S - 20], as in the paper's code


def next_token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """H_t = entropy of p(x_{t+1} | x_{<=t}) for logits [..., T, V]; returns [..., T] in float32."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def smooth_entropy(entropy: torch.Tensor, kernel: int) -> torch.Tensor:
    """1-D average pooling over [B, T] with kernel k (k + 1 when k is even), stride 1, zero padding k // 2."""
    size = kernel if kernel % 2 == 1 else kernel + 1
    return F.avg_pool1d(entropy[:, None].float(), size, stride=1, padding=size // 2)[:, 0]


def select_rollout_starts(
    entropy: torch.Tensor,
    num_chunks: int,
    *,
    start: int = 0,
    strategy: str = "entropy",
    temperature: float = 1.0,
    margin: int = MIN_MARGIN,
    generator: torch.Generator | None = None,
) -> list[int]:
    """Rollout start positions s for one sequence whose real tokens are entropy[start:] (a 1-D tensor).

    The real tokens are split into `num_chunks` equal chunks; in each, one position t is chosen
    (sampled with probability softmax(H_t / temperature), uniformly, or by argmax / argmin), and the rollout
    starts at s = t + 1 clamped to [start + margin, S - margin] (S = full length).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"selection strategy must be one of {STRATEGIES}, got {strategy!r}")
    S = entropy.shape[-1]
    real = S - start
    if real < num_chunks or real < 2 * margin + 1:
        raise ValueError(
            f"sequence has {real} real tokens: too short for {num_chunks} chunks with a margin of {margin}"
        )
    bounds = torch.linspace(start, S, num_chunks + 1).round().long().tolist()
    starts = []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        h = entropy[lo:hi].float().cpu()  # the CPU generator draws the same positions on any device
        if strategy == "entropy":
            idx = int(torch.multinomial(torch.softmax(h / temperature, -1), 1, generator=generator))
        elif strategy == "uniform":
            idx = int(torch.randint(hi - lo, (1,), generator=generator))
        elif strategy == "argmax":
            idx = int(h.argmax())
        else:
            idx = int(h.argmin())
        starts.append(min(max(lo + idx + 1, start + margin), S - margin))
    return starts
