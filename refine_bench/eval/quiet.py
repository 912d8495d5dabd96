"""Quiet lm-eval's per-task chatter that says nothing about a refine-bench run (its progress bars stay).

lm-eval warns once per task built from a Python dataset function ("Custom kwargs can be passed to `--metadata`
..."), and twice about being handed a model object rather than a name; refine-bench does both by design.
The filter drops exactly these messages and nothing else.
"""

from __future__ import annotations

import logging

CHATTER = (
    "Custom kwargs can be passed to `--metadata`",
    "`pretrained` model kwarg is not of type `str`",
    "Passed an already-initialized model through `pretrained`",
)
_LOGGERS = ("lm_eval.api.task", "lm_eval.models.huggingface")


class _DropChatter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in CHATTER)


_FILTER = _DropChatter()


def quiet_lm_eval() -> None:
    """Install the filter on the lm-eval loggers that emit the chatter (idempotent)."""
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
