"""Scorers on hand-computed cases: LongBench's published definitions, RULER's substring rules, and the two scoring
definitions (`paper`: the paper's code; `longbench`: upstream LongBench / RULER) where they differ."""

from __future__ import annotations

import pytest

from refine_bench.errors import UserInputError
from refine_bench.eval import scorers
from refine_bench.truncation import truncate_middle


def test_qa_f1_normalisation_and_token_f1():
    # "the cat sat." -> "cat sat"; "a cat sat on the mat" -> "cat sat on mat": P=1, R=1/2, F1=2/3
    assert scorers.normalize_answer("  The  Cat, sat!  ") == "cat sat"
    assert scorers.qa_f1("The cat sat.", "a cat sat on the mat") == pytest.approx(2 / 3)
    assert scorers.qa_f1("dog", "cat") == 0.0
    # repeated tokens count with multiplicity: pred "a b b" vs "b b c" -> overlap 2, P=2/3, R=2/3
    assert scorers.token_f1(["a", "b", "b"], ["b", "b", "c"]) == pytest.approx(2 / 3)


def test_rouge_l_summary_level_with_distinct_words():
    # m = 5 distinct reference words, n = 3, union LCS {the, cat, sat}: R=3/5, P=1, F=0.75
    assert scorers.rouge_l_f("the cat sat", "the cat sat on the mat") == pytest.approx(0.75, abs=1e-7)
    # two sentences each side: every word is found in some sentence pair -> F = 2/(2+1e-8)
    assert scorers.rouge_l_f("a b. c d", "a c. b d") == pytest.approx(1.0, abs=1e-7)
    # newline is whitespace; "x London" vs "London": R=1, P=1/2 -> 2/3
    assert scorers.rouge_l_f("x\nLondon", "London") == pytest.approx(2 / 3, abs=1e-7)
    assert scorers.rouge_l_f("", "anything") == 0.0
    assert scorers.rouge_l_f("...", "anything") == 0.0


def test_classification_score_keeps_upstream_iteration_quirk():
    classes = ["Other", "location", "Other location", "City"]
    # "Other" is dropped (substring of the reference); upstream's iterator then skips "location", which stays
    assert scorers.classification_score("Other location", "Other location", classes) == pytest.approx(0.5)
    assert scorers.classification_score("City", "Other location", classes) == 0.0
    assert scorers.classification_score("nothing here", "City", classes) == 0.0
    assert scorers.classification_score("It is a City", "City", classes) == 1.0


def test_code_line_selection_and_fuzzy_ratio():
    pred = "\n\n# a comment\n```python\n    x = foo(1)  // not this\nreturn x\n"
    assert scorers.code_line(pred) == "return x"
    assert scorers.code_line("# only\n// comments") == ""
    assert scorers.fuzz_ratio("abcd", "abce") == 75  # difflib: 2*3/8
    assert scorers.fuzz_ratio("", "x") == 0 and scorers.fuzz_ratio("same", "same") == 100
    assert scorers.code_similarity("\nreturn x\nmore", "return x") == 1.0


def test_longbench_first_line_rule_per_task():
    assert scorers.first_line("\n\nPositive\nmore") == "Positive"
    for scoring in scorers.SCORINGS:  # upstream's first line (after leading newlines) for trec, triviaqa, samsum
        assert scorers.longbench_score("triviaqa", "Paris\nLondon", ["London"], scoring=scoring) == 0.0
        assert scorers.longbench_score("triviaqa", "\nLondon\nParis", ["Paris", "London"], scoring=scoring) == 1.0
        assert scorers.longbench_score("trec", "City\nOther", ["City"], ["City", "Other"], scoring=scoring) == 1.0
        # qmsum (summary) scores the whole output: "x London" vs "London" -> R=1, P=1/2
        assert scorers.longbench_score("qmsum", "x\nLondon", ["London"], scoring=scoring) == pytest.approx(2 / 3,
                                                                                                          abs=1e-7)
    with pytest.raises(UserInputError):
        scorers.longbench_score("nosuchtask", "x", ["y"])


