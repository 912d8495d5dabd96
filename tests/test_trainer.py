"""The trainer: exact SFT step, PPO mini-batches, resume after interruption, schedules, precision, presets."""

from __future__ import annotations

import math

import pytest
import torch

from refine_bench.distributed import DistContext
from refine_bench.errors import UserInputError
from refine_bench.models.deltanet import DeltaNetForCausalLM
from refine_bench.train.checkpoints import latest_checkpoint
from refine_bench.train.config import RefineConfig, TrainConfig
from refine_bench.train.optimization import Example, forward_groups, optimize_items
from refine_bench.train.parallel import DataParallel
from refine_bench.train.presets import departures, preset
from refine_bench.train.schedule import learning_rate
from refine_bench.train.streams import SequenceStream
from refine_bench.train.trainer import Trainer
from tests.conftest import small_deltanet_config

SEQ = 48


def make_model(seed: int = 0, dtype: torch.dtype = torch.float32) -> DeltaNetForCausalLM:
    torch.manual_seed(seed)
    return DeltaNetForCausalLM(small_deltanet_config()).to(dtype).eval()


def make_stream(n: int = 8, batch: int = 4) -> SequenceStream:
    data = torch.randint(3, 97, (n, SEQ), generator=torch.Generator().manual_seed(42))
    return SequenceStream(data, batch_size=batch, seed=0)


def refine_config(**kw) -> TrainConfig:
    base = dict(arm="refine", phase="mid", steps=3, batch_size=4, mini_batch_size=2, lr=1e-3, seed=7, seq_len=SEQ,
                refine=RefineConfig(num_chunks=2, rollout_len=3, num_rollouts=2, margin=6, reward="hybrid"))
    base.update(kw)
    return TrainConfig(**base)


def test_sft_step_equals_mean_cross_entropy_step():
    cfg = TrainConfig(arm="sft", steps=1, batch_size=4, lr=1e-2, grad_clip=0.5, seq_len=SEQ)
    model, ref = make_model(), make_model()
    stream = make_stream()
    batch = torch.stack([ex.ids for ex in SequenceStream(stream.sequences, 4, seed=0).__next__()])
    Trainer(model, None, cfg, stream).train()

    opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, betas=cfg.betas, weight_decay=cfg.weight_decay)
    ref.train()
    ref(batch, labels=batch).loss.backward()
    torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.5)
    opt.step()
    # one sequence at a time vs the batch in one forward: float noise of ~1e-7 in near-zero gradients becomes up to
    # ~1e-6 after Adam's normalisation at lr 1e-2; a wrong normalisation or mask would be off by ~1e-2
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, atol=1e-5, rtol=1e-5, msg=k)


def test_refine_makes_one_optimizer_step_per_mini_batch_and_logs_rewards():
    logged = []
    trainer = Trainer(make_model(), None, refine_config(steps=1), make_stream(), log_fn=lambda s, m: logged.append(m))
    trainer.train()
    (m,) = logged
    assert m["optimizer_steps"] == 2 and m["skipped_steps"] == 0
    assert {"loss", "loss_ntp", "loss_rl", "reward_mean", "reward_std", "frac_reward_zero_std"} <= set(m)
    assert m["loss"] == pytest.approx(m["loss_ntp"] + 0.2 * m["loss_rl"])
    assert 0.0 <= m["frac_reward_zero_std"] <= 1.0


def test_resume_after_interruption_equals_uninterrupted_run(tmp_path):
    full = Trainer(make_model(), None, refine_config(steps=3), make_stream(), output_dir=tmp_path / "a")
    full.train()

    interrupted = Trainer(make_model(), None, refine_config(steps=3, save_every=1), make_stream(),
                          output_dir=tmp_path / "b")
    interrupted.config.steps = 2  # stop after step 2, as if killed before step 3 finished
    interrupted.train()
    resumed = Trainer(make_model(seed=123), None, refine_config(steps=3), make_stream(), output_dir=tmp_path / "b")
    resumed.resume(latest_checkpoint(tmp_path / "b"))
    assert resumed.step == 2
    resumed.train()
    for k, v in full.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[k], v), k


