"""RULER needle-in-a-haystack samples, generated offline and deterministically, at exact token lengths.

Task definitions follow RULER (Hsieh et al., 2024; the variants of its `synthetic.yaml`):

=================  ========  =====  ======  =================
task               haystack  keys   values  needles
=================  ========  =====  ======  =================
niah_single_1      noise     words  numbers 1
niah_single_2      essay     words  numbers 1
niah_single_3      essay     words  uuids   1
niah_multikey_1    essay     words  numbers 4 keys, 1 asked
niah_multikey_2    needle    words  numbers 1 (haystack = distractor needles)
niah_multikey_3    needle    uuids  uuids   1 (haystack = distractor needles)
niah_multivalue    essay     words  numbers 1 key with 4 values
niah_multiquery    essay     words  numbers 4 keys, all 4 asked
=================  ========  =====  ======  =================

Haystacks: "noise" repeats RULER's five filler sentences (one line per repeat); "essay" is the project's own prose
in `assets/essays.txt` (RULER uses Paul Graham essays, which need a download), cycled with a per-sample seeded
paragraph order; "needle" is made of distractor needles with fresh random keys and values.
Keys that are "words" are adjective-noun pairs from word lists in this module (RULER uses the `wonderwords`
lists); numbers have 7 digits; uuids are version-4 UUIDs drawn from the sample's generator.

Length rule: the prompt is the full model input (RULER's template with the context, followed by its answer
prefix), and ``len(tokenizer(prompt, add_special_tokens=False).input_ids) + tokens_to_generate == length``
exactly, as RULER sizes samples (its max_seq_length counts the tokens to generate). The haystack is cut to the
largest number of words that fits, then topped up with a prefix of the next word (at character granularity)
to land on the exact count; a sample that cannot be made exact raises an error.

Depth: needle i goes to the sentence boundary (a line boundary for "noise" and "needle") nearest to
depth_i * (number of sentences in the context); 0 = right after the instruction line, 1 = just before the
question. The first asked needle's depth sweeps `DEPTH_GRID` with the sample index; the other needles take
seeded random depths from the same grid. Each sample records every answer's needle depth.
Every sample is a pure function of (seed, task, length, index), so any subset is reproducible on its own.
"""

from __future__ import annotations

import hashlib
import random
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any, Literal

from refine_bench.errors import UserInputError

Haystack = Literal["noise", "essay", "needle"]
NeedleType = Literal["words", "numbers", "uuids"]

DEFAULT_LENGTHS = (4096, 8192, 16384)
DEFAULT_NUM_SAMPLES = 500
TOKENS_TO_GENERATE = 128
DEFAULT_SEED = 42
DEPTH_GRID = tuple(i / 10 for i in range(11))

NOISE_UNIT = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = "One of the special magic {kind} for {key} is: {value}."
# RULER's prompt, in its plural form and in the singular form it uses when exactly one value is asked for.
TEMPLATES = {
    False: (
        "Some special magic {kind} are hidden within the following text. Make sure to memorize it. "
        "I will quiz you about the {kind} afterwards.\n",
        "\nWhat are all the special magic {kind} for {query} mentioned in the provided text?",
        " The special magic {kind} for {query} mentioned in the provided text are",
    ),
    True: (
        "A special magic {kind} is hidden within the following text. Make sure to memorize it. "
        "I will quiz you about the {kind} afterwards.\n",
        "\nWhat is the special magic {kind} for {query} mentioned in the provided text?",
        " The special magic {kind} for {query} mentioned in the provided text is",
    ),
}

_ADJECTIVES = (
    "abundant adorable agile ancient angry brave bright broad calm careful cheerful clever cloudy clumsy cold "
    "crooked curious damp dark deep delicate dusty eager early elegant empty fancy fierce flat fragile frosty "
    "gentle giant glossy golden grumpy hollow honest humble hungry icy jolly keen lazy little lively lonely loud "
    "lucky marble mellow merry misty modern narrow nervous noble odd orange patient plain polite proud purple "
    "quick quiet rapid rare rough round rusty sandy scarlet shiny silent silver simple sleepy slow smooth snowy "
    "soft solid sour spicy steady sticky stormy strange sturdy sunny swift tall tame tender thirsty tidy tiny "
    "tough velvet vivid warm wary weary wild windy wise wooden young zealous"
).split()
_NOUNS = (
    "acorn anchor apple arrow badger balloon basket beacon beetle bell blanket bottle bucket butterfly cabin "
    "camel candle canyon carpet castle cedar chimney cloud clover comet compass cottage crayon cricket crown "
    "cushion daisy desert dolphin donkey dragon drum eagle engine falcon feather fiddle flag forest fountain fox "
    "garden glacier goose guitar hammer harbor helmet hill island jacket jungle kettle kite ladder lantern lemon "
    "lizard magnet maple meadow mirror mitten needle nest ocean orchard otter owl paddle parrot pebble pencil "
    "pepper piano pillow planet pocket pond puzzle quilt rabbit raven ribbon river rocket saddle sail scarf "
    "shell shovel spoon squirrel star stone sunflower teapot thistle tiger tower trumpet tulip turtle umbrella "
    "valley violin wagon walnut whistle willow window wolf"
).split()


