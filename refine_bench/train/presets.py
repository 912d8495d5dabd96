"""The paper's hyper-parameters per phase (REFINE paper, Table 2 and Appendix D.1), and the project's own
pretraining preset for the small models.

Shared by every REFINE phase (Table 2): optimiser AdamW with betas (0.9, 0.999) and weight decay 0.01, constant
learning rate 1e-6, gradient-norm clip 1.0, temperature 1 and top-p 1 for rollouts, entropy-sampled positions
(tau = 1), clip epsilon 0.2 (low and high) with dual clip 3.0, token-mean loss, one PPO epoch, no KL or entropy
term. Per phase:

========  ==  ==  ==  =====  =====  =====  =======  ==========  =======================================
phase     c   k   n   batch  λ_SFT  λ_RL   reward   mini-batch  data
========  ==  ==  ==  =====  =====  =====  =======  ==========  =======================================
mid       8   5   1   128    1      0.2    cosine   32          documents >= 16,384 tokens, first 16,384
post      8   5   1   64     1      0.2    hybrid   16          RULER QA training prompts + answers
ttt       8   5   1   8      1      0.4    binary   4           the test prompts themselves
========  ==  ==  ==  =====  =====  =====  =======  ==========  =======================================

c = rollout positions per sequence, k = rollout length, n = rollouts per position; the paper runs ~100
mid-training steps. `pretrain` is not in the paper: warm-up + cosine from a random init, next-token prediction
on training windows of the project's generated corpus, for the project's small models.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from refine_bench.errors import UserInputError
from refine_bench.protocol import PHASE_ARMS, PRETRAIN
from refine_bench.train.config import RefineConfig, TrainConfig


@dataclass(frozen=True)
class PhasePreset:
    """One phase's column of Table 2 (plus the run-shape defaults that go with it)."""

    refine: RefineConfig
    batch_size: int
    mini_batch_size: int  # PPO mini-batch: sequences per optimiser step for REFINE arms
    train: dict[str, Any]  # further TrainConfig defaults for the phase


_PAPER = dict(lr=1e-6, betas=(0.9, 0.999), weight_decay=0.01, grad_clip=1.0, lr_schedule="constant")

PHASE_PRESETS: dict[str, PhasePreset] = {
    "mid": PhasePreset(RefineConfig(num_chunks=8, rollout_len=5, num_rollouts=1, lambda_sft=1.0, lambda_rl=0.2,
                                    reward="cosine"), 128, 32,
                       dict(_PAPER, steps=100, seq_len=16384, data_mode="document")),
    "post": PhasePreset(RefineConfig(num_chunks=8, rollout_len=5, num_rollouts=1, lambda_sft=1.0, lambda_rl=0.2,
                                     reward="hybrid"), 64, 16,
                        dict(_PAPER, steps=100, seq_len=16384)),
    "ttt": PhasePreset(RefineConfig(num_chunks=8, rollout_len=5, num_rollouts=1, lambda_sft=1.0, lambda_rl=0.4,
                                    reward="binary"), 8, 4,
                       dict(_PAPER, steps=1, seq_len=16384)),
    PRETRAIN: PhasePreset(RefineConfig(), 32, 32,
                          dict(lr=2e-3, betas=(0.9, 0.95), weight_decay=0.1, grad_clip=1.0, lr_schedule="cosine",
                               min_lr_ratio=0.1, steps=2000, seq_len=512, data_mode="document")),
}


def preset(phase: str, arm: str, **overrides: Any) -> TrainConfig:
    """The settings of `phase` for `arm`, with `overrides` (TrainConfig or RefineConfig fields; None = unset)."""
    if phase not in PHASE_PRESETS:
        raise UserInputError(f"unknown phase {phase!r}; valid phases: {', '.join(PHASE_PRESETS)}")
    if arm not in PHASE_ARMS[phase]:
        raise UserInputError(f"unknown arm {arm!r} for the {phase} phase; valid arms: {', '.join(PHASE_ARMS[phase])}")
    chosen = PHASE_PRESETS[phase]
    refine_fields = set(RefineConfig.__dataclass_fields__)
    given = {k: v for k, v in overrides.items() if v is not None}
    refine_over = {k: v for k, v in given.items() if k in refine_fields}
    train_over = {k: v for k, v in given.items() if k not in refine_fields}
    unknown = set(train_over) - set(TrainConfig.__dataclass_fields__)
    if unknown:
        raise UserInputError(f"unknown training settings: {sorted(unknown)}")
    refine = replace(chosen.refine, **refine_over)
    settings = {**chosen.train, "batch_size": chosen.batch_size, **train_over}
    return TrainConfig(arm=arm, phase=phase, refine=refine, **settings)


def departures(config: TrainConfig) -> dict[str, Any]:
    """The settings of `config` that differ from its phase preset (REFINE knobs and protocol switches):
    a run with any of them is a variant and never fills a paper cell. Run length and sizes do not count."""
    reference = preset(config.phase, config.arm)
    out: dict[str, Any] = {}
    if config.uses_rollouts:
        for name in RefineConfig.__dataclass_fields__:
            if name == "rollout_mode":  # branch and recompute give the same gradients: not a variant
                continue
            if getattr(config.refine, name) != getattr(reference.refine, name):
                out[name] = getattr(config.refine, name)
    for name in ("data_mode", "answer_eos", "lr_schedule", "betas", "weight_decay", "grad_clip"):
        if getattr(config, name) != getattr(reference, name):
            out[name] = getattr(config, name)
    return out
