"""The causal LM every fast-weight model of the project is: the shared backbone (`models.backbone`) under
`model.`, the LM head and loss, generation plumbing, strict checkpoint loading, state snapshots for REFINE and
per-block activation checkpointing.

A concrete model is its config class and its token mixer class (see `models.backbone`), nothing more.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from refine_bench.errors import UserInputError
from refine_bench.models.backbone import FastWeightBackbone
from refine_bench.models.cache import FastWeightCache
from refine_bench.models.checkpoint import check_state_dict, load_state_dict, read_config_dict, rename_keys
from refine_bench.models.layers import RMSNorm

# transformers >= 5.2x names the output's cache `cache`; earlier releases call it `past_key_values`.
_CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


@dataclass
class FastWeightLMOutput(CausalLMOutputWithPast):
    """The causal-LM output, with the recurrent cache as `.cache` on every transformers release (and, on
    releases that call it so, also as `.past_key_values`, which their `generate` reads)."""

    if _CACHE_FIELD != "cache":
        cache: FastWeightCache | None = None


class FastWeightPreTrainedModel(PreTrainedModel):
    """Base class: causal LM over the shared recurrent backbone with the subclass's `mixer_class`.

    Concrete models list `GenerationMixin` directly among their bases (transformers checks direct bases).
    """

    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    mixer_class: type[nn.Module]
    _no_split_modules = ["FastWeightBlock"]
    _checkpoint_renames: dict[str, str] = {}

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.model = FastWeightBackbone(config, self.mixer_class)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    # transformers: the model builds its own cache, never a DynamicCache
    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, RMSNorm):
            with torch.no_grad():
                module.weight.fill_(1.0)
        elif callable(getattr(module, "reset_fast_weights", None)):  # a mixer with its own initial fast weights
            module.reset_fast_weights()

    # activation checkpointing ---------------------------------------------------------------------------
    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict[str, Any] | None = None,
                                      **_: Any) -> None:
        """Recompute each block's activations in the backward pass instead of storing them (transformers'
        name; also `activation_checkpointing_enable`). Gradients stay exact, also through branched states.

        gradient_checkpointing_kwargs go to `torch.utils.checkpoint.checkpoint`; only the non-reentrant
        variant is supported (the reentrant one cannot take the nested cache entries).
        """
        if not self.supports_gradient_checkpointing:
            raise UserInputError(f"{type(self).__name__} does not support activation checkpointing")
        kwargs = dict(gradient_checkpointing_kwargs or {})
        if kwargs.pop("use_reentrant", False):
            raise UserInputError("activation checkpointing: use_reentrant=True is not supported (the blocks take "
                                 "nested recurrent states); leave it unset")
        self.model.checkpoint_kwargs = kwargs
        self.model.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        """Store activations again (the default)."""
        self.model.gradient_checkpointing = False

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict[str, Any] | None = None,
                                        **kwargs: Any) -> None:
        self.gradient_checkpointing_enable(activation_checkpointing_kwargs, **kwargs)

    def activation_checkpointing_disable(self) -> None:
        self.gradient_checkpointing_disable()

    @property
    def is_gradient_checkpointing(self) -> bool:
        return bool(self.model.gradient_checkpointing)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embeddings = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def new_cache(self) -> FastWeightCache:
        """An empty cache for this model."""
        return FastWeightCache(self.config.num_hidden_layers)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: FastWeightCache | None = None,
        use_cache: bool | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        past_key_values: FastWeightCache | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Causal LM forward. `attention_mask` may cover past + current tokens (as in generation)."""
        cache = cache if cache is not None else past_key_values
        if cache is not None and not isinstance(cache, FastWeightCache):
            raise ValueError(f"cache must be a FastWeightCache, got {type(cache).__name__}")
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        seq_len = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        mask = None
        if attention_mask is not None:
            if attention_mask.dim() != 2 or attention_mask.shape[1] < seq_len:
                raise ValueError(
                    f"attention_mask must have shape [B, L] with L >= {seq_len} (past + current), "
                    f"got {list(attention_mask.shape)}"
                )
            mask = attention_mask[:, -seq_len:]
            if bool(mask.all()):
                mask = None
        if use_cache and cache is None:
            cache = self.new_cache()
        hidden, all_hidden, cache = self.model(
            input_ids=input_ids,
            inputs_embeds=inputs_embeds,
            attention_mask=mask,
            cache=cache if use_cache else None,
            output_hidden_states=bool(output_hidden_states),
        )
        if isinstance(logits_to_keep, int):
            kept = hidden[:, -logits_to_keep:] if logits_to_keep > 0 else hidden
        else:
            kept = hidden[:, logits_to_keep]
        logits = self.lm_head(kept)
        loss = None
        if labels is not None:
            shift_logits = logits[:, :-1].float()
            shift_labels = labels[:, 1:].to(logits.device)
            loss = F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                                   ignore_index=-100)
        out_cache = cache if use_cache else None
        extra = {} if _CACHE_FIELD == "cache" else {"past_key_values": out_cache}
        return FastWeightLMOutput(loss=loss, logits=logits, hidden_states=all_hidden, cache=out_cache, **extra)

    def forward_with_snapshots(
        self,
        input_ids: torch.LongTensor,
        positions: list[int],
        attention_mask: torch.Tensor | None = None,
        detach: bool = False,
        output_hidden_states: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None, list[FastWeightCache]]:
        """Teacher-forced pass over the whole sequence that also returns the state at each position.

        Returns (logits [B, T, vocab], last-layer hidden states [B, T, D] or None, snapshots) where
        snapshots[i] is the cache after consuming input_ids[:, :positions[i]]. The pass is split at the
        positions and the state carried between pieces, which equals one pass; with detach=False the
        snapshots stay on the graph of the prefix, so a loss computed on a branch from them back-propagates
        into the prefix's fast-weight state.
        """
        T = input_ids.shape[1]
        bounds = sorted(set(positions))
        if any(p < 1 or p > T for p in bounds):
            raise ValueError(f"positions must lie in [1, {T}], got {positions}")
        cuts = [0, *[p for p in bounds if p < T], T]
        cache = self.new_cache()
        logits, hiddens, snaps = [], [], {}
        for start, end in zip(cuts[:-1], cuts[1:], strict=True):
            out = self(
                input_ids=input_ids[:, start:end],
                attention_mask=None if attention_mask is None else attention_mask[:, :end],
                cache=cache,
                use_cache=True,
                output_hidden_states=output_hidden_states,
            )
            cache = out.cache
            logits.append(out.logits)
            if output_hidden_states:
                hiddens.append(out.hidden_states[-1])
            snaps[end] = cache.clone(detach=detach)
        hidden = torch.cat(hiddens, dim=1) if output_hidden_states else None
        return torch.cat(logits, dim=1), hidden, [snaps[p] for p in positions]

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        pretrained_model_name_or_path: str | Path,
        *,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        allow_pickle: bool = False,
        **kwargs: Any,
    ):
        """Load a local checkpoint directory strictly (see `refine_bench.models.checkpoint`)."""
        directory = Path(pretrained_model_name_or_path)
        if not directory.is_dir():
            raise UserInputError(
                f"{directory} is not a local checkpoint directory; use refine_bench.models.zoo.load_model for "
                "zoo names and hub ids"
            )
        config = cls.config_class.from_dict(read_config_dict(directory))
        state = rename_keys(load_state_dict(directory, allow_pickle=allow_pickle), cls._checkpoint_renames)
        dtype = dtype or next(iter(state.values())).dtype
        model = cls.from_config_strict(config, dtype=dtype)
        model.load_strict(state)
        if device is not None:
            model.to(device)
        return model.eval()

    @classmethod
    def from_config_strict(cls, config: Any, dtype: torch.dtype = torch.float32):
        """Instantiate with the given dtype (weights initialised; a checkpoint overwrites them all)."""
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype) if dtype.is_floating_point else None
        try:
            model = cls(config)
        finally:
            torch.set_default_dtype(previous)
        return model.to(dtype)

    def load_strict(self, state: dict[str, torch.Tensor]) -> None:
        """Copy `state` into the model after checking every key and shape."""
        expected = {k: v.shape for k, v in self.state_dict().items()}
        optional = {"lm_head.weight"} if getattr(self.config, "tie_word_embeddings", False) else set()
        check_state_dict(expected, state, optional=optional)
        self.load_state_dict(state, strict=not optional)
