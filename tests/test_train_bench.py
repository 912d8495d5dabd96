"""`bench train --memory`: which lengths the reduced-depth memory points are measured at."""

from __future__ import annotations

from types import SimpleNamespace

from refine_bench.bench.train_bench import measurement_lengths
from refine_bench.models.zoo import MODELS


def test_memory_points_lie_beyond_the_window_and_the_fast_weight_chunk():
    assert measurement_lengths(MODELS["deltanet-1.3b"].make_config()) == (2048, 4096)
    assert measurement_lengths(MODELS["lact-760m"].make_config()) == (4096, 8192)  # window and chunk 2048
    assert measurement_lengths(SimpleNamespace(window_size=4096, lact_chunk_size=2048)) == (8192, 16384)
    assert measurement_lengths(SimpleNamespace(window_size=128)) == (2048, 4096)  # already past a short window
