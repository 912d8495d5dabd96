"""The project's own tokenizer for the tiny models: byte-level BPE, built here, no download.

The tokenizer file ships inside the package (`assets/tiny-tokenizer/tokenizer.json`); `build_tiny_tokenizer`
is how it was made (`python scripts/build_tiny_tokenizer.py` rebuilds it). Special ids follow the paper's
Llama-style 32K tokenizer: <unk>=0, <s>=1, </s>=2 (also used for padding).
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import resources
from pathlib import Path

from transformers import PreTrainedTokenizerFast

TINY_VOCAB_SIZE = 512
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")
TINY_TOKENIZER_DIR = "assets/tiny-tokenizer"


def build_tiny_tokenizer(texts: Iterable[str], vocab_size: int = TINY_VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `texts` (every byte stays representable)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return wrap_tokenizer(tok)


def wrap_tokenizer(tok) -> PreTrainedTokenizerFast:  # noqa: ANN001 - a `tokenizers.Tokenizer`
    """Wrap a raw `tokenizers.Tokenizer` with the project's special-token conventions."""
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="</s>",
        padding_side="left",
        model_max_length=1 << 30,
        clean_up_tokenization_spaces=False,
    )


def tiny_tokenizer_path() -> Path:
    """Folder holding the shipped tiny tokenizer."""
    return Path(str(resources.files("refine_bench.models").joinpath(TINY_TOKENIZER_DIR)))


def load_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Load the shipped tiny tokenizer (vocab 512, left padding, pad = eos = 2)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tiny_tokenizer_path() / "tokenizer.json"))
    return wrap_tokenizer(tok)
