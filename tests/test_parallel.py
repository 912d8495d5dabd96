"""Data parallelism on real torch.distributed (2 gloo processes on CPU): FSDP2 and DDP each give the
single-process update, and a checkpoint written by 2 ranks resumes on 1."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.multiprocessing as mp

from refine_bench.distributed import DistContext
from refine_bench.errors import UserInputError
from refine_bench.train.checkpoints import latest_checkpoint
from refine_bench.train.trainer import Trainer
from tests.test_trainer import make_model, make_stream, refine_config

LR = 1e-4  # Adam turns float noise in near-zero gradients into steps of up to lr: keep it small but visible
METRICS = ("loss", "loss_ntp", "loss_rl", "grad_norm", "reward_mean", "reward_std", "frac_reward_zero_std")


def _train(parallel: str, dist: DistContext, output_dir=None, steps: int = 2):
    logged = []
    cfg = refine_config(steps=steps, lr=LR, parallel=parallel, save_every=1 if output_dir else 0)
    trainer = Trainer(make_model(), None, cfg, make_stream(), output_dir=output_dir, dist=dist,
                      log_fn=lambda s, m: logged.append(m))
    trainer.train()
    return trainer, logged


def _full_weights(model):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _rank_main(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    dist = DistContext(rank, world, "cpu")
    results = {}
    for parallel in ("fsdp", "ddp"):
        output = os.path.join(out_dir, "work-fsdp") if parallel == "fsdp" else None
        trainer, logged = _train(parallel, dist, output)
        weights = _full_weights(trainer.model)
        results[parallel] = {"weights": weights, "metrics": logged}
    if rank == 0:
        torch.save(results, os.path.join(out_dir, "results.pt"))
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ranks")
    init_file = tempfile.mktemp(dir=out)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.start_processes(_rank_main, args=(2, init_file, str(out)), nprocs=2, join=True, start_method="spawn")
    return out, torch.load(out / "results.pt", weights_only=True)


@pytest.mark.parametrize("parallel", ["fsdp", "ddp"])
def test_two_ranks_update_like_one_process(two_rank_results, parallel):
    torch.set_num_threads(1)
    single, logged = _train("auto", DistContext())
    multi = two_rank_results[1][parallel]
    for ours, theirs in zip(logged, multi["metrics"], strict=True):
        for key in METRICS:
            assert theirs[key] == pytest.approx(ours[key], rel=1e-5, abs=1e-6), key
    initial = make_model().state_dict()
    moved = 0
    for key, value in single.model.state_dict().items():
        torch.testing.assert_close(multi["weights"][key], value, atol=1e-5, rtol=0, msg=key)
        moved += int(((value - initial[key]).abs() > 1e-5).sum())
    assert moved > 0.5 * sum(v.numel() for v in initial.values())  # the comparison is not between two no-ops


def test_checkpoint_written_by_two_ranks_resumes_on_one(two_rank_results):
    out, _ = two_rank_results
    checkpoint = latest_checkpoint(out / "work-fsdp")
    assert checkpoint is not None and checkpoint.name == "step-2"
    single3, _ = _train("auto", DistContext(), steps=3)
    cfg = refine_config(steps=3, lr=LR)
    resumed = Trainer(make_model(seed=99), None, cfg, make_stream())
    resumed.resume(checkpoint)
    assert resumed.step == 2
    resumed.train()
    for key, value in single3.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, atol=2e-5, rtol=0, msg=key)


def test_world_size_must_divide_the_batch_and_mini_batch():
    with pytest.raises(UserInputError, match="world size 3 must divide"):
        Trainer(make_model(), None, refine_config(), make_stream(), dist=DistContext(0, 3, "cpu"))
