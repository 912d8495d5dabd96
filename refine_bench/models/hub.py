"""Checkpoints from the Hugging Face hub: a local snapshot (the HF cache, or a download when the hub is
reachable), and the one message that says how to work offline."""

from __future__ import annotations

from pathlib import Path

from refine_bench.errors import UserInputError

# What a checkpoint needs: configs, safetensors weights, tokenizer files (also in sub-folders); never pickles.
SNAPSHOT_PATTERNS = ["*.json", "*.safetensors", "*tokenizer*"]


def hub_snapshot(repo_id: str) -> Path:
    """Local folder of a hub repo's checkpoint files; UserInputError saying how to pass a local copy if the
    repo cannot be fetched (offline, unknown, gated)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=SNAPSHOT_PATTERNS))
    except Exception as exc:  # offline, unknown repo, no permission: all end the same way for the user
        raise UserInputError(
            f"cannot fetch {repo_id!r} from the hub ({type(exc).__name__}). Offline, download it on a machine "
            f"with access (`huggingface-cli download {repo_id} --local-dir DIR`, or its config.json, *.safetensors "
            "and tokenizer files), copy DIR here and pass it as --model DIR"
        ) from exc


def checkpoint_root(snapshot: Path, repo_id: str) -> Path:
    """The folder holding config.json in a snapshot: its root, or its only sub-folder that has one."""
    if (snapshot / "config.json").is_file():
        return snapshot
    found = sorted(p.parent for p in snapshot.glob("*/config.json"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise UserInputError(f"hub repo {repo_id!r} holds no config.json (snapshot {snapshot})")
    names = ", ".join(p.name for p in found)
    raise UserInputError(f"hub repo {repo_id!r} holds several checkpoints ({names}); pass the one you want as "
                         f"--model {snapshot}/NAME")


def has_tokenizer(directory: Path) -> bool:
    """Whether a checkpoint folder carries its own tokenizer."""
    return (directory / "tokenizer.json").is_file() or (directory / "tokenizer_config.json").is_file()
