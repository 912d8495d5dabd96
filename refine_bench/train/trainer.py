"""The one trainer: SFT (next-token prediction) and REFINE (NTP + GRPO on rollouts) over any fast-weight model.

A training step takes a global batch of sequences. For REFINE, rollouts for the whole batch are collected
first with the current policy, then the batch is consumed in PPO mini-batches, one optimiser step each.
Every sequence's loss is normalised by token counts of its whole mini-batch, so the gradient does not
depend on how sequences are spread over ranks or processed one by one. Random draws for a sequence come
from a generator seeded by (seed, step, sequence index): the same samples on any number of ranks, and
after a resume.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from refine_bench.errors import UserInputError
from refine_bench.fileio import atomic_write_json
from refine_bench.models.base import FastWeightPreTrainedModel
from refine_bench.train.data import BatchStream
from refine_bench.train.distributed import DistContext
from refine_bench.train.presets import TrainConfig
from refine_bench.train.refine import Rollouts, collect_rollouts, sequence_terms

CHECKPOINT_PREFIX = "step-"
TRAINER_STATE = "trainer_state.json"
OPTIMIZER_STATE = "optimizer.pt"


def sequence_generator(seed: int, step: int, index: int) -> torch.Generator:
    """The random stream of one sequence in one step, independent of ranks and batching."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1_000_003 + index)


@dataclass
class StepMetrics:
    values: dict[str, float]


