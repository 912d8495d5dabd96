"""The pretraining corpus of the project's small models: natural text mixed with synthetic retrieval documents.

Natural text is the Python documentation as the Debian package `python3-doc` installs it (GNU info, plain text,
Python Software Foundation License): the nodes from "The Python Tutorial" up to the glossary, cross-reference
markup and footnote links removed, typographic punctuation folded to ASCII. It is read from its installed location
at run time (`PYTHON_DOC_INFO_GLOB`), never copied into the repository.

Synthetic documents teach associative recall: facts "key -> value(s)" stated somewhere in a context (natural prose,
repeated filler sentences, or a crowd of distractor facts of the same form), then questions whose answer is the
value(s) stated after the asked key. Families: single and multi-key lookup, multi-value, multi-query, a key-value
table, a passcode, a list to recite, and two-hop lookups through an alias; every document asks several questions
(about half of the keys or more) so that copying is a sizeable share of its tokens. Every phrasing, key vocabulary
and filler sentence here is the project's own: none of the evaluation's (`refine_bench.eval.niah`) templates, noise
sentences or word lists are used (a test checks), so NIAH scores measure transfer of the skill, not of a template.

Each document is one training window: at least `max_tokens` tokens, with every synthetic question and answer inside
the first `max_tokens` tokens (whatever lies beyond is natural text), so the trainer's `document` mode (first
seq_len tokens of documents that have at least seq_len) and its `packed` mode both work. Document i is a pure
function of (seed, i, max_tokens, tokenizer).
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import random
import re
import subprocess
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from refine_bench.errors import UserInputError

PYTHON_DOC_PACKAGE = "python3-doc"
PYTHON_DOC_INFO_GLOB = "/usr/share/info/python3*.info.gz"
INSTALL_HINT = f"install it with: apt-get install -y --no-install-recommends {PYTHON_DOC_PACKAGE}"
FIRST_NODE, STOP_NODE = "The Python Tutorial", "About these documents"
MIN_NODE_CHARS = 200

SYNTHETIC_FRACTION = 0.8
FAMILY_WEIGHTS = {"lookup": 0.3, "table": 0.2, "multivalue": 0.1, "multiquery": 0.1, "recite": 0.1, "passcode": 0.1,
                  "alias": 0.1}
MIN_WINDOW_TOKENS = 64
_CAPS = (64, 64, 16, 8, 4, 2, 1, 1, 1, 1)  # the most keys of a task, by attempt, when a draw does not fit

# ------------------------------------------------------------------------------------------ natural text

_ASCII_FOLD = {"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2014": " - ", "\u2013": "-",
               "\u2026": "...", "\u00a0": " ", "\u2212": "-", "\u2022": "*"}
# "*note os.popen(): 724." -> "os.popen()"; a "." ends the reference, a "," belongs to the sentence
_XREF_ID = re.compile(r"\*[Nn]ote\s+((?:(?!\*[Nn]ote)[^:])+?):\s*[0-9a-f]+(?:\.|(?=[,;)]))")
_XREF_NODE = re.compile(r"\*[Nn]ote\s+((?:(?!\*[Nn]ote)[^:])+?)::")  # "*note Some Section::" -> "Some Section"
# "*note py.exe launcher: Some Node." -> "py.exe launcher"
_XREF_NAMED = re.compile(r"\*[Nn]ote\s+((?:(?!\*[Nn]ote)[^:])+?):\s+[^.,*]+?(?:\.|(?=,))")
_FOOTNOTE_MARK = re.compile(r"(?<=\S)\(\d+\)")  # "bpo-36952(1)" -> "bpo-36952"
_FOOTNOTE_LINE = re.compile(r"^\s*\(\d+\)\s+\S+$")  # "   (5) https://..." footnote bodies
_UNDERLINE = re.compile(r"^\s*([-=*.#])\1{3,}\s*$")


def _fold_ascii(text: str) -> str:
    text = "".join(_ASCII_FOLD.get(c, c) for c in text)
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")


def _drop_xrefs(text: str) -> str:
    return _XREF_NAMED.sub(r"\1", _XREF_NODE.sub(r"\1", _XREF_ID.sub(r"\1", text)))


def _indented_prose(lines: list[str]) -> bool:
    """An indented block that reads as text (a definition's description), not code: mostly letters and spaces,
    sentences, no interpreter prompt."""
    text = " ".join(ln.strip() for ln in lines)
    letters = sum(c.isalpha() or c == " " for c in text)
    return ">>>" not in text and letters >= 0.85 * len(text) and ". " in text + " "


def _clean_node(body: str) -> str:
    """One info node as plain paragraphs: prose lines re-flowed, code blocks kept (dedented), menus, titles'
    underlines and footnote links dropped, cross-references reduced to their labels."""
    paragraphs: list[str] = []
    body = body.split("-- Footnotes --")[0]  # footnotes close a node: their links are not prose
    for block in re.split(r"\n\s*\n", body):
        lines = [ln for ln in block.split("\n") if ln.strip() and not _UNDERLINE.match(ln)
                 and not _FOOTNOTE_LINE.match(ln)]
        if not lines or lines[0].startswith("* Menu:") or all(ln.startswith("* ") for ln in lines):
            continue
        if all(ln.startswith("     ") for ln in lines) and not _indented_prose(lines):  # a code block
            paragraphs.append(_fold_ascii(_drop_xrefs("\n".join(ln[5:].rstrip() for ln in lines))))
            continue
        text = " ".join(ln.strip() for ln in lines)
        text = _drop_xrefs(text)
        paragraphs.append(" ".join(_fold_ascii(_FOOTNOTE_MARK.sub("", text)).split()))
    return "\n\n".join(p for p in paragraphs if p.strip())


def python_doc_info_path() -> str:
    """The installed Python documentation (GNU info), or a UserInputError saying how to install it."""
    found = sorted(glob.glob(PYTHON_DOC_INFO_GLOB))
    if not found:
        raise UserInputError(f"the pretraining corpus needs the Python documentation ({PYTHON_DOC_INFO_GLOB}, "
                             f"Debian package {PYTHON_DOC_PACKAGE}); {INSTALL_HINT}")
    return found[-1]


def natural_text_source() -> dict[str, str]:
    """Where the natural text comes from, for run records: package, installed version, licence, file."""
    path = python_doc_info_path()
    package = f"{Path(path).name.split('.info')[0]}-doc"  # python3.11.info.gz -> python3.11-doc
    try:
        version = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True,
                                 timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        version = "unknown"
    return {"package": package, "version": version, "licence": "PSF-2.0 (Python Software Foundation License)",
            "path": path}


def natural_documents(path: str | None = None) -> tuple[str, ...]:
    """The natural-text documents: one per info node of the Python docs' prose parts, in the file's order."""
    return _natural_documents(path or python_doc_info_path())


@lru_cache(maxsize=2)
def _natural_documents(path: str) -> tuple[str, ...]:
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
        raw = f.read()
    docs: list[str] = []
    keeping = False
    for node in raw.split("\x1f\n"):
        header, _, body = node.partition("\n")
        name = re.search(r"Node: ([^,\n]+)", header)
        if name is None:
            continue
        if name.group(1).strip() == FIRST_NODE:
            keeping = True
        elif name.group(1).strip() == STOP_NODE:
            break
        if keeping:
            text = _clean_node(body)
            if len(text) >= MIN_NODE_CHARS:
                docs.append(text)
    if not docs:
        raise UserInputError(f"{path} holds no node between {FIRST_NODE!r} and {STOP_NODE!r}: not the Python "
                             f"documentation this corpus expects; {INSTALL_HINT}")
    return tuple(docs)


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def prose_sentences(path: str | None = None) -> tuple[tuple[str, ...], ...]:
    """The prose paragraphs of the natural documents (no code, no lists), each split into sentences."""
    return _prose_sentences(path or python_doc_info_path())


@lru_cache(maxsize=2)
def _prose_sentences(path: str) -> tuple[tuple[str, ...], ...]:
    out = []
    for doc in natural_documents(path):
        for para in doc.split("\n\n"):
            if "\n" in para or len(para) < 80 or sum(c.isalpha() for c in para) < 0.7 * len(para):
                continue
            out.append(tuple(_SENTENCE_END.split(para)))
    return tuple(out)


# ------------------------------------------------------------------------------------------ vocabularies
# The project's own word lists (disjoint from the evaluation's adjective and noun lists; a test checks).

KEY_FIRST = (
    "amber basalt birch bronze canvas chalk cobalt copper coral cotton crimson denim ebony flint granite hazel "
    "indigo ivory jade khaki lilac linen mossy navy ochre olive onyx opal pearl pine plum quartz russet saffron "
    "sage slate teal topaz umber cinder dapper brisk crisp dim faint gaunt hasty jagged lanky mild murky nimble "
    "plump prim rugged sleek sly spry stout tepid terse thin vast"
).split()
KEY_SECOND = (
    "anvil atlas bay bishop bridge canal cellar chapel cliff column coin dock dune ferry forge gate grove harp "
    "inlet keel knot lagoon ledge lodge loom mill moat oar pier plaza quarry ridge rook shelf shrine spire "
    "summit tavern thicket tunnel vault wharf yard abbey barrel beam bolt cart chisel crate dial easel funnel "
    "gable hinge jar kiln lever mast nozzle orbit pulley rafter sickle spindle trowel vane wedge"
).split()
ATTRIBUTES = ("code", "pin", "serial", "ticket", "passcode", "tag", "reference", "token", "number", "identifier",
              "label", "locker number", "account number", "room number", "order number", "batch code")
_CONSONANTS, _VOWELS = "bcdfghjklmnprstvwz", "aeiou"
FILLER_SUBJECTS = ("The road", "The lamp", "The bread", "The tide", "The clock", "Our boat", "The field",
                   "The roof", "The choir", "The fence", "The path", "The mill wheel", "The snow", "A cart")
FILLER_PREDICATES = ("is long", "hums softly", "stays open", "turns slowly", "smells of rain", "is still",
                     "creaks at night", "waits by the door", "runs downhill", "is painted white", "leans left",
                     "glows at dusk", "is far away", "keeps on going")


def _pseudo_word(rng: random.Random, syllables: int) -> str:
    word = "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(syllables))
    return word + (rng.choice(_CONSONANTS) if rng.random() < 0.5 else "")


def _hex(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(n))


_HEX_PATTERNS = ((8, 4, 4, 4, 12), (8, 4, 4, 4, 12), (6, 6), (4, 4, 4), (8, 8), (5, 5, 5), (12,))


def make_key(rng: random.Random, style: str) -> str:
    """A key of `style`: `pair` (two words of the project's lists), `pseudo` (two made-up words), `hex`
    (dash-separated hex groups), `unit` (a word and a number) or `name` (a capitalised made-up name)."""
    if style == "pair":
        return f"{rng.choice(KEY_FIRST)}-{rng.choice(KEY_SECOND)}"
    if style == "pseudo":
        return f"{_pseudo_word(rng, rng.randint(1, 2))}-{_pseudo_word(rng, rng.randint(1, 2))}"
    if style == "hex":
        return "-".join(_hex(rng, n) for n in rng.choice(_HEX_PATTERNS))
    if style == "unit":
        return f"{rng.choice(KEY_SECOND)} {rng.randint(2, 999)}"
    if style == "name":
        return f"{_pseudo_word(rng, 2).capitalize()} {_pseudo_word(rng, rng.randint(1, 3)).capitalize()}"
    raise ValueError(f"unknown key style {style!r}")


def make_value(rng: random.Random, style: str) -> str:
    """A value of `style`: `digits` (4 to 9 digits), `hex` (dash-separated hex groups), `word` (a made-up word)
    or `alnum` (letters, a dash, digits)."""
    if style == "digits":
        n = rng.choice((4, 5, 6, 6, 7, 7, 7, 8, 8, 9))
        return str(rng.randint(10 ** (n - 1), 10**n - 1))
    if style == "hex":
        return "-".join(_hex(rng, n) for n in rng.choice(_HEX_PATTERNS))
    if style == "word":
        return _pseudo_word(rng, rng.randint(2, 3))
    if style == "alnum":
        letters = "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ") for _ in range(rng.randint(2, 3)))
        return f"{letters}-{rng.randint(10, 99999)}"
    raise ValueError(f"unknown value style {style!r}")


KEY_STYLES = {"pair": 3, "pseudo": 3, "hex": 2, "unit": 1, "name": 1}
VALUE_STYLES = {"digits": 6, "hex": 2, "word": 1, "alnum": 1}
DEFAULT_STYLES = (KEY_STYLES, VALUE_STYLES)
Styles = tuple[dict[str, float], dict[str, float]]  # key style weights, value style weights


def _weighted(rng: random.Random, weights: dict[str, float]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


# ------------------------------------------------------------------------------------------ templates
# {a}: attribute, {k}: key, {v}: value. Facts are single sentences; questions are (question, answer prefix).

FACTS = (
    "The {a} of {k} is {v}.",
    "{k} has the {a} {v}.",
    "Note that the {a} for {k} is {v}.",
    "{k}: {v}",
    "{k} = {v}",
    "Remember: {k} -> {v}.",
    "The {a} assigned to {k} reads {v}.",
    "Entry {k} carries the {a} {v}.",
    "In the ledger, {k} is listed with {a} {v}.",
    "{A} for {k}: {v}.",
    "Please keep in mind that {k} goes with {v}.",
)
QUESTIONS = (
    ("What is the {a} of {k}?", "The {a} of {k} is"),
    ("Which {a} belongs to {k}?", "The {a} that belongs to {k} is"),
    ("Question: what {a} was given for {k} in the text above?", "Answer: the {a} given for {k} in the text above is"),
    ("", "{k} ->"),
    ("Look up {k}.", "{k}:"),
    ("Tell me the {a} for {k} that was listed earlier.", "The {a} for {k} listed earlier is"),
    ("Recall the {a} of {k} from these notes.", "From the notes, the {a} of {k} is"),
    ("Find {k} in the passage. What {a} does it have?", "In the passage, {k} has the {a}"),
)
PLURAL_QUESTIONS = (
    ("What are the {a}s of {k}?", "The {a}s of {k} are"),
    ("List every {a} recorded for {k}.", "Every {a} recorded for {k}:"),
    ("Question: which {a}s were written down for {k} in the text above?",
     "Answer: the {a}s written down for {k} in the text above are"),
    ("Collect all {a}s that go with {k}.", "The {a}s that go with {k} are"),
)
INTROS = (
    "",
    "",
    "Read the notes below carefully; some entries will be asked about at the end.\n",
    "The following text contains a few records. Keep track of them.\n",
    "Memo. Several {a}s are mentioned below; you will need them later.\n",
    "Inventory log follows.\n",
)
ALIAS_FACTS = ("{k} is another name for {j}.", "{k} refers to {j}.", "Whenever you see {k}, read it as {j}.")
ALIAS_QUESTIONS = (("{k} stands for another entry. What is its {a}?", "Through {k}, the {a} is"),
                   ("Follow {k} to the entry it names. Which {a} does that entry have?", "The {a} reached from {k} is"))
PASSCODE_FACTS = ("Keep this safe: the secret passcode is {v}.", "Today's door code is {v}. Do not forget it.",
                  "The combination for the safe is {v}.")
PASSCODE_QUESTIONS = (("What was the secret passcode?", "The secret passcode was"),
                      ("What is today's door code?", "Today's door code is"),
                      ("What opens the safe?", "The combination for the safe is"))


def _join_values(rng: random.Random, values: Sequence[str]) -> str:
    if len(values) == 1:
        return values[0]
    style = rng.randrange(3)
    if style == 0:
        return ", ".join(values[:-1]) + " and " + values[-1]
    if style == 1:
        return ", ".join(values[:-1]) + ", and " + values[-1]
    return "; ".join(values)


def _fill(template: str, **kw: str) -> str:
    a = kw.get("a", "")
    return template.format(A=a[:1].upper() + a[1:], **kw)


# ------------------------------------------------------------------------------------------ documents


@dataclass
class QA:
    """One question of a synthetic document: the prompt ends at `prompt_end` (a character offset in the document),
    the answer text follows it, and `answers` are the values it must contain."""

    prompt_end: int
    answers: list[str]


@dataclass
class PretrainDocument:
    """A training window: its text, its kind (`natural` or a synthetic family) and the questions it asks."""

    text: str
    kind: str
    qas: list[QA] = field(default_factory=list)
    synthetic_end: int = 0  # characters of the synthetic part (0 for natural windows)


class _Counter:
    def __init__(self, tokenizer: Any) -> None:
        self._fast = getattr(tokenizer, "backend_tokenizer", None)
        self._tok = tokenizer

    def __call__(self, text: str) -> int:
        if self._fast is not None:
            return len(self._fast.encode(text, add_special_tokens=False).ids)
        return len(self._tok(text, add_special_tokens=False)["input_ids"])


def document_rng(seed: int, index: int) -> random.Random:
    """The generator of document `index`: a function of (seed, index) only, stable across Python runs."""
    digest = hashlib.sha256(f"pretrain|{seed}|{index}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


@dataclass
class _Task:
    """A synthetic task before it is laid out: its facts (placed in the context) and its questions."""

    intro: str
    facts: list[str]
    questions: list[tuple[str, list[str]]]  # (question + answer prefix, answers)
    distractor: Callable[[], str] | None  # makes a fresh distractor fact (for a haystack made of facts)
    facts_in_order: bool = False  # facts keep their order in the context (multi-value answers list them so)
    answer_sep: str | None = None  # how answers with several values are joined (None: a varied list)
    facts_first: bool = False  # all facts open the context, the haystack lies between them and the questions


def new_keys(rng: random.Random, n: int, style: str) -> list[str]:
    """`n` distinct keys of `style`, drawn in order from `rng`."""
    keys: list[str] = []
    while len(keys) < n:
        key = make_key(rng, style)
        if key not in keys:
            keys.append(key)
    return keys


def _question(rng: random.Random, templates: Sequence[tuple[str, str]], sep: str, **kw: str) -> str:
    q, prefix = rng.choice(templates)
    q, prefix = _fill(q, **kw), _fill(prefix, **kw)
    return (q + sep + prefix) if q else prefix


def _answer_text(rng: random.Random, values: Sequence[str]) -> str:
    return " " + _join_values(rng, values) + "."


def _lookup_task(rng: random.Random, cap: int, multivalue: bool = False, multiquery: bool = False,
                 styles: Styles = DEFAULT_STYLES) -> _Task:
    attr = rng.choice(ATTRIBUTES)
    key_weights, value_weights = styles
    key_style, value_style = _weighted(rng, key_weights), _weighted(rng, value_weights)
    fact = rng.choice(FACTS)
    if multiquery:
        n_keys = min(rng.randint(2, 6), max(cap, 2))
    else:
        n_keys = min(rng.randint(1, 3) if multivalue else rng.choice((1, 2, 4, 6, 8, 12, 16)), cap)
    keys = new_keys(rng, n_keys + 40, key_style)
    distractor_keys = iter(keys[n_keys:])
    keys = keys[:n_keys]
    n_values = min(rng.randint(2, 5), max(cap, 2)) if multivalue else 1
    values = {k: [make_value(rng, value_style) for _ in range(n_values)] for k in keys}
    facts = [_fill(fact, a=attr, k=k, v=v) for k in keys for v in values[k]]
    sep = rng.choice(("\n", " "))
    questions = []
    if multiquery:
        asked = rng.sample(keys, rng.randint(2, len(keys)))
        listed = _join_values(rng, asked)
        questions.append((_question(rng, PLURAL_QUESTIONS, sep, a=attr, k=listed), [values[k][0] for k in asked]))
    else:
        for k in rng.sample(keys, rng.randint(max(1, len(keys) // 2), len(keys))):
            templates = PLURAL_QUESTIONS if multivalue else QUESTIONS
            questions.append((_question(rng, templates, sep, a=attr, k=k), values[k]))

    def distractor() -> str:
        key = next(distractor_keys, None) or make_key(rng, "hex")
        return _fill(fact, a=attr, k=key, v=make_value(rng, value_style))

    return _Task(_fill(rng.choice(INTROS), a=attr), facts, questions, distractor, facts_in_order=multivalue)


def _table_task(rng: random.Random, cap: int, styles: Styles = DEFAULT_STYLES) -> _Task:
    """A compact key: value table (no haystack between rows), then questions."""
    key_weights, value_weights = styles
    key_style, value_style = _weighted(rng, key_weights), _weighted(rng, value_weights)
    n = min(rng.randint(8, 32), max(cap, 2))
    keys = new_keys(rng, n, key_style)
    values = [make_value(rng, value_style) for _ in keys]
    sep = rng.choice((": ", " = ", " -> ", " | "))
    table = "\n".join(f"{k}{sep}{v}" for k, v in zip(keys, values, strict=True))
    questions = [(f"{keys[i]}{sep.rstrip()}", [values[i]]) for i in rng.sample(range(n), rng.randint(n // 2, n))]
    return _Task(rng.choice(("", "Table:\n", "Lookup table\n")) + table, [], questions, None)


def _far_table_task(rng: random.Random, cap: int, styles: Styles = DEFAULT_STYLES) -> _Task:
    """A compact table, then unrelated text, then questions: recall across a gap, which a model whose attention
    window is shorter than the gap can only do through its fast weights."""
    table = _table_task(rng, cap, styles)
    return _Task("", [table.intro + "\n"], table.questions, None, facts_first=True)


def _passcode_task(rng: random.Random) -> _Task:
    i = rng.randrange(len(PASSCODE_FACTS))
    value = make_value(rng, rng.choice(("digits", "digits", "alnum")))
    q, prefix = PASSCODE_QUESTIONS[i]
    return _Task("", [PASSCODE_FACTS[i].format(v=value)], [(q + rng.choice(("\n", " ")) + prefix, [value])], None)


RECITE_FACTS = ("Here is a sequence to remember: {v}.", "The list reads: {v}.", "Sequence: {v}.")
RECITE_QUESTIONS = (("Repeat the sequence.", "The sequence was"), ("What did the list read?", "The list read"),
                    ("Say the sequence again.", "Again:"))


def _recite_task(rng: random.Random, cap: int, styles: Styles = DEFAULT_STYLES) -> _Task:
    """A list of values stated once, to be repeated in order (plain copying over a distance)."""
    style = _weighted(rng, styles[1])
    values = [make_value(rng, style) for _ in range(min(rng.randint(2, 8), max(cap, 2)))]
    i = rng.randrange(len(RECITE_FACTS))
    q, prefix = RECITE_QUESTIONS[i]
    fact = RECITE_FACTS[i].format(v=" ".join(values))
    return _Task("", [fact], [(q + rng.choice(("\n", " ")) + prefix, values)], None, answer_sep=" ")


def _alias_task(rng: random.Random, cap: int, styles: Styles = DEFAULT_STYLES) -> _Task:
    """Two hops: an alias names an entry, the entry has the value."""
    attr = rng.choice(ATTRIBUTES)
    key_weights, value_weights = styles
    key_style, value_style = _weighted(rng, key_weights), _weighted(rng, value_weights)
    n = min(rng.randint(1, 3), cap)
    keys = new_keys(rng, 2 * n, key_style)
    aliases, entries = keys[:n], keys[n:]
    values = [make_value(rng, value_style) for _ in entries]
    fact = rng.choice(FACTS)
    facts = [_fill(fact, a=attr, k=e, v=v) for e, v in zip(entries, values, strict=True)]
    facts += [rng.choice(ALIAS_FACTS).format(k=a, j=e) for a, e in zip(aliases, entries, strict=True)]
    sep = rng.choice(("\n", " "))
    questions = [(_question(rng, ALIAS_QUESTIONS, sep, a=attr, k=aliases[i]), [values[i]]) for i in range(n)]
    rng.shuffle(questions)
    return _Task("", facts, questions, None)


def _make_task(rng: random.Random, family: str, cap: int = 64, styles: Styles = DEFAULT_STYLES) -> _Task:
    """A task of `family` with at most `cap` keys (values, rows) where the family allows fewer."""
    if family == "lookup":
        return _lookup_task(rng, cap, styles=styles)
    if family == "multivalue":
        return _lookup_task(rng, cap, multivalue=True, styles=styles)
    if family == "multiquery":
        return _lookup_task(rng, cap, multiquery=True, styles=styles)
    if family == "table":
        return _table_task(rng, cap, styles)
    if family == "far-table":
        return _far_table_task(rng, cap, styles)
    if family == "passcode":
        return _passcode_task(rng)
    if family == "alias":
        return _alias_task(rng, cap, styles)
    if family == "recite":
        return _recite_task(rng, cap, styles)
    raise ValueError(f"unknown synthetic family {family!r}")


def _filler_units(rng: random.Random) -> Iterator[str]:
    """Repetitive filler: a few of the project's own short sentences in a fixed cycle, one cycle per line."""
    cycle = [f"{s} {p}." for s, p in zip(rng.sample(FILLER_SUBJECTS, 4), rng.sample(FILLER_PREDICATES, 4),
                                        strict=True)]
    while True:
        for i, sentence in enumerate(cycle):
            yield ("\n" if i == 0 else " ") + sentence


def _prose_units(rng: random.Random) -> Iterator[str]:
    """Consecutive sentences of the natural prose from a random paragraph on."""
    paragraphs = prose_sentences()
    i = rng.randrange(len(paragraphs))
    while True:
        for sentence in paragraphs[i % len(paragraphs)]:
            yield " " + sentence
        i += 1


def _fact_units(task: _Task) -> Iterator[str]:
    assert task.distractor is not None
    while True:
        yield "\n" + task.distractor()


def _layout(rng: random.Random, task: _Task, budget: int, count: Callable[[str], int]) -> tuple[str, list[QA]]:
    """The task's text within `budget` tokens: intro, a haystack with the facts at random depths, then the
    questions with their answers. Raises ValueError when even an empty haystack does not fit."""
    haystack = rng.choice(("prose", "prose", "filler", "facts") if task.distractor else ("prose", "filler"))
    if not task.facts:
        haystack = "none"
    sep = "\n" if haystack in ("filler", "facts") else " "
    units: list[str] = []
    if haystack != "none":
        source = {"prose": lambda: _prose_units(rng), "filler": lambda: _filler_units(rng),
                  "facts": lambda: _fact_units(task)}[haystack]()
        fixed = count(task.intro + "".join(sep + f for f in task.facts)
                      + "".join("\n" + q + " " + " ".join(a) + "." for q, a in task.questions))
        room = budget - fixed - 8 * len(task.questions) - 4
        used = 0
        while room > 0:
            unit = next(source)
            cost = count(unit)
            if used + cost > room:
                break
            units.append(unit)
            used += cost

    def render(units: list[str]) -> tuple[str, list[QA]]:
        slots = sorted(rng_slots)
        pieces: list[str] = []
        fact_iter = iter(task.facts)
        s = 0
        for b in range(len(units) + 1):
            while s < len(slots) and slots[s] == b:
                pieces.append(sep + next(fact_iter))
                s += 1
            if b < len(units):
                pieces.append(units[b])
        text = task.intro + "".join(pieces).lstrip()
        qas = []
        for q, answers in q_answers:
            text += "\n" + q
            qas.append(QA(len(text), list(answers)))
            text += answer_texts[len(qas) - 1]
        return text, qas

    rng_slots = [0] * len(task.facts) if task.facts_first else [rng.randint(0, len(units)) for _ in task.facts]
    if task.facts_in_order:
        rng_slots.sort()
    q_answers = task.questions
    answer_texts = [(" " + task.answer_sep.join(a) + ".") if task.answer_sep else _answer_text(rng, a)
                    for _, a in task.questions]
    text, qas = render(units)
    while count(text) > budget:
        if not units:
            raise ValueError("task does not fit its budget")
        units.pop()
        rng_slots = [min(s, len(units)) for s in rng_slots]
        text, qas = render(units)
    return text, qas


def _natural_tail(rng: random.Random, need: int, count: Callable[[str], int]) -> str:
    """Natural text of at least `need` tokens: consecutive documents from a random one, whole paragraphs."""
    docs = natural_documents()
    i = rng.randrange(len(docs))
    paragraphs = docs[i].split("\n\n")
    start = rng.randrange(len(paragraphs))
    out: list[str] = []
    have = 0
    while have < need:
        if start >= len(paragraphs):
            i = (i + 1) % len(docs)
            paragraphs, start = docs[i].split("\n\n"), 0
        para = paragraphs[start]
        start += 1
        out.append(para)
        have += count(para) + 1
    text = "\n\n".join(out)
    while count(text) < need:  # separators may merge with their neighbours: top up
        i = (i + 1) % len(docs)
        text += "\n\n" + docs[i]
    return text


@dataclass(frozen=True)
class CorpusProfile:
    """The mix of a corpus: the share of synthetic documents, their families, key and value styles, and the most
    keys one document holds."""

    synthetic_fraction: float = SYNTHETIC_FRACTION
    family_weights: dict[str, float] = field(default_factory=lambda: dict(FAMILY_WEIGHTS))
    key_styles: dict[str, float] = field(default_factory=lambda: dict(KEY_STYLES))
    value_styles: dict[str, float] = field(default_factory=lambda: dict(VALUE_STYLES))
    max_keys: int = 64
    min_budget_fraction: float = 0.25  # a synthetic part takes between this share of the window and all of it


# `corpus` is the full mix; `corpus-dense` keeps the recall families with short keys and digit values, fewer keys
# per document and fewer natural documents; `corpus-tables` is only compact key = value tables then queried rows
# (the associative-recall drill): the first stage of a curriculum, where a 2-layer model starts copying values
# within a few hundred steps while it does not on the other two mixes at the same budget (README, Models).
# `corpus-far` is the same drill with most tables followed by unrelated text before their questions (7 in 10,
# the synthetic part filling at least 3/4 of the window): recall across a gap, for a model with a short attention
# window whose fast weights must carry the rows.
PROFILES: dict[str, CorpusProfile] = {
    "corpus": CorpusProfile(),
    "corpus-dense": CorpusProfile(
        synthetic_fraction=0.9,
        family_weights={"lookup": 0.35, "table": 0.3, "multiquery": 0.15, "multivalue": 0.1, "passcode": 0.1},
        key_styles={"pair": 3, "pseudo": 3, "unit": 1}, value_styles={"digits": 8, "word": 1, "alnum": 1},
        max_keys=16),
    "corpus-tables": CorpusProfile(synthetic_fraction=1.0, family_weights={"table": 1.0},
                                   key_styles={"pseudo": 1}, value_styles={"digits": 1}, max_keys=16),
    "corpus-far": CorpusProfile(synthetic_fraction=1.0, family_weights={"far-table": 0.7, "table": 0.3},
                                key_styles={"pseudo": 1}, value_styles={"digits": 1}, max_keys=8,
                                min_budget_fraction=0.75),
}
# every family a profile may name: `corpus`'s own, and the drills that only the narrower profiles draw
FAMILIES = (*FAMILY_WEIGHTS, "far-table")


def make_document(seed: int, index: int, max_tokens: int, tokenizer: Any,
                  synthetic_fraction: float | None = None,
                  family_weights: dict[str, float] | None = None,
                  profile: CorpusProfile | None = None) -> PretrainDocument:
    """Document `index` of the corpus for `seed` (mixed as `profile` says; `synthetic_fraction` and
    `family_weights` override it): a training window of at least `max_tokens` tokens whose synthetic part (if
    any) lies within the first `max_tokens` tokens."""
    profile = profile or PROFILES["corpus"]
    synthetic_fraction = profile.synthetic_fraction if synthetic_fraction is None else synthetic_fraction
    styles = (profile.key_styles, profile.value_styles)
    if max_tokens < MIN_WINDOW_TOKENS:
        raise UserInputError(f"pretraining windows need at least {MIN_WINDOW_TOKENS} tokens, got {max_tokens}")
    if not 0.0 <= synthetic_fraction <= 1.0:
        raise UserInputError(f"synthetic_fraction must lie in [0, 1], got {synthetic_fraction}")
    weights = family_weights or profile.family_weights
    unknown = set(weights) - set(FAMILIES)
    if unknown:
        raise UserInputError(f"unknown synthetic families {sorted(unknown)}; known: {', '.join(FAMILIES)}")
    count = _Counter(tokenizer)
    rng = document_rng(seed, index)
    if rng.random() >= synthetic_fraction:
        return PretrainDocument(_natural_tail(rng, max_tokens, count), "natural")
    family = _weighted(rng, weights)
    budget = rng.randint(max(MIN_WINDOW_TOKENS, int(max_tokens * profile.min_budget_fraction)), max_tokens)
    for cap in _CAPS:
        try:
            text, qas = _layout(rng, _make_task(rng, family, min(cap, profile.max_keys), styles), budget, count)
            break
        except ValueError:  # too many facts for the budget: draw again, in the whole window, with fewer keys
            budget = max_tokens
    else:  # nothing of this family fits a very short window (long keys and values): a passcode always fits
        family = "passcode"
        text, qas = _layout(rng, _make_task(rng, family), max_tokens, count)
    rest = max_tokens - count(text)
    tail = _natural_tail(rng, rest + 2, count) if rest > -2 else ""
    return PretrainDocument(text + ("\n\n" + tail if tail else ""), family, qas, len(text))


def pretrain_documents(seed: int, num_docs: int, max_tokens: int, tokenizer: Any, *, start: int = 0,
                       synthetic_fraction: float | None = None,
                       family_weights: dict[str, float] | None = None,
                       profile: CorpusProfile | None = None) -> Iterator[str]:
    """Documents `start` .. `start + num_docs - 1` of the corpus for `seed` (see `make_document`)."""
    for i in range(start, start + num_docs):
        yield make_document(seed, i, max_tokens, tokenizer, synthetic_fraction, family_weights, profile).text
