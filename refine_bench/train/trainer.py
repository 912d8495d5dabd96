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
from refine_bench.train.data import BatchStream, Example, PairStream
from refine_bench.train.distributed import DistContext
from refine_bench.train.presets import TrainConfig
from refine_bench.train.refine import Rollouts, collect_rollouts, sequence_terms, supports_rollouts

CHECKPOINT_PREFIX = "step-"
TRAINER_STATE = "trainer_state.json"
OPTIMIZER_STATE = "optimizer.pt"


def sequence_generator(seed: int, step: int, index: int) -> torch.Generator:
    """The random stream of one sequence in one step, independent of ranks and batching."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1_000_003 + index)


class Trainer:
    """Runs `config.steps` training steps of one arm on a model, with checkpoints and resume."""

    def __init__(
        self,
        model: FastWeightPreTrainedModel,
        tokenizer,
        config: TrainConfig,
        stream: BatchStream | PairStream,
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

    def train_step(self, batch: torch.Tensor | list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
        """One training step; returns the logged metrics.

        `batch` is [B, S] packed documents (mid-training: NTP, plus GRPO for refine), or a list of
        (prompt, answer) token tensors (post-training): `sft` trains on the answer tokens only;
        `nested_sft` / `nested_refine` first train on the prompt (NTP / REFINE), then on the answer.
        """
        start = time.perf_counter()
        arm = self.config.arm
        if isinstance(batch, torch.Tensor):
            metrics = self._optimize([Example(row) for row in batch], with_rl=arm == "refine")
            metrics["tokens"] = float(batch.numel())
        else:
            answers = [Example(torch.cat([p, a]), torch.cat([torch.zeros(len(p), dtype=torch.bool),
                                                             torch.ones(len(a), dtype=torch.bool)]))
                       for p, a in batch]
            metrics = {}
            if arm in ("nested_sft", "nested_refine"):
                prompt_metrics = self._optimize([Example(p) for p, _ in batch], with_rl=arm == "nested_refine")
                metrics.update({f"prompt_{k}" if k.startswith(("loss", "grad", "optimizer")) else k: v
                                for k, v in prompt_metrics.items()})
            answer_metrics = self._optimize(answers, with_rl=False, mini_batch=len(answers))
            metrics.update({f"answer_{k}" if k.startswith(("loss", "grad", "optimizer")) else k: v
                            for k, v in answer_metrics.items()})
            metrics["loss"] = answer_metrics["loss"]
            metrics["tokens"] = float(sum(len(p) + len(a) for p, a in batch))
        metrics["lr"] = self.config.lr
        metrics["seconds"] = time.perf_counter() - start
        return metrics

    def _optimize(self, items: list[Example], with_rl: bool, mini_batch: int | None = None) -> dict[str, float]:
        return optimize_items(self.model, self.optimizer, self.config, items, with_rl=with_rl, step=self.step,
                              dist=self.dist, mini_batch=mini_batch).metrics

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


@dataclass
class PassResult:
    """What one optimisation pass over a list of items produced."""

    metrics: dict[str, float]
    rollouts: dict[int, Rollouts]
    ntp_only: list[int]  # items that asked for REFINE but were too short for its rollouts


def optimize_items(
    model: FastWeightPreTrainedModel,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    items: list[Example],
    *,
    with_rl: bool,
    step: int,
    dist: DistContext | None = None,
    mini_batch: int | None = None,
) -> PassResult:
    """One pass over `items`: REFINE rollouts for all of them first (when with_rl) with the current policy,
    then one optimiser step per mini-batch, each item's loss normalised by its mini-batch's token counts.

    Items too short for REFINE's chunks get NTP only; a mini-batch with no target token makes no step (so no
    weight decay either). Shared by the trainer and test-time training.
    """
    dist = dist or DistContext()
    rcfg = config.refine
    local = set(dist.shard(len(items)))
    can_rl = [with_rl and supports_rollouts(len(it.ids), rcfg) for it in items]
    rollouts: dict[int, Rollouts] = {}
    if with_rl:
        model.eval()  # sampling with the current policy; no dropout in these models, but be explicit
        for i in sorted(local):
            if can_rl[i]:
                generator = sequence_generator(config.seed, step, i)
                rollouts[i] = collect_rollouts(model, items[i].ids[None], rcfg, generator)
        model.train()
    mini = min(mini_batch or config.optimizer_mini_batch, len(items))
    per_rollout_tokens = rcfg.num_chunks * rcfg.num_rollouts * rcfg.rollout_len
    lambda_sft = rcfg.lambda_sft if with_rl else 1.0
    totals = torch.zeros(4, dtype=torch.float64)  # ntp loss, ntp tokens, rl loss, rl tokens
    grad_norms = []
    model.train()
    for lo in range(0, len(items), mini):
        members = range(lo, min(lo + mini, len(items)))
        ntp_tokens = sum(items[i].target_count() for i in members)
        rl_tokens = max(sum(can_rl[i] for i in members) * per_rollout_tokens, 1)
        if ntp_tokens == 0 and not any(can_rl[i] for i in members):
            continue
        optimizer.zero_grad(set_to_none=False)
        for i in members:
            if i not in local:
                continue
            it = items[i]
            terms = sequence_terms(model, it.ids[None], rcfg, rollouts.get(i),
                                   targets=None if it.targets is None else it.targets[None])
            loss = terms.ntp_sum / max(ntp_tokens, 1) * lambda_sft
            if i in rollouts:
                loss = loss + terms.rl_sum / rl_tokens * rcfg.lambda_rl
            loss.backward()
            totals += torch.tensor([terms.ntp_sum.item(), terms.ntp_tokens, terms.rl_sum.detach().item(),
                                    terms.rl_tokens], dtype=torch.float64)
        dist.sum_gradients(model)
        grad_norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)))
        optimizer.step()
    dist.all_reduce_sum(totals)
    metrics = {
        "loss_ntp": float(totals[0] / max(totals[1], 1)),
        "grad_norm": sum(grad_norms) / len(grad_norms) if grad_norms else 0.0,
        "optimizer_steps": len(grad_norms),
    }
    ntp_only = [i for i in range(len(items)) if with_rl and not can_rl[i]]
    if with_rl:
        metrics["loss_rl"] = float(totals[2] / max(totals[3], 1))
        metrics["loss"] = rcfg.lambda_sft * metrics["loss_ntp"] + rcfg.lambda_rl * metrics["loss_rl"]
        metrics["sequences_without_rollouts"] = float(len(ntp_only))
        metrics.update(reward_stats(rollouts, dist))
    else:
        metrics["loss"] = metrics["loss_ntp"]
    return PassResult(metrics, rollouts, ntp_only)


def reward_stats(rollouts: dict[int, Rollouts], dist: DistContext) -> dict[str, float]:
    """Reward mean/std, the fraction of groups with zero reward spread (no learning signal) and the mean
    next-token entropy of the sequences, over all ranks."""
    rewards = torch.cat([r.rewards.double() for r in rollouts.values()]) if rollouts else torch.zeros(0)
    zero, groups = 0, 0
    for r in rollouts.values():
        for g in r.groups.unique():
            vals = r.rewards[r.groups == g]
            zero += int(vals.numel() < 2 or float(vals.std()) == 0.0)
            groups += 1
    entropy = sum(r.entropy_mean for r in rollouts.values())
    sums = torch.tensor([float(rewards.sum()), float(rewards.square().sum()), rewards.numel(), zero, groups,
                         entropy, len(rollouts)], dtype=torch.float64)
    dist.all_reduce_sum(sums)
    n = max(float(sums[2]), 1.0)
    mean = float(sums[0]) / n
    var = max(float(sums[1]) / n - mean**2, 0.0) * n / max(n - 1, 1)
    return {"reward_mean": mean, "reward_std": var**0.5, "frac_reward_zero_std": float(sums[3] / max(sums[4], 1)),
            "entropy_mean": float(sums[5] / max(sums[6], 1))}