class Trainer:
    """Runs `config.steps` training steps of one arm on a model, with checkpoints and resume."""

    def __init__(
        self,
        model: FastWeightPreTrainedModel,
        tokenizer,
        config: TrainConfig,
        stream: BatchStream,
        output_dir: Path | None = None,
        dist: DistContext | None = None,
        log_fn=None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.stream = stream
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.dist = dist or DistContext()
        self.log_fn = log_fn
        self.step = 0
        self.optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=config.lr, betas=config.betas,
            weight_decay=config.weight_decay,
        )

    # training ------------------------------------------------------------------------------------------
    def train(self) -> Path | None:
        """Train until `config.steps`; returns the last checkpoint folder (None without an output dir)."""
        self.model.train()
        last = None
        while self.step < self.config.steps:
            batch = next(self.stream)
            metrics = self.train_step(batch)
            self.step += 1
            metrics["step"] = self.step
            if self.log_fn is not None and self.dist.is_main:
                self.log_fn(self.step, metrics)
            every = self.config.save_every
            if self.output_dir is not None and (self.step == self.config.steps or (every and self.step % every == 0)):
                last = self.save_checkpoint()
        self.model.eval()
        return last

    def train_step(self, batch: torch.Tensor) -> dict[str, float]:
        """One training step on a global batch [B, S] of unpadded sequences; returns logged metrics."""
        cfg, rcfg = self.config, self.config.refine
        start = time.perf_counter()
        B = batch.shape[0]
        local = list(self.dist.shard(B))
        rollouts: dict[int, Rollouts] = {}
        if cfg.arm == "refine":
            self.model.eval()  # sampling with the current policy; no dropout in these models, but be explicit
            for i in local:
                rollouts[i] = collect_rollouts(self.model, batch[i : i + 1], rcfg,
                                               sequence_generator(cfg.seed, self.step, i))
            self.model.train()
        mini = cfg.optimizer_mini_batch
        totals = torch.zeros(4, dtype=torch.float64)  # ntp loss, ntp tokens, rl loss, rl tokens
        grad_norms = []
        for lo in range(0, B, mini):
            members = range(lo, lo + mini)
            ntp_tokens = mini * (batch.shape[1] - 1)
            rl_tokens = mini * rcfg.num_chunks * rcfg.num_rollouts * rcfg.rollout_len
            self.optimizer.zero_grad(set_to_none=False)
            for i in members:
                if i not in local:
                    continue
                terms = sequence_terms(self.model, batch[i : i + 1], rcfg, rollouts.get(i))
                loss = terms.ntp_sum / ntp_tokens * (rcfg.lambda_sft if cfg.arm == "refine" else 1.0)
                if cfg.arm == "refine":
                    loss = loss + terms.rl_sum / rl_tokens * rcfg.lambda_rl
                loss.backward()
                totals += torch.tensor([terms.ntp_sum.item(), terms.ntp_tokens, terms.rl_sum.detach().item(),
                                        terms.rl_tokens], dtype=torch.float64)
            self.dist.sum_gradients(self.model)
            grad_norms.append(float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)))
            self.optimizer.step()
        self.dist.all_reduce_sum(totals)
        metrics = {
            "loss_ntp": float(totals[0] / max(totals[1], 1)),
            "grad_norm": sum(grad_norms) / len(grad_norms),
            "lr": cfg.lr,
            "optimizer_steps": len(grad_norms),
            "tokens": float(batch.numel()),
            "seconds": time.perf_counter() - start,
        }
        if cfg.arm == "refine":
            metrics["loss_rl"] = float(totals[2] / max(totals[3], 1))
            metrics["loss"] = rcfg.lambda_sft * metrics["loss_ntp"] + rcfg.lambda_rl * metrics["loss_rl"]
            metrics.update(self._reward_stats(rollouts))
        else:
            metrics["loss"] = metrics["loss_ntp"]
        return metrics

    def _reward_stats(self, rollouts: dict[int, Rollouts]) -> dict[str, float]:
        """Reward mean/std and the fraction of groups with zero reward spread, over all ranks."""
        rewards = torch.cat([r.rewards.double() for r in rollouts.values()]) if rollouts else torch.zeros(0)
        zero, groups = 0, 0
        for r in rollouts.values():
            for g in r.groups.unique():
                vals = r.rewards[r.groups == g]
                zero += int(vals.numel() < 2 or float(vals.std()) == 0.0)
                groups += 1
        sums = torch.tensor([rewards.sum(), rewards.square().sum(), rewards.numel(), zero, groups],
                            dtype=torch.float64)
        self.dist.all_reduce_sum(sums)
        n = max(float(sums[2]), 1.0)
        mean = float(sums[0]) / n
        var = max(float(sums[1]) / n - mean**2, 0.0) * n / max(n - 1, 1)
        return {"reward_mean": mean, "reward_std": var**0.5, "frac_reward_zero_std": float(sums[3] / max(sums[4], 1))}

    # checkpoints -----------------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Write model, tokenizer, optimizer and trainer state as `checkpoints/step-N` (atomic rename)."""
        assert self.output_dir is not None
        final = self.output_dir / "checkpoints" / f"{CHECKPOINT_PREFIX}{self.step}"
        if self.dist.is_main:
            tmp = final.with_name(f".tmp-{final.name}")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            self.model.save_pretrained(tmp, safe_serialization=True)
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(tmp)
            torch.save(self.optimizer.state_dict(), tmp / OPTIMIZER_STATE)
            atomic_write_json(tmp / TRAINER_STATE, {"step": self.step, "stream_position": self.stream.position,
                                                    "config": self.config.to_dict()})
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
        self.dist.barrier()
        return final

    def resume(self, checkpoint: Path) -> None:
        """Continue from a checkpoint folder written by `save_checkpoint` (weights, optimizer, step, data)."""
        checkpoint = Path(checkpoint)
        state_file = checkpoint / TRAINER_STATE
        if not state_file.is_file():
            raise UserInputError(f"{checkpoint} is not a trainer checkpoint ({TRAINER_STATE} missing)")
        state = json.loads(state_file.read_text())
        from refine_bench.models.checkpoint import load_state_dict

        self.model.load_strict(load_state_dict(checkpoint))
        self.optimizer.load_state_dict(torch.load(checkpoint / OPTIMIZER_STATE, map_location="cpu",
                                                  weights_only=True))
        self.step = int(state["step"])
        self.stream.position = int(state["stream_position"])


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The complete checkpoint with the highest step under `output_dir/checkpoints`, if any."""
    folder = Path(output_dir) / "checkpoints"
    if not folder.is_dir():
        return None
    done = [p for p in folder.iterdir() if p.name.startswith(CHECKPOINT_PREFIX) and (p / TRAINER_STATE).is_file()]
    return max(done, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]), default=None)
