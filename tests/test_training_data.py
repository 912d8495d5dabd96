"""Training data: local files, `datasets` folders (save_to_disk, parquet shards), hub names offline, and the
paper's document mode (documents >= seq_len tokens, their first seq_len tokens) against packing."""

from __future__ import annotations

import json

import datasets
import pytest

from refine_bench.errors import UserInputError
from refine_bench.models.tokenizer import load_tiny_tokenizer
from refine_bench.train.documents import (
    answer_targets,
    corpus_sequences,
    make_sequences,
    parse_hub_source,
    read_documents,
    write_documents_parquet,
)

DOCS = ["short one.", "a " * 200, "tiny", "the quick brown fox " * 40, "lorem ipsum " * 3]


@pytest.fixture(scope="module")
def tok():
    return load_tiny_tokenizer()


def lengths(tok, docs):
    return [len(tok(d, add_special_tokens=False)["input_ids"]) for d in docs]


def test_document_mode_keeps_long_documents_and_their_first_tokens(tok):
    seq_len = 30
    seqs, stats = make_sequences_from(DOCS, tok, seq_len, "document")
    long_docs = [d for d, n in zip(DOCS, lengths(tok, DOCS), strict=True) if n >= seq_len]
    assert len(long_docs) == 2
    assert (stats.documents_read, stats.documents_kept, stats.documents_dropped, stats.sequences) == (5, 2, 3, 2)
    for row, doc in zip(seqs.tolist(), long_docs, strict=True):
        assert row == tok(doc, add_special_tokens=False)["input_ids"][:seq_len]


def test_packed_mode_joins_documents_with_eos(tok):
    seqs, stats = make_sequences_from(DOCS, tok, 16, "packed")
    flat = sum((tok(d, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for d in DOCS), [])
    assert seqs.reshape(-1).tolist() == flat[: len(flat) // 16 * 16]
    assert stats.documents_kept == 5 and stats.sequences == len(flat) // 16


def make_sequences_from(docs, tok, seq_len, mode):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "docs.jsonl"
        path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
        return make_sequences(path, tok, seq_len, mode)


def test_datasets_folders_and_parquet_shards_read_the_same_documents(tmp_path):
    ds = datasets.Dataset.from_dict({"body": DOCS, "id": list(range(len(DOCS)))})
    ds.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "saved_dict"))
    write_documents_parquet(iter(DOCS), tmp_path / "shards", shard_size=2)
    assert len(list((tmp_path / "shards").glob("*.parquet"))) == 3
    assert list(read_documents(tmp_path / "saved", "body")) == DOCS
    assert list(read_documents(tmp_path / "saved_dict", "body")) == DOCS
    assert list(read_documents(tmp_path / "shards")) == DOCS
    with pytest.raises(UserInputError, match="no 'text' column .*--text-field"):
        list(read_documents(tmp_path / "saved"))


def test_hub_names_parse_and_fail_offline_with_one_clear_line(monkeypatch):
    assert parse_hub_source("hf:DKYoon/SlimPajama-6B") == ("DKYoon/SlimPajama-6B", None, "train")
    assert parse_hub_source("hf:org/name:cfg@validation") == ("org/name", "cfg", "validation")
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)  # read at import: patch the module values
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserInputError, match="cannot read the hub dataset 'nobody/nothing'.*pass a local folder"):
        list(read_documents("hf:nobody/nothing"))


def test_too_little_data_is_named(tok):
    with pytest.raises(UserInputError, match="none of the 5 training documents has 4000 tokens"):
        make_sequences_from(DOCS, tok, 4000, "document")


def test_answer_targets_mark_the_tokens_of_the_spans(tok):
    text = "The code for amber gate is 4411. Question: the code for amber gate? Answer: 4411."
    start = text.rindex("4411")
    ids, mask = answer_targets(text, [(start, start + 4)], tok, 100)
    assert ids == tok(text, add_special_tokens=False)["input_ids"]
    marked = tok.decode([i for i, m in zip(ids, mask, strict=True) if m])
    assert marked.strip().rstrip(".") == "4411"  # the answer's tokens (one may carry its space or full stop)
    assert sum(mask) < len(ids) // 4