@pytest.mark.parametrize("task", ["hotpotqa", "narrativeqa", "musique"])
def test_qa_tasks_paper_takes_the_unstripped_first_line_longbench_the_whole_output(task):
    # an answer after a leading newline: the paper's first line is empty (0); upstream reads the whole output (1)
    assert scorers.longbench_score(task, "\nParis", ["Paris"], scoring="paper") == 0.0
    assert scorers.longbench_score(task, "\nParis", ["Paris"], scoring="longbench") == 1.0
    # multi-line: "Paris" alone (paper, F1 0) vs "paris london is big" against "london" (P=1/4, R=1 -> F1 0.4)
    assert scorers.longbench_score(task, "Paris\nLondon is big", ["London"], scoring="paper") == 0.0
    assert scorers.longbench_score(task, "Paris\nLondon is big", ["London"], scoring="longbench") == pytest.approx(0.4)
    assert scorers.longbench_score(task, "Paris\nLondon", ["Paris"]) == 1.0  # paper is the default


def test_code_similarity_without_a_code_line_differs():
    pred = "# only\n// comments"  # no line free of "#", "//" and backticks
    # paper: the whole prediction is compared: difflib matches "# only" (6 chars) of 18 + 6 -> 2*6/24 = 50
    assert scorers.longbench_score("lcc", pred, ["# only"], scoring="paper") == 0.5
    assert scorers.longbench_score("lcc", pred, ["# only"], scoring="longbench") == 0.0  # upstream: "" scores 0
    for scoring in scorers.SCORINGS:  # with a code line, both select it
        assert scorers.longbench_score("repobench-p", "\n# c\nreturn x\n", ["return x"], scoring=scoring) == 1.0


def test_ruler_qa_paper_first_line_vs_ruler_whole_output():
    # paper: split("\n")[0], not stripped first, so an answer after a leading newline is missed
    assert scorers.ruler_qa_score("\nParis", ["paris"], scoring="paper") == 0.0
    assert scorers.ruler_qa_score("\nParis", ["paris"], scoring="longbench") == 1.0
    assert scorers.ruler_qa_score("I think\nParis", ["Paris"], scoring="paper") == 0.0
    assert scorers.ruler_qa_score("I think\nParis", ["Paris"], scoring="longbench") == 1.0
    for scoring in scorers.SCORINGS:
        assert scorers.ruler_qa_score("  Paris is the capital\nLondon", ["paris"], scoring=scoring) == 1.0
        assert scorers.ruler_qa_score("the BIG apple", ["nyc", "Big Apple"], scoring=scoring) == 1.0
    with pytest.raises(UserInputError, match="paper, longbench"):
        scorers.ruler_qa_score("x", ["y"], scoring="official")


def test_ruler_recall():
    assert scorers.ruler_recall(" 1234567 and\t7654321 ", ["1234567", "7654321", "1111111"]) == pytest.approx(2 / 3)
    assert scorers.ruler_recall("ABC-def", ["abc-DEF"]) == 1.0


def test_unknown_longbench_task_lists_supported_metrics():
    with pytest.raises(UserInputError, match=r"supported tasks \(metric\):.*gov_report \(rouge_l\).*musique \(qa_f1\)"):
        scorers.longbench_metric_name("nosuch")
    assert scorers.longbench_metric_name("passage_count") == "count"


@pytest.mark.parametrize("refs", [[], [""], ["  "], "abc"])
def test_empty_references_are_errors_not_zeros(refs):
    with pytest.raises(UserInputError):
        scorers.ruler_qa_score("x", refs)
    with pytest.raises(UserInputError):
        scorers.longbench_score("hotpotqa", "x", refs)


def test_middle_truncation_keeps_head_and_tail():
    tokens = list(range(10))
    assert truncate_middle(tokens, 10) == tokens
    assert truncate_middle(tokens, 4) == [0, 1, 8, 9]
    assert truncate_middle(tokens, 5) == [0, 1, 7, 8, 9]  # the odd token goes to the tail (the question)
    with pytest.raises(UserInputError):
        truncate_middle(tokens, 0)


def test_synthetic_longbench_scores():
    # two numbers, one equal to the reference -> 1/2; no number -> 0
    assert scorers.count_score("I count 3, maybe 4", "4") == 0.5
    assert scorers.count_score("none", "4") == 0.0
    assert scorers.retrieval_score("Paragraph 12", "Paragraph 12") == 1.0
    assert scorers.retrieval_score("Paragraph 3 or 12 or 7", "Paragraph 12") == pytest.approx(1 / 3)
    assert scorers.longbench_score("passage_count", "\n4", ["4"], scoring="longbench") == 1.0
