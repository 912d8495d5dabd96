"""`refine-bench models`: the zoo."""

from __future__ import annotations

from refine_bench.cli.output import print_table
from refine_bench.models.zoo import count_parameters, list_models, missing_shipped_files


def _weights(entry) -> str:  # noqa: ANN001 - a ZooEntry
    if entry.shipped and missing_shipped_files(entry):
        return f"shipped, not built (`{entry.rebuild_command}`)"
    return entry.weights


def models_command() -> None:
    """List the zoo: name, family, parameter count, where the weights come from (hub id), description."""
    rows = [
        {
            "name": e.name,
            "family": e.family,
            "params": f"{count_parameters(e) / 1e6:,.1f}M",
            "weights": _weights(e),
            "description": e.description,
        }
        for e in list_models()
    ]
    print_table(rows, ["name", "family", "params", "weights", "description"])
