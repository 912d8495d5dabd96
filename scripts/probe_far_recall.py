"""Does a model carry recall across a gap, and is it its fast weights that carry it?

Each probe document is a table of `--rows` rows "key: digits", then `gap` tokens of the natural text the small
models are trained on, then half the rows asked back ("key:" and the model continues). The score is the share of
answer tokens the model predicts right, teacher-forced, at each gap; then again with the fast-weight writes
switched off (LaCT: per-token learning rates ~0; DeltaNet: beta ~0), so that what remains is what attention (or
nothing) recalls. A gap wider than a LaCT model's attention window that scores the same with writes on and off
means its fast weights carry nothing. A diagnostic behind the README's lact-small notes, not a benchmark task.

    python scripts/probe_far_recall.py lact-small path/to/checkpoint --gaps 0,200,500,800
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
from collections.abc import Iterator

import torch

from refine_bench.models.zoo import load_model, load_tokenizer
from refine_bench.train.pretrain_corpus import make_value, natural_documents, new_keys

WRITE_GATES = {"lr_proj": "LaCT per-token fast-weight learning rates", "b_proj": "DeltaNet's beta"}
CLOSED = -40.0  # added before a softplus / sigmoid: the gate is then ~4e-18 instead of its learnt value


def probe_batch(tokenizer, gap: int, docs: int, rows: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`docs` probe documents of one gap as token ids [docs, L] and a mask of their answer tokens."""
    rng = random.Random(f"far-recall|{seed}|{gap}")
    natural = natural_documents()
    sequences, masks = [], []
    for _ in range(docs):
        keys = new_keys(rng, rows, "pseudo")
        values = [make_value(rng, "digits") for _ in keys]
        text = "\n".join(f"{k}: {v}" for k, v in zip(keys, values, strict=True)) + "\n"
        if gap:
            filler: list[int] = []
            while len(filler) < gap:
                filler += tokenizer(rng.choice(natural) + "\n\n", add_special_tokens=False)["input_ids"]
            text += tokenizer.decode(filler[:gap]) + "\n"
        spans = []
        for i in rng.sample(range(rows), rows // 2):
            text += f"{keys[i]}:"
            spans.append((len(text), len(text) + len(values[i]) + 1))
            text += f" {values[i]}\n"
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        sequences.append(enc["input_ids"])
        masks.append([any(a <= start < b for a, b in spans) for start, _ in enc["offset_mapping"]])
    length = min(map(len, sequences))
    return torch.tensor([s[:length] for s in sequences]), torch.tensor([m[:length] for m in masks])


@contextlib.contextmanager
def fast_weight_writes_closed(model: torch.nn.Module) -> Iterator[int]:
    """Close every fast-weight write gate of `model` for the duration; yields how many were closed."""
    hooks = [module.register_forward_hook(lambda _m, _i, out: out + CLOSED)
             for name, module in model.named_modules() if name.rsplit(".", 1)[-1] in WRITE_GATES]
    try:
        yield len(hooks)
    finally:
        for hook in hooks:
            hook.remove()


@torch.no_grad()
def answer_accuracy(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> float:
    predicted = model(ids).logits[:, :-1].argmax(-1)
    return (predicted == ids[:, 1:])[mask[:, 1:]].float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="zoo names or checkpoint folders")
    parser.add_argument("--gaps", default="0,200,500,800", help="tokens of natural text between table and questions")
    parser.add_argument("--docs", type=int, default=24)
    parser.add_argument("--rows", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    gaps = [int(g) for g in args.gaps.split(",")]
    results = []
    for name in args.models:
        model = load_model(name, dtype=torch.float32, device="cpu")
        tokenizer = load_tokenizer(name)
        batches = {g: probe_batch(tokenizer, g, args.docs, args.rows, args.seed) for g in gaps}
        row = {"model": name, "gaps": gaps, "writes_on": [answer_accuracy(model, *batches[g]) for g in gaps]}
        with fast_weight_writes_closed(model) as closed:
            row["writes_off"] = [answer_accuracy(model, *batches[g]) for g in gaps] if closed else None
        results.append(row)
        off = row["writes_off"] or [float("nan")] * len(gaps)
        print(f"{name}\n  gap         " + " ".join(f"{g:>6}" for g in gaps))
        print("  writes on   " + " ".join(f"{a:6.2f}" for a in row["writes_on"]))
        print("  writes off  " + " ".join(f"{a:6.2f}" for a in off), flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
