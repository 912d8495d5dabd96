"""A training session: model, data, trainer, run record and resume wired together (used by the CLI)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from refine_bench.errors import UserInputError
from refine_bench.models.zoo import load_model, load_tokenizer
from refine_bench.records import RunRecord
from refine_bench.train.data import (
    BatchStream,
    PairStream,
    encode_qa_pairs,
    pack_documents,
    read_documents,
    read_qa_pairs,
)
from refine_bench.train.distributed import init_distributed
from refine_bench.train.presets import TrainConfig
from refine_bench.train.refine import supports_rollouts
from refine_bench.train.trainer import Trainer, latest_checkpoint

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    checkpoint: Path | None
    record: Path | None
    resumed_from: Path | None


def default_work_dir(model: str, config: TrainConfig) -> Path:
    """Stable folder for a run's checkpoints, so re-running the same command resumes it."""
    name = Path(model).name if Path(model).exists() else model
    return Path("results/checkpoints") / f"{name}-{config.phase}-{config.arm}-seed{config.seed}"


def run_training(
    model_name: str,
    config: TrainConfig,
    data: str = "builtin",
    work_dir: Path | None = None,
    runs_dir: Path = Path("results/runs"),
    device: str = "cpu",
    resume: bool = True,
    command: list[str] | None = None,
    variant: str = "",
) -> TrainResult:
    """Train `model_name` with `config` on `data`; checkpoints in `work_dir`, metrics in a run record.

    With resume=True (default), a complete checkpoint already in `work_dir` is continued from, so an
    interrupted run finishes where it stopped instead of starting again. `variant` labels runs whose
    settings depart from the preset (ablations), so reports keep them apart.
    """
    dist = init_distributed(device)
    if dist.enabled and device == "cuda":
        device = dist.device  # one GPU per rank (cuda:LOCAL_RANK)
    work_dir = Path(work_dir) if work_dir is not None else default_work_dir(model_name, config)
    torch.manual_seed(config.seed)
    model = load_model(model_name, device=device, seed=config.seed)
    tokenizer = load_tokenizer(model_name)
    if config.phase == "post":
        if data == "builtin":
            raise UserInputError("post-training needs --data: a .jsonl/.parquet file of 'prompt' and 'answer' rows")
        pairs = encode_qa_pairs(read_qa_pairs(data), tokenizer, config.seq_len)
        stream = PairStream([(p.to(device), a.to(device)) for p, a in pairs], config.batch_size, seed=config.seed)
    else:
        if config.arm == "refine" and not supports_rollouts(config.seq_len, config.refine):
            raise UserInputError(
                f"seq_len {config.seq_len} is too short for REFINE's {config.refine.num_chunks} chunks and margin "
                f"{config.refine.margin}"
            )
        sequences = pack_documents(read_documents(data), tokenizer, config.seq_len)
        stream = BatchStream(sequences.to(device), config.batch_size, seed=config.seed)
    previous = latest_checkpoint(work_dir) if resume else None
    stages = {"mid": None, "post": None, "ttt": None, config.phase: config.arm}
    record = None
    if dist.is_main:
        record = RunRecord.create(runs_dir, kind="train", model=model_name, stages=stages,
                                  config={**config.to_dict(), "data": str(data), "work_dir": str(work_dir),
                                          "device": device, "world_size": dist.world_size,
                                          "resumed_from": str(previous) if previous else None,
                                          "variant": variant or None},
                                  seed=config.seed, command=command)
    trainer = Trainer(model, tokenizer, config, stream, output_dir=work_dir, dist=dist,
                      log_fn=record.log_metrics if record is not None else None)
    if previous is not None:
        trainer.resume(previous)
        log.warning("resuming from %s (step %d of %d)", previous, trainer.step, config.steps)
    try:
        checkpoint = trainer.train()
    except BaseException:
        if record is not None:
            record.finish("interrupted")
        raise
    checkpoint = checkpoint or latest_checkpoint(work_dir)
    published = None
    if record is not None:
        record.write_json("checkpoint.json", {"checkpoint": str(checkpoint) if checkpoint else None,
                                              "steps": trainer.step})
        published = record.finish("ok")
    return TrainResult(checkpoint, published, previous)
