"""`refine-bench mini-paper`: the paper's mid-training comparison in miniature, on the project's small models.

For each model: SFT and REFINE mid-training from the same checkpoint on the same data and token budget, over
several seeds, and the untrained base model, each evaluated on the 8 NIAH tasks at several lengths on the same
NIAH samples (the base model once: nothing about it depends on a seed); then
Table 3's layout with 95% intervals over seeds, paired REFINE - SFT tests and plots (`refine-bench tables
--mini-paper`). Everything lands under one folder; an interrupted run resumes (finished trainings and
evaluations are not redone). Every record carries the SHA-256 of the weights its model started from: records of
a model's earlier weights (a rebuilt `deltanet-small`, say) never count as done, and are moved to
`other-weights/` so that no table mixes two versions of a model.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import typer

from refine_bench.cli.option_values import int_list
from refine_bench.protocol import BASE_ARM, NIAH_TASKS

DEFAULT_MODELS = ("deltanet-small", "lact-small")
SET_ASIDE_DIR = "other-weights"  # inside the output folder: records of earlier weights of a model


@dataclass(frozen=True)
class MiniPaperPlan:
    """The miniature's settings: what is trained, on what, for how long, and how it is evaluated."""

    models: tuple[str, ...] = DEFAULT_MODELS
    seeds: tuple[int, ...] = (0, 1, 2)
    arms: tuple[str, ...] = (BASE_ARM, "sft", "refine")
    # generated documents the pretraining never saw: the last pretraining stage's mix, another seed's stream
    data: str = "corpus-dense:1000"
    seq_len: int = 2048  # 4x the last pretraining window, as the paper mid-trains at 16K after shorter pretraining
    steps: int = 40
    batch_size: int = 8
    # the paper's 1e-6 moves a few-million-parameter model nowhere in 40 steps; 1e-4 for 20 REFINE steps cost
    # deltanet-small a third of its S-NIAH recall in a trial, so the miniature mid-trains gently
    lr: float = 3e-5
    lengths: tuple[int, ...] = (1024, 2048, 4096)
    limit: int = 16  # NIAH samples per task and length
    # requests per generate call: the small models never emit EOS, so every answer decodes all 128 tokens, and
    # decoding one token costs about the same for 8 left-padded rows as for one
    eval_batch_size: int = 8
    tasks: tuple[str, ...] = NIAH_TASKS

    @property
    def tokens_per_run(self) -> int:
        return self.steps * self.batch_size * self.seq_len


QUICK = MiniPaperPlan(seeds=(0, 1), steps=3, batch_size=4, seq_len=512, lengths=(1024,), limit=4,
                      tasks=("niah_single_1", "niah_multikey_1", "niah_multivalue", "niah_multiquery"))


def _records(runs_dir: Path) -> list[tuple[Path, dict]]:
    """(folder, run.json) of every run record in `runs_dir`, in name order."""
    if not runs_dir.is_dir():
        return []
    return [(folder, json.loads((folder / "run.json").read_text())) for folder in sorted(runs_dir.iterdir())
            if not folder.name.startswith(".") and (folder / "run.json").is_file()]


def _weights_of(meta: dict) -> str | None:
    config = meta.get("config")
    return config.get("model_weights_sha256") if isinstance(config, dict) else None


def _finished_eval(runs_dir: Path, model: str, arm: str, seed: int, weights: str | None) -> Path | None:
    """An ok evaluation record of this (model, mid-training arm, seed) made from these starting weights."""
    for folder, meta in _records(runs_dir):
        if (meta.get("kind"), meta.get("status"), meta.get("model"), meta.get("arm"), meta.get("seeds", {}).get("seed"),
                _weights_of(meta)) == ("eval", "ok", model, arm, seed, weights):
            return folder
    return None