@dataclass(frozen=True)
class NiahSpec:
    """One RULER NIAH variant."""

    haystack: Haystack
    key_type: NeedleType
    value_type: NeedleType
    num_keys: int = 1
    num_values: int = 1
    num_queries: int = 1


NIAH_TASKS: dict[str, NiahSpec] = {
    "niah_single_1": NiahSpec("noise", "words", "numbers"),
    "niah_single_2": NiahSpec("essay", "words", "numbers"),
    "niah_single_3": NiahSpec("essay", "words", "uuids"),
    "niah_multikey_1": NiahSpec("essay", "words", "numbers", num_keys=4),
    "niah_multikey_2": NiahSpec("needle", "words", "numbers"),
    "niah_multikey_3": NiahSpec("needle", "uuids", "uuids"),
    "niah_multivalue": NiahSpec("essay", "words", "numbers", num_values=4),
    "niah_multiquery": NiahSpec("essay", "words", "numbers", num_keys=4, num_queries=4),
}


class _Tokenizer:
    """Token counting without special tokens (the LM never adds BOS)."""

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer
        self._fast = getattr(tokenizer, "backend_tokenizer", None)  # skips the Python wrapper when present

    def count(self, text: str) -> int:
        if self._fast is not None:
            return len(self._fast.encode(text, add_special_tokens=False).ids)
        return len(self._tok(text, add_special_tokens=False)["input_ids"])


# --------------------------------------------------------------------------------------------- random values


