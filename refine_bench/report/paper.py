"""The paper's reported numbers (baselines/*.csv) and the mapping from run model names to the paper's models."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from refine_bench.errors import UserInputError

PAPER_MODELS = ("LaCT-760M", "DeltaNet-1.3B")
RESULTS_CSV = "paper_results.csv"
ABLATIONS_CSV = "paper_ablations.csv"


def default_baselines_dir() -> Path:
    """baselines/ of the source checkout holding this package, else ./baselines."""
    repo = Path(__file__).resolve().parents[2] / "baselines"
    return repo if (repo / RESULTS_CSV).is_file() else Path("baselines")


def paper_model(name: str) -> str | None:
    """The paper's model a run's model name refers to, or None (tiny and other models are their own rows).

    Only the real-size names map: `lact-760m` -> LaCT-760M, `deltanet-1.3b` or `fla-hub/delta_net-1.3B-100B`
    (or a checkpoint path naming them) -> DeltaNet-1.3B.
    """
    flat = re.sub(r"[^a-z0-9]", "", name.lower())
    if "tiny" in flat:
        return None
    if "deltanet" in flat and "13b" in flat:
        return "DeltaNet-1.3B"
    if "lact" in flat and "760m" in flat:
        return "LaCT-760M"
    return None


def model_label(name: str) -> str:
    """Row label for a run's model: the paper's name for the real-size models, the name itself otherwise."""
    return paper_model(name) or name


def _none_if_blank(value: object) -> str | None:
    text = "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value).strip()
    return text or None


def load_paper_results(baselines_dir: Path | None = None) -> pd.DataFrame:
    """paper_results.csv with stages as None for empty, `length` as text ('4096', 'avg' or '') and float values."""
    path = Path(baselines_dir or default_baselines_dir()) / RESULTS_CSV
    if not path.is_file():
        raise UserInputError(f"paper numbers not found: {path}")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    for col in ("mid", "post", "ttt"):
        frame[col] = pd.Series([_none_if_blank(v) for v in frame[col]], index=frame.index, dtype=object)
    frame["value"] = frame["value"].astype(float)
    return frame


def load_paper_ablations(baselines_dir: Path | None = None) -> pd.DataFrame:
    path = Path(baselines_dir or default_baselines_dir()) / ABLATIONS_CSV
    if not path.is_file():
        raise UserInputError(f"paper ablations not found: {path}")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame["value"] = frame["value"].astype(float)
    return frame
