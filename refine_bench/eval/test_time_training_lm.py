"""The lm-eval model that trains at test time: adapt on each batch of prompts with the `ttt` arm, then answer.

The adapter (the training itself) lives in `refine_bench.train.test_time`; the eval layer does not import it.
The caller (the CLI) injects a factory that builds an adapter for the loaded model; the adapter only has to
follow the small `Adapter` protocol below.

Per task, the wrapper walks the generation requests in the task's document order, in batches of
`ttt_batch_size` (the paper: 8). For each batch it adapts on the prompts exactly as the model will see them
(same tokenisation, same middle truncation to max_length - max_gen_toks), answers them with the adapted
model, and leaves weight resets to the adapter's policy (accumulate, the paper's code: never within a task;
per-example: after every batch). Every task starts from the evaluated weights, as if each task were its own
run, which is how the paper evaluates; the model is restored once generation is over.

Resuming (with an answer cache): an answer depends on the weights the batch was answered with, so the cache
scope of a batch is a hash of the prompts that shaped them: the task's batches so far when adapting
accumulates, the batch alone under per-example resets. A batch whose answers are all cached is not answered
again; under per-example resets it is not adapted on either (its logged statistics come from the cache), while
accumulating adaptation still adapts on it so that later batches see the same weights.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol

import torch
from lm_eval.models.utils import normalize_gen_kwargs
from tqdm import tqdm

from refine_bench.errors import UserInputError
from refine_bench.eval.lm import RefineBenchLM
from refine_bench.protocol import TTT_ARMS, TTT_BATCH_SIZE
from refine_bench.truncation import truncate_middle

log = logging.getLogger(__name__)

BATCH_STATS = "ttt_batch"  # the cache's request type for an adapted batch's logged statistics


class Adapter(Protocol):
    """What the wrapper needs from a test-time adapter."""

    reset_policy: str  # "accumulate" (weights carry over between batches of a task) or "per_example"

    def adapt(self, prompts: list[list[int]]) -> AbstractContextManager[dict[str, Any]]:
        """Adapt the model on `prompts`; while the context is open, the model answers with the adapted weights;
        on exit, weights are reset or kept according to the adapter's policy. Yields the batch's stats."""
        ...

    def reset(self) -> None:
        """Restore the weights (and optimizer state) the adapter started from."""
        ...


AdapterFactory = Callable[[torch.nn.Module], Adapter]


def check_arm(arm: str) -> str:
    """A valid TTT arm, or a UserInputError naming the valid ones."""
    if arm not in TTT_ARMS:
        raise UserInputError(f"unknown test-time-training arm {arm!r}; choose from {', '.join(TTT_ARMS)}")
    return arm


def ttt_unavailable(arm: str) -> UserInputError:
    """The error for a TTT request made through lm-eval model args (`ttt=...`), which cannot build an adapter."""
    if arm not in TTT_ARMS:
        return UserInputError(f"unknown test-time-training arm {arm!r}; choose from {', '.join(TTT_ARMS)}")
    return UserInputError(
        f"test-time training (ttt={arm}) is not available through lm-eval model args; run "
        f"`refine-bench eval --ttt-arm {arm}` (it builds the adapter from refine_bench.train)"
    )


class TestTimeTrainingLM(RefineBenchLM):
    """The `refine-bench` lm-eval model with test-time training before every batch of generation requests.

    `adapter` builds the adapter for the loaded model (called once, after the model is on its device).
    `settings` (optional) describes the adapter for the run record. Other keyword arguments go to
    `RefineBenchLM`. Loglikelihood requests are refused: TTT is defined for generation tasks.
    """

    __test__ = False  # not a pytest class

    def __init__(self, adapter: AdapterFactory, arm: str, ttt_batch_size: int = TTT_BATCH_SIZE,
                 settings: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self.ttt_arm = check_arm(arm)
        if int(ttt_batch_size) < 1:
            raise UserInputError(f"the test-time-training batch size must be >= 1, got {ttt_batch_size}")
        self.ttt_batch_size = int(ttt_batch_size)
        super().__init__(**kwargs)
        self.adapter = adapter(self.model)
        self.ttt_log: list[dict[str, Any]] = []
        self._settings = dict(settings or {})

    def ttt_settings(self) -> dict[str, Any]:
        """Arm, batch size and the adapter's settings, for the run record."""
        return {**self._settings, "arm": self.ttt_arm, "ttt_batch_size": self.ttt_batch_size}

    def ttt_prompt(self, context: str, gen_kwargs: dict[str, Any]) -> list[int]:
        """The prompt's token ids exactly as generation will see them (no BOS, middle-truncated if too long)."""
        ids = self.tokenizer(context, add_special_tokens=False)["input_ids"]
        if not ids:
            raise UserInputError("an lm-eval request has an empty prompt (nothing to condition on)")
        max_gen = normalize_gen_kwargs(dict(gen_kwargs), self.max_gen_toks)["max_gen_toks"]
        return truncate_middle(ids, self.max_length - max_gen)

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        answers: list[str] = []
        pbar = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0,
                    desc=f"TTT ({self.ttt_arm}) + generate_until")
        accumulate = getattr(self.adapter, "reset_policy", "accumulate") == "accumulate"
        try:
            for task, group in itertools.groupby(requests, key=lambda r: r.task_name):
                self.adapter.reset()  # each task starts from the evaluated weights
                reqs = list(group)
                stream = hashlib.sha256(str(task).encode()).hexdigest()
                for lo in range(0, len(reqs), self.ttt_batch_size):
                    batch = reqs[lo : lo + self.ttt_batch_size]
                    prompts = [self.ttt_prompt(*r.args) for r in batch]
                    batch_hash = hashlib.sha256(json.dumps(prompts).encode()).hexdigest()
                    stream = hashlib.sha256((stream + batch_hash).encode()).hexdigest()
                    self.answer_scope = stream if accumulate else batch_hash
                    answers.extend(self._adapt_and_answer(batch, prompts, task, reuse_all=not accumulate))
                    pbar.update(len(batch))
        finally:
            self.answer_scope = ""
            self.adapter.reset()
            pbar.close()
        return answers

    def _adapt_and_answer(self, batch: list[Any], prompts: list[list[int]], task: str, reuse_all: bool) -> list[str]:
        """Adapt on one batch and answer it (or take both from the answer cache, see the module docstring)."""
        cache = self.answer_cache
        stats_key = cache.key(self.answer_scope, BATCH_STATS, []) if cache is not None else ""
        cached = cache is not None and stats_key in cache and all(
            cache.key(self.answer_scope, "generate_until", r.args) in cache for r in batch)
        if cached and reuse_all:
            answers = super().generate_until(batch, disable_tqdm=True)  # every answer comes from the cache
            stats = cache.get(stats_key, BATCH_STATS, count=False)
        else:
            with self.adapter.adapt(prompts) as stats:
                answers = super().generate_until(batch, disable_tqdm=True)
            if cache is not None:
                cache.put(stats_key, stats, count=False)
        self.ttt_log.append({"task": task, "doc_ids": [r.doc_id for r in batch], **stats})
        return answers

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        raise self._no_loglikelihood()

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        raise self._no_loglikelihood()

    def _no_loglikelihood(self) -> UserInputError:
        return UserInputError("test-time training applies to generation tasks (NIAH, RULER QA, LongBench); "
                              "evaluate loglikelihood tasks such as the sanity suite without --ttt-arm")
