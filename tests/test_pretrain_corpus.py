"""The pretraining corpus: natural text from the installed Python docs, synthetic retrieval documents, and their
guarantees (deterministic from a seed, window lengths, answers retrievable, no evaluation template or word list)."""

from __future__ import annotations

import gzip
import random
import re

import pytest

from refine_bench.errors import UserInputError
from refine_bench.eval import niah
from refine_bench.models.tokenizer import load_tiny_tokenizer
from refine_bench.train import pretrain_corpus as pc

WORDS = ("module function object value string list method class return argument default example file name "
         "number type error attribute instance call").split()


def _fake_info(path, nodes: int = 12) -> str:
    """A small GNU info file shaped like the Python docs': a node before the kept range, prose nodes, a stop node."""
    rng = random.Random(0)

    def paragraph() -> str:
        sentences = [" ".join(rng.choice(WORDS) for _ in range(12)).capitalize() + "." for _ in range(5)]
        text = " ".join(sentences)
        return "\n".join(text[i:i + 70] for i in range(0, len(text), 70))  # info wraps lines

    parts = ["This is python.info, produced by makeinfo.\n",
             "File: python.info,  Node: Changelog,  Up: Top\n\nSkipped text about bpo-1234.\n"]
    parts.append(f"File: python.info,  Node: {pc.FIRST_NODE},  Up: Top\n\n"
                 + "\n\n".join(paragraph() for _ in range(3)))
    for i in range(nodes):
        parts.append(f"File: python.info,  Node: Section {i},  Up: Top\n\n"
                     + "\n\n".join(paragraph() for _ in range(4)) + "\n")
    parts.append(f"File: python.info,  Node: {pc.STOP_NODE},  Up: Top\n\nNot kept at all, not even this.\n")
    file = path / "python3.99.info.gz"
    with gzip.open(file, "wt", encoding="utf-8") as f:
        f.write("\x1f\n".join(parts))
    return str(file)


@pytest.fixture()
def fake_docs(tmp_path, monkeypatch):
    file = _fake_info(tmp_path)
    monkeypatch.setattr(pc, "PYTHON_DOC_INFO_GLOB", str(tmp_path / "python3*.info.gz"))
    return file


@pytest.fixture(scope="module")
def tok():
    return load_tiny_tokenizer()


def test_clean_node_exact():
    body = ("1.2 Title\n=========\n\n* Menu:\n\n* Sub::\n\nThe *note os.popen(): 724. call and the *note\n"
            "Some Section:: part\u2019s \u201cquotes\u201d(1) \u2014 done.\n\n     for x in y:\n         pass\n\n"
            "   ---------- Footnotes ----------\n\n   (1)\nhttps://example.org/x\n")
    assert pc._clean_node(body) == ("1.2 Title\n\nThe os.popen() call and the Some Section part's \"quotes\" - "
                                    "done.\n\nfor x in y:\n    pass")


def test_natural_documents_keep_the_prose_range(fake_docs):
    docs = pc.natural_documents()
    assert len(docs) == 13  # the first kept node and the 12 sections; not the changelog, not the stop node
    assert not any("bpo-1234" in d or "Not kept" in d for d in docs)
    assert all("\n" not in para for d in docs for para in d.split("\n\n"))  # prose re-flowed
    assert len(pc.prose_sentences()) == 3 + 12 * 4


def test_missing_python_docs_name_the_package(tmp_path, monkeypatch):
    monkeypatch.setattr(pc, "PYTHON_DOC_INFO_GLOB", str(tmp_path / "none*.info.gz"))
    with pytest.raises(UserInputError, match="apt-get install -y --no-install-recommends python3-doc"):
        pc.natural_documents()


def test_same_seed_same_documents_other_seed_other_documents(fake_docs, tok):
    a = list(pc.pretrain_documents(7, 12, 256, tok))
    assert a == list(pc.pretrain_documents(7, 12, 256, tok))
    assert a[5:] == list(pc.pretrain_documents(7, 7, 256, tok, start=5))  # any slice is reproducible on its own
    assert a != list(pc.pretrain_documents(8, 12, 256, tok))


