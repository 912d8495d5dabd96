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

Haystacks are sequences of whole sentences: "noise" repeats RULER's five filler sentences (one line per repeat);
"essay" is the project's own prose in `assets/essays.txt` (RULER uses Paul Graham essays, which need a download),
cycled with a per-sample seeded paragraph order; "needle" is made of distractor needles (one per line) with fresh
random keys and values.
Keys that are "words" are adjective-noun pairs from word lists in this module (RULER uses the `wonderwords`
lists); numbers have 7 digits; uuids are version-4 UUIDs drawn from the sample's generator.

Length rule (`convention`): the prompt is the full model input (RULER's template with the context, followed by
its answer prefix); like RULER, a length counts the tokens to generate.

* ``exact`` (default): ``len(tokenizer(prompt, add_special_tokens=False).input_ids) + tokens_to_generate ==
  length`` exactly, and the haystack ends on a sentence boundary. The haystack takes whole sentences in stream
  order while they fit; when they leave a remainder, the last few sentences are replaced by later sentences of
  the same stream (in order, some skipped) whose token counts make up the exact total. A sample that cannot be
  made exact raises an error.
* ``lm-eval``: lm-eval's (and RULER's) sizing: the haystack grows in steps (essay: 500 words; noise and needle:
  25 lines, 5 below 4,096 tokens) and keeps the largest step whose prompt + tokens_to_generate fits the length,
  so prompts are shorter than ``length - tokens_to_generate`` by up to one step (at 4,096, lm-eval's essay
  prompts are about 3,100 tokens). Here the haystack still ends on a whole sentence within the step's words.

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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any, Literal

from refine_bench.errors import UserInputError
from refine_bench.eval.data import note_read
from refine_bench.protocol import PAPER_LENGTHS

Haystack = Literal["noise", "essay", "needle"]
NeedleType = Literal["words", "numbers", "uuids"]

DEFAULT_LENGTHS = PAPER_LENGTHS
DEFAULT_NUM_SAMPLES = 500
TOKENS_TO_GENERATE = 128
DEFAULT_SEED = 42
DEPTH_GRID = tuple(i / 10 for i in range(11))
EXACT = "exact"
LM_EVAL = "lm-eval"
CONVENTIONS = (EXACT, LM_EVAL)
# lm-eval's haystack steps: words of essay, lines of noise or needles (fewer lines below 4,096 tokens)
LM_EVAL_ESSAY_STEP = 500
LM_EVAL_LINE_STEP, LM_EVAL_SHORT_LINE_STEP, LM_EVAL_SHORT_BELOW = 25, 5, 4096

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


