"""Pretrain the shipped small models from a seed (`make small-models`) and install them into the package.

For each model: `refine-bench train --phase pretrain` once per curriculum stage on the project's generated corpus
(`--data corpus-tables:SEED`, then `corpus-dense:SEED`), then the last bf16 export goes to
refine_bench/models/assets/<model>/ with `training.json` (the exact commands, the recipe, tokens seen, wall time;
each stage's run record, with its data facts, is under --work/runs). The zoo loads it
from there (`refine-bench models` shows it as shipped).

usage: python scripts/build_small_models.py [MODEL ...] [--device auto|cpu|cuda] [--work DIR] [--no-install]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from refine_bench.train.checkpoints import checkpoint_step
from refine_bench.train.config import TrainConfig

ASSETS = Path(__file__).resolve().parents[1] / "refine_bench" / "models" / "assets"
# The recipe per model, as curriculum stages: every pretraining setting is here, so the build is reproducible.
# Stage 1 starts from the zoo config's seeded random init; each later stage continues from the previous stage's
# bf16 export (`--phase pretrain` with a checkpoint folder as --model continues from its weights). The recall
# drill (`corpus-tables`) comes first: on the mixed corpora alone the models learnt no recall (README, Models).
# deltanet-small's third stage widens the window to 512 tokens on corpus-dense at a lower LR: the shipped weights
# come from these four stages (README, Models, gives their NIAH scores and CPU time). lact-small learns the drill
# only at a lower LR and with patience (lr 5e-4: flat at ~1.96 for 500 steps, then falling; at 2e-3 it never moved
# in 2,200 steps on an H100), and uses its fast weights only when they can move (the zoo config's fast-weight base
# lr 0.1) and a stage needs them: `corpus-far` puts unrelated text between each table and its questions, farther
# than its 128-token attention window reaches. Its second stage continues from the drill's step-750 checkpoint
# (`from`: the path the shipped weights took; the drill's full 1,500 steps then the same far and 512-token stages
# were measured too, not taken through the 1,024-token stage: README, Models). The drill stops there
# (`stop-after`): the same weights as step 750 of the full 1,500-step schedule, without its discarded second half.
_TABLES = {"data": "corpus-tables:0", "steps": 500, "batch-size": 16, "seq-len": 256, "lr": 2e-3, "seed": 0}
_DENSE = {"data": "corpus-dense:0", "steps": 300, "batch-size": 16, "seq-len": 256, "lr": 2e-3, "seed": 0}
_DENSE_512 = {"data": "corpus-dense:0", "steps": 400, "batch-size": 16, "seq-len": 512, "lr": 1e-3, "seed": 0}
# deltanet-small's fourth stage: 600 more steps of the third's shape on another corpus-dense stream (seed 4, not the
# stages' 0 nor the mini-paper's 1000); it raised the NIAH means at 1K / 2K from 19.2 / 11.9 % to 28.1 / 22.5 % on
# the mini-paper's samples, where the same stage on a corpus with hex keys and values gave 27.4 / 13.9 (README, Models)
_DENSE_512_MORE = {"data": "corpus-dense:4", "steps": 600, "batch-size": 16, "seq-len": 512, "lr": 1e-3,
                   "warmup-steps": 30, "seed": 1}
_LACT_TABLES = {"data": "corpus-tables:0", "steps": 1500, "batch-size": 16, "seq-len": 256, "lr": 5e-4,
                "warmup-steps": 100, "seed": 0, "save-every": 250, "stop-after": 750}
_LACT_FAR = {"from": "checkpoints/step-750", "data": "corpus-far:0", "steps": 600, "batch-size": 8, "seq-len": 512,
             "lr": 5e-4, "warmup-steps": 50, "seed": 0}
_LACT_DENSE_512 = {"data": "corpus-dense:0", "steps": 300, "batch-size": 16, "seq-len": 512, "lr": 5e-4,
                   "warmup-steps": 50, "seed": 0}
_LACT_DENSE_1024 = {"data": "corpus-dense:0", "steps": 150, "batch-size": 8, "seq-len": 1024, "lr": 5e-4,
                    "warmup-steps": 20, "seed": 1}
RECIPES: dict[str, list[dict[str, object]]] = {
    "deltanet-small": [_TABLES, _DENSE, _DENSE_512, _DENSE_512_MORE],
    "lact-small": [_LACT_TABLES, _LACT_FAR, _LACT_DENSE_512, _LACT_DENSE_1024],
}


def _stage_command(model: str, stage: dict[str, object], device: str, work_dir: Path, runs: Path) -> list[str]:
    command = [sys.executable, "-m", "refine_bench", "train", "--phase", "pretrain", "--arm", "sft", "--model", model,
               "--device", device, "--work-dir", str(work_dir), "--runs-dir", str(runs), "--save-dtype", "bf16",
               "--report-to", "tensorboard"]
    for key, value in stage.items():
        if key != "from":
            command += [f"--{key}", str(value)]
    return command


def _last_step(stage: dict[str, object]) -> int:
    """The step a stage trains up to (`TrainConfig.last_step`): its `stop-after`, else its `steps`."""
    return int(stage.get("stop-after", stage["steps"]))


def stage_tokens(stages: list[dict[str, object]]) -> int:
    """Tokens the final weights were trained on: a stage counts up to its `stop-after`, and one that a later stage
    continues from a mid-run checkpoint of (`from: checkpoints/step-N`) up to step N only."""
    total = 0
    for i, stage in enumerate(stages):
        steps = _last_step(stage)
        after = stages[i + 1] if i + 1 < len(stages) else {}
        if "from" in after:
            steps = checkpoint_step(Path(str(after["from"])))
        total += steps * int(stage["batch-size"]) * int(stage["seq-len"])
    return total


def kept_checkpoint_steps(stage: dict[str, object]) -> list[int]:
    """The `checkpoints/step-N` a finished stage leaves on disk: its last step and the latest of its `save-every`
    steps, `keep-last` in all (else the trainer's default)."""
    last = _last_step(stage)
    every = int(stage.get("save-every", 0))
    saved = sorted({*range(every, last + 1, every), last} if every else {last})
    return saved[-int(stage.get("keep-last", TrainConfig.keep_last)):]


def check_recipe(model: str) -> None:
    """Refuse a recipe whose stage continues `from` a checkpoint that the previous stage will have deleted."""
    stages = RECIPES[model]
    for i, stage in enumerate(stages[1:], start=1):
        if "from" in stage:
            step = checkpoint_step(Path(str(stage["from"])))
            kept = kept_checkpoint_steps(stages[i - 1])
            if step not in kept:
                raise ValueError(f"{model} stage {i + 1} continues from {stage['from']}, but stage {i} keeps only "
                                 f"steps {kept}: set its stop-after or keep-last")


def build(model: str, device: str, work: Path, install: bool = True) -> Path:
    """Pretrain `model` through its recipe's stages; install the last bf16 export as the shipped checkpoint
    (with `install`), else leave it in the work folder. Returns the folder holding the final export."""
    check_recipe(model)
    start = time.perf_counter()
    source, commands, previous = model, [], work
    for i, stage in enumerate(RECIPES[model]):
        work_dir = work / model / f"stage-{i + 1}"
        if "from" in stage:  # a mid-run checkpoint of the previous stage instead of its final export
            source = str(previous / str(stage["from"]))
        command = _stage_command(source, stage, device, work_dir, work / "runs")
        subprocess.run(command, check=True)
        commands.append(["refine-bench", *command[3:]])
        source, previous = str(work_dir / "export-bf16"), work_dir
    seconds = time.perf_counter() - start
    final = Path(source)
    target = ASSETS / model if install else final
    if install:
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(final, target)
    (target / "training.json").write_text(json.dumps({
        "commands": commands, "recipe": RECIPES[model], "wall_seconds": round(seconds),
        "device": torch.cuda.get_device_name() if device != "cpu" and torch.cuda.is_available() else
        platform.processor() or platform.machine(),
        "tokens": stage_tokens(RECIPES[model]),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }, indent=2) + "\n")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=list(RECIPES), help="models to build (default: all)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--work", type=Path, default=Path("results/small-models"))
    parser.add_argument("--no-install", action="store_true", help="leave the exports in --work (a trial build)")
    args = parser.parse_args()
    unknown = [m for m in args.models if m not in RECIPES]
    if unknown:
        parser.error(f"unknown small model(s) {unknown}; choose from {', '.join(RECIPES)}")
    for model in args.models:
        print(f"built {model}: {build(model, args.device, args.work, install=not args.no_install)}")


if __name__ == "__main__":
    main()
