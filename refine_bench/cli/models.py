"""`refine-bench models`: the zoo."""

from __future__ import annotations

from refine_bench.cli.output import print_table
from refine_bench.models.zoo import count_parameters, list_models


def models_command() -> None:
    """List the zoo: name, family, parameter count, released weights, description."""
    rows = [
        {
            "name": e.name,
            "family": e.family,
            "params": f"{count_parameters(e) / 1e6:,.1f}M",
            "weights": "random init (seeded)" if e.seeded_init else e.hub_id or "local checkpoint only",
            "description": e.description,
        }
        for e in list_models()
    ]
    print_table(rows, ["name", "family", "params", "weights", "description"])
