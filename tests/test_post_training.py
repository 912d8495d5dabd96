"""Post-training ("nested") arms: answer-only SFT, prompt NTP then answer SFT, prompt REFINE then answer SFT."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from refine_bench.errors import UserInputError
from refine_bench.models.tokenizer import load_tiny_tokenizer
from refine_bench.train.config import RefineConfig, TrainConfig
from refine_bench.train.documents import read_qa_pairs
from refine_bench.train.streams import PairStream, encode_pairs
from refine_bench.train.trainer import Trainer
from tests.test_trainer import make_model


def pairs(n=4, seed=0, prompt_len=30):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(3, 97, (prompt_len + i,), generator=g), torch.randint(3, 97, (3 + i % 2,), generator=g))
            for i in range(n)]


def answer_ce(model, batch):
    """Mean cross-entropy over the answer tokens of all pairs (the answer-SFT objective)."""
    total, count = 0.0, 0
    for p, a in batch:
        ids = torch.cat([p, a])[None]
        logits = model(ids).logits[0, len(p) - 1 : -1]
        total = total + F.cross_entropy(logits, a, reduction="sum")
        count += len(a)
    return total / count


def prompt_ntp(model, batch):
    total, count = 0.0, 0
    for p, _ in batch:
        logits = model(p[None]).logits[0, :-1]
        total = total + F.cross_entropy(logits, p[1:], reduction="sum")
        count += len(p) - 1
    return total / count


def adam_step(model, loss, cfg):
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    model.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()
    return opt


def first_batch(stream):
    """The (prompt, answer) pairs of the stream's first batch."""
    examples = PairStream(stream.pairs, stream.batch_size, seed=stream.seed).__next__()
    return [(ex.ids[: ex.prompt_len], ex.ids[ex.prompt_len :]) for ex in examples]


def test_post_sft_trains_on_answer_tokens_only():
    cfg = TrainConfig(arm="sft", phase="post", steps=1, batch_size=4, lr=1e-2)
    stream = PairStream(pairs(), 4)
    batch = first_batch(stream)
    model, ref = make_model(), make_model()
    Trainer(model, None, cfg, stream).train()
    ref.train()
    adam_step(ref, answer_ce(ref, batch), cfg)
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, atol=1e-6, rtol=1e-5, msg=k)


def test_nested_sft_is_prompt_ntp_then_answer_sft():
    cfg = TrainConfig(arm="nested_sft", phase="post", steps=1, batch_size=4, lr=1e-2)
    stream = PairStream(pairs(), 4)
    batch = first_batch(stream)
    logged = []
    model, ref = make_model(), make_model()
    Trainer(model, None, cfg, stream, log_fn=lambda s, m: logged.append(m)).train()
    assert logged[0]["prompt_optimizer_steps"] == 1 and logged[0]["answer_optimizer_steps"] == 1
    ref.train()
    opt = adam_step(ref, prompt_ntp(ref, batch), cfg)
    ref.zero_grad()
    answer_ce(ref, batch).backward()
    torch.nn.utils.clip_grad_norm_(ref.parameters(), cfg.grad_clip)
    opt.step()
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, atol=1e-6, rtol=1e-5, msg=k)


def test_nested_refine_runs_grpo_on_prompts_and_skips_prompts_too_short():
    cfg = TrainConfig(arm="nested_refine", phase="post", steps=1, batch_size=4, mini_batch_size=2, lr=1e-3,
                      refine=RefineConfig(num_chunks=2, rollout_len=3, num_rollouts=2, margin=8, reward="hybrid"))
    data = pairs(3, prompt_len=30) + [(torch.randint(3, 97, (10,)), torch.tensor([5, 6]))]
    logged = []
    Trainer(make_model(), None, cfg, PairStream(data, 4), log_fn=lambda s, m: logged.append(m)).train()
    m = logged[0]
    assert m["prompt_optimizer_steps"] == 2 and m["answer_optimizer_steps"] == 1
    assert m["sequences_without_rollouts"] == 1.0
    assert {"reward_mean", "reward_std", "frac_reward_zero_std", "prompt_loss_rl", "answer_loss"} <= set(m)


def test_qa_reading_encoding_and_errors(tmp_path):
    f = tmp_path / "qa.jsonl"
    f.write_text(json.dumps({"prompt": "Where is the key? " * 50, "answer": ["in the box", "box"]}) + "\n")
    ((prompt, answer),) = read_qa_pairs(f)
    assert answer == "in the box"
    tok = load_tiny_tokenizer()
    ((p, a),) = encode_pairs([(prompt, answer)], tok, max_len=40)
    assert len(p) + len(a) == 40 and a.tolist() == tok(answer, add_special_tokens=False)["input_ids"]
    ((_, with_eos),) = encode_pairs([(prompt, answer)], tok, max_len=40, answer_eos=True)
    assert with_eos[-1].item() == tok.eos_token_id and len(with_eos) == len(a) + 1
    full = tok(prompt, add_special_tokens=False)["input_ids"]
    half = (40 - len(a)) // 2
    assert p[:half].tolist() == full[:half] and p[half:].tolist() == full[len(full) - (len(p) - half):]
    (tmp_path / "bad.jsonl").write_text(json.dumps({"prompt": "x"}) + "\n")
    with pytest.raises(UserInputError, match="needs 'prompt' and 'answer'"):
        read_qa_pairs(tmp_path / "bad.jsonl")
    (tmp_path / "broken.jsonl").write_text(json.dumps({"prompt": "p", "answer": "a"}) + "\n{not json\n")
    with pytest.raises(UserInputError, match="broken.jsonl: line 2 is not valid JSON"):
        read_qa_pairs(tmp_path / "broken.jsonl")
    with pytest.raises(UserInputError, match="valid arms: sft, nested_sft, nested_refine"):
        TrainConfig(arm="refine", phase="post")


def test_cli_post_training(tmp_path):
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Passage {i}. " * 20 + "Question?", "answer": f"answer {i}"})
                            + "\n" for i in range(4)))
    cmd = [sys.executable, "-m", "refine_bench", "train", "--model", "deltanet-tiny", "--phase", "post", "--arm",
           "nested_refine", "--data", str(data), "--batch-size", "2", "--seq-len", "128", "--chunks", "2",
           "--work-dir", str(tmp_path / "w"), "--runs-dir", str(tmp_path / "runs")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    (record,) = list((tmp_path / "runs").iterdir())
    meta = json.loads((record / "run.json").read_text())
    assert meta["stages"] == {"mid": None, "post": "nested_refine", "ttt": None}
    res = subprocess.run(cmd[:6] + ["--phase", "post", "--arm", "nested_sft"], capture_output=True, text=True,
                         timeout=600, cwd=tmp_path)
    assert res.returncode == 2 and "post-training needs --data" in res.stderr
