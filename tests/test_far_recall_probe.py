"""The far-recall probe (scripts/probe_far_recall.py): closing the fast-weight writes leaves a model nothing but
its attention window (LaCT) or its short convolution (DeltaNet) to reach earlier tokens."""

import pytest
import torch

from tests.conftest import load_script


@pytest.fixture(scope="module")
def probe():
    return load_script("probe_far_recall")


def _tiny(name: str) -> torch.nn.Module:
    from refine_bench.models.deltanet import DeltaNetForCausalLM
    from refine_bench.models.lact import LaCTForCausalLM
    from refine_bench.models.zoo_configs import deltanet_tiny_config, lact_tiny_config

    torch.manual_seed(0)
    if name == "deltanet-tiny":
        return DeltaNetForCausalLM(deltanet_tiny_config()).eval()
    # at the repo's fast-weight lr (1e-3) a random tiny LaCT's far tokens move its logits by ~3e-5 only
    return LaCTForCausalLM(lact_tiny_config(fast_weight_base_lr=0.5)).eval()


@pytest.mark.parametrize("name", ["lact-tiny", "deltanet-tiny"])
def test_closed_writes_cut_every_path_from_tokens_beyond_the_local_reach(probe, name):
    model = _tiny(name)
    ids = torch.randint(3, 500, (1, 300), generator=torch.Generator().manual_seed(0))
    edited = ids.clone()
    edited[0, :8] = (ids[0, :8] + 1) % 500  # the first 8 tokens: 290 positions before the last one

    def last_logits(x):
        with torch.no_grad():
            return model(x).logits[0, -1]

    # lact-tiny: 2 layers of 64-token windows reach 128 back; deltanet-tiny's convolutions a few tokens
    assert not torch.allclose(last_logits(ids), last_logits(edited), atol=1e-4)
    with probe.fast_weight_writes_closed(model) as closed:
        assert closed == 2
        torch.testing.assert_close(last_logits(ids), last_logits(edited), atol=1e-5, rtol=0)
    assert not torch.allclose(last_logits(ids), last_logits(edited), atol=1e-4)  # hooks removed


def test_probe_documents_mark_exactly_the_answer_digits(probe):
    from refine_bench.models.zoo import load_tokenizer

    tok = load_tokenizer("deltanet-tiny")
    for seed in range(3):
        (row,), (marks,) = probe.probe_batch(tok, gap=100, docs=1, rows=6, seed=seed)
        text = tok.decode(row.tolist())
        lines = text.split("\n")
        table, questions = lines[:6], lines[-4:-1]
        asked = [line.split(": ")[1] for line in questions]
        assert all(line in table for line in questions)  # each question is a row of the table, asked back
        gap = len(tok("\n".join(lines[6:-4]), add_special_tokens=False)["input_ids"])
        assert 95 <= gap <= 105  # the gap: 100 tokens of natural text, re-tokenized at its edges
        assert tok.decode(row[marks].tolist()).split() == asked