def test_corpus_sequences_train_on_answers_and_natural_documents(tok):
    from refine_bench.train.pretrain_corpus import make_document, python_doc_info_path

    try:
        python_doc_info_path()
    except UserInputError:
        pytest.skip("python3-doc is not installed")
    seqs, targets, stats = corpus_sequences(0, tok, 256, 12)
    with_tail = corpus_sequences(0, tok, 256, 12, tail_targets=True)[1]
    assert seqs.shape == targets.shape == (stats.sequences, 256) and stats.documents_read == 12
    synthetic = 0
    for row, mask, tail_mask, index in zip(seqs, targets, with_tail, range(12), strict=False):
        doc = make_document(0, index, 256, tok)
        if not doc.qas:
            assert mask.all() and tail_mask.all()  # natural text: every token
            continue
        synthetic += 1
        marked = tok.decode(row[mask].tolist())
        answers = [value for qa in doc.qas for value in qa.answers]
        assert all(value in marked for value in doc.qas[0].answers)  # the first question's answers are targets
        # nothing but the answers (and the space or full stop a boundary token carries)
        leftover = marked
        for value in answers:
            leftover = leftover.replace(value, "", 1)
        assert set(leftover) <= set(" .,;:-and\n"), leftover
        assert bool((tail_mask & ~mask).any()) == (doc.synthetic_end < len(tok.decode(row.tolist())))
    assert synthetic >= 6


def test_dense_corpus_profile_is_a_named_source(tok):
    from refine_bench.train.documents import corpus_profile, corpus_seed
    from refine_bench.train.pretrain_corpus import PROFILES, make_document

    assert (corpus_seed("corpus-dense:3"), corpus_profile("corpus-dense:3")) == (3, "corpus-dense")
    assert (corpus_seed("corpus"), corpus_profile("corpus")) == (0, "corpus")
    assert corpus_seed("corpus-sparse:1") is None
    dense = PROFILES["corpus-dense"]
    docs = [make_document(0, i, 256, tok, profile=dense) for i in range(40)]
    assert {d.kind for d in docs} <= set(dense.family_weights) | {"natural"}
    assert all(len(qa.answers) <= dense.max_keys for d in docs for qa in d.qas)
    assert sum(len(d.qas) for d in docs) > sum(len(make_document(0, i, 256, tok).qas) for i in range(40)) / 2


def test_tables_profile_is_compact_key_value_rows_then_queried_rows(tok):
    from refine_bench.train.pretrain_corpus import PROFILES, make_document

    docs = [make_document(0, i, 256, tok, profile=PROFILES["corpus-tables"]) for i in range(10)]
    assert {d.kind for d in docs} == {"table"}
    for doc in docs:
        for qa in doc.qas:
            assert all(value.isdigit() for value in qa.answers)
            assert doc.text.count(qa.answers[0]) >= 2  # stated in the table, then recalled


def test_far_profile_puts_unrelated_text_between_the_table_and_its_questions(tok):
    import itertools
    import re

    from refine_bench.train.pretrain_corpus import PROFILES, make_document

    docs = [make_document(0, i, 512, tok, profile=PROFILES["corpus-far"]) for i in range(20)]
    far = [d for d in docs if d.kind == "far-table"]
    assert {d.kind for d in docs} == {"far-table", "table"} and len(far) >= 8
    gaps = []
    for doc in far:
        lines = doc.text.split("\n")
        lines = lines[1:] if lines[0] in ("Table:", "Lookup table") else lines
        rows = list(itertools.takewhile(lambda line: re.fullmatch(r"[a-z-]+ ?(:|=|->|\|) \d+", line), lines))
        table = "\n".join(rows)
        assert all(qa.answers[0] in table for qa in doc.qas)  # the document opens with the rows it asks about
        gap = doc.text[doc.text.index(table) + len(table):doc.text.rfind("\n", 0, doc.qas[0].prompt_end)]
        assert not any(qa.answers[0] in gap for qa in doc.qas)
        gaps.append(len(tok(gap, add_special_tokens=False)["input_ids"]))
    assert min(gaps) > 0 and sorted(gaps)[len(gaps) // 2] >= 128, gaps  # most gaps exceed a 128-token window


def test_new_profiles_leave_the_existing_corpora_unchanged(tok):
    """The shipped models' recipes name `corpus-tables` and `corpus-dense`: their documents must not move when a
    profile or family is added (these fingerprints are of the documents as the models were trained on them)."""
    import hashlib

    from refine_bench.train.pretrain_corpus import PROFILES, make_document

    def fingerprint(profile: str) -> str:
        texts = [make_document(0, i, 256, tok, profile=PROFILES[profile]).text for i in range(12)]
        return hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16]

    assert {name: fingerprint(name) for name in ("corpus", "corpus-dense", "corpus-tables")} == {
        "corpus": "4878186ddd2c3a8a", "corpus-dense": "0bae70121128ade9", "corpus-tables": "be2c568b6e8a4c1d"}
