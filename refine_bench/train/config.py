"""Training settings: `RefineConfig` (the REFINE objective) and `TrainConfig` (one training run).

Both validate themselves on construction and raise `UserInputError` naming the setting, so bad input stops a
run before any compute. The paper's values per phase live in `presets.py`.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from refine_bench.errors import UserInputError
from refine_bench.protocol import PHASE_ARMS, REFINE_ARMS

REWARDS = ("cosine", "binary", "hybrid")
SELECTIONS = ("entropy", "uniform", "argmax", "argmin")
ROLLOUT_MODES = ("branch", "recompute")
RECOMPUTE_PADS = ("official", "masked")
SINGLE_ROLLOUT_ADVANTAGES = ("raw", "zero")
PRECISIONS = ("auto", "bf16", "fp32")
DATA_MODES = ("document", "packed")
LR_SCHEDULES = ("constant", "cosine")
PARALLEL_MODES = ("auto", "fsdp", "ddp")


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserInputError(f"unknown {name} {value!r}; choose from {', '.join(choices)}")


def _finite_positive(name: str, value: float, allow_zero: bool = False) -> None:
    ok = isinstance(value, int | float) and math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise UserInputError(f"{name} must be a finite number {'>= 0' if allow_zero else '> 0'}, got {value!r}")


@dataclass
class RefineConfig:
    """REFINE hyper-parameters. Defaults are the paper's mid-training values and its code's conventions;
    every switch that departs from the paper's code is named here (see the README's list)."""

    num_chunks: int = 8  # c: rollout positions per sequence, one per equal chunk of its tokens
    rollout_len: int = 5  # k: tokens per rollout
    num_rollouts: int = 1  # n: rollouts per position
    reward: str = "cosine"  # cosine | binary | hybrid (= cosine + binary)
    selection: str = "entropy"  # entropy (sampled from softmax(H/tau)) | uniform | argmax | argmin
    selection_temperature: float = 1.0  # tau
    sample_temperature: float = 1.0  # rollout sampling temperature (top-p 1, no top-k)
    smooth_kernel: int | None = None  # entropy smoothing window; None: k (k + 1 when k is even)
    smooth_argmax: bool = False  # argmax/argmin on smoothed entropy (paper's code: raw entropy)
    margin: int = 20  # rollout starts are clamped to [margin, S - margin]
    rollout_eos: bool = False  # rollouts may sample EOS (paper's code: min_new_tokens = k, so never)
    single_rollout_advantage: str = "raw"  # a group of one: raw reward (paper's code: mean 0, std 1) or zero
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float | None = 3.0
    log_ratio_clamp: float | None = 20.0  # |log pi/pi_old| clamp before exp (paper's code: 20)
    lambda_sft: float = 1.0
    lambda_rl: float = 0.2
    rollout_mode: str = "branch"  # branch the teacher-forced state | recompute every prefix (paper's code)
    recompute_pads: str = "official"  # recompute: pads as the paper's models treat them (LaCT: unmasked)

    def __post_init__(self) -> None:
        _choice("reward", self.reward, REWARDS)
        _choice("selection", self.selection, SELECTIONS)
        _choice("rollout mode", self.rollout_mode, ROLLOUT_MODES)
        _choice("recompute pad policy", self.recompute_pads, RECOMPUTE_PADS)
        _choice("single-rollout advantage", self.single_rollout_advantage, SINGLE_ROLLOUT_ADVANTAGES)
        for name in ("num_chunks", "rollout_len", "num_rollouts"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserInputError(f"{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.margin, int) or self.margin < 1:
            raise UserInputError(f"margin must be an integer >= 1, got {self.margin!r}")
        if self.rollout_len > self.margin:
            raise UserInputError(f"rollout length k={self.rollout_len} must not exceed the margin {self.margin} "
                                 "(a rollout must end inside the sequence)")
        _finite_positive("selection temperature", self.selection_temperature)
        _finite_positive("sampling temperature", self.sample_temperature)
        _finite_positive("lambda_sft", self.lambda_sft, allow_zero=True)
        _finite_positive("lambda_rl", self.lambda_rl, allow_zero=True)
        _finite_positive("clip_low", self.clip_low, allow_zero=True)
        _finite_positive("clip_high", self.clip_high, allow_zero=True)
        if self.dual_clip is not None and not (math.isfinite(self.dual_clip) and self.dual_clip > 1):
            raise UserInputError(f"dual_clip must be > 1 (or None), got {self.dual_clip!r}")
        if self.log_ratio_clamp is not None:
            _finite_positive("log_ratio_clamp", self.log_ratio_clamp)
        if self.smooth_kernel is not None and (not isinstance(self.smooth_kernel, int) or self.smooth_kernel < 1):
            raise UserInputError(f"smooth_kernel must be an integer >= 1, got {self.smooth_kernel!r}")

    @property
    def smoothing_window(self) -> int:
        """The odd average-pooling window: k, or k + 1 when k is even."""
        size = self.smooth_kernel or self.rollout_len
        return size if size % 2 == 1 else size + 1

    def min_sequence_length(self) -> int:
        """The shortest sequence that holds c rollout positions with their margins."""
        return max(self.num_chunks, 2 * self.margin + 1)


@dataclass
class TrainConfig:
    """One training run. `mini_batch_size` sequences make one optimiser step: the paper's REFINE arm makes
    batch / mini-batch steps per training step (4 at mid-training) and its SFT arm one; `sft_steps_like_refine`
    gives SFT the same number of optimiser steps for a compute-matched comparison."""

    arm: str = "refine"
    phase: str = "mid"
    steps: int = 100
    # stop after this step of the `steps`-step schedule (the learning rate still follows the whole schedule); a
    # later run without it resumes to `steps`. None: run all `steps`
    stop_after: int | None = None
    batch_size: int = 128
    mini_batch_size: int | None = None  # None: the preset's PPO mini-batch for REFINE, the whole batch for SFT
    seq_len: int = 16384
    lr: float = 1e-6
    lr_schedule: str = "constant"  # constant | cosine (with warm-up; pretraining)
    warmup_steps: int | None = None  # None: 5% of the steps for the cosine schedule
    min_lr_ratio: float = 0.1  # cosine floor, as a fraction of lr
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    save_every: int = 0  # steps between checkpoints (0: only at the end)
    keep_last: int = 2  # checkpoints kept on disk (older ones are deleted once a newer one is complete)
    sft_steps_like_refine: bool = False
    data_mode: str = "document"  # document: one document per sequence, its first seq_len tokens | packed
    answer_eos: bool = False  # post-training: append EOS to answers (paper's code: no)
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | bf16 | fp32; weights are fp32
    activation_checkpointing: bool | None = None  # None: on for models of >= 100M parameters
    parallel: str = "auto"  # with several ranks: auto (fsdp on CUDA, ddp on CPU) | fsdp | ddp
    max_nonfinite_steps: int = 3  # consecutive skipped (non-finite) steps before the run stops
    refine: RefineConfig = field(default_factory=RefineConfig)

    def __post_init__(self) -> None:
        _choice("phase", self.phase, tuple(PHASE_ARMS))
        if self.arm not in PHASE_ARMS[self.phase]:
            raise UserInputError(f"unknown arm {self.arm!r} for the {self.phase} phase; valid arms: "
                                 f"{', '.join(PHASE_ARMS[self.phase])}")
        for name in ("steps", "batch_size", "seq_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserInputError(f"{name} must be an integer >= 1, got {value!r}")
        _finite_positive("learning rate", self.lr)
        _finite_positive("weight decay", self.weight_decay, allow_zero=True)
        _finite_positive("gradient clip", self.grad_clip)
        _choice("lr schedule", self.lr_schedule, LR_SCHEDULES)
        _choice("precision", self.precision, PRECISIONS)
        _choice("data mode", self.data_mode, DATA_MODES)
        _choice("parallel mode", self.parallel, PARALLEL_MODES)
        if self.stop_after is not None and (isinstance(self.stop_after, bool) or not isinstance(self.stop_after, int)
                                            or not 1 <= self.stop_after <= self.steps):
            raise UserInputError(f"stop_after must be an integer in [1, steps={self.steps}], got {self.stop_after!r}")
        if self.warmup_steps is not None and not 0 <= self.warmup_steps <= self.steps:
            raise UserInputError(f"warmup_steps must be in [0, steps={self.steps}], got {self.warmup_steps}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise UserInputError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.keep_last < 1 or self.max_nonfinite_steps < 1:
            raise UserInputError("keep_last and max_nonfinite_steps must be >= 1")
        if self.mini_batch_size is not None and self.mini_batch_size < 1:
            raise UserInputError(f"mini_batch_size must be >= 1, got {self.mini_batch_size}")
        if self.batch_size % self.optimizer_mini_batch:
            raise UserInputError(
                f"batch_size {self.batch_size} is not a multiple of mini_batch_size {self.optimizer_mini_batch}"
            )
        if self.uses_rollouts and self.seq_len < self.refine.min_sequence_length():
            raise UserInputError(
                f"seq_len {self.seq_len} is too short for REFINE's {self.refine.num_chunks} chunks with a margin "
                f"of {self.refine.margin} (needs >= {self.refine.min_sequence_length()})"
            )

    @property
    def last_step(self) -> int:
        """The step this run trains up to: `stop_after`, else `steps`."""
        return self.steps if self.stop_after is None else self.stop_after

    @property
    def warmup(self) -> int:
        """Warm-up steps of the cosine schedule (given, or 5% of the run)."""
        if self.warmup_steps is not None:
            return self.warmup_steps
        return math.ceil(0.05 * self.steps) if self.lr_schedule == "cosine" else 0

    @property
    def uses_rollouts(self) -> bool:
        """Whether this arm's objective has REFINE's GRPO term."""
        return self.arm in REFINE_ARMS

    @property
    def optimizer_mini_batch(self) -> int:
        """Sequences per optimiser step."""
        if self.mini_batch_size is not None:
            return self.mini_batch_size
        if self.uses_rollouts or self.sft_steps_like_refine:
            from refine_bench.train.presets import PHASE_PRESETS

            return min(PHASE_PRESETS[self.phase].mini_batch_size, self.batch_size)
        return self.batch_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        refine_known = {f.name for f in fields(RefineConfig)}
        data["refine"] = RefineConfig(**{k: v for k, v in data.get("refine", {}).items() if k in refine_known})
        data["betas"] = tuple(data.get("betas", (0.9, 0.999)))
        return cls(**data)

    def identity(self) -> dict[str, Any]:
        """The settings that define what is trained: a checkpoint resumes only under the same identity.
        Run length, checkpoint cadence and other bookkeeping are left out (extending `steps` is a resume)."""
        out = self.to_dict()
        for key in ("stop_after", "save_every", "keep_last", "max_nonfinite_steps", "parallel"):
            out.pop(key)
        if self.lr_schedule == "constant":  # the schedule does not depend on the run's length
            for key in ("steps", "warmup_steps", "min_lr_ratio"):
                out.pop(key)
        return out


def fingerprint(settings: dict[str, Any], length: int = 10) -> str:
    """A short, stable hash of a settings dict (JSON with sorted keys)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]
