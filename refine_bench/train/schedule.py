"""Learning-rate schedules: constant (the paper's fine-tuning), or linear warm-up then cosine decay
(pretraining the small models)."""

from __future__ import annotations

import math

from refine_bench.train.config import TrainConfig


def learning_rate(config: TrainConfig, step: int) -> float:
    """The learning rate of training step `step` (0-based) of `config.steps`."""
    if config.lr_schedule == "constant":
        return config.lr
    warmup = config.warmup
    if step < warmup:
        return config.lr * (step + 1) / warmup
    decay_steps = max(config.steps - warmup, 1)
    progress = min((step - warmup) / decay_steps, 1.0)
    floor = config.lr * config.min_lr_ratio
    return floor + (config.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))
