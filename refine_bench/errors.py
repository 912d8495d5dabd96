"""Exception types shared by every layer.

`UserInputError` marks a problem with what the user asked for (a bad name, a missing file, a wrong shape
in a config); the CLI turns it into a one-line message and exit code 2.
"""

from __future__ import annotations


class RefineBenchError(Exception):
    """Base class for errors raised by refine-bench."""


class UserInputError(RefineBenchError, ValueError):
    """Bad input from the user: unknown names, malformed files, inconsistent settings."""


class CheckpointError(UserInputError):
    """A checkpoint whose keys or shapes do not match the model it is loaded into."""
