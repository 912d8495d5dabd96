"""Deterministic, resumable batches for the trainer. Both streams yield a list of `Example`s, so the loop does
not care which kind of data it trains on: a fixed permutation per epoch, and a position to resume from."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from refine_bench.errors import UserInputError
from refine_bench.train.optimization import Example
from refine_bench.truncation import truncate_middle


@dataclass
class _ShuffledBatches:
    """Batches of `batch_size` items in a fixed random order per epoch (seeded), resumable by `position`."""

    batch_size: int
    seed: int
    position: int  # batches drawn so far

    def __len__(self) -> int:
        raise NotImplementedError

    def example(self, index: int) -> Example:
        raise NotImplementedError

    def __iter__(self) -> Iterator[list[Example]]:
        return self

    def __next__(self) -> list[Example]:
        per_epoch = len(self) // self.batch_size
        epoch, index = divmod(self.position, per_epoch)
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(self.seed + epoch))
        self.position += 1
        return [self.example(int(i)) for i in order[index * self.batch_size : (index + 1) * self.batch_size]]


class SequenceStream(_ShuffledBatches):
    """Batches of fixed-length token sequences [N, S] (mid-training, pretraining): every token is a target, or
    those marked in `targets` [N, S]."""

    def __init__(self, sequences: torch.Tensor, batch_size: int, seed: int = 0, position: int = 0,
                 targets: torch.Tensor | None = None) -> None:
        if batch_size > len(sequences):
            raise UserInputError(f"batch size {batch_size} exceeds the {len(sequences)} training sequences in the data")
        super().__init__(batch_size, seed, position)
        self.sequences = sequences
        self.targets = targets

    def __len__(self) -> int:
        return len(self.sequences)

    def example(self, index: int) -> Example:
        return Example(self.sequences[index], None if self.targets is None else self.targets[index])


class PairStream(_ShuffledBatches):
    """Batches of (prompt, answer) pairs (post-training): the answer tokens are the targets."""

    def __init__(self, pairs: list[tuple[torch.Tensor, torch.Tensor]], batch_size: int, seed: int = 0,
                 position: int = 0) -> None:
        if batch_size > len(pairs):
            raise UserInputError(f"batch size {batch_size} exceeds the {len(pairs)} examples in the data")
        super().__init__(batch_size, seed, position)
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def example(self, index: int) -> Example:
        return pair_example(*self.pairs[index])


def pair_example(prompt: torch.Tensor, answer: torch.Tensor) -> Example:
    """A (prompt, answer) pair as one sequence whose targets are the answer tokens."""
    targets = torch.cat([torch.zeros(len(prompt), dtype=torch.bool), torch.ones(len(answer), dtype=torch.bool)])
    return Example(torch.cat([prompt, answer]), targets.to(prompt.device), prompt_len=len(prompt))


def encode_pairs(pairs: list[tuple[str, str]], tokenizer, max_len: int, answer_eos: bool = False
                 ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Token ids of (prompt, answer[, EOS]); prompts longer than the budget lose their middle (LongBench's
    convention), keeping the head with the instructions and the tail with the question."""
    out = []
    for prompt, answer in pairs:
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        a = tokenizer(answer, add_special_tokens=False)["input_ids"] + ([tokenizer.eos_token_id] if answer_eos else [])
        budget = max_len - len(a)
        if budget < 2:
            raise UserInputError(f"answer of {len(a)} tokens does not fit seq_len {max_len}")
        out.append((torch.tensor(truncate_middle(p, budget), dtype=torch.long), torch.tensor(a, dtype=torch.long)))
    return out
