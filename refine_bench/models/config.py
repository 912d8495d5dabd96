"""What every fast-weight model's config shares: the transformer-shaped fields, the options a released
config.json may carry that a model implements for one value only, and validation on construction.

Configs are transformers' dataclass configs: a model's config declares only its own fields (and overrides
the defaults it needs); unknown keys of a released config.json are kept and ignored.
"""

from __future__ import annotations

from typing import Any, ClassVar

from transformers import PretrainedConfig

from refine_bench.errors import UserInputError
from refine_bench.models.layers import swiglu_intermediate_size


class FastWeightConfig(PretrainedConfig):
    """Base config: vocabulary, width, depth, the SwiGLU MLP, norms, special tokens."""

    # option -> the only value the model implements; taken from config.json when present, checked on creation
    fixed_options: ClassVar[dict[str, Any]] = {}

    vocab_size: int = 32000
    hidden_size: int = 2048
    num_hidden_layers: int = 24
    hidden_ratio: float = 4
    intermediate_size: int | None = None
    norm_eps: float = 1e-6
    max_position_embeddings: int = 2048
    initializer_range: float = 0.02
    use_cache: bool = True
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    pad_token_id: int | None = 2
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs: Any) -> None:
        for key, value in self.fixed_options.items():
            setattr(self, key, kwargs.pop(key, value))
        super().__post_init__(**kwargs)
        self.validate_shapes()

    def validate_shapes(self) -> None:
        """Raise UserInputError for settings the model cannot run (subclasses add their own checks)."""
        for key, value in self.fixed_options.items():
            if getattr(self, key) != value:
                raise UserInputError(
                    f"{type(self).__name__}.{key}={getattr(self, key)!r} is not supported (only {value!r})"
                )

    @property
    def allows_compiled_cpu_kernels(self) -> bool:
        """Whether the compiled CPU kernels (decode-time norms, MLP, mixer step) may serve this model; a model
        with a kernel-backend setting says no when that setting asks for torch's ops."""
        return True

    @property
    def mlp_intermediate_size(self) -> int:
        return self.intermediate_size or swiglu_intermediate_size(self.hidden_size, self.hidden_ratio)