def test_stop_after_gives_the_full_schedules_weights_and_resumes_to_its_end(tmp_path):
    """A run stopped at step 2 of a 4-step cosine schedule holds exactly the full run's step-2 weights (the learning
    rate follows the 4-step schedule, not a 2-step one), and resuming it without the stop ends where the full run
    ends."""
    cosine = dict(arm="sft", phase="pretrain", steps=4, lr_schedule="cosine", warmup_steps=0, lr=1e-2, batch_size=4,
                  seq_len=SEQ)
    full = Trainer(make_model(), None, TrainConfig(**cosine, save_every=2, keep_last=3), make_stream(),
                   output_dir=tmp_path / "full")
    full.train()
    stopped = Trainer(make_model(), None, TrainConfig(**cosine, stop_after=2), make_stream(),
                      output_dir=tmp_path / "stopped")
    assert stopped.train().name == "step-2" and stopped.step == 2
    from refine_bench.models.checkpoint import load_state_dict

    at_two = load_state_dict(tmp_path / "full" / "checkpoints" / "step-2")
    for key, value in load_state_dict(latest_checkpoint(tmp_path / "stopped")).items():
        assert torch.equal(value, at_two[key]), key
    short = TrainConfig(**{**cosine, "steps": 2})  # what a 2-step schedule would have given instead
    assert learning_rate(short, 1) != learning_rate(TrainConfig(**cosine), 1)
    resumed = Trainer(make_model(seed=5), None, TrainConfig(**cosine), make_stream(), output_dir=tmp_path / "stopped")
    resumed.resume(latest_checkpoint(tmp_path / "stopped"))
    resumed.train()
    for key, value in full.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key
    assert TrainConfig(**cosine, stop_after=2).identity() == TrainConfig(**cosine).identity()


def test_bf16_checkpoint_trains_through_float32_master_weights(tmp_path):
    """One AdamW step at lr 1e-6 changes the same weights whether the model came as bf16 or fp32, and the
    checkpoint holds those changed float32 weights (a bf16 copy would round most of the update away)."""
    from refine_bench.models.checkpoint import load_state_dict
    from refine_bench.train.precision import use_master_weights

    source = make_model()
    bf16 = source.to(torch.bfloat16)
    weights_as_loaded = {k: v.float().clone() for k, v in bf16.state_dict().items()}
    fp32 = make_model()
    fp32.load_state_dict(weights_as_loaded)
    cfg = TrainConfig(arm="sft", steps=1, batch_size=4, lr=1e-6, seq_len=SEQ, precision="fp32")
    trained = {}
    for name, model in (("bf16", use_master_weights(bf16)), ("fp32", fp32)):
        trainer = Trainer(model, None, cfg, make_stream(), output_dir=tmp_path / name)
        trainer.train()
        trained[name] = {k: v.clone() for k, v in model.state_dict().items()}
    changed = 0
    for key, before in weights_as_loaded.items():
        after = trained["bf16"][key]
        assert after.dtype == torch.float32
        torch.testing.assert_close(after, trained["fp32"][key], atol=0, rtol=0, msg=key)
        changed += int((after != before).sum())
    total = sum(v.numel() for v in weights_as_loaded.values())
    assert changed > 0.9 * total
    saved = load_state_dict(latest_checkpoint(tmp_path / "bf16"))
    for key, value in trained["bf16"].items():
        assert saved[key].dtype == torch.float32 and torch.equal(saved[key], value), key
    # what a bf16 update would have kept: most 1e-6 steps round away
    rounded = sum(int((trained["fp32"][k].bfloat16().float() != weights_as_loaded[k]).sum())
                  for k in weights_as_loaded)
    assert rounded < 0.1 * total


def test_cosine_schedule_with_warmup_hand_computed():
    cfg = TrainConfig(arm="sft", phase="pretrain", steps=10, lr=1.0, lr_schedule="cosine", warmup_steps=2,
                      min_lr_ratio=0.1, batch_size=4, seq_len=SEQ)
    assert [learning_rate(cfg, s) for s in (0, 1)] == [0.5, 1.0]
    assert learning_rate(cfg, 2) == pytest.approx(1.0)
    assert learning_rate(cfg, 6) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert learning_rate(cfg, 10) == pytest.approx(0.1)
    assert learning_rate(preset("mid", "sft"), 50) == 1e-6


