"""The model zoo: named configs, and one loader for names, local checkpoint folders and hub ids.

This is the single place where model names are registered (`MODELS`) and where a config.json's
`model_type` is mapped to the class that loads it (`ARCHITECTURES`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PretrainedConfig, PreTrainedTokenizerBase

from refine_bench.errors import UserInputError
from refine_bench.models.base import FastWeightPreTrainedModel
from refine_bench.models.checkpoint import read_config_dict
from refine_bench.models.deltanet import DeltaNetConfig, DeltaNetForCausalLM
from refine_bench.models.lact import LaCTForCausalLM, lact_760m_config, lact_tiny_config
from refine_bench.models.tokenizer import load_tiny_tokenizer

TINY_TOKENIZER = "tiny"


@dataclass(frozen=True)
class ZooEntry:
    """A named model: how to build its config, where its released weights live, which tokenizer it uses."""

    name: str
    family: str
    description: str
    make_config: Callable[[], PretrainedConfig]
    model_class: type[FastWeightPreTrainedModel]
    hub_id: str | None = None
    tokenizer: str = TINY_TOKENIZER
    seeded_init: bool = False  # weights are a seeded random init by design (the tiny CPU models)


def _deltanet_1_3b() -> DeltaNetConfig:
    return DeltaNetConfig(vocab_size=32000, hidden_size=2048, num_hidden_layers=24, num_heads=16, hidden_ratio=4,
                          conv_size=4, max_position_embeddings=2048)


def _deltanet_tiny() -> DeltaNetConfig:
    return DeltaNetConfig(vocab_size=512, hidden_size=128, num_hidden_layers=2, num_heads=2, hidden_ratio=4,
                          intermediate_size=256, conv_size=4, max_position_embeddings=1 << 16, chunk_size=64)


MODELS: dict[str, ZooEntry] = {
    e.name: e
    for e in [
        ZooEntry("deltanet-1.3b", "deltanet", "DeltaNet-1.3B (fla-hub/delta_net-1.3B-100B, 100B SlimPajama tokens)",
                 _deltanet_1_3b, DeltaNetForCausalLM, hub_id="fla-hub/delta_net-1.3B-100B",
                 tokenizer="fla-hub/delta_net-1.3B-100B"),
        ZooEntry("deltanet-tiny", "deltanet", "2-layer DeltaNet for CPUs and CI (random init, project tokenizer)",
                 _deltanet_tiny, DeltaNetForCausalLM, seeded_init=True),
        ZooEntry("lact-760m", "lact", "LaCT-760M (LaCT repo's 760M config: SWA 2048 + SwiGLU fast weights, chunk "
                 "2048); no public checkpoint", lact_760m_config, LaCTForCausalLM,
                 tokenizer="fla-hub/transformer-1.3B-100B"),
        ZooEntry("lact-tiny", "lact", "2-layer LaCT for CPUs and CI (chunk 64, window 64; random init, project "
                 "tokenizer)", lact_tiny_config, LaCTForCausalLM, seeded_init=True),
    ]
}

ARCHITECTURES: dict[str, type[FastWeightPreTrainedModel]] = {
    "delta_net": DeltaNetForCausalLM,
    "lact_swiglu": LaCTForCausalLM,
}


def list_models() -> list[ZooEntry]:
    """Zoo entries in registration order."""
    return list(MODELS.values())


def count_parameters(entry: ZooEntry) -> int:
    """Parameter count of a zoo model, computed on the meta device (no memory, no weights)."""
    with torch.device("meta"):
        model = entry.model_class(entry.make_config())
    return sum(p.numel() for p in model.parameters())


def _unknown_name(name: str) -> UserInputError:
    names = ", ".join(MODELS)
    return UserInputError(f"unknown model {name!r}; valid names: {names} (or a local checkpoint directory)")


def _hub_snapshot(repo_id: str) -> Path:
    """Local folder of a hub repo (from the HF cache, or downloaded when a hub is reachable)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "tokenizer*"]))
    except Exception as exc:  # offline, unknown repo, no permission: all end the same way for the user
        raise UserInputError(
            f"cannot fetch {repo_id!r} from the hub ({type(exc).__name__}). Offline, download the checkpoint "
            f"elsewhere (config.json, *.safetensors, tokenizer files) and pass its local directory as --model"
        ) from exc


