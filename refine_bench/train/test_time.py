"""Test-time training (the `ttt` phase): adapt a model on a batch of test prompts, then let it answer them.

SFT adapts with next-token prediction on the prompt tokens; REFINE with NTP plus GRPO on rollouts inside the
prompt (the trainer's optimisation pass). Prompts have different lengths, so each is processed on its own, and
every loss term is normalised by the token counts of its whole mini-batch, as the trainer does (with
equal-length prompts an adaptation pass is exactly `Trainer.train_step`). Weights adapt in float32 (a bf16
model is upcast on first use) with forwards under the config's precision, as in training.

Reset policies: `accumulate` (default, the paper's code: it never resets within a task) keeps the adapted
weights, so adaptation carries over along the test stream; `per_example` restores the weights and the optimizer
state after each batch has been answered, so every batch starts from the evaluated checkpoint.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from refine_bench.distributed import DistContext
from refine_bench.errors import UserInputError
from refine_bench.train.config import TrainConfig
from refine_bench.train.optimization import Example, PassResult, optimize_items
from refine_bench.train.parallel import DataParallel
from refine_bench.train.precision import resolve_precision, use_master_weights

log = logging.getLogger(__name__)

RESET_POLICIES = ("accumulate", "per_example")
DEFAULT_RESET = "accumulate"


def normalize_reset(policy: str) -> str:
    """`per_example` / `accumulate` (hyphens accepted); anything else is a UserInputError."""
    name = str(policy).replace("-", "_")
    if name not in RESET_POLICIES:
        raise UserInputError(f"unknown test-time-training reset policy {policy!r}; choose from "
                             f"{', '.join(p.replace('_', '-') for p in RESET_POLICIES)}")
    return name


class TestTimeAdapter:
    """Adapts `model` on prompt batches with the `ttt` arm of `config` (see the module docstring).

    `steps` optimiser passes over each batch (each pass: fresh rollouts for REFINE, then one optimiser step per
    mini-batch of `config.optimizer_mini_batch` prompts). The optimizer and the reference copy of the weights are
    created on first use, after the caller has moved the model to its device.
    """

    __test__ = False  # not a pytest class

    def __init__(
        self,
        model: torch.nn.Module,
        config: TrainConfig,
        reset: str = DEFAULT_RESET,
        steps: int = 1,
        log_fn: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        if config.phase != "ttt":
            raise UserInputError(f"test-time training needs a TrainConfig of phase 'ttt', got {config.phase!r}")
        if steps < 1:
            raise UserInputError(f"test-time-training steps must be >= 1, got {steps}")
        self.model = model
        self.config = config
        self.reset_policy = normalize_reset(reset)
        self.steps = int(steps)
        self.log_fn = log_fn
        self.passes = 0  # optimiser passes made so far (seeds each pass's rollouts)
        self.batches = 0
        self._optimizer: torch.optim.Optimizer | None = None
        self._engine: DataParallel | None = None
        self._weights: dict[str, torch.Tensor] | None = None
        self._optimizer_state: dict[str, Any] | None = None

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        self._ensure_ready()
        assert self._optimizer is not None
        return self._optimizer

    # ------------------------------------------------------------------ weights and optimizer state

    def _ensure_ready(self) -> None:
        if self._optimizer is not None:
            return
        cfg = self.config
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise UserInputError("test-time training needs trainable parameters; the model has none")
        use_master_weights(self.model)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self._engine = DataParallel(self.model, None, DistContext())
        self._optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        self._weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self._optimizer_state = copy.deepcopy(self._optimizer.state_dict())

    def reset(self) -> None:
        """Restore the weights and the optimizer state the adapter started from (bit for bit)."""
        if self._optimizer is None:
            return
        assert self._weights is not None and self._optimizer_state is not None
        with torch.no_grad():
            for name, value in self.model.state_dict().items():
                value.copy_(self._weights[name])
        self._optimizer.load_state_dict(copy.deepcopy(self._optimizer_state))
        self._optimizer.zero_grad(set_to_none=True)

    # ------------------------------------------------------------------ adaptation

    @contextmanager
    def adapt(self, prompts: Sequence[Sequence[int]]) -> Iterator[dict[str, Any]]:
        """Adapt on `prompts` (token ids, no padding), yield the batch's stats while the caller answers them
        with the adapted model, then reset the weights if the policy is `per_example`."""
        stats = self.train_on(prompts)
        try:
            yield stats
        finally:
            if self.reset_policy == "per_example":
                self.reset()

    def train_on(self, prompts: Sequence[Sequence[int]]) -> dict[str, Any]:
        """`steps` optimiser passes over one batch of prompts; leaves the model adapted and in eval mode."""
        self._ensure_ready()
        device = next(self.model.parameters()).device
        precision = resolve_precision(self.config.precision, device)
        items = [Example(torch.as_tensor(list(p), dtype=torch.long, device=device)) for p in prompts]
        start = time.perf_counter()
        refine = self.config.arm == "refine"
        passes: list[PassResult] = []
        try:
            with torch.enable_grad():
                for _ in range(self.steps):
                    passes.append(optimize_items(self._engine, self.optimizer, self.config, items, with_rl=refine,
                                                 step=self.passes, precision=precision))
                    self.passes += 1
        finally:
            self.model.eval()
            self.optimizer.zero_grad(set_to_none=True)
        last = passes[-1]
        stats: dict[str, Any] = {
            "batch": self.batches,
            "arm": self.config.arm,
            "prompts": len(items),
            "prompt_tokens": sum(len(it.ids) for it in items),
            "optimizer_steps": sum(int(p.metrics["optimizer_steps"]) for p in passes),
            "loss_ntp": last.metrics["loss_ntp"],
            "grad_norm": last.metrics["grad_norm"],
            "seconds": time.perf_counter() - start,
        }
        if refine:
            stats["loss_rl"] = last.metrics["loss_rl"]
            stats["rollout_tokens"] = sum(r.tokens.numel() for p in passes for r in p.rollouts.values())
            stats["ntp_only"] = last.ntp_only
            if any(p.rollouts for p in passes):
                stats["reward_mean"] = float(torch.cat([r.rewards.double() for p in passes
                                                        for r in p.rollouts.values()]).mean())
            if last.ntp_only:
                log.info("test-time REFINE: prompt(s) %s too short for %d chunks with margin %d; NTP only",
                         last.ntp_only, self.config.refine.num_chunks, self.config.refine.margin)
        self.batches += 1
        if self.log_fn is not None:
            self.log_fn(stats)
        return stats
