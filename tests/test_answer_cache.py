"""The per-request answer cache that lets a killed evaluation resume: exact round trips, torn lines, identities."""

from __future__ import annotations

from refine_bench.eval.answer_cache import AnswerCache, files_fingerprint


def test_answers_round_trip_exactly_and_a_torn_line_is_dropped(tmp_path):
    cache = AnswerCache(tmp_path, {"model": "m"})
    text, ll = cache.key("", "generate_until", ("ctx", {"until": []})), cache.key("", "loglikelihood", ("a", " b"))
    cache.put(text, " Paris\n")
    cache.put(ll, (-1.2345678901234567, True))
    with open(cache.folder / "answers.rank0.jsonl", "a", encoding="utf-8") as fh:
        fh.write('{"key": "abc", "ans')  # the line a killed process was writing

    again = AnswerCache(tmp_path, {"model": "m"})
    assert len(again) == 2 and again.get(text, "generate_until") == " Paris\n"
    assert again.get(ll, "loglikelihood") == (-1.2345678901234567, True)  # the tuple lm-eval expects, bit-exact
    third = again.key("", "generate_until", ("other", {}))
    again.put(third, "x")  # appended on a line of its own after the torn one was cut
    assert len(AnswerCache(tmp_path, {"model": "m"})) == 3
    assert (again.reused, again.computed) == (2, 1)
    assert len(AnswerCache(tmp_path, {"model": "other"})) == 0  # another identity, another folder


def test_scope_separates_identical_requests():
    args = ("ctx", {"max_gen_toks": 8})
    assert AnswerCache.key("batch-a", "generate_until", args) != AnswerCache.key("batch-b", "generate_until", args)
    assert AnswerCache.key("", "generate_until", args) == AnswerCache.key("", "generate_until", list(args))


def test_a_rewritten_checkpoint_gets_a_new_identity(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"old")
    before = files_fingerprint(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"newer weights")
    assert files_fingerprint(tmp_path) != before
    assert files_fingerprint("deltanet-tiny") == "deltanet-tiny" and files_fingerprint(None) is None
