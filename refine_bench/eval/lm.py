"""The lm-eval model `refine-bench`: the project's fast-weight LMs behind lm-eval's HFLM machinery.

HFLM gives batching, request sorting, stop sequences, loglikelihood / loglikelihood_rolling and the
rank/world-size split of requests; this subclass adds what our models need:

* loading through the model zoo (`pretrained` = zoo name, local checkpoint folder or hub id; `checkpoint` = a
  folder of weights that replaces them), the zoo's tokenizer, no BOS (`add_special_tokens=False`), left padding;
* an explicit `max_length` (default 16384, the paper's longest context) instead of HFLM's
  config.max_position_embeddings fallback (2048 for fla configs), since recurrent models have no position limit;
* middle truncation of over-long generation prompts (LongBench's convention: keep the first and last halves of
  the budget max_length - max_gen_toks) instead of HFLM's left truncation; each truncation is logged;
* multi-process evaluation under `torchrun` / `accelerate launch` without accelerate's model wrapping: the
  process group comes from `refine_bench.distributed` (gloo on CPU, NCCL on CUDA), requests are split by
  lm-eval per rank, and results are gathered with torch.distributed;
* greedy decoding with the model's cache: `model.generate` for prompts up to `prefill_chunk` tokens (default
  2048); longer prompts are prefilled in chunks of that size through the recurrent cache and then decoded token
  by token (`refine_bench.eval.chunked_generation`, same tokens as generate), so activation memory does not grow
  with the prompt. `prefill_chunk=0` always uses `model.generate`;
* resuming: with an `AnswerCache` (`use_answer_cache`), requests answered by an earlier, killed run are answered
  from it and every new answer is stored as it comes in.

Model args (lm-eval `--model_args`): pretrained, checkpoint, tokenizer, max_length, batch_size, max_batch_size,
device, dtype, seed, prefill_chunk (`ttt` is refused with a pointer to `refine-bench eval --ttt-arm`, which builds
the adapter).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils_hf import stop_sequences_criteria

from refine_bench.distributed import init_distributed
from refine_bench.errors import UserInputError
from refine_bench.eval.answer_cache import AnswerCache, AnswerHook
from refine_bench.eval.chunked_generation import greedy_generate
from refine_bench.protocol import PAPER_LENGTHS
from refine_bench.truncation import truncate_middle

log = logging.getLogger(__name__)

DEFAULT_MAX_LENGTH = max(PAPER_LENGTHS)
DEFAULT_PREFILL_CHUNK = 2048
MODEL_NAME = "refine-bench"
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """A torch dtype from a name ("auto"/None keep the checkpoint's)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return None
    if dtype not in _DTYPES:
        raise UserInputError(f"unknown dtype {dtype!r}; choose from {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


@register_model(MODEL_NAME)
class RefineBenchLM(HFLM):
    """lm-eval model for the project's fast-weight LMs (see the module docstring)."""

    def __init__(
        self,
        pretrained: str = "deltanet-tiny",
        checkpoint: str | None = None,
        tokenizer: str | None = None,
        max_length: int | None = None,
        batch_size: int | str = 1,
        max_batch_size: int | None = 64,
        device: str | None = None,
        dtype: str | torch.dtype | None = None,
        seed: int = 0,
        ttt: str | None = None,
        prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
        model: torch.nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        if ttt:
            from refine_bench.eval.test_time_training_lm import ttt_unavailable

            raise ttt_unavailable(ttt)
        if kwargs:
            log.warning("refine-bench ignores model args %s", ", ".join(sorted(kwargs)))
        if isinstance(batch_size, str) and batch_size.startswith("auto"):
            raise UserInputError("refine-bench needs an integer batch size (auto sizing is not supported)")
        dist_ctx = init_distributed(device)
        device = dist_ctx.device
        from refine_bench.models.zoo import load_model, load_tokenizer

        if model is None:
            model = load_model(checkpoint or pretrained, dtype=parse_dtype(dtype), device=device, seed=int(seed))
        else:
            model = model.to(device)
        tok = load_tokenizer(tokenizer or _tokenizer_source(checkpoint, pretrained))
        tok.padding_side = "left"
        self.model_name = str(checkpoint or pretrained)
        self.prefill_chunk = int(prefill_chunk)
        self.truncated_prompts = 0
        self.answer_cache: AnswerCache | None = None
        self.answer_scope = ""  # part of every cache key; the test-time-training wrapper sets it per batch
        super().__init__(
            pretrained=model,
            tokenizer=tok,
            backend="causal",
            max_length=int(max_length) if max_length else DEFAULT_MAX_LENGTH,
            batch_size=int(batch_size),
            max_batch_size=max_batch_size,
            add_bos_token=False,
            truncation=False,
            logits_cache=True,
        )
        self.dist = dist_ctx
        self._rank, self._world_size = dist_ctx.rank, dist_ctx.world_size
        self._device = torch.device(device)

    # ------------------------------------------------------------------ answers kept across runs (resume)

    def use_answer_cache(self, cache: AnswerCache) -> None:
        """Answer requests from `cache` when it has them and store every new answer in it as it comes in."""
        self.answer_cache = cache
        self.set_cache_hook(AnswerHook(cache, self))

    def _answer(self, request_type: str, requests: list[Any], compute: Callable[[list[Any]], list[Any]]) -> list[Any]:
        """Answers to `requests`: cached ones from the cache, the others from `compute` (stored by the hook)."""
        cache = self.answer_cache
        if cache is None:
            return compute(requests)
        keys = [cache.key(self.answer_scope, request_type, r.args) for r in requests]
        todo = [i for i, k in enumerate(keys) if k not in cache]
        answers: list[Any] = [cache.get(k, request_type) if k in cache else None for k in keys]
        fresh = compute([requests[i] for i in todo]) if todo else []
        for i, answer in zip(todo, fresh, strict=True):
            answers[i] = answer
            cache.put(keys[i], answer)  # normally stored already by the hook; this covers any path without it
        return answers

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        return self._answer("generate_until", requests, lambda todo: super(RefineBenchLM, self).generate_until(
            todo, disable_tqdm=disable_tqdm))

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        return self._answer("loglikelihood", requests, lambda todo: super(RefineBenchLM, self).loglikelihood(
            todo, disable_tqdm=disable_tqdm))

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        return self._answer("loglikelihood_rolling", requests, lambda todo: super(
            RefineBenchLM, self).loglikelihood_rolling(todo, disable_tqdm=disable_tqdm))

    # ------------------------------------------------------------------ distributed primitives (no accelerate)

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        if not self.dist.enabled:
            return tensor
        parts = [torch.zeros_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.stack(parts) if tensor.dim() == 0 else torch.cat(parts)

    def barrier(self) -> None:
        self.dist.barrier()

    # ------------------------------------------------------------------ tokenisation: no BOS, middle truncation

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None,
                   **kwargs: Any) -> list[int]:
        ids = self.tokenizer.encode(string, add_special_tokens=False)
        if left_truncate_len:
            ids = ids[-left_truncate_len:]
        return ids

    def tok_batch_encode(self, strings: list[str], padding_side: str = "left", left_truncate_len: int | None = None,
                         truncation: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        encoded = self.tokenizer(list(strings), add_special_tokens=False)["input_ids"]
        if any(len(ids) == 0 for ids in encoded):
            raise UserInputError("an lm-eval request has an empty prompt (nothing to condition on)")
        if left_truncate_len:
            for i, ids in enumerate(encoded):
                if len(ids) > left_truncate_len:
                    self.truncated_prompts += 1
                    log.warning("prompt of %d tokens truncated in the middle to %d (max_length %d minus the "
                                "generation budget)", len(ids), left_truncate_len, self.max_length)
                    encoded[i] = truncate_middle(ids, left_truncate_len)
        width = max(len(ids) for ids in encoded)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(encoded), width), pad, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for i, ids in enumerate(encoded):
            row = torch.tensor(ids, dtype=torch.long)
            if padding_side == "left":
                input_ids[i, width - len(ids):], mask[i, width - len(ids):] = row, 1
            else:
                input_ids[i, : len(ids)], mask[i, : len(ids)] = row, 1
        return input_ids, mask

    # ------------------------------------------------------------------ generation

    def _model_generate(self, context: torch.Tensor, max_length: int, stop: list[str],
                        **generation_kwargs: Any) -> torch.Tensor:
        if generation_kwargs.get("do_sample"):
            raise UserInputError("refine-bench evaluates with greedy decoding; do_sample=True is not supported")
        generation_kwargs.pop("temperature", None)
        generation_kwargs["do_sample"] = False
        if not self.prefill_chunk or context.shape[1] <= self.prefill_chunk:
            return super()._model_generate(context, max_length, stop, **generation_kwargs)
        # long prompt: chunked prefill through the recurrent cache, then greedy decoding (same tokens as generate)
        mask = generation_kwargs.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(context)
        criteria = stop_sequences_criteria(self.tokenizer, stop, context.shape[1], context.shape[0])
        return greedy_generate(
            self.model, context, mask, max_length - context.shape[1], chunk_size=self.prefill_chunk,
            eos_token_id=self.tokenizer.eos_token_id, pad_token_id=self.tokenizer.pad_token_id,
            stopping_criteria=criteria,
        )

    def get_model_info(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "model_num_parameters": sum(p.numel() for p in self.model.parameters()),
                "model_dtype": str(next(self.model.parameters()).dtype), "max_length": self.max_length}


def _tokenizer_source(checkpoint: str | None, pretrained: str) -> str:
    """A checkpoint folder's own tokenizer when it has one, else the base model's."""
    if checkpoint and any(os.path.isfile(os.path.join(checkpoint, f))
                          for f in ("tokenizer.json", "tokenizer_config.json")):
        return checkpoint
    return pretrained
