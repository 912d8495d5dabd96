"""Pretrain the shipped small models from a seed (`make small-models`) and install them into the package.

For each model: `refine-bench train --phase pretrain` on the project's generated corpus (`--data corpus:SEED`),
then the bf16 export goes to refine_bench/models/assets/<model>/ with `training.json` (the exact command, the data
source and its natural-text package, the run record's settings, tokens seen and wall time). The zoo loads it
from there (`refine-bench models` shows it as shipped).

usage: python scripts/build_small_models.py [MODEL ...] [--device auto|cpu|cuda] [--work DIR]
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

ASSETS = Path(__file__).resolve().parents[1] / "refine_bench" / "models" / "assets"
# The recipe per model: every pretraining setting is here, so the build is one reproducible command.
RECIPES: dict[str, dict[str, object]] = {
    "deltanet-small": {"data": "corpus:0", "steps": 1500, "batch-size": 16, "seq-len": 512, "lr": 2e-3, "seed": 0},
    "lact-small": {"data": "corpus:0", "steps": 1500, "batch-size": 16, "seq-len": 512, "lr": 2e-3, "seed": 0},
}


def build(model: str, device: str, work: Path) -> Path:
    """Pretrain `model` with its recipe and install the bf16 export as the shipped checkpoint."""
    recipe = RECIPES[model]
    work_dir = work / model
    command = [sys.executable, "-m", "refine_bench", "train", "--phase", "pretrain", "--arm", "sft", "--model", model,
               "--device", device, "--work-dir", str(work_dir), "--runs-dir", str(work / "runs"),
               "--save-dtype", "bf16", "--report-to", "tensorboard"]
    for key, value in recipe.items():
        command += [f"--{key}", str(value)]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - start
    target = ASSETS / model
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(work_dir / "export-bf16", target)
    records = sorted((work / "runs").glob(f"*-train-{model}-*"))
    settings = json.loads((records[-1] / "run.json").read_text())["config"] if records else {}
    (target / "training.json").write_text(json.dumps({
        "command": ["refine-bench", *command[3:]], "recipe": recipe, "wall_seconds": round(seconds),
        "device": torch.cuda.get_device_name() if device != "cpu" and torch.cuda.is_available() else
        platform.processor() or platform.machine(),
        "tokens": int(recipe["steps"]) * int(recipe["batch-size"]) * int(recipe["seq-len"]),
        "data_stats": settings.get("data_stats"),
        "torch": torch.__version__,
    }, indent=2) + "\n")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=list(RECIPES), help="models to build (default: all)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--work", type=Path, default=Path("results/small-models"))
    args = parser.parse_args()
    unknown = [m for m in args.models if m not in RECIPES]
    if unknown:
        parser.error(f"unknown small model(s) {unknown}; choose from {', '.join(RECIPES)}")
    for model in args.models:
        print(f"built {model}: {build(model, args.device, args.work)}")


if __name__ == "__main__":
    main()
