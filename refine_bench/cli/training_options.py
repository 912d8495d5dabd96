"""Command-line options shared by `refine-bench train` and `run`, declared once, and the config they build."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from refine_bench.train.config import TrainConfig
from refine_bench.train.presets import departures, preset

# Sizes for the CPU-scale zoo models when the user gives none: a smoke-scale run, not the paper's 128 x 16K.
CPU_SCALE_DEFAULTS = {"steps": 2, "batch_size": 4, "mini_batch_size": 2, "seq_len": 256}
# Short names of the paper's ablation knobs in variant labels.
_KNOB_LABELS = {"num_chunks": "chunks", "rollout_len": "k"}

Model = Annotated[str, typer.Option(help="Zoo name, local checkpoint directory or hub id.")]
Data = Annotated[str, typer.Option(help="Training text: a .jsonl ('text') / .txt / .parquet file or folder, a "
                                   "datasets.save_to_disk folder, hf:NAME[:CONFIG][@SPLIT], or 'builtin' (a "
                                   "smoke-test corpus); post-training: .jsonl/.parquet with 'prompt' and 'answer'.")]
TextField = Annotated[str, typer.Option(help="Column holding the document text.")]
DataMode = Annotated[str | None, typer.Option(help="document (the paper's: documents >= seq-len tokens, first "
                                              "seq-len tokens) or packed (joined with EOS; a variant).")]
Steps = Annotated[int | None, typer.Option(help="Training steps (preset: 100; CPU-scale models: 2).")]
BatchSize = Annotated[int | None, typer.Option(help="Sequences per step (preset: 128/64 by phase).")]
MiniBatch = Annotated[int | None, typer.Option(help="Sequences per optimiser step (REFINE preset: 32).")]
SeqLen = Annotated[int | None, typer.Option(help="Tokens per sequence (preset: 16384; CPU-scale models: 256).")]
Lr = Annotated[float | None, typer.Option(help="Learning rate (preset: 1e-6).")]
Chunks = Annotated[int | None, typer.Option("--chunks", help="REFINE c: rollout positions per sequence.")]
RolloutLen = Annotated[int | None, typer.Option("--rollout-len", help="REFINE k: tokens per rollout.")]
Rollouts = Annotated[int | None, typer.Option("--rollouts", help="REFINE n: rollouts per position.")]
Reward = Annotated[str | None, typer.Option(help="cosine, binary or hybrid (preset by phase).")]
Selection = Annotated[str | None, typer.Option(help="entropy (default), uniform, argmax or argmin.")]
RolloutMode = Annotated[str | None, typer.Option(help="branch (default: states branched off the teacher-forced "
                                                 "pass) or recompute (every prefix re-forwarded, as the paper's "
                                                 "code; same gradients, more compute).")]
RolloutEos = Annotated[bool | None, typer.Option("--rollout-eos/--no-rollout-eos", help="Let rollouts sample EOS "
                                                 "(paper's code: never).")]
SmoothArgmax = Annotated[bool | None, typer.Option("--smooth-argmax/--raw-argmax", help="argmax/argmin selection "
                                                   "on smoothed entropy (paper's code: raw).")]
SingleAdvantage = Annotated[str | None, typer.Option(help="Advantage of a rollout alone in its group: raw (the "
                                                     "reward, paper's code) or zero.")]
Precision = Annotated[str, typer.Option(help="auto (bf16 autocast on CUDA, fp32 on CPU), bf16 or fp32; weights "
                                        "always train in float32.")]
Checkpointing = Annotated[bool | None, typer.Option("--activation-checkpointing/--no-activation-checkpointing",
                                                    help="Recompute each block's activations in the backward "
                                                    "(default: on for models of >= 100M parameters).")]
Parallel = Annotated[str, typer.Option(help="With several ranks: auto (fsdp on CUDA, ddp on CPU), fsdp or ddp.")]
SaveDtype = Annotated[str, typer.Option(help="Also export the final weights in this dtype (fp32: no export; "
                                        "checkpoints always hold float32 master weights).")]
KeepLast = Annotated[int | None, typer.Option(help="Checkpoints kept on disk (default 2).")]
SaveEvery = Annotated[int | None, typer.Option(help="Checkpoint every N steps (default: at the end only).")]
Seed = Annotated[int, typer.Option(help="Seed for data order, rollouts and (random-init models) weights.")]
Device = Annotated[str, typer.Option(help="auto (cuda when available), cpu, cuda, cuda:N.")]
WorkDir = Annotated[Path | None, typer.Option(help="Checkpoint folder (default results/checkpoints/<run>-<hash "
                                              "of its settings>).")]
RunsDir = Annotated[Path, typer.Option(help="Where run records go.")]
ForceResume = Annotated[bool, typer.Option(help="Resume a checkpoint even if it was trained with other settings "
                                           "(recorded in the run record).")]
ReportTo = Annotated[str, typer.Option(help="tensorboard (event files in the run record), wandb or none.")]


def is_cpu_scale(model: str) -> bool:
    """Zoo models meant for CPUs (tiny and small): their training defaults are smoke-scale."""
    from refine_bench.models.zoo import MODELS

    entry = MODELS.get(model)
    return entry is not None and entry.hub_id is None


def build_config(model: str, arm: str, phase: str, **options: Any) -> TrainConfig:
    """The phase preset, CPU-scale sizes for CPU-scale models where nothing was given, then `options`."""
    given = {k: v for k, v in options.items() if v is not None}
    sizes = {k: v for k, v in CPU_SCALE_DEFAULTS.items() if k not in given} if is_cpu_scale(model) else {}
    if arm not in ("refine", "nested_refine") and not given.get("sft_steps_like_refine"):
        sizes.pop("mini_batch_size", None)
    return preset(phase, arm, **sizes, **given)


def variant_label(config: TrainConfig) -> str:
    """'k=v,...' for the settings that depart from the phase preset ('' for a preset run)."""
    labelled = {_KNOB_LABELS.get(k, k): v for k, v in departures(config).items()}
    return ",".join(f"{k}={v}" for k, v in sorted(labelled.items()))
