"""Test-time training (TTT) evaluation: train on each prompt with the `ttt` arm, then answer.

The wrapper needs the trainer (refine_bench.train), which has not landed yet; until it does, asking for a TTT
evaluation fails with a clear UserInputError instead of silently evaluating the untrained model.
"""

from __future__ import annotations

from refine_bench.errors import UserInputError

TTT_ARMS = ("sft", "refine")


def ttt_unavailable(arm: str) -> UserInputError:
    """The error raised for any TTT request until the trainer lands."""
    if arm not in TTT_ARMS:
        return UserInputError(f"unknown test-time-training arm {arm!r}; choose from {', '.join(TTT_ARMS)}")
    return UserInputError(
        f"test-time training (ttt={arm}) is not available until the trainer lands (refine_bench.train); "
        "evaluate without --ttt for now"
    )


class TestTimeTrainingLM:
    """Placeholder for the lm-eval model that runs the `ttt` phase on each prompt before answering."""

    __test__ = False  # not a pytest class

    def __init__(self, arm: str, **_: object) -> None:
        raise ttt_unavailable(arm)