def test_bad_settings_are_named():
    for kwargs, message in [({"batch_size": 6, "mini_batch_size": 4}, "not a multiple of mini_batch_size"),
                            ({"arm": "dpo"}, "unknown arm"), ({"lr": -1.0}, "learning rate"),
                            ({"lr": float("nan")}, "learning rate"), ({"steps": 0}, "steps must be"),
                            ({"precision": "fp8"}, "precision"), ({"stop_after": 101}, "stop_after must be"),
                            ({"stop_after": 0}, "stop_after must be"), ({"seq_len": 30}, "too short for REFINE")]:
        with pytest.raises(UserInputError, match=message):
            TrainConfig(**kwargs)
    with pytest.raises(UserInputError, match="unknown reward"):
        preset("mid", "refine", reward="bleu")
    cfg = preset("ttt", "refine", batch_size=8)
    assert (cfg.refine.lambda_rl, cfg.refine.reward, cfg.optimizer_mini_batch) == (0.4, "binary", 4)
    assert preset("mid", "sft").optimizer_mini_batch == 128
    assert preset("mid", "sft", sft_steps_like_refine=True).optimizer_mini_batch == 32


def test_departures_from_the_preset_make_a_variant():
    assert departures(preset("mid", "refine")) == {}
    assert departures(preset("mid", "refine", rollout_mode="recompute", seq_len=256, steps=2)) == {}
    assert departures(preset("mid", "refine", reward="binary", num_chunks=2)) == {"reward": "binary", "num_chunks": 2}
    assert departures(preset("mid", "sft", data_mode="packed")) == {"data_mode": "packed"}
    assert departures(preset("mid", "sft", reward="binary")) == {}  # REFINE knobs do not matter to SFT


def test_stream_is_deterministic_and_resumable():
    seqs = torch.arange(10 * 4).view(10, 4)
    a, b = SequenceStream(seqs, 2, seed=3), SequenceStream(seqs, 2, seed=3)
    first = [torch.stack([ex.ids for ex in next(a)]) for _ in range(7)]  # crosses an epoch boundary
    b.position = 6
    assert torch.equal(torch.stack([ex.ids for ex in next(b)]), first[6])
    epoch = torch.cat(first[:5]).sort(dim=0).values
    assert torch.equal(epoch, seqs)  # one epoch visits every sequence once


def test_forward_groups_stack_equal_lengths_and_keep_rollout_sequences_alone():
    ids = [torch.zeros(n, dtype=torch.long) for n in (6, 6, 4, 6, 4)]
    items = [Example(ids[0]), Example(ids[1]), Example(ids[2]), Example(ids[3], torch.ones(6, dtype=torch.bool)),
             Example(ids[4])]
    assert forward_groups(items, [0, 1, 2, 3, 4], {}) == [[0, 1], [2, 4], [3]]
    assert forward_groups(items, [0, 1, 2], {1: object()}) == [[0], [1], [2]]


def test_stacked_forwards_give_the_per_sequence_update():
    """Sequences of one length share a forward; the step must equal the one that runs them one by one (two
    lengths, answer targets on some, two mini-batches)."""
    g = torch.Generator().manual_seed(3)
    items = [Example(torch.randint(3, 97, (n,), generator=g)) for n in (24, 24, 16, 24)]
    marked = torch.zeros(24, dtype=torch.bool)
    marked[10:] = True
    items.append(Example(torch.randint(3, 97, (24,), generator=g), marked))
    items.append(Example(torch.randint(3, 97, (24,), generator=g), marked.roll(3)))
    config = preset("mid", "sft", steps=1, batch_size=6, mini_batch_size=3, seq_len=24, lr=1e-3)
    weights = []
    for stack in (True, False):
        model = make_model()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        result = optimize_items(DataParallel(model, None, DistContext()), optimizer, config, items, with_rl=False,
                                step=0, stack=stack)
        weights.append((torch.cat([p.detach().flatten() for p in model.parameters()]), result.metrics["loss"]))
    assert weights[0][1] == pytest.approx(weights[1][1], rel=1e-6)
    torch.testing.assert_close(weights[0][0], weights[1][0], atol=1e-6, rtol=1e-5)