# Keyed by protocol.NIAH_TASKS (a test checks that both name the same tasks).
NIAH_SPECS: dict[str, NiahSpec] = {
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


def check_convention(convention: str) -> str:
    """A valid NIAH length convention, or a UserInputError naming the valid ones."""
    if convention not in CONVENTIONS:
        raise UserInputError(f"unknown NIAH length convention {convention!r}; choose from {', '.join(CONVENTIONS)}")
    return convention


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
# Every haystack unit and needle is one sentence with its separator in front (" " or "\n"); the context drops the
# separator of its first piece.

ESSAY_FILE = "assets/essays.txt"


@lru_cache(maxsize=1)
def essay_paragraphs() -> tuple[str, ...]:
    """The natural-text haystack shipped with the project, one paragraph per entry."""
    text = resources.files("refine_bench.eval").joinpath(ESSAY_FILE).read_text(encoding="utf-8")
    paragraphs = tuple(" ".join(p.split()) for p in text.split("\n\n") if p.strip())
    if not paragraphs:
        raise RuntimeError(f"refine_bench/eval/{ESSAY_FILE} is empty")
    return paragraphs


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_NOISE_SENTENCES = _SENTENCE_END.split(NOISE_UNIT)


def _essay_units(rng: random.Random) -> Iterator[str]:
    """Endless essay sentences: the paragraphs in a seeded order, reshuffled on every pass."""
    note_read(str(resources.files("refine_bench.eval").joinpath(ESSAY_FILE)))
    paragraphs = list(essay_paragraphs())
    while True:
        rng.shuffle(paragraphs)
        for paragraph in paragraphs:
            for sentence in _SENTENCE_END.split(paragraph):
                yield " " + sentence


def _noise_units() -> Iterator[str]:
    """RULER's noise: its five sentences over and over, each repeat on a new line."""
    while True:
        for i, sentence in enumerate(_NOISE_SENTENCES):
            yield ("\n" if i == 0 else " ") + sentence


def _needle_units(rng: random.Random, spec: NiahSpec, avoid: set[str]) -> Iterator[str]:
    """Distractor needles with fresh keys, one per line."""
    while True:
        key = _distinct(rng, spec.key_type, 1, avoid)[0]
        value = _random_value(rng, spec.value_type)
        yield "\n" + NEEDLE.format(kind=spec.value_type, key=key, value=value)


# --------------------------------------------------------------------------------------------- one sample


@dataclass
class _Parts:
    """A sample's fixed pieces (head, tail, needles at their depths) and its haystack stream."""

    head: str
    tail: str
    source: Iterator[str]
    needles: list[str]  # with their separators in front
    depths: list[float]
    stream: list[str] = field(default_factory=list)  # haystack units drawn from `source` so far

    def unit(self, i: int) -> str:
        while len(self.stream) <= i:
            self.stream.append(next(self.source))
        return self.stream[i]

    def units(self, n: int) -> list[str]:
        if n > 0:
            self.unit(n - 1)
        return self.stream[:n]

    def render(self, units: Sequence[str]) -> tuple[str, list[int]]:
        """The prompt with `units` as the haystack, and each needle's character offset in it. Needle i goes to the
        boundary nearest depth_i * len(units) (0: before the first sentence, len(units): after the last)."""
        slots: dict[int, list[int]] = {}
        for j, depth in enumerate(self.depths):
            slots.setdefault(int(round(depth * len(units))), []).append(j)
        pieces: list[tuple[str, int]] = []
        for b in range(len(units) + 1):
            pieces.extend((self.needles[j], j) for j in slots.get(b, []))
            if b < len(units):
                pieces.append((units[b], -1))
        context = "".join(text for text, _ in pieces)[1:]  # the first piece's separator goes
        offsets = [0] * len(self.needles)
        pos = len(self.head) - 1
        for text, j in pieces:
            if j >= 0:
                offsets[j] = pos + 1  # just after the needle's separator
            pos += len(text)
        return self.head + context + self.tail, offsets


def _fit_exact(parts: _Parts, budget: int, count: Callable[[str], int]) -> list[str]:
    """Haystack units for a prompt of `budget` tokens that ends on a sentence boundary (see the module docstring):
    exactly `budget` when whole sentences can make it, else the closest total below. Token counts of units are
    additive in practice (tokenizers split at the separator in front of a sentence); every candidate is still
    checked on the full prompt."""

    def full(units: Sequence[str]) -> int:
        return count(parts.render(units)[0])

    n = _largest_prefix(parts, budget, count)
    best, best_total = parts.units(n), full(parts.units(n))
    costs: dict[int, int] = {}

    def cost(i: int) -> int:
        if i not in costs:
            costs[i] = count(parts.unit(i))
        return costs[i]

    for dropped in range(1, min(n, _MAX_DROPPED) + 1):
        if best_total == budget:
            break
        kept = n - dropped
        need = budget - full(parts.units(kept))
        chosen = _closest_subsequence([cost(i) for i in range(kept, kept + _POOL)], need)
        units = parts.units(kept) + [parts.unit(kept + k) for k in chosen]
        total = full(units)
        if best_total < total <= budget:
            best, best_total = units, total
    return best


_MAX_DROPPED = 40  # sentences at the end of the haystack that may be replaced
_POOL = 256  # later sentences of the stream they may be replaced with (in order, some skipped)


def _largest_prefix(parts: _Parts, budget: int, count: Callable[[str], int]) -> int:
    """The largest n whose first n haystack units fit `budget` tokens (an error if not even zero fit): estimated
    from the units' own token counts, then settled on full-prompt counts."""

    def full(n: int) -> int:
        return count(parts.render(parts.units(n))[0])

    base = full(0)
    if base > budget:
        raise UserInputError(f"a NIAH prompt needs {base} tokens before any haystack, more than the {budget} "
                             "available; raise the length")
    n, estimate = 0, base
    while estimate + count(parts.unit(n)) <= budget:
        estimate += count(parts.unit(n))
        n += 1
    lo, hi = 0, None  # full(lo) <= budget < full(hi): search around the estimate, then bisect
    for step in (0, 1, -1, 2, -2):
        m = n + step
        if m < 0:
            continue
        if full(m) <= budget:
            lo = max(lo, m)
        else:
            hi = m if hi is None else min(hi, m)
    if hi is None:
        hi = lo + 1
        while full(hi) <= budget:
            lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if full(mid) <= budget else (lo, mid)
    return lo


def _closest_subsequence(costs: Sequence[int], target: int) -> list[int]:
    """Indices of a subsequence of `costs` whose sum is the largest possible <= `target` (`target` itself when
    reachable), taking the earliest items it can."""
    if target <= 0:
        return []
    reach = [0] * (len(costs) + 1)
    reach[len(costs)] = 1  # bit t set: some subsequence of costs[i:] sums to t
    for i in range(len(costs) - 1, -1, -1):
        reach[i] = reach[i + 1] | (reach[i + 1] << costs[i])
    rest = (reach[0] & ((1 << (target + 1)) - 1)).bit_length() - 1  # the largest reachable sum <= target
    chosen = []
    for i, c in enumerate(costs):
        if rest == 0:
            break
        if c <= rest and (reach[i + 1] >> (rest - c)) & 1:
            chosen.append(i)
            rest -= c
    return chosen


def _fit_lm_eval(parts: _Parts, spec: NiahSpec, length: int, budget: int, count: Callable[[str], int]) -> list[str]:
    """Haystack units sized as lm-eval sizes RULER's (see the module docstring)."""
    if spec.haystack == "essay":
        step, per_unit = LM_EVAL_ESSAY_STEP, None  # steps of words
    else:
        step = LM_EVAL_SHORT_LINE_STEP if length < LM_EVAL_SHORT_BELOW else LM_EVAL_LINE_STEP
        per_unit = len(_NOISE_SENTENCES) if spec.haystack == "noise" else 1  # units per line

    def units_for(size: int) -> list[str]:
        if per_unit is not None:
            return parts.units(size * per_unit)
        n, words = 0, 0
        while words + len(parts.unit(n).split()) <= size:
            words += len(parts.unit(n).split())
            n += 1
        return parts.units(n)

    size = max(step, len(parts.needles))
    best = None
    while count(parts.render(units_for(size))[0]) <= budget:
        best = units_for(size)
        size += step
    if best is None:
        unit = "words" if per_unit is None else "lines"
        raise UserInputError(f"a NIAH prompt with lm-eval's smallest haystack ({step} {unit}) does not fit {length} "
                             "tokens; raise the length")
    return best


def make_sample(
    task: str,
    length: int,
    index: int,
    tokenizer: Any,
    *,
    seed: int = DEFAULT_SEED,
    tokens_to_generate: int = TOKENS_TO_GENERATE,
    convention: str = EXACT,
) -> dict[str, Any]:
    """Build sample `index` of NIAH `task` at `length` tokens (prompt + tokens_to_generate; see the length rule)."""
    if task not in NIAH_SPECS:
        raise UserInputError(f"unknown NIAH task {task!r}; known: {', '.join(NIAH_SPECS)}")
    check_convention(convention)
    spec = NIAH_SPECS[task]
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
        source = _noise_units()
    elif spec.haystack == "needle":
        source = _needle_units(rng, spec, used)
    else:
        source = _essay_units(rng)
    sep = " " if spec.haystack == "essay" else "\n"
    parts = _Parts(head, tail, source, [sep + n for n in needles], depths)
    count = _Tokenizer(tokenizer).count
    if convention == EXACT:
        units = _fit_exact(parts, budget, count)
    else:
        units = _fit_lm_eval(parts, spec, length, budget, count)
    prompt, offsets = parts.render(units)

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
        "prompt_tokens": count(prompt),  # length - tokens_to_generate unless whole sentences fall short
        "tokens_to_generate": tokens_to_generate,
        "depth": depths[first],
        "needle_depths": [depths[j] for j in answer_needles],
        "needle_positions": [(offsets[j] - context_start) / span for j in answer_needles],
        "query": query,
        "length_convention": convention,
    }


def generate_samples(
    task: str,
    tokenizer: Any,
    *,
    lengths: Sequence[int] = DEFAULT_LENGTHS,
    num_samples: int = DEFAULT_NUM_SAMPLES,
    seed: int = DEFAULT_SEED,
    tokens_to_generate: int = TOKENS_TO_GENERATE,
    convention: str = EXACT,
    progress: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """All samples of `task`, interleaved across lengths (sample 0 at every length, then sample 1, ...), so the
    first k * len(lengths) docs hold k samples per length."""
    docs = []
    for index in range(num_samples):
        for length in lengths:
            docs.append(make_sample(task, int(length), index, tokenizer, seed=seed,
                                    tokens_to_generate=tokens_to_generate, convention=convention))
        if progress is not None:
            progress(index)
    return docs