@pytest.mark.parametrize("family", list(pc.FAMILY_WEIGHTS))
@pytest.mark.parametrize("max_tokens", [256, 512])
def test_windows_and_answers(fake_docs, tok, family, max_tokens):
    fast = tok.backend_tokenizer
    for i in range(15):
        doc = pc.make_document(3, i, max_tokens, tok, synthetic_fraction=1.0, family_weights={family: 1.0})
        assert doc.kind == family and doc.qas
        assert len(fast.encode(doc.text, add_special_tokens=False).ids) >= max_tokens
        synthetic = doc.text[: doc.synthetic_end]
        assert len(fast.encode(synthetic, add_special_tokens=False).ids) <= max_tokens
        for qa in doc.qas:
            context, answer = doc.text[: qa.prompt_end], doc.text[qa.prompt_end: doc.synthetic_end]
            answer = answer.split("\n")[0]
            assert answer.startswith(" ")
            for value in qa.answers:
                assert value in context  # stated before it is asked for
                assert value in answer
            assert [answer.index(v) for v in qa.answers] == sorted(answer.index(v) for v in qa.answers)


def test_natural_windows_and_mix(fake_docs, tok):
    docs = [pc.make_document(1, i, 256, tok, synthetic_fraction=0.5) for i in range(60)]
    kinds = [d.kind for d in docs]
    assert 15 <= kinds.count("natural") <= 45
    assert all(not d.qas and d.synthetic_end == 0 for d in docs if d.kind == "natural")
    assert all(d.kind == "natural" for d in (pc.make_document(1, i, 256, tok, synthetic_fraction=0.0)
                                             for i in range(10)))


def test_no_evaluation_template_or_word_list(fake_docs, tok):
    assert not set(pc.KEY_FIRST + pc.KEY_SECOND) & set(niah._ADJECTIVES + niah._NOUNS)
    banned = ["special magic", niah.NEEDLE.split("{")[0].strip()] + niah._NOISE_SENTENCES
    for singular in (False, True):
        banned += [piece for part in niah.TEMPLATES[singular] for piece in re.split(r"\{\w+\}", part)
                   if len(piece.strip()) > 12]
    adjectives, nouns = "|".join(niah._ADJECTIVES), "|".join(niah._NOUNS)
    eval_pair = re.compile(rf"\b(?:{adjectives})-(?:{nouns})\b")
    for i in range(120):
        text = pc.make_document(11, i, 512, tok).text
        for phrase in banned:
            assert phrase.strip().lower() not in text.lower(), phrase
        assert not eval_pair.search(text)


def test_values_and_keys_have_their_shapes():
    rng = random.Random(5)
    for _ in range(200):
        digits = pc.make_value(rng, "digits")
        assert digits.isdigit() and 4 <= len(digits) <= 9 and digits[0] != "0"
        assert re.fullmatch(r"[0-9a-f]+(-[0-9a-f]+)*", pc.make_value(rng, "hex"))
        assert re.fullmatch(r"[A-Z]{2,3}-\d{2,5}", pc.make_value(rng, "alnum"))
        first, second = pc.make_key(rng, "pair").split("-")
        assert first in pc.KEY_FIRST and second in pc.KEY_SECOND
    assert pc._join_values(random.Random(0), ["1"]) == "1"
    joined = {pc._join_values(random.Random(s), ["1", "2", "3"]) for s in range(30)}
    assert joined == {"1, 2 and 3", "1, 2, and 3", "1; 2; 3"}


def test_bad_arguments(fake_docs, tok):
    with pytest.raises(UserInputError, match="at least 64 tokens"):
        pc.make_document(0, 0, 32, tok)
    with pytest.raises(UserInputError, match="synthetic_fraction"):
        pc.make_document(0, 0, 256, tok, synthetic_fraction=1.5)
    with pytest.raises(UserInputError, match="unknown synthetic families"):
        pc.make_document(0, 0, 256, tok, family_weights={"trivia": 1.0})


@pytest.mark.skipif(not __import__("glob").glob(pc.PYTHON_DOC_INFO_GLOB), reason="python3-doc is not installed")
def test_installed_python_docs_give_clean_ascii_prose():
    docs = pc.natural_documents()
    assert len(docs) > 1000
    text = "".join(docs[:200])
    assert text.isascii() and "*note" not in text and "\x1f" not in text


def test_a_family_that_cannot_fit_a_short_window_falls_back_to_a_passcode(fake_docs, tok):
    kinds = {pc.make_document(3, i, 128, tok, synthetic_fraction=1.0, family_weights={"multiquery": 1.0}).kind
             for i in range(40)}
    assert kinds == {"multiquery", "passcode"}


def test_natural_text_source_names_the_package(fake_docs):
    source = pc.natural_text_source()
    assert source["package"] == "python3.99-doc" and source["path"] == fake_docs
    assert source["version"] == "unknown"  # no such package is installed
    assert source["licence"].startswith("PSF-2.0")
