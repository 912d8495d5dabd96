"""Strict checkpoint loading: safetensors by default, every key and shape accounted for.

A checkpoint that does not match its model raises `CheckpointError` listing the missing, unexpected and
mis-shaped keys; nothing is ever silently left at its random initialisation. An unreadable file (truncated,
corrupt, not JSON) raises one naming the file and what is wrong with it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import torch

from refine_bench.errors import CheckpointError, UserInputError
from refine_bench.fileio import file_sha256, read_json_object

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_FILE = "model.safetensors"
PICKLE_FILE = "pytorch_model.bin"


def read_config_dict(directory: Path) -> dict:
    """The parsed config.json of a checkpoint directory."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserInputError(f"{directory} is not a checkpoint directory (config.json + model.safetensors)")
    path = directory / "config.json"
    if not path.is_file():
        raise UserInputError(f"{directory} is not a model checkpoint: config.json is missing")
    return read_json_object(path, CheckpointError)


def weights_sha256(directory: Path) -> str | None:
    """A SHA-256 that identifies a checkpoint folder's weights: for one safetensors file, the file's own hash
    (what `sha256sum model.safetensors` prints); for shards, the hash of their `name hash` lines in name order.
    None when the folder has no safetensors file."""
    files = sorted(Path(directory).glob("*.safetensors"))
    hashes = [file_sha256(file) for file in files]
    if len(files) <= 1:
        return hashes[0] if hashes else None
    lines = "".join(f"{f.name} {h}\n" for f, h in zip(files, hashes, strict=True))
    return hashlib.sha256(lines.encode()).hexdigest()


def load_safetensors_file(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of one safetensors file; an unreadable file raises CheckpointError naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc}): it is truncated or corrupt; "
                              "save or download it again") from exc


def load_state_dict(directory: Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Read all weights of a checkpoint directory (single or sharded safetensors)."""
    directory = Path(directory)
    index = directory / SAFETENSORS_INDEX
    if index.is_file():
        weight_map = read_json_object(index, CheckpointError).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index} has no 'weight_map' object")
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            state.update(load_safetensors_file(directory / shard))
        return state
    if (directory / SAFETENSORS_FILE).is_file():
        return load_safetensors_file(directory / SAFETENSORS_FILE)
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
