"""Config options a model accepts from released config.json files but implements for one value only."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from refine_bench.errors import UserInputError


def take_fixed_options(config: Any, kwargs: dict[str, Any], fixed: Mapping[str, Any]) -> None:
    """Move each option in `fixed` from `kwargs` onto `config` (its supported value when absent)."""
    for key, value in fixed.items():
        setattr(config, key, kwargs.pop(key, value))


def check_fixed_options(config: Any, fixed: Mapping[str, Any]) -> None:
    """Raise UserInputError naming the first option whose value is not the supported one."""
    for key, value in fixed.items():
        if getattr(config, key) != value:
            raise UserInputError(
                f"{type(config).__name__}.{key}={getattr(config, key)!r} is not supported (only {value!r})"
            )