def set_aside_other_weights(runs_dir: Path, weights: dict[str, str | None], aside_dir: Path) -> list[Path]:
    """Move the records of `weights`' models that were made from other weights (or that predate weight hashes)
    out of `runs_dir` into `aside_dir`, so the tables never mix two versions of a model; returns their new paths."""
    moved = []
    for folder, meta in _records(runs_dir):
        model = meta.get("model")
        if model in weights and _weights_of(meta) != weights[model]:
            aside_dir.mkdir(parents=True, exist_ok=True)
            moved.append(folder.rename(aside_dir / folder.name))
    return moved


def run_mini_paper(plan: MiniPaperPlan, out_dir: Path, device: str = "auto") -> list[Path]:
    """Train and evaluate every (model, arm, seed) of `plan` not done yet, then build the tables."""
    from refine_bench.cli.training_options import build_config
    from refine_bench.eval.runner import run_eval
    from refine_bench.fileio import atomic_write_json
    from refine_bench.models.zoo import model_weights_sha256
    from refine_bench.report.build import build_mini_paper
    from refine_bench.train.session import TrainRequest, run_training

    runs_dir, work_root = out_dir / "runs", out_dir / "work"
    weights = {model: model_weights_sha256(model) for model in plan.models}
    for path in set_aside_other_weights(runs_dir, weights, out_dir / SET_ASIDE_DIR):
        typer.echo(f"set aside, made from other weights than the model's current ones: {path}")
    atomic_write_json(out_dir / "plan.json", {**asdict(plan), "command": sys.argv, "model_weights_sha256": weights,
                                              "tokens_per_training_run": plan.tokens_per_run})
    started = time.perf_counter()
    for model in plan.models:
        for seed in plan.seeds:
            for arm in plan.arms:
                if arm == BASE_ARM and seed != plan.seeds[0]:
                    continue
                if _finished_eval(runs_dir, model, arm, seed, weights[model]):
                    typer.echo(f"done already: {model} {arm} seed {seed}")
                    continue
                checkpoint = None
                if arm != BASE_ARM:
                    config = build_config(model, arm, "mid", steps=plan.steps, batch_size=plan.batch_size,
                                          seq_len=plan.seq_len, lr=plan.lr, seed=seed)
                    # a folder per starting weights: a finished training of other weights is never picked up
                    work_dir = work_root / f"{model}-{arm}-seed{seed}-{(weights[model] or 'init')[:12]}"
                    request = TrainRequest(model=model, data=plan.data, runs_dir=runs_dir, device=device,
                                           work_dir=work_dir, command=sys.argv, report_to="none", progress=False)
                    checkpoint = str(run_training(request, config).checkpoint)
                run_eval(model, [",".join(plan.tasks)], checkpoint=checkpoint, lengths=list(plan.lengths),
                         limit=plan.limit, batch_size=plan.eval_batch_size, output=runs_dir, device=device, seed=seed,
                         stages={"mid": None if arm == BASE_ARM else arm}, command=sys.argv)
                typer.echo(f"{model} {arm} seed {seed}: {time.perf_counter() - started:.0f} s so far")
    return build_mini_paper(runs_dir, out_dir, with_plots=True).paths


def mini_paper_command(
    out: Path = typer.Option(Path("results/mini-paper"), help="Folder for records, checkpoints and tables."),
    quick: bool = typer.Option(False, "--quick", help="A CI-sized run: 2 seeds, 3 steps, 4 tasks at 1K, 4 "
                               "samples (checks the pipeline; the numbers mean little)."),
    models: str | None = typer.Option(None, help="Comma-separated models (default: " + ",".join(DEFAULT_MODELS) + ")."),
    seeds: str | None = typer.Option(None, help="Comma-separated seeds (default 0,1,2)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda."),
) -> None:
    """Base vs SFT vs REFINE mid-training of the small models over seeds, evaluated on NIAH; writes tables."""
    plan = QUICK if quick else MiniPaperPlan()
    if models:
        plan = replace(plan, models=tuple(m.strip() for m in models.split(",") if m.strip()))
    if seeds:
        plan = replace(plan, seeds=tuple(int_list(seeds, "--seeds") or ()))
    for path in run_mini_paper(plan, out, device):
        typer.echo(str(path))
