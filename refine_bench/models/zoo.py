"""The model zoo: named models, and one loader for names, local checkpoint folders and hub ids.

This is the single place where model names are registered (`MODELS`) and where a config.json's
`model_type` is mapped to the class that loads it (`ARCHITECTURES`). Architectures live in `zoo_configs`.

A name's weights come from one of: a seeded random init (the tiny CPU models), the HF hub (`hub_id`), or
files shipped inside the package under `models/assets/<name>/` (config.json, model.safetensors, tokenizer
files), rebuilt by the entry's `rebuild_command`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from transformers import PretrainedConfig, PreTrainedTokenizerBase

from refine_bench.errors import CheckpointError, UserInputError
from refine_bench.models.base import FastWeightPreTrainedModel
from refine_bench.models.checkpoint import SAFETENSORS_FILE, read_config_dict, weights_sha256
from refine_bench.models.deltanet import DeltaNetForCausalLM
from refine_bench.models.hub import checkpoint_root, has_tokenizer, hub_snapshot
from refine_bench.models.lact import LaCTForCausalLM
from refine_bench.models.tokenizer import load_tiny_tokenizer
from refine_bench.models.zoo_configs import (
    deltanet_1_3b_config,
    deltanet_small_config,
    deltanet_tiny_config,
    lact_760m_config,
    lact_small_config,
    lact_tiny_config,
)

TINY_TOKENIZER = "tiny"
SMALL_MODELS_COMMAND = "make small-models"
SHIPPED_FILES = ("config.json", SAFETENSORS_FILE, "tokenizer.json")
ASSETS_ROOT = Path(str(resources.files("refine_bench.models").joinpath("assets")))  # <name>/ per shipped model


@dataclass(frozen=True)
class ZooEntry:
    """A named model: its architecture, where its weights live, which tokenizer it uses.

    tokenizer: TINY_TOKENIZER (the project's), or None for the one saved with the weights (hub repo or shipped
    folder), with `fallback_tokenizer` (a hub id) when the weights come without one.
    """

    name: str
    family: str
    description: str
    make_config: Callable[[], PretrainedConfig]
    model_class: type[FastWeightPreTrainedModel]
    hub_id: str | None = None
    tokenizer: str | None = TINY_TOKENIZER
    fallback_tokenizer: str | None = None
    seeded_init: bool = False  # weights are a seeded random init by design (the tiny CPU models)
    shipped: bool = False  # weights committed under refine_bench/models/assets/<name>/
    rebuild_command: str | None = None  # the command that (re)builds shipped weights

    @property
    def weights(self) -> str:
        """Where the weights come from, in words (for `refine-bench models`)."""
        if self.seeded_init:
            return "random init (seeded)"
        if self.shipped:
            return f"shipped (`{self.rebuild_command}`)"
        return f"hub: {self.hub_id}" if self.hub_id else "local checkpoint only"


MODELS: dict[str, ZooEntry] = {
    e.name: e
    for e in [
        ZooEntry("deltanet-1.3b", "deltanet", "DeltaNet-1.3B (fla-hub/delta_net-1.3B-100B, 100B SlimPajama tokens)",
                 deltanet_1_3b_config, DeltaNetForCausalLM, hub_id="fla-hub/delta_net-1.3B-100B", tokenizer=None),
        ZooEntry("deltanet-tiny", "deltanet", "2-layer DeltaNet for CPUs and CI (random init, project tokenizer)",
                 deltanet_tiny_config, DeltaNetForCausalLM, seeded_init=True),
        ZooEntry("deltanet-small", "deltanet", "small DeltaNet pretrained by the project (shipped weights, project "
                 "tokenizer)",
                 deltanet_small_config, DeltaNetForCausalLM, shipped=True,
                 rebuild_command=SMALL_MODELS_COMMAND),
        ZooEntry("lact-760m", "lact", "LaCT-760M (LaCT repo's 760M config: SWA 2048 + SwiGLU fast weights, chunk "
                 "2048; the paper's checkpoint)", lact_760m_config, LaCTForCausalLM, hub_id="YunjinZhang/lact_llm",
                 tokenizer=None, fallback_tokenizer="fla-hub/transformer-1.3B-100B"),
        ZooEntry("lact-tiny", "lact", "2-layer LaCT for CPUs and CI (chunk 64, window 64; random init, project "
                 "tokenizer)", lact_tiny_config, LaCTForCausalLM, seeded_init=True),
        ZooEntry("lact-small", "lact", "small LaCT pretrained by the project (shipped weights, project tokenizer)",
                 lact_small_config, LaCTForCausalLM, shipped=True,
                 rebuild_command=SMALL_MODELS_COMMAND),
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


def shipped_dir(entry: ZooEntry) -> Path:
    """Where a shipped model's files live inside the package."""
    return ASSETS_ROOT / entry.name


