"""A training session: model, data, trainer, run record, resume, locks and signals wired together.

The settings that define a run (model, data, phase, arm, preset values, seed, world size) are hashed into the
default work folder and stored in every checkpoint; resuming under different settings is refused with the
differences listed unless `force_resume`. One writer per work folder (an advisory lock). SIGTERM and Ctrl-C
finish the run record as "interrupted" and say where to resume from; any other error marks it "failed".
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from refine_bench.distributed import DistContext, init_distributed
from refine_bench.errors import RefineBenchError, UserInputError
from refine_bench.fileio import exclusive_lock
from refine_bench.interrupts import Interrupted, sigterm_raises
from refine_bench.models.zoo import load_model, load_tokenizer, model_weights_sha256
from refine_bench.protocol import PRETRAIN, STAGES
from refine_bench.records import RunRecord
from refine_bench.train.checkpoints import latest_checkpoint, read_trainer_state
from refine_bench.train.config import TrainConfig, fingerprint
from refine_bench.train.documents import corpus_profile, corpus_seed, corpus_sequences, make_sequences, read_qa_pairs
from refine_bench.train.precision import use_master_weights
from refine_bench.train.progress import MetricWriter, ProgressBar, step_logger
from refine_bench.train.streams import PairStream, SequenceStream, encode_pairs
from refine_bench.train.trainer import NonFiniteTraining, Trainer

log = logging.getLogger(__name__)

CHECKPOINTING_MIN_PARAMS = 100_000_000  # activation checkpointing is on by default from this size up


class TrainingInterrupted(RefineBenchError):
    """SIGTERM or Ctrl-C stopped training; the run record says so. Exit code 128 + the signal number."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


@dataclass
class TrainRequest:
    """Everything a training run needs besides its TrainConfig."""

    model: str
    data: str = "builtin"
    text_field: str = "text"
    work_dir: Path | None = None
    runs_dir: Path = Path("results/runs")
    device: str = "auto"
    resume: bool = True
    force_resume: bool = False
    command: list[str] | None = None
    variant: str = ""
    report_to: str = "tensorboard"
    save_dtype: str = "fp32"
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)  # recorded with the run (e.g. data generator settings)


@dataclass
class TrainResult:
    checkpoint: Path | None
    record: Path | None
    resumed_from: Path | None
    finished_before: bool = False  # the work folder already held the finished run: nothing was trained
    export: Path | None = None  # the final weights in --save-dtype, when that is not float32
    is_main: bool = True  # rank 0 (the one that prints and writes records)


def run_identity(request: TrainRequest, config: TrainConfig, world_size: int) -> dict[str, Any]:
    """The settings that define what a run trains (what a checkpoint must match to be resumed)."""
    data = request.data
    if Path(data).exists():
        data = str(Path(data).resolve())
    model = request.model
    if Path(model).exists():
        model = str(Path(model).resolve())
    # the starting weights' hash, so that a changed checkpoint under the same name or folder is a new run
    # (`_load` pretrains a zoo name from its seeded init, a folder from its weights)
    weights = model_weights_sha256(request.model, random_init=config.phase == PRETRAIN)
    return {"model": model, "model_weights_sha256": weights, "data": data, "text_field": request.text_field,
            "world_size": world_size, **config.identity()}


def default_work_dir(model: str, config: TrainConfig, identity: dict[str, Any]) -> Path:
    """results/checkpoints/<model>-<phase>-<arm>-seed<N>-<hash of the run's settings>."""
    name = Path(model).name if Path(model).exists() else model
    return Path("results/checkpoints") / f"{name}-{config.phase}-{config.arm}-seed{config.seed}-{fingerprint(identity)}"


