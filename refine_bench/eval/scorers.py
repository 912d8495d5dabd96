"""Scoring rules for the paper's benchmarks, written from their published definitions.

* RULER (NIAH recall, RULER QA): case-insensitive substring match of the references in the prediction.
* LongBench: QA-F1 (SQuAD-style normalisation + token F1), ROUGE-L F (the summary-level union-LCS variant of the
  `rouge` package that LongBench's eval.py calls), classification score (TREC) and code similarity (LCC,
  RepoBench-P), each maximised over the references, with LongBench's first-line post-processing.

Two definitions where they differ (`SCORINGS`; `refine-bench eval --scoring`):

=====================  ===========================================  ============================================
                       ``paper`` (the paper's code, the default)    ``longbench`` (each benchmark's own scorer)
=====================  ===========================================  ============================================
RULER QA               any reference in ``split("\n")[0]`` of the   any reference anywhere in the output (RULER's
                       output, cleaned as RULER does                ``string_match_part``)
LongBench QA-F1 tasks  ``split("\n")[0]`` (not stripped first, so   the whole output
(narrativeqa, qasper,  an answer after a leading newline scores
multifieldqa_en, hot-  on an empty line)
potqa, 2wikimqa,
musique)
code similarity        no line without backtick / ``#`` / ``//``:   no such line: the empty string (score 0)
                       the whole output is scored
=====================  ===========================================  ============================================

Both take the first line after leading newlines for trec, triviaqa and samsum, as upstream LongBench does.
Every scorer takes one prediction string and returns a float in [0, 1].
"""

from __future__ import annotations

import difflib
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence

from refine_bench.errors import UserInputError
from refine_bench.protocol import LONGBENCH_BY_NAME

PAPER = "paper"
LONGBENCH = "longbench"
SCORINGS = (PAPER, LONGBENCH)

# ---------------------------------------------------------------------------------------------- shared helpers


def check_scoring(scoring: str) -> str:
    """A valid scoring definition, or a UserInputError naming the valid ones."""
    if scoring not in SCORINGS:
        raise UserInputError(f"unknown scoring {scoring!r}; choose from {', '.join(SCORINGS)}")
    return scoring


def first_line(text: str) -> str:
    """LongBench's first-line rule: drop leading newlines, keep the text up to the next newline."""
    return text.lstrip("\n").split("\n")[0]


def raw_first_line(text: str) -> str:
    """The paper's code's first line: the text up to the first newline, leading newlines included."""
    return text.split("\n")[0]


def _check_references(references: Sequence[str]) -> None:
    if isinstance(references, str) or len(references) == 0:
        raise UserInputError(f"expected a non-empty list of reference strings, got {references!r}")
    for ref in references:
        if not isinstance(ref, str) or not ref.strip():
            raise UserInputError(f"empty or non-string reference {ref!r} in {list(references)!r}")


# ---------------------------------------------------------------------------------------------- RULER


def ruler_clean(prediction: str) -> str:
    """RULER's prediction clean-up: control characters become newlines, outer whitespace is stripped."""
    return re.sub(r"[\x00-\x1f]", "\n", prediction.strip()).strip()


def ruler_recall(prediction: str, references: Sequence[str]) -> float:
    """NIAH recall (RULER `string_match_all`): the fraction of references found, case-insensitively."""
    _check_references(references)
    pred = ruler_clean(prediction).lower()
    return sum(ref.lower() in pred for ref in references) / len(references)


def ruler_qa_score(prediction: str, references: Sequence[str], scoring: str = PAPER) -> float:
    """RULER QA: 1 if any reference, lower-cased, is a substring of the cleaned output, else 0.

    `paper` looks only at ``prediction.split("\\n")[0]`` (so "\\nParis" scores 0); `longbench` (RULER's own
    `string_match_part`) at the whole output.
    """
    _check_references(references)
    text = raw_first_line(prediction) if check_scoring(scoring) == PAPER else prediction
    cleaned = ruler_clean(text).lower()
    return float(any(ref.lower() in cleaned for ref in references))


# ---------------------------------------------------------------------------------------------- LongBench: QA-F1


