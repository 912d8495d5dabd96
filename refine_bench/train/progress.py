"""Watching a run: a progress bar (step, loss, reward, tokens/s, ETA) and metric writers (TensorBoard event
files in the run record, or Weights & Biases)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from refine_bench.errors import UserInputError

REPORT_TO = ("tensorboard", "wandb", "none")
_BAR_KEYS = (("loss", "loss"), ("reward_mean", "reward"))


class MetricWriter:
    """Scalar metrics per step to TensorBoard (`<folder>/tensorboard`) or wandb; `none` writes nothing."""

    def __init__(self, report_to: str, folder: Path | None, run_name: str, config: dict[str, Any]) -> None:
        if report_to not in REPORT_TO:
            raise UserInputError(f"unknown --report-to {report_to!r}; choose from {', '.join(REPORT_TO)}")
        self.kind = report_to if folder is not None or report_to == "wandb" else "none"
        self._writer = None
        if self.kind == "tensorboard":
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise UserInputError("--report-to tensorboard needs the tensorboard package "
                                     "(pip install tensorboard), or pass --report-to none") from exc
            self._writer = SummaryWriter(log_dir=str(Path(folder) / "tensorboard"))
        elif self.kind == "wandb":
            try:
                import wandb
            except ImportError as exc:
                raise UserInputError("--report-to wandb needs the wandb package (pip install wandb)") from exc
            self._writer = wandb.init(name=run_name, config=config, reinit=True)

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        scalars = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and k != "step"}
        if self.kind == "tensorboard":
            for key, value in scalars.items():
                self._writer.add_scalar(f"train/{key}", value, step)
            self._writer.flush()
        elif self.kind == "wandb":
            self._writer.log(scalars, step=step)

    def close(self) -> None:
        if self.kind == "tensorboard":
            self._writer.close()
        elif self.kind == "wandb":
            self._writer.finish()


class ProgressBar:
    """A tqdm bar over training steps showing loss, reward mean and tokens/s (its ETA comes from tqdm)."""

    def __init__(self, total: int, start: int = 0, enabled: bool = True, description: str = "train") -> None:
        self._bar = None
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=start, desc=description, unit="step", dynamic_ncols=True)

    def update(self, metrics: dict[str, Any]) -> None:
        if self._bar is None:
            return
        shown = {label: f"{metrics[key]:.4g}" for key, label in _BAR_KEYS
                 if isinstance(metrics.get(key), float) and math.isfinite(metrics[key])}
        seconds = metrics.get("seconds")
        if seconds:
            shown["tok/s"] = f"{metrics.get('tokens', 0.0) / seconds:,.0f}"
        self._bar.set_postfix(shown, refresh=False)
        self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def step_logger(*sinks: Callable[[int, dict[str, Any]], None]) -> Callable[[int, dict[str, Any]], None]:
    """One trainer log callback that feeds every sink; non-finite values become None (JSON has no NaN)."""
    def log(step: int, metrics: dict[str, Any]) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
        for sink in sinks:
            sink(step, clean)

    return log
