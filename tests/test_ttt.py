"""Test-time training: reset policies, the exact SFT step, REFINE = the trainer's step, short-prompt fallback,
the lm-eval wrapper and `refine-bench eval --ttt-arm`."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from lm_eval.api.instance import Instance

from refine_bench.errors import UserInputError
from refine_bench.models.deltanet import DeltaNetForCausalLM
from refine_bench.train.optimization import Example
from refine_bench.train.presets import preset
from refine_bench.train.test_time import TestTimeAdapter
from refine_bench.train.trainer import Trainer
from tests.conftest import small_deltanet_config

LR = 1e-2


def make_model(seed: int = 0) -> DeltaNetForCausalLM:
    torch.manual_seed(seed)
    return DeltaNetForCausalLM(small_deltanet_config()).eval()


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], exact: bool = False) -> None:
    for k in a:
        if exact:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5, msg=k)


def prompts(lengths: list[int], seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 97, (n,), generator=g).tolist() for n in lengths]


def hand_ntp_step(model, opt: torch.optim.Optimizer, batch: list[list[int]], clip: float = 1.0) -> None:
    """One AdamW step on the summed next-token cross-entropy of the prompts over their total target count."""
    model.train()
    opt.zero_grad()
    total = sum(len(p) - 1 for p in batch)
    for p in batch:  # gradients accumulated prompt by prompt (same float summation order as the adapter)
        ids = torch.tensor([p])
        (F.cross_entropy(model(ids).logits[0, :-1].float(), ids[0, 1:], reduction="sum") / total).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    model.eval()


def adamw(model, cfg) -> torch.optim.AdamW:
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


B1, B2 = prompts([20, 33, 7, 2], seed=1), prompts([15, 40, 9], seed=2)


def test_sft_steps_equal_hand_written_ntp_steps_per_example_and_accumulated():
    cfg = preset("ttt", "sft", lr=LR)
    original = weights(make_model())

    per_example = make_model()
    adapter = TestTimeAdapter(per_example, cfg, reset="per_example")
    ref = make_model()
    with adapter.adapt(B1) as stats:
        hand_ntp_step(ref, adamw(ref, cfg), B1)
        assert_same(weights(per_example), weights(ref))
        assert stats["optimizer_steps"] == 1 and stats["prompt_tokens"] == 62
    assert_same(weights(per_example), original, exact=True)  # reset is bit for bit
    ref = make_model()
    with adapter.adapt(B2):  # the second batch starts again from the original weights and a fresh optimizer
        hand_ntp_step(ref, adamw(ref, cfg), B2)
        assert_same(weights(per_example), weights(ref))
    assert_same(weights(per_example), original, exact=True)

    accumulated = make_model()
    adapter = TestTimeAdapter(accumulated, cfg, reset="accumulate")
    ref = make_model()
    opt = adamw(ref, cfg)
    with adapter.adapt(B1):
        pass
    hand_ntp_step(ref, opt, B1)
    after_first = weights(accumulated)
    assert_same(after_first, weights(ref))
    assert any(not torch.equal(after_first[k], original[k]) for k in original)
    with adapter.adapt(B2):  # continues from the first batch's weights and Adam moments
        pass
    hand_ntp_step(ref, opt, B2)
    assert_same(weights(accumulated), weights(ref))
    adapter.reset()
    assert_same(weights(accumulated), original, exact=True)


def refine_ttt_config(**kw):
    base = dict(lr=LR, batch_size=4, mini_batch_size=2, num_chunks=2, rollout_len=3, margin=6, reward="cosine",
                seed=5)
    base.update(kw)
    return preset("ttt", "refine", **base)


def test_refine_pass_on_equal_length_prompts_is_the_trainers_step():
    cfg = refine_ttt_config()
    batch = torch.tensor(prompts([48] * 4, seed=3))
    ref = make_model()
    metrics = Trainer(ref, None, cfg, stream=None).train_step([Example(row) for row in batch])
    model = make_model()
    stats = TestTimeAdapter(model, cfg, reset="accumulate").train_on(batch.tolist())
    assert_same(weights(model), weights(ref))
    assert stats["optimizer_steps"] == metrics["optimizer_steps"] == 2
    assert stats["rollout_tokens"] == 4 * 2 * 1 * 3 and stats["ntp_only"] == []
    assert stats["loss_rl"] == pytest.approx(metrics["loss_rl"]) and stats["loss_rl"] != 0.0
    assert stats["loss_ntp"] == pytest.approx(metrics["loss_ntp"])


def test_too_short_prompt_falls_back_to_ntp():
    cfg = refine_ttt_config(mini_batch_size=4)  # needs >= 2 * margin + 1 = 13 tokens
    model = make_model()
    stats = TestTimeAdapter(model, cfg, reset="accumulate").train_on(prompts([48, 10], seed=4))
    assert stats["ntp_only"] == [1] and stats["rollout_tokens"] == 2 * 3  # rollouts only in the long prompt

    # a batch of short prompts only: REFINE (lambda_sft = 1) is exactly the SFT step
    short = prompts([10, 12], seed=6)
    refine_model, sft_model = make_model(), make_model()
    stats = TestTimeAdapter(refine_model, cfg).train_on(short)
    TestTimeAdapter(sft_model, preset("ttt", "sft", lr=LR)).train_on(short)
    assert stats["ntp_only"] == [0, 1] and stats["rollout_tokens"] == 0
    assert_same(weights(refine_model), weights(sft_model), exact=True)

    # the paper's preset (8 chunks, margin 20) needs 41 tokens
    stats = TestTimeAdapter(make_model(), preset("ttt", "refine", lr=LR)).train_on(prompts([40, 41], seed=7))
    assert stats["ntp_only"] == [0]


def test_bad_settings_are_named():
    with pytest.raises(UserInputError, match="reset policy"):
        TestTimeAdapter(make_model(), preset("ttt", "sft"), reset="sometimes")
    with pytest.raises(UserInputError, match="phase 'ttt'"):
        TestTimeAdapter(make_model(), preset("mid", "sft"))
    with pytest.raises(UserInputError, match="steps"):
        TestTimeAdapter(make_model(), preset("ttt", "sft"), steps=0)


# ----------------------------------------------------------------------------------------- the lm-eval wrapper


def _requests(tokenizer, n: int) -> list[Instance]:
    from refine_bench.eval.niah import make_sample

    docs = [make_sample("niah_single_1", 256, i, tokenizer, tokens_to_generate=8) for i in range(n)]
    return [Instance(request_type="generate_until", doc=d, idx=0, metadata=("niah_single_1", i, 1),
                     arguments=(d["prompt"], {"until": ["\n\n"], "max_gen_toks": 8, "do_sample": False}))
            for i, d in enumerate(docs)]


def _lms(reset: str):
    from refine_bench.eval.lm import RefineBenchLM
    from refine_bench.eval.test_time_training_lm import TestTimeTrainingLM

    cfg = preset("ttt", "sft", lr=LR)
    kwargs = dict(pretrained="deltanet-tiny", device="cpu", batch_size=2, max_length=512)
    ttt = TestTimeTrainingLM(lambda m: TestTimeAdapter(m, cfg, reset=reset), "sft", ttt_batch_size=2, **kwargs)
    return ttt, RefineBenchLM(**kwargs), cfg


@pytest.mark.parametrize("reset", ["per_example", "accumulate"])
def test_wrapper_answers_with_the_adapted_model_and_restores_it(reset):
    ttt, plain, cfg = _lms(reset)
    reqs = _requests(plain.tokenizer, 4)
    original = weights(ttt.model)
    unadapted = plain.generate_until(reqs, disable_tqdm=True)
    answers = ttt.generate_until(reqs, disable_tqdm=True)
    assert_same(weights(ttt.model), original, exact=True)  # restored once the task is answered
    assert answers != unadapted
    assert [row["doc_ids"] for row in ttt.ttt_log] == [[0, 1], [2, 3]]

    # the second batch is answered by the model adapted on it alone (per example) or on both batches in turn
    batches = [[ttt.ttt_prompt(*r.args) for r in reqs[lo : lo + 2]] for lo in (0, 2)]
    manual = TestTimeAdapter(plain.model, cfg, reset="accumulate")
    for batch in batches if reset == "accumulate" else batches[1:]:
        manual.train_on(batch)
    assert answers[2:] == plain.generate_until(reqs[2:], disable_tqdm=True)


@pytest.mark.parametrize("reset", ["per_example", "accumulate"])
def test_wrapper_resumes_a_killed_run_from_the_answer_cache(tmp_path, reset):
    from refine_bench.eval.answer_cache import AnswerCache

    ttt, plain, _ = _lms(reset)
    reqs = _requests(plain.tokenizer, 4)
    reference = ttt.generate_until(reqs, disable_tqdm=True)
    reference_log = [(row["doc_ids"], row["loss_ntp"]) for row in ttt.ttt_log]

    def instrument(lm, kill_on_adapt: int | None = None) -> dict[str, int]:
        counts = {"adapt": 0, "generate": 0}
        adapt, generate = lm.adapter.adapt, lm._model_generate

        def counted_adapt(prompts):
            counts["adapt"] += 1
            if counts["adapt"] == kill_on_adapt:
                raise KeyboardInterrupt  # killed before the second batch is answered
            return adapt(prompts)

        def counted_generate(*args, **kwargs):
            counts["generate"] += 1
            return generate(*args, **kwargs)

        lm.adapter.adapt, lm._model_generate = counted_adapt, counted_generate
        return counts

    killed, _, _ = _lms(reset)
    killed.use_answer_cache(AnswerCache(tmp_path, {"run": reset}))
    instrument(killed, kill_on_adapt=2)
    with pytest.raises(KeyboardInterrupt):
        killed.generate_until(reqs, disable_tqdm=True)

    resumed, _, _ = _lms(reset)
    cache = AnswerCache(tmp_path, {"run": reset})
    resumed.use_answer_cache(cache)
    counts = instrument(resumed)
    assert resumed.generate_until(reqs, disable_tqdm=True) == reference
    assert [(row["doc_ids"], row["loss_ntp"]) for row in resumed.ttt_log] == reference_log
    assert counts["generate"] == 1 and (cache.reused, cache.computed) == (2, 2)  # the first batch is not answered
    # per-example: the first batch is not adapted on again; accumulating: it is, so the second sees the same weights
    assert counts["adapt"] == (1 if reset == "per_example" else 2)


def test_cli_eval_with_refine_ttt_writes_the_record(tmp_path):
    from typer.testing import CliRunner

    from refine_bench.cli import app

    res = CliRunner().invoke(app, ["eval", "--model", "deltanet-tiny", "--tasks", "niah_single_1", "--lengths",
                                   "512", "--limit", "2", "--device", "cpu", "--output", str(tmp_path),
                                   "--ttt-arm", "refine", "--ttt-lr", "1e-3"])
    assert res.exit_code == 0, res.output
    (run,) = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "ok" and meta["stages"]["ttt"] == "refine"
    assert meta["arm"] == "refine" and meta["phase"] == "ttt"
    ttt = meta["config"]["ttt"]
    assert ttt["reset"] == "accumulate" and ttt["lr"] == 1e-3 and ttt["ttt_batch_size"] == 8  # the paper's default
    assert meta["config"]["variant"] == "ttt_lr=0.001"  # off the preset's learning rate: never a paper cell
    assert ttt["refine"]["lambda_rl"] == 0.4 and ttt["mini_batch_size"] == 4
    (row,) = [json.loads(line) for line in (run / "ttt_batches.jsonl").read_text().splitlines()]
    assert row["doc_ids"] == [0, 1] and row["arm"] == "refine" and row["ntp_only"] == []
    assert row["rollout_tokens"] == 2 * 8 * 5
    assert [json.loads(line)["length"] for line in (run / "scores.jsonl").read_text().splitlines()] == [512]


def test_cli_rejects_bad_ttt_options(tmp_path, capsys):
    from refine_bench.cli import main

    for flags, message in ((["--ttt-arm", "nested_refine"], "unknown test-time-training arm"),
                           (["--ttt-arm", "sft", "--ttt-reset", "never"], "reset policy"),
                           (["--ttt-lr", "1e-3"], "need --ttt-arm"),
                           (["--ttt-arm", "refine", "--ttt-batch-size", "6"], "not a multiple")):
        with pytest.raises(SystemExit) as exc:
            main(["eval", "--model", "deltanet-tiny", "--tasks", "niah_single_1", "--output", str(tmp_path), *flags])
        assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_departures_from_the_ttt_preset_label_the_run_a_variant():
    from refine_bench.cli.eval import _test_time_training

    paper = _test_time_training("refine", None, None, None, None, seed=0)
    assert paper.departures == "" and paper.settings["reset"] == "accumulate" and paper.batch_size == 8
    off = _test_time_training("refine", "per-example", None, 2, 16, seed=0)
    assert off.departures == "ttt_reset=per-example,ttt_steps=2,ttt_batch_size=16"
    assert _test_time_training("sft", None, 1e-3, None, None, seed=0).departures == "ttt_lr=0.001"
