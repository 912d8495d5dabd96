"""Strict checkpoint loading: safetensors by default, every key and shape accounted for.

A checkpoint that does not match its model raises `CheckpointError` listing the missing, unexpected and
mis-shaped keys; nothing is ever silently left at its random initialisation.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch

from refine_bench.errors import CheckpointError, UserInputError

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_FILE = "model.safetensors"
PICKLE_FILE = "pytorch_model.bin"


def read_config_dict(directory: Path) -> dict:
    """The parsed config.json of a checkpoint directory."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise UserInputError(f"{directory} is not a model checkpoint: config.json is missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserInputError(f"{path} is not valid JSON: {exc}") from exc


def load_state_dict(directory: Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Read all weights of a checkpoint directory (single or sharded safetensors)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    index = directory / SAFETENSORS_INDEX
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_file(str(directory / shard)))
        return state
    if (directory / SAFETENSORS_FILE).is_file():
        return load_file(str(directory / SAFETENSORS_FILE))
    if (directory / PICKLE_FILE).is_file():
        if not allow_pickle:
            raise CheckpointError(
                f"{directory} holds only {PICKLE_FILE} (a pickle); convert it to safetensors, or pass "
                "allow_pickle=True to load it with torch.load(weights_only=True)"
            )
        return torch.load(directory / PICKLE_FILE, map_location="cpu", weights_only=True)
    raise CheckpointError(f"{directory} has no weights: expected {SAFETENSORS_FILE} or {SAFETENSORS_INDEX}")


def rename_keys(state: Mapping[str, torch.Tensor], renames: Mapping[str, str]) -> dict[str, torch.Tensor]:
    """Apply suffix renames (old released layouts), e.g. {'.attn.norm.weight': '.attn.o_norm.weight'}."""
    out = {}
    for key, value in state.items():
        for old, new in renames.items():
            if key.endswith(old):
                key = key[: -len(old)] + new
                break
        out[key] = value
    return out


def check_state_dict(
    expected: Mapping[str, torch.Size], given: Mapping[str, torch.Tensor], optional: set[str] = frozenset()
) -> None:
    """Raise CheckpointError unless `given` has exactly the keys and shapes of `expected`."""
    missing = sorted(k for k in expected if k not in given and k not in optional)
    unexpected = sorted(k for k in given if k not in expected)
    mismatched = sorted(
        f"{k}: checkpoint {list(given[k].shape)} vs model {list(expected[k])}"
        for k in expected
        if k in given and tuple(given[k].shape) != tuple(expected[k])
    )
    if missing or unexpected or mismatched:
        parts = []
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("mis-shaped keys", mismatched)):
            if items:
                shown = ", ".join(items[:20]) + (f", ... ({len(items) - 20} more)" if len(items) > 20 else "")
                parts.append(f"{len(items)} {title}: {shown}")
        raise CheckpointError("checkpoint does not match the model: " + "; ".join(parts))
