"""Shared fixtures: small, seeded models and inputs."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import torch

from refine_bench.models.deltanet import DeltaNetConfig, DeltaNetForCausalLM


def small_deltanet_config(**overrides) -> DeltaNetConfig:
    kwargs = dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_heads=2, intermediate_size=48,
                  chunk_size=8, max_position_embeddings=4096,
                  initializer_range=0.3)  # well-separated logits: greedy comparisons free of near-ties
    kwargs.update(overrides)
    return DeltaNetConfig(**kwargs)


@pytest.fixture
def small_deltanet() -> DeltaNetForCausalLM:
    torch.manual_seed(0)
    return DeltaNetForCausalLM(small_deltanet_config()).eval()


def load_script(name: str) -> ModuleType:
    """A module of the repo's scripts/ folder (not a package), loaded by file name."""
    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