def resolve_checkpoint(name_or_path: str | os.PathLike[str]) -> tuple[ZooEntry | None, Path | None]:
    """(zoo entry, checkpoint dir): a zoo name without released weights has no dir; a path has no entry."""
    text = str(name_or_path)
    if text in MODELS:
        entry = MODELS[text]
        return entry, None
    path = Path(text).expanduser()
    if path.is_dir():
        return None, path
    if "/" in text and not text.startswith((".", "/", "~")) and text.count("/") == 1:
        return None, _hub_snapshot(text)
    if "/" in text or text.startswith("."):
        raise UserInputError(f"model path {text!r} does not exist")
    raise _unknown_name(text)


def load_model(
    name_or_path: str | os.PathLike[str],
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    random_init: bool = False,
) -> FastWeightPreTrainedModel:
    """Load a model by zoo name, local checkpoint directory or hub id, in eval mode.

    The tiny zoo models, and any zoo model with random_init=True (benchmarks), are initialised from `seed`,
    so the same name and seed always give the same weights. A real-size zoo name resolves to its hub
    checkpoint, which needs a reachable hub or a populated HF cache; one without a public checkpoint
    (lact-760m) needs a local checkpoint directory instead.
    """
    entry, directory = resolve_checkpoint(name_or_path)
    if entry is not None and not (random_init or entry.seeded_init) and entry.hub_id is None:
        raise UserInputError(
            f"{entry.name} has no public checkpoint: pass the local directory of a trained checkpoint "
            "(config.json + *.safetensors) as --model, or use random weights explicitly (random_init=True)"
        )
    if entry is not None and (random_init or entry.seeded_init):
        # Built directly on the target device (a 1.3B init on a GPU takes a second, on a CPU a minute);
        # the CPU generator is seeded either way, so weights depend only on the seed for a given device type.
        with torch.random.fork_rng(devices=[]), torch.device(device or "cpu"):
            torch.manual_seed(seed)
            model = entry.model_class.from_config_strict(entry.make_config(), dtype=dtype or torch.float32)
        return model.eval()
    if entry is not None:
        directory = _hub_snapshot(entry.hub_id)
    config = read_config_dict(directory)
    model_type = config.get("model_type")
    if model_type not in ARCHITECTURES:
        raise UserInputError(
            f"{directory}/config.json has model_type {model_type!r}; supported: {', '.join(ARCHITECTURES)}"
        )
    return ARCHITECTURES[model_type].from_pretrained(directory, dtype=dtype, device=device)


def load_tokenizer(name_or_path: str | os.PathLike[str]) -> PreTrainedTokenizerBase:
    """The tokenizer for a model: the project's tiny tokenizer, or the one saved with a checkpoint."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    entry, directory = resolve_checkpoint(name_or_path)
    if entry is not None and entry.tokenizer == TINY_TOKENIZER:
        return load_tiny_tokenizer()
    if entry is not None:
        directory = _hub_snapshot(entry.tokenizer)
    if (directory / "tokenizer.json").is_file():
        # the fast tokenizer file alone: AutoTokenizer would also parse config.json, whose model_type it
        # does not know
        tok = PreTrainedTokenizerFast.from_pretrained(str(directory))
    elif (directory / "tokenizer_config.json").is_file():
        tok = AutoTokenizer.from_pretrained(str(directory), trust_remote_code=False)
    else:
        raise UserInputError(f"{directory} has no tokenizer files (tokenizer.json / tokenizer_config.json)")
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def save_checkpoint(model: FastWeightPreTrainedModel, tokenizer: PreTrainedTokenizerBase, directory: Path) -> Path:
    """Write config.json, model.safetensors and the tokenizer files into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory
