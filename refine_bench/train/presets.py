"""The paper's hyper-parameters per phase (Table 2 / D.1), and the training configuration."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from refine_bench.errors import UserInputError
from refine_bench.train.refine import RefineConfig

PHASES = ("mid", "post", "ttt")
PHASE_ARMS = {"mid": ("sft", "refine"), "post": ("sft", "nested_sft", "nested_refine"), "ttt": ("sft", "refine")}
ARMS = ("sft", "refine", "nested_sft", "nested_refine")

# phase -> (REFINE settings, batch size, PPO mini-batch size)
PHASE_PRESETS: dict[str, tuple[RefineConfig, int, int]] = {
    "mid": (RefineConfig(num_chunks=8, rollout_len=5, num_rollouts=1, lambda_sft=1.0, lambda_rl=0.2,
                         reward="cosine"), 128, 32),
    "post": (RefineConfig(num_chunks=8, rollout_len=5, num_rollouts=1, lambda_sft=1.0, lambda_rl=0.2,
                          reward="hybrid"), 64, 16),
    "ttt": (RefineConfig(num_chunks=8, rollout_len=5, num_rollouts=1, lambda_sft=1.0, lambda_rl=0.4,
                         reward="binary"), 8, 4),
}


@dataclass
class TrainConfig:
    """One training run. `mini_batch_size` sequences per optimiser step: the paper's REFINE arm makes
    batch / mini-batch steps per training step (4 at mid-training) and its SFT arm one; `sft_steps_like_refine`
    gives SFT the same number of optimiser steps for a compute-matched comparison."""

    arm: str = "refine"
    phase: str = "mid"
    steps: int = 100
    batch_size: int = 128
    mini_batch_size: int | None = None  # None: the preset's PPO mini-batch for refine, the whole batch for sft
    seq_len: int = 16384
    lr: float = 1e-6
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    save_every: int = 0  # steps between checkpoints (0: only at the end)
    sft_steps_like_refine: bool = False
    refine: RefineConfig = field(default_factory=RefineConfig)

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise UserInputError(f"unknown phase {self.phase!r}; valid phases: {', '.join(PHASES)}")
        if self.arm not in PHASE_ARMS[self.phase]:
            raise UserInputError(f"unknown arm {self.arm!r} for the {self.phase} phase; valid arms: "
                                 f"{', '.join(PHASE_ARMS[self.phase])}")
        if self.steps < 0 or self.batch_size < 1:
            raise UserInputError("steps must be >= 0 and batch_size >= 1")
        if self.batch_size % self.optimizer_mini_batch:
            raise UserInputError(
                f"batch_size {self.batch_size} is not a multiple of mini_batch_size {self.optimizer_mini_batch}"
            )

    @property
    def optimizer_mini_batch(self) -> int:
        """Sequences per optimiser step."""
        if self.mini_batch_size is not None:
            return self.mini_batch_size
        if self.arm in ("refine", "nested_refine") or self.sft_steps_like_refine:
            return min(PHASE_PRESETS[self.phase][2], self.batch_size)
        return self.batch_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = dict(data)
        data["refine"] = RefineConfig(**data.get("refine", {}))
        data["betas"] = tuple(data.get("betas", (0.9, 0.999)))
        return cls(**data)


def preset(phase: str, arm: str, **overrides: Any) -> TrainConfig:
    """The paper's settings for `phase`, with `overrides` (TrainConfig fields, or RefineConfig fields)."""
    if phase not in PHASE_PRESETS:
        raise UserInputError(f"unknown phase {phase!r}; valid phases: {', '.join(PHASES)}")
    refine_cfg, batch, _ = PHASE_PRESETS[phase]
    refine_fields = set(RefineConfig.__dataclass_fields__)
    refine_over = {k: v for k, v in overrides.items() if k in refine_fields and v is not None}
    train_over = {k: v for k, v in overrides.items() if k not in refine_fields and v is not None}
    unknown = set(train_over) - set(TrainConfig.__dataclass_fields__)
    if unknown:
        raise UserInputError(f"unknown training settings: {sorted(unknown)}")
    try:
        refine_cfg = replace(refine_cfg, **refine_over)
    except ValueError as exc:
        raise UserInputError(str(exc)) from exc
    return TrainConfig(**{"arm": arm, "phase": phase, "batch_size": batch, "refine": refine_cfg, **train_over})