def identity_differences(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """Human-readable differences between two identity dicts ('key: saved -> now')."""
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(identity_differences(a, b, f"{prefix}{key}."))
        elif a != b and not (isinstance(a, list) and isinstance(b, tuple) and list(b) == a):
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def _check_resumable(previous: Path, identity: dict[str, Any], force: bool) -> list[str]:
    saved = read_trainer_state(previous).get("identity")
    differences = identity_differences(saved or {}, identity) if saved is not None else ["identity: not recorded"]
    if differences and not force:
        raise UserInputError(f"{previous} was trained with other settings ({'; '.join(differences)}); use another "
                             "--work-dir, or --force-resume to continue it anyway")
    return differences


def _load(request: TrainRequest, config: TrainConfig, device: str) -> tuple[torch.nn.Module, Any]:
    """The model in float32 (pretraining: the zoo config from a seeded random init) and its tokenizer."""
    model = load_model(request.model, dtype=torch.float32, device=device, seed=config.seed,
                       random_init=config.phase == PRETRAIN)
    use_master_weights(model)
    checkpointing = config.activation_checkpointing
    if checkpointing is None:
        checkpointing = sum(p.numel() for p in model.parameters()) >= CHECKPOINTING_MIN_PARAMS
    if checkpointing:
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise UserInputError(f"{type(model).__name__} cannot do activation checkpointing; "
                                 "pass --no-activation-checkpointing")
        model.gradient_checkpointing_enable()
    return model, load_tokenizer(request.model)


def _stream(request: TrainRequest, config: TrainConfig, tokenizer, device: str):
    if config.phase == "post":
        if request.data == "builtin":
            raise UserInputError("post-training needs --data: a .jsonl/.parquet file of 'prompt' and 'answer' rows")
        pairs = encode_pairs(read_qa_pairs(request.data), tokenizer, config.seq_len, config.answer_eos)
        stream = PairStream([(p.to(device), a.to(device)) for p, a in pairs], config.batch_size, seed=config.seed)
        return stream, {"mode": "pairs", "examples": len(pairs)}
    seed = corpus_seed(request.data)
    if seed is not None:
        if config.data_mode != "document":
            raise UserInputError("--data corpus makes one training window per document: use --data-mode document")
        from refine_bench.train.pretrain_corpus import natural_text_source

        profile = corpus_profile(request.data)
        sequences, targets, stats = corpus_sequences(seed, tokenizer, config.seq_len,
                                                     config.steps * config.batch_size, profile=profile)
        facts = {**stats.to_dict(), "natural_text": natural_text_source(), "profile": profile,
                 "loss": "answers of synthetic documents + natural documents"}
        return SequenceStream(sequences.to(device), config.batch_size, seed=config.seed,
                              targets=targets.to(device)), facts
    limit = config.steps * config.batch_size if request.data.startswith("hf:") else None  # one streamed pass
    sequences, stats = make_sequences(request.data, tokenizer, config.seq_len, config.data_mode,
                                      request.text_field, limit)
    if len(sequences) < config.batch_size:
        raise UserInputError(f"the data gives {len(sequences)} training sequences ({stats.documents_kept} of "
                             f"{stats.documents_read} documents kept in {config.data_mode} mode): fewer than one "
                             f"batch of {config.batch_size}")
    return SequenceStream(sequences.to(device), config.batch_size, seed=config.seed), stats.to_dict()


def _export(model: torch.nn.Module, tokenizer, work_dir: Path, dtype: str) -> Path:
    """The final weights cast to `dtype` (a checkpoint keeps float32 master weights), published by a rename."""
    target = work_dir / f"export-{dtype}"
    tmp = work_dir / f".tmp-export-{dtype}-{os.getpid()}"
    cast = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    state = {k: (v.to(cast) if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, state_dict=state, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def run_training(request: TrainRequest, config: TrainConfig) -> TrainResult:
    """Train `request.model` with `config` (see the module docstring)."""
    dist = init_distributed(request.device)
    identity = run_identity(request, config, dist.world_size)
    work_dir = Path(request.work_dir) if request.work_dir is not None else default_work_dir(request.model, config,
                                                                                            identity)
    if request.save_dtype not in ("fp32", "bf16", "fp16"):
        raise UserInputError(f"unknown --save-dtype {request.save_dtype!r}; choose from fp32, bf16, fp16")
    work_dir.mkdir(parents=True, exist_ok=True)
    lock = exclusive_lock(work_dir / ".lock", label=f"work folder {work_dir}",
                          hint="wait for it, or pass another --work-dir") if dist.is_main else contextlib.nullcontext()
    with lock:
        return _run_locked(request, config, dist, identity, work_dir)


def _run_locked(request: TrainRequest, config: TrainConfig, dist: DistContext, identity: dict[str, Any],
                work_dir: Path) -> TrainResult:
    previous = latest_checkpoint(work_dir) if request.resume else None
    differences: list[str] = []
    if previous is not None:
        differences = _check_resumable(previous, identity, request.force_resume)
        done = int(read_trainer_state(previous)["step"])
        if done >= config.last_step and not differences:
            return TrainResult(previous, None, previous, finished_before=True, is_main=dist.is_main)
    torch.manual_seed(config.seed)
    model, tokenizer = _load(request, config, dist.device)
    stream, data_stats = _stream(request, config, tokenizer, dist.device)
    stages = {config.phase: config.arm} if config.phase in STAGES else {}
    record = None
    if dist.is_main:
        record = RunRecord.create(
            request.runs_dir, kind="train", model=request.model, stages=stages, seed=config.seed,
            command=request.command,
            config={**config.to_dict(), "data": request.data, "text_field": request.text_field,
                    "work_dir": str(work_dir), "device": dist.device, "world_size": dist.world_size,
                    "resumed_from": str(previous) if previous else None, "variant": request.variant or None,
                    "model_weights_sha256": identity["model_weights_sha256"],
                    "identity_hash": fingerprint(identity), "force_resume": bool(differences),
                    "resume_differences": differences, "data_stats": data_stats, **request.extra})
    writer = MetricWriter(request.report_to, record.path if record is not None else None,
                          f"{request.model}-{config.phase}-{config.arm}", config.to_dict()) if dist.is_main else None
    trainer = Trainer(model, tokenizer, config, stream, output_dir=work_dir, dist=dist,
                      checkpoint_state={"identity": identity, "model": request.model})
    if previous is not None:
        trainer.resume(previous)
        if dist.is_main:
            log.warning("resuming from %s (step %d of %d)", previous, trainer.step, config.last_step)
    bar = ProgressBar(config.last_step, trainer.step, enabled=request.progress and dist.is_main,
                      description=f"{config.phase}/{config.arm}")
    sinks = [] if record is None else [record.log_metrics, writer.write]
    trainer.log_fn = step_logger(*sinks, lambda step, metrics: bar.update(metrics))
    status, error = "ok", None
    try:
        with sigterm_raises():
            checkpoint = trainer.train()
    except (KeyboardInterrupt, Interrupted) as exc:
        status = "interrupted"
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        raise TrainingInterrupted(f"interrupted at step {trainer.step}; last checkpoint: {trainer.last_checkpoint} "
                                  "(rerun the same command to resume)", int(signum)) from None
    except NonFiniteTraining as exc:
        status, error = "failed", str(exc)
        raise
    except BaseException as exc:
        status, error = "failed", f"{type(exc).__name__}: {exc}"
        raise
    finally:
        bar.close()
        if writer is not None:
            writer.close()
        if record is not None and status != "ok":
            record.write_json("checkpoint.json", {"checkpoint": str(trainer.last_checkpoint)
                                                  if trainer.last_checkpoint else None, "steps": trainer.step})
            record.finish(status, error=error)
    export = _export(model, tokenizer, work_dir, request.save_dtype) if request.save_dtype != "fp32" and \
        dist.is_main else None
    published = None
    if record is not None:
        record.write_json("checkpoint.json", {"checkpoint": str(checkpoint) if checkpoint else None,
                                              "steps": trainer.step, "skipped_steps": trainer.skipped_steps,
                                              "export": str(export) if export else None})
        published = record.finish("ok")
    return TrainResult(checkpoint, published, previous, export=export, is_main=dist.is_main)
