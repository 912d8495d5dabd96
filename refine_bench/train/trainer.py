"""The one trainer: every arm of every phase is a list of optimisation passes over a batch of `Example`s.

pretrain / mid   one pass over the sequences: NTP, plus REFINE's GRPO term for `refine`
post             `sft`: the answer tokens; `nested_sft` / `nested_refine`: the prompts first (NTP / REFINE),
                 then the answer tokens, inside each step

A step whose optimiser steps were all skipped as non-finite counts towards `max_nonfinite_steps` in a row,
after which training stops (the last good checkpoint stays the latest one).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from refine_bench.distributed import DistContext
from refine_bench.errors import RefineBenchError
from refine_bench.train.checkpoints import load_checkpoint, save_checkpoint
from refine_bench.train.config import TrainConfig
from refine_bench.train.optimization import Example, optimize_items
from refine_bench.train.parallel import DataParallel, check_world_size, resolve_parallel
from refine_bench.train.precision import resolve_precision
from refine_bench.train.schedule import learning_rate


class NonFiniteTraining(RefineBenchError):
    """Training stopped after too many consecutive non-finite steps."""


@dataclass(frozen=True)
class PassPlan:
    """One optimisation pass of a step: which examples, with or without rollouts, how many per optimiser step,
    and the prefix its metrics are logged under ('' for the main pass)."""

    items: list[Example]
    with_rl: bool
    mini_batch: int | None
    prefix: str = ""


def plan_step(config: TrainConfig, batch: list[Example]) -> list[PassPlan]:
    """The passes of one training step for the config's arm."""
    if config.phase != "post":
        return [PassPlan(batch, config.uses_rollouts, None)]
    answers = PassPlan(batch, False, len(batch), "answer_")
    if config.arm == "sft":
        return [answers]
    return [PassPlan([ex.prompt() for ex in batch], config.arm == "nested_refine", None, "prompt_"), answers]


class Trainer:
    """Runs `config.steps` training steps (or up to `config.stop_after`) of one arm on a model, with checkpoints
    and resume."""

    def __init__(self, model: torch.nn.Module, tokenizer, config: TrainConfig, stream, output_dir: Path | None = None,
                 dist: DistContext | None = None, log_fn: Callable[[int, dict[str, Any]], None] | None = None,
                 checkpoint_state: dict[str, Any] | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.stream = stream
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.dist = dist or DistContext()
        self.log_fn = log_fn
        self.checkpoint_state = dict(checkpoint_state or {})  # extra facts every checkpoint records
        self.step = 0
        self.nonfinite_in_a_row = 0
        self.skipped_steps = 0
        device = next(model.parameters()).device
        self.precision = resolve_precision(config.precision, device)
        check_world_size(config.batch_size, config.optimizer_mini_batch, self.dist)
        self.engine = DataParallel(model, resolve_parallel(config.parallel, self.dist), self.dist)
        self.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                                           betas=config.betas, weight_decay=config.weight_decay)
        self.last_checkpoint: Path | None = None

    # training ----------------------------------------------------------------------------------------------
    def train(self) -> Path | None:
        """Train until `config.last_step`; returns the last checkpoint folder (None without an output dir)."""
        while self.step < self.config.last_step:
            metrics = self.train_step(next(self.stream))
            self.step += 1
            metrics["step"] = self.step
            if self.log_fn is not None and self.dist.is_main:
                self.log_fn(self.step, metrics)
            self._track_nonfinite(metrics)
            every = self.config.save_every
            due = self.step == self.config.last_step or (every and self.step % every == 0)
            if self.output_dir is not None and due and self.nonfinite_in_a_row == 0:  # never save a bad step
                self.save_checkpoint()
        self.model.eval()
        return self.last_checkpoint

    def train_step(self, batch: list[Example]) -> dict[str, float]:
        """One training step over a batch; returns the logged metrics."""
        start = time.perf_counter()
        lr = learning_rate(self.config, self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        metrics: dict[str, float] = {}
        for plan in plan_step(self.config, batch):
            result = optimize_items(self.engine, self.optimizer, self.config, plan.items, with_rl=plan.with_rl,
                                    step=self.step, mini_batch=plan.mini_batch, precision=self.precision)
            for key, value in result.metrics.items():
                named = f"{plan.prefix}{key}" if plan.prefix and key.startswith(("loss", "grad", "optimizer")) else key
                metrics[named] = metrics.get(named, 0.0) + value if key == "skipped_steps" else value
        if "answer_loss" in metrics:
            metrics["loss"] = metrics["answer_loss"]
        metrics["tokens"] = float(sum(len(ex.ids) for ex in batch))
        metrics["lr"] = lr
        metrics["seconds"] = time.perf_counter() - start
        return metrics

    def _track_nonfinite(self, metrics: dict[str, float]) -> None:
        steps = sum(v for k, v in metrics.items() if k.endswith("optimizer_steps"))
        skipped = metrics.get("skipped_steps", 0.0)
        self.skipped_steps += int(skipped)
        bad = skipped > 0 and steps == 0 or not math.isfinite(metrics.get("loss", 0.0))
        self.nonfinite_in_a_row = self.nonfinite_in_a_row + 1 if bad else 0
        if self.nonfinite_in_a_row >= self.config.max_nonfinite_steps:
            where = f"; the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint else ""
            raise NonFiniteTraining(f"training stopped at step {self.step}: {self.nonfinite_in_a_row} steps in a "
                                    f"row had a non-finite loss, gradient or sampling distribution{where}")

    # checkpoints ---------------------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Write `checkpoints/step-N` (float32 master weights, optimizer, data position, settings)."""
        assert self.output_dir is not None
        state = {**self.checkpoint_state, "stream_position": self.stream.position, "config": self.config.to_dict(),
                 "world_size": self.dist.world_size, "skipped_steps": self.skipped_steps}
        self.last_checkpoint = save_checkpoint(self.output_dir, self.step, self.model, self.optimizer, self.tokenizer,
                                               state, self.dist, keep_last=self.config.keep_last)
        return self.last_checkpoint

    def resume(self, checkpoint: Path) -> dict[str, Any]:
        """Continue from a checkpoint written by `save_checkpoint` (weights, optimizer, step, data position);
        the learning rate follows this run's config (`train_step` sets it). Returns the checkpoint's state."""
        state = load_checkpoint(Path(checkpoint), self.model, self.optimizer)
        self.step = int(state["step"])
        self.stream.position = int(state["stream_position"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.last_checkpoint = Path(checkpoint)
        return state
