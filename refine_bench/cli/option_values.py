"""Parsers for option values that several commands share."""

from __future__ import annotations

from refine_bench.errors import UserInputError


def int_list(text: str | None, option: str) -> list[int] | None:
    """The integers of a comma-separated CLI option (None when it is empty); a UserInputError naming `option`."""
    if not text:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise UserInputError(f"{option} must be comma-separated integers, got {text!r}") from exc
