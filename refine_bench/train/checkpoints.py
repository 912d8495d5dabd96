"""Training checkpoints: `checkpoints/step-N` folders holding float32 master weights (safetensors, loadable as a
model), the tokenizer, the optimizer state and the trainer state.

Full (unsharded) state dicts are gathered on rank 0 whatever the parallel engine, so a checkpoint resumes on
any world size. Each save goes to its own temporary folder and is published by one rename; the trainer state,
written last, lists every file with its size, and a checkpoint counts as complete only when all of them are
there, so a save killed half-way leaves the previous checkpoint in charge. Older checkpoints beyond
`keep_last` are deleted only after the new one is complete.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import torch

from refine_bench.distributed import DistContext
from refine_bench.errors import UserInputError
from refine_bench.fileio import atomic_write_json
from refine_bench.provenance import process_alive

CHECKPOINT_PREFIX = "step-"
TRAINER_STATE = "trainer_state.json"
OPTIMIZER_STATE = "optimizer.pt"


def _full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None):
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=options)
    optim = get_optimizer_state_dict(model, optimizer, options=options) if optimizer is not None else None
    return weights, optim


def _files_with_sizes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def is_complete(folder: Path) -> bool:
    """Whether a checkpoint folder holds its trainer state and every file that state lists, at full size."""
    state_file = folder / TRAINER_STATE
    if not state_file.is_file():
        return False
    try:
        listed = json.loads(state_file.read_text())["files"]
    except (json.JSONDecodeError, KeyError, UnicodeDecodeError):
        return False
    return all((folder / name).is_file() and (folder / name).stat().st_size == size for name, size in listed.items())


def checkpoint_step(folder: Path) -> int | None:
    name = folder.name
    if not name.startswith(CHECKPOINT_PREFIX) or not name[len(CHECKPOINT_PREFIX):].isdigit():
        return None
    return int(name[len(CHECKPOINT_PREFIX):])


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints under `output_dir/checkpoints`, oldest first."""
    folder = Path(output_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    done = [p for p in folder.iterdir() if checkpoint_step(p) is not None and is_complete(p)]
    return sorted(done, key=checkpoint_step)


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The complete checkpoint with the highest step, if any (incomplete ones are passed over)."""
    done = list_checkpoints(output_dir)
    return done[-1] if done else None


def read_trainer_state(checkpoint: Path) -> dict[str, Any]:
    path = Path(checkpoint) / TRAINER_STATE
    if not path.is_file():
        raise UserInputError(f"{checkpoint} is not a trainer checkpoint ({TRAINER_STATE} missing)")
    return json.loads(path.read_text())


def save_checkpoint(output_dir: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    tokenizer, trainer_state: dict[str, Any], dist: DistContext, keep_last: int = 2) -> Path:
    """Write `checkpoints/step-<step>` (see the module docstring); returns its path on every rank."""
    weights, optim = _full_state(model, optimizer)
    final = Path(output_dir) / "checkpoints" / f"{CHECKPOINT_PREFIX}{step}"
    if dist.is_main:
        for name, value in weights.items():
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise UserInputError(f"refusing to save step {step}: weight {name} is not finite")
        tmp = final.with_name(f".tmp-{final.name}-{os.getpid()}-{secrets.token_hex(3)}")
        tmp.mkdir(parents=True)
        try:
            unwrapped = getattr(model, "module", model)
            unwrapped.save_pretrained(tmp, state_dict=weights, safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            torch.save(optim, tmp / OPTIMIZER_STATE)
            atomic_write_json(tmp / TRAINER_STATE, {**trainer_state, "step": step, "files": _files_with_sizes(tmp)})
            if final.exists():  # a re-run of the same step: swap, then delete the old copy
                old = final.with_name(f".old-{final.name}-{secrets.token_hex(3)}")
                final.rename(old)
                tmp.rename(final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        prune_checkpoints(output_dir, keep_last)
    dist.barrier()
    return final


def prune_checkpoints(output_dir: Path, keep_last: int) -> list[Path]:
    """Delete complete checkpoints beyond the newest `keep_last`, and leftovers of interrupted saves."""
    done = list_checkpoints(output_dir)
    removed = done[: max(len(done) - keep_last, 0)]
    folder = Path(output_dir) / "checkpoints"
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    for leftover in folder.glob(".tmp-*"):
        if not _owned_by_live_process(leftover):
            shutil.rmtree(leftover, ignore_errors=True)
    return removed


def _owned_by_live_process(tmp: Path) -> bool:
    """Whether the save that left `tmp` (.tmp-step-N-<pid>-<hex>) may still be running."""
    parts = tmp.name.split("-")
    return len(parts) >= 2 and parts[-2].isdigit() and process_alive(int(parts[-2]))


def load_checkpoint(checkpoint: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> dict:
    """Load weights (and optimizer state) from a checkpoint written by `save_checkpoint`, on any world size;
    returns its trainer state."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    from refine_bench.models.checkpoint import load_state_dict

    state = read_trainer_state(checkpoint)
    weights = load_state_dict(Path(checkpoint))
    options = StateDictOptions(full_state_dict=True)
    target = model.state_dict()
    missing = sorted(set(target) - set(weights))
    unexpected = sorted(set(weights) - set(target))
    if missing or unexpected:
        raise UserInputError(f"{checkpoint} does not match the model: missing {missing[:5]}, unexpected "
                             f"{unexpected[:5]}")
    set_model_state_dict(model, weights, options=options)
    if optimizer is not None:
        optim = torch.load(Path(checkpoint) / OPTIMIZER_STATE, map_location="cpu", weights_only=True)
        set_optimizer_state_dict(model, optimizer, optim, options=options)
    return state