_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD/LongBench normalisation: lower-case, drop ASCII punctuation, drop articles, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def token_f1(prediction_tokens: Sequence[str], reference_tokens: Sequence[str]) -> float:
    """Bag-of-tokens F1 (0 when nothing overlaps)."""
    overlap = sum((Counter(prediction_tokens) & Counter(reference_tokens)).values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(prediction_tokens)
    recall = overlap / len(reference_tokens)
    return 2 * precision * recall / (precision + recall)


def qa_f1(prediction: str, reference: str) -> float:
    """LongBench QA-F1 of one prediction against one reference."""
    return token_f1(normalize_answer(prediction).split(), normalize_answer(reference).split())


# ---------------------------------------------------------------------------------------------- LongBench: ROUGE-L


def _sentences(text: str) -> list[str]:
    # The `rouge` package splits on "." and re-joins each piece's whitespace-separated words with one space.
    return [" ".join(piece.split()) for piece in text.split(".") if len(piece) > 0]


def _lcs_words(reference: list[str], candidate: list[str]) -> list[str]:
    """Words of one longest common subsequence, with the `rouge` package's tie-breaking on the way back."""
    n, m = len(reference), len(candidate)
    table = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        row, prev = table[i], table[i - 1]
        ref_word = reference[i - 1]
        for j in range(1, m + 1):
            row[j] = prev[j - 1] + 1 if ref_word == candidate[j - 1] else max(prev[j], row[j - 1])
    words: list[str] = []
    i, j = n, m
    while i > 0 and j > 0:
        if reference[i - 1] == candidate[j - 1]:
            words.append(reference[i - 1])
            i, j = i - 1, j - 1
        elif table[i - 1][j] > table[i][j - 1]:
            i -= 1
        else:
            j -= 1
    return words[::-1]


def rouge_l_f(prediction: str, reference: str) -> float:
    """ROUGE-L F as LongBench computes it (`rouge` package, summary level).

    Both texts are split into sentences on "."; words are space-separated and counted as *distinct* words
    (the package keeps n-grams in sets): m = distinct reference words, n = distinct prediction words,
    L = size of the union over all (reference sentence, prediction sentence) pairs of the words of their LCS;
    R = L/m, P = L/n, F = 2PR/(P + R + 1e-8). A prediction with no sentence (empty, or only dots) scores 0,
    as LongBench's try/except does.
    """
    hyp, ref = _sentences(prediction), _sentences(reference)
    if not hyp or not ref:
        return 0.0
    ref_words = [s.split(" ") for s in ref]
    hyp_words = [s.split(" ") for s in hyp]
    m = len({w for s in ref_words for w in s})
    n = len({w for s in hyp_words for w in s})
    union: set[str] = set()
    for r in ref_words:
        for c in hyp_words:
            union.update(_lcs_words(r, c))
    recall, precision = len(union) / m, len(union) / n
    return 2.0 * (precision * recall) / (precision + recall + 1e-8)


# ---------------------------------------------------------------------------------------------- LongBench: TREC


def classification_score(prediction: str, reference: str, all_classes: Sequence[str]) -> float:
    """LongBench's classification score (TREC).

    Collect the class names that occur in the prediction, then drop those that are a proper substring of the
    reference class. The upstream code drops them while iterating over the same list, so a class right after a
    dropped one is never examined; that behaviour is kept so scores match LongBench's. Score = 1/#matches when
    the reference is among the matches, else 0. (Upstream's difflib fallback for "no match" is unreachable, so
    a prediction naming no class scores 0.)
    """
    if not all_classes:
        raise UserInputError("classification_score needs the list of class names (trec_classes.json)")
    matches = [name for name in all_classes if name in prediction]
    kept: list[str] = []
    skip_next = False
    for idx, name in enumerate(matches):
        if skip_next:
            skip_next = False
            kept.append(name)
            continue
        if name in reference and name != reference:
            # removed; Python's list iterator then skips the element that slides into this slot
            skip_next = idx + 1 < len(matches)
            continue
        kept.append(name)
    if reference in kept:
        return 1.0 / len(kept)
    return 0.0


# ---------------------------------------------------------------------------------------------- LongBench: code


def code_line(prediction: str, scoring: str = LONGBENCH) -> str:
    """The line LongBench scores for code completion: after leading newlines are stripped, the first line that
    holds no backtick, "#" or "//". When there is none: the empty string (`longbench`) or the whole prediction
    unchanged (`paper`: its code keeps the prediction it started from)."""
    for line in prediction.lstrip("\n").split("\n"):
        if "`" not in line and "#" not in line and "//" not in line:
            return line
    return prediction if check_scoring(scoring) == PAPER else ""


def fuzz_ratio(a: str, b: str) -> int:
    """fuzzywuzzy's `fuzz.ratio` (pure-Python backend): round(100 * difflib ratio), 100 for equal strings,
    0 when either is empty."""
    if a == b:
        return 100
    if not a or not b:
        return 0
    return int(round(100 * difflib.SequenceMatcher(None, a, b).ratio()))


def code_similarity(prediction: str, reference: str, scoring: str = LONGBENCH) -> float:
    """LongBench code similarity: fuzzy ratio of the selected code line and the reference, over 100."""
    return fuzz_ratio(code_line(prediction, scoring), reference) / 100


# ---------------------------------------------------------------------------------------------- LongBench: synthetic


def count_score(prediction: str, reference: str) -> float:
    """LongBench passage_count: the share of numbers in the prediction that equal the reference."""
    numbers = re.findall(r"\d+", prediction)
    return sum(n == str(reference) for n in numbers) / len(numbers) if numbers else 0.0


def retrieval_score(prediction: str, reference: str) -> float:
    """LongBench passage_retrieval_en: the share of numbers in the prediction that equal the paragraph id
    named in the reference ("Paragraph N")."""
    found = re.findall(r"Paragraph (\d+)", reference)
    if not found:
        raise UserInputError(f"retrieval reference {reference!r} names no 'Paragraph N'")
    numbers = re.findall(r"\d+", prediction)
    return sum(n == found[0] for n in numbers) / len(numbers) if numbers else 0.0


# ---------------------------------------------------------------------------------------------- per-task table

# LongBench datasets beyond the paper's twelve (protocol.LONGBENCH) that a same-schema file may hold
# (`--longbench-file`), with their upstream metrics.
OTHER_LONGBENCH_METRICS = {"musique": "qa_f1", "gov_report": "rouge_l", "passage_count": "count",
                           "passage_retrieval_en": "retrieval"}
METRICS: dict[str, Callable[..., float]] = {
    "qa_f1": qa_f1, "rouge_l": rouge_l_f, "classification": classification_score, "code_similarity": code_similarity,
    "count": count_score, "retrieval": retrieval_score,
}
# Upstream LongBench's first-line post-processing (after leading newlines), the same under both scorings.
FIRST_LINE_TASKS = frozenset({"trec", "triviaqa", "samsum"})


def longbench_metric_name(task: str) -> str:
    """The metric of a LongBench dataset (unknown datasets raise a UserInputError listing the supported ones)."""
    if task in LONGBENCH_BY_NAME:
        return LONGBENCH_BY_NAME[task].metric
    if task in OTHER_LONGBENCH_METRICS:
        return OTHER_LONGBENCH_METRICS[task]
    known = ", ".join(f"{name} ({metric})" for name, metric in sorted(supported_longbench_tasks().items()))
    raise UserInputError(f"no LongBench metric for task {task!r}; supported tasks (metric): {known}")


def supported_longbench_tasks() -> dict[str, str]:
    """Every LongBench dataset the scorers know, with its metric."""
    return {**{name: t.metric for name, t in LONGBENCH_BY_NAME.items()}, **OTHER_LONGBENCH_METRICS}


def longbench_metric(task: str) -> Callable[..., float]:
    """The per-reference metric of a LongBench task (unknown tasks raise UserInputError)."""
    return METRICS[longbench_metric_name(task)]


def longbench_postprocess(task: str, prediction: str, scoring: str = PAPER) -> str:
    """The prediction text LongBench scores for `task` under `scoring`."""
    if task in FIRST_LINE_TASKS:
        return first_line(prediction)
    if check_scoring(scoring) == PAPER and longbench_metric_name(task) == "qa_f1":
        return raw_first_line(prediction)  # the paper's code: the QA tasks' first line, not stripped first
    return prediction


def longbench_score(task: str, prediction: str, references: Sequence[str], all_classes: Sequence[str] | None = None,
                    scoring: str = PAPER) -> float:
    """LongBench score of one sample under `scoring`: post-process, then the best score over the references."""
    _check_references(references)
    metric = longbench_metric(task)
    pred = longbench_postprocess(task, prediction, scoring)
    if metric is classification_score:
        return max(classification_score(pred, ref, all_classes or ()) for ref in references)
    if metric is code_similarity:
        return max(code_similarity(pred, ref, scoring) for ref in references)
    return max(metric(pred, ref) for ref in references)