def missing_shipped_files(entry: ZooEntry) -> list[Path]:
    """The files a shipped model still lacks (all of them before `rebuild_command` has run)."""
    return [shipped_dir(entry) / name for name in SHIPPED_FILES if not (shipped_dir(entry) / name).is_file()]


def _shipped_checkpoint(entry: ZooEntry) -> Path:
    missing = missing_shipped_files(entry)
    if missing:
        raise CheckpointError(f"{entry.name}: {missing[0]} is missing (the shipped model is not built in this "
                              f"checkout); rebuild it with `{entry.rebuild_command}`")
    return shipped_dir(entry)


def weights_directory(entry: ZooEntry) -> Path:
    """The checkpoint folder of a zoo entry with released or shipped weights (downloaded if needed)."""
    if entry.shipped:
        return _shipped_checkpoint(entry)
    if entry.hub_id is None:
        raise UserInputError(
            f"{entry.name} has no released checkpoint: pass the local directory of a trained checkpoint "
            "(config.json + *.safetensors) as --model, or use random weights explicitly (random_init=True)"
        )
    return checkpoint_root(hub_snapshot(entry.hub_id), entry.hub_id)


def _unknown_name(name: str) -> UserInputError:
    names = ", ".join(MODELS)
    return UserInputError(f"unknown model {name!r}; valid names: {names} (or a local checkpoint directory)")


def resolve_checkpoint(name_or_path: str | os.PathLike[str]) -> tuple[ZooEntry | None, Path | None]:
    """(zoo entry, None) for a zoo name; (None, checkpoint dir) for a local folder or a hub id."""
    text = str(name_or_path)
    if text in MODELS:
        return MODELS[text], None
    path = Path(text).expanduser()
    if path.is_dir():
        return None, path
    if path.exists():
        folder = f"; pass its folder {path.parent}" if path.name in SHIPPED_FILES else ""
        raise UserInputError(f"{path} is a file, not a model: --model takes a zoo name, a checkpoint directory "
                             f"(config.json + model.safetensors) or a hub id{folder}")
    if "/" in text and not text.startswith((".", "/", "~")) and text.count("/") == 1:
        return None, checkpoint_root(hub_snapshot(text), text)
    if "/" in text or text.startswith("."):
        raise UserInputError(f"model path {text!r} does not exist")
    raise _unknown_name(text)


def _seeded_init(entry: ZooEntry | None, random_init: bool) -> bool:
    """Whether `load_model` builds a zoo name's weights from its seed rather than loading files."""
    return entry is not None and (random_init or entry.seeded_init)


def model_weights_sha256(name_or_path: str | os.PathLike[str], random_init: bool = False) -> str | None:
    """What identifies the weights `load_model(name_or_path, random_init=random_init)` loads
    (`checkpoint.weights_sha256`); None when they are a seeded random init (the seed identifies them). A hub id
    must be loadable (cached or online)."""
    entry, directory = resolve_checkpoint(name_or_path)
    if _seeded_init(entry, random_init):
        return None
    return weights_sha256(directory if entry is None else weights_directory(entry))