def sample_rng(seed: int, task: str, length: int, index: int) -> random.Random:
    """A generator that depends only on (seed, task, length, index), stable across Python runs."""
    digest = hashlib.sha256(f"{seed}|{task}|{length}|{index}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _random_value(rng: random.Random, kind: NeedleType) -> str:
    if kind == "numbers":
        return str(rng.randint(1_000_000, 9_999_999))
    if kind == "words":
        return f"{rng.choice(_ADJECTIVES)}-{rng.choice(_NOUNS)}"
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _distinct(rng: random.Random, kind: NeedleType, n: int, avoid: set[str]) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        value = _random_value(rng, kind)
        if value not in avoid:
            avoid.add(value)
            out.append(value)
    return out


# --------------------------------------------------------------------------------------------- haystacks


@lru_cache(maxsize=1)
def essay_paragraphs() -> tuple[str, ...]:
    """The natural-text haystack shipped with the project, one paragraph per entry."""
    text = resources.files("refine_bench.eval").joinpath("assets/essays.txt").read_text(encoding="utf-8")
    paragraphs = tuple(" ".join(p.split()) for p in text.split("\n\n") if p.strip())
    if not paragraphs:
        raise RuntimeError("refine_bench/eval/assets/essays.txt is empty")
    return paragraphs


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _essay_sentences(rng: random.Random) -> Iterable[str]:
    """Endless essay sentences: the paragraphs in a seeded order, reshuffled on every pass."""
    paragraphs = list(essay_paragraphs())
    while True:
        rng.shuffle(paragraphs)
        for paragraph in paragraphs:
            yield from _SENTENCE_END.split(paragraph)


def _needle_sentences(rng: random.Random, spec: NiahSpec, avoid: set[str]) -> Iterable[str]:
    while True:
        key = _distinct(rng, spec.key_type, 1, avoid)[0]
        value = _random_value(rng, spec.value_type)
        yield NEEDLE.format(kind=spec.value_type, key=key, value=value)


# --------------------------------------------------------------------------------------------- one sample


@dataclass
class _Parts:
    """A sample's fixed pieces; the context in between is sized by `_fit`.

    The context holds `n_full` whole haystack units, then a slot for a partial unit (a character prefix of the
    next unit, possibly empty). Needle boundaries are computed over n_full + 1 slots, so growing the partial
    never moves a needle.
    """

    head: str
    tail: str
    sentences: list[str]  # haystack units, grown lazily from `source`
    source: Iterable[str]
    sep: str
    needles: list[str]
    depths: list[float]

    def unit(self, i: int) -> str:
        while len(self.sentences) <= i:
            self.sentences.append(next(self.source))  # type: ignore[call-overload]
        return self.sentences[i]

    def render(self, n_full: int, partial: str) -> tuple[str, str, list[int]]:
        """(text before the partial slot, text from the partial slot to the end, needle char offsets)."""
        n = n_full + 1
        slots: dict[int, list[int]] = {}
        for j, depth in enumerate(self.depths):
            slots.setdefault(int(round(depth * n)), []).append(j)
        pieces: list[tuple[str, int]] = []  # (text, needle index or -1 for haystack, -2 for the partial)
        for b in range(n + 1):
            pieces.extend((self.needles[j], j) for j in slots.get(b, []))
            if b < n_full:
                pieces.append((self.unit(b), -1))
            elif b == n_full and partial:
                pieces.append((partial, -2))
        before, region = [self.head], []
        offsets = [0] * len(self.needles)
        pos, in_region = len(self.head), False
        for k, (text, j) in enumerate(pieces):
            piece = text if j == -2 else (self.sep if k > 0 else "") + text
            if j == -2 or (not in_region and j >= 0 and self._after_partial(pieces, k)):
                in_region = True
            (region if in_region else before).append(piece)
            if j >= 0:
                offsets[j] = pos + (len(self.sep) if k > 0 else 0)
            pos += len(piece)
        region.append(self.tail)
        return "".join(before), "".join(region), offsets

    def partial_source(self, n_full: int) -> str:
        """The text whose prefixes fill the partial slot: the next unit, with its separator when it follows
        something (the separator alone is a valid one-token step)."""
        first = n_full == 0 and not any(int(round(d * (n_full + 1))) == 0 for d in self.depths)
        return self.unit(n_full) if first else self.sep + self.unit(n_full)

    @staticmethod
    def _after_partial(pieces: list[tuple[str, int]], k: int) -> bool:
        # needles that follow every whole unit sit in the region after the partial slot
        return all(j != -1 for _, j in pieces[k:])


def _fit(parts: _Parts, budget: int, counter: _Tokenizer) -> tuple[str, list[int]]:
    """Exactly `budget` prompt tokens: whole units first, then a character prefix of the next unit.

    Full-prompt token counts are expensive at 16K tokens, so whole units are sized with a few Newton steps on the
    full count, and the partial unit is sized on the short tail region alone (token counts add up across the
    whitespace boundary in front of it); the result is always checked on the full prompt, with an exhaustive
    search as the fallback.
    """

    def full(n_full: int, partial: str = "") -> int:
        before, region, _ = parts.render(n_full, partial)
        return counter.count(before + region)

    base = full(0)
    if base > budget:
        raise UserInputError(
            f"a NIAH prompt needs {base} tokens before any haystack, more than the {budget} available; "
            "raise the length"
        )
    per_unit = max(1.0, sum(counter.count(parts.sep + parts.unit(i)) for i in range(8)) / 8)
    n, c = 0, base
    for _ in range(12):  # Newton steps towards the largest n with full(n) <= budget
        step = int((budget - c) / per_unit)
        if c <= budget and (step == 0 or full(n + 1) > budget):
            if step == 0 and full(n + 1) <= budget:
                n, c = n + 1, full(n + 1)
                continue
            break
        n = max(0, n + (step if step != 0 else -1))
        c = full(n)
    else:
        n = _bisect_units(full, budget)
    while n > 0 and full(n) > budget:
        n -= 1
    while full(n + 1) <= budget:
        n += 1
    found = _fill_partial(parts, n, budget, counter)
    if found is None:
        n, found = _fill_exhaustive(parts, n, budget, counter)
    before, region, offsets = parts.render(n, found)
    return before + region, offsets


def _bisect_units(full: Callable[[int], int], budget: int) -> int:
    lo, hi = 0, 1
    while full(hi) <= budget:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if full(mid) <= budget else (lo, mid)
    return lo


def _fill_partial(parts: _Parts, n: int, budget: int, counter: _Tokenizer) -> str | None:
    """Prefix of unit n that makes the prompt exactly `budget` tokens, sized on the tail region only."""
    before, region, _ = parts.render(n, "")
    total = counter.count(before + region)
    if total == budget:
        return ""
    fixed = total - counter.count(region)
    unit = parts.partial_source(n)
    for end in range(1, len(unit) + 1):
        _, region_p, _ = parts.render(n, unit[:end])
        estimate = fixed + counter.count(region_p)
        if estimate == budget:
            b, r, _ = parts.render(n, unit[:end])
            return unit[:end] if counter.count(b + r) == budget else None
        if estimate > budget:
            return None
    return None


def _fill_exhaustive(parts: _Parts, n: int, budget: int, counter: _Tokenizer) -> tuple[int, str]:
    """Slow path: every prefix of unit n, n-1, ... on the full prompt (the haystack is cut a little earlier)."""
    closest = None
    for m in range(n, max(-1, n - 4), -1):
        unit = parts.partial_source(m)
        for end in range(0, len(unit) + 1):
            before, region, _ = parts.render(m, unit[:end])
            c = counter.count(before + region)
            if c == budget:
                return m, unit[:end]
            closest = c
            if c > budget:
                break
    raise RuntimeError(
        f"could not build a NIAH prompt of exactly {budget} tokens (reached {closest}); the tokenizer merges "
        "across the haystack boundary"
    )


def make_sample(
    task: str,
    length: int,
    index: int,
    tokenizer: Any,
    *,
    seed: int = DEFAULT_SEED,
    tokens_to_generate: int = TOKENS_TO_GENERATE,
) -> dict[str, Any]:
    """Build sample `index` of NIAH `task` at `length` tokens (prompt + tokens_to_generate)."""
    if task not in NIAH_TASKS:
        raise UserInputError(f"unknown NIAH task {task!r}; known: {', '.join(NIAH_TASKS)}")
    spec = NIAH_TASKS[task]
    budget = length - tokens_to_generate
    if budget <= 0:
        raise UserInputError(f"NIAH length {length} leaves no room beside {tokens_to_generate} generated tokens")
    rng = sample_rng(seed, task, length, index)
    used: set[str] = set()
    num_keys = max(spec.num_keys, spec.num_queries)
    keys = _distinct(rng, spec.key_type, num_keys, used)
    values = [_distinct(rng, spec.value_type, spec.num_values, used) for _ in keys]
    needles = [NEEDLE.format(kind=spec.value_type, key=k, value=v) for k, vs in zip(keys, values, strict=True)
               for v in vs]
    needle_key = [i for i, vs in enumerate(values) for _ in vs]
    asked = sorted(rng.sample(range(num_keys), spec.num_queries))
    # depths: the first needle of the first asked key sweeps the grid, the rest are seeded draws
    first = needle_key.index(asked[0])
    depths = [rng.choice(DEPTH_GRID) for _ in needles]
    depths[first] = DEPTH_GRID[index % len(DEPTH_GRID)]

    query_keys = [keys[i] for i in asked]
    query = ", ".join(query_keys[:-1]) + ", and " + query_keys[-1] if len(query_keys) > 1 else query_keys[0]
    singular = spec.num_queries * spec.num_values == 1
    kind = spec.value_type[:-1] if singular else spec.value_type
    instruction, question, answer_prefix = TEMPLATES[singular]
    head = instruction.format(kind=kind)
    tail = question.format(kind=kind, query=query) + answer_prefix.format(kind=kind, query=query)

    if spec.haystack == "noise":
        source: Iterable[str] = iter(lambda: NOISE_UNIT, None)
        sep = "\n"
    elif spec.haystack == "needle":
        source = _needle_sentences(rng, spec, used)
        sep = "\n"
    else:
        source = _essay_sentences(rng)
        sep = " "
    parts = _Parts(head, tail, [], iter(source), sep, needles, depths)
    prompt, offsets = _fit(parts, budget, _Tokenizer(tokenizer))

    answers = [v for i in asked for v in values[i]]
    answer_needles = [j for j, k in enumerate(needle_key) if k in asked]
    context_start, context_end = len(head), len(prompt) - len(tail)
    span = max(context_end - context_start, 1)
    return {
        "index": index,
        "task": task,
        "prompt": prompt,
        "outputs": answers,
        "length": length,
        "prompt_tokens": budget,
        "tokens_to_generate": tokens_to_generate,
        "depth": depths[first],
        "needle_depths": [depths[j] for j in answer_needles],
        "needle_positions": [(offsets[j] - context_start) / span for j in answer_needles],
        "query": query,
    }


def generate_samples(
    task: str,
    tokenizer: Any,
    *,
    lengths: Sequence[int] = DEFAULT_LENGTHS,
    num_samples: int = DEFAULT_NUM_SAMPLES,
    seed: int = DEFAULT_SEED,
    tokens_to_generate: int = TOKENS_TO_GENERATE,
    progress: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """All samples of `task`, interleaved across lengths (sample 0 at every length, then sample 1, ...), so the
    first k * len(lengths) docs hold k samples per length."""
    docs = []
    for index in range(num_samples):
        for length in lengths:
            docs.append(make_sample(task, int(length), index, tokenizer, seed=seed,
                                    tokens_to_generate=tokens_to_generate))
        if progress is not None:
            progress(index)
    return docs