def _load_directory(directory: Path, dtype: torch.dtype | None, device: str | torch.device | None
                    ) -> FastWeightPreTrainedModel:
    model_type = read_config_dict(directory).get("model_type")
    if model_type not in ARCHITECTURES:
        raise UserInputError(
            f"{directory}/config.json has model_type {model_type!r}; supported: {', '.join(ARCHITECTURES)}"
        )
    return ARCHITECTURES[model_type].from_pretrained(directory, dtype=dtype, device=device)


def load_model(
    name_or_path: str | os.PathLike[str],
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    random_init: bool = False,
) -> FastWeightPreTrainedModel:
    """Load a model by zoo name, local checkpoint directory or hub id, in eval mode.

    The tiny zoo models, and any zoo model with random_init=True (benchmarks, pretraining from scratch), are
    initialised from `seed`, so the same name and seed always give the same weights. A real-size zoo name
    resolves to its hub checkpoint, which needs a reachable hub or a populated HF cache; a shipped one to the
    files inside the package.
    """
    entry, directory = resolve_checkpoint(name_or_path)
    if _seeded_init(entry, random_init):
        # Built directly on the target device (a 1.3B init on a GPU takes a second, on a CPU a minute);
        # the CPU generator is seeded either way, so weights depend only on the seed for a given device type.
        with torch.random.fork_rng(devices=[]), torch.device(device or "cpu"):
            torch.manual_seed(seed)
            model = entry.model_class.from_config_strict(entry.make_config(), dtype=dtype or torch.float32)
        return model.eval()
    if entry is None:
        return _load_directory(directory, dtype, device)
    directory = weights_directory(entry)
    try:
        return _load_directory(directory, dtype, device)
    except UserInputError as exc:
        if entry.rebuild_command is None:
            raise
        raise CheckpointError(f"{entry.name}: {exc}; rebuild it with `{entry.rebuild_command}`") from exc


def load_tokenizer(name_or_path: str | os.PathLike[str]) -> PreTrainedTokenizerBase:
    """The tokenizer for a model: the project's tiny tokenizer, or the one saved with the checkpoint (for a
    zoo name whose checkpoint has none, its fallback hub tokenizer)."""
    entry, directory = resolve_checkpoint(name_or_path)
    if entry is None:
        return tokenizer_from_directory(directory)
    if entry.tokenizer == TINY_TOKENIZER:
        return load_tiny_tokenizer()
    directory = weights_directory(entry) if entry.tokenizer is None else hub_snapshot(entry.tokenizer)
    if not has_tokenizer(directory) and entry.fallback_tokenizer is not None:
        directory = hub_snapshot(entry.fallback_tokenizer)
    try:
        return tokenizer_from_directory(directory)
    except UserInputError as exc:
        if entry.rebuild_command is None:
            raise
        raise CheckpointError(f"{entry.name}: {exc}; rebuild it with `{entry.rebuild_command}`") from exc


def tokenizer_from_directory(directory: Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved in a checkpoint folder, with left padding and pad = eos when it has no pad token."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:
        if (directory / "tokenizer.json").is_file():
            # the fast tokenizer file alone: AutoTokenizer would also parse config.json, whose model_type it
            # does not know
            tok = PreTrainedTokenizerFast.from_pretrained(str(directory))
        elif (directory / "tokenizer_config.json").is_file():
            tok = AutoTokenizer.from_pretrained(str(directory), trust_remote_code=False)
        else:
            raise UserInputError(f"{directory} has no tokenizer files (tokenizer.json / tokenizer_config.json)")
    except (OSError, ValueError, TypeError, KeyError) as exc:  # tokenizers' own parse errors are Exceptions
        if isinstance(exc, UserInputError):
            raise
        raise CheckpointError(f"the tokenizer files in {directory} cannot be read ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}): truncated or corrupt") from exc
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
