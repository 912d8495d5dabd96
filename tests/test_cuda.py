"""CUDA checks (skipped without a GPU): fla kernels inside training, devices agree with the CPU path, bf16
autocast training with activation checkpointing."""

from __future__ import annotations

import pytest
import torch

from refine_bench.models.deltanet import DeltaNetForCausalLM
from refine_bench.models.lact import LaCTForCausalLM
from refine_bench.models.zoo_configs import lact_tiny_config
from refine_bench.train.config import RefineConfig, TrainConfig
from refine_bench.train.streams import SequenceStream
from refine_bench.train.trainer import Trainer
from tests.conftest import small_deltanet_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def refine_step_grads(model, data, device, precision="fp32", checkpointing=False):
    """Gradients and metrics of one REFINE training step (hybrid reward, two rollouts per position)."""
    cfg = TrainConfig(arm="refine", steps=1, batch_size=2, mini_batch_size=2, lr=1e-30, seed=3, precision=precision,
                      refine=RefineConfig(num_chunks=2, rollout_len=3, num_rollouts=2, margin=6, reward="hybrid"))
    if checkpointing:
        model.gradient_checkpointing_enable()
    logged, grads = [], {}
    for name, p in model.named_parameters():  # the optimiser clears .grad after its step: keep a copy
        p.register_post_accumulate_grad_hook(lambda p, name=name: grads.__setitem__(name, p.grad.detach().cpu()))
    trainer = Trainer(model.to(device), None, cfg, SequenceStream(data.to(device), 2),
                      log_fn=lambda s, m: logged.append(m))
    trainer.train()
    return grads, logged[0]


def twin_deltanets(**config):
    torch.manual_seed(0)
    a = DeltaNetForCausalLM(small_deltanet_config())
    b = DeltaNetForCausalLM(small_deltanet_config(**config))
    b.load_state_dict(a.state_dict())
    return a, b


DATA = torch.randint(3, 97, (2, 64), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("backend", ["fla", "torch"])
def test_refine_step_on_cuda_matches_cpu(backend):
    """Same samples (CPU generators) and the same gradients, through fla's kernels (incl. the gradient into
    the initial state of branched rollouts) or the torch path on the GPU."""
    cpu_model, gpu_model = twin_deltanets(kernel_backend=backend)
    cpu_grads, cpu_metrics = refine_step_grads(cpu_model, DATA, "cpu")
    gpu_grads, gpu_metrics = refine_step_grads(gpu_model, DATA, "cuda")
    assert gpu_metrics["reward_mean"] == pytest.approx(cpu_metrics["reward_mean"], rel=1e-4)
    for k, g in cpu_grads.items():
        torch.testing.assert_close(gpu_grads[k], g, atol=1e-4, rtol=1e-3, msg=k)


def test_bf16_refine_step_with_activation_checkpointing_matches_without():
    """The trainer's CUDA default (fp32 weights, bf16 autocast) with per-block recompute: the same gradients."""
    stored, recomputed = twin_deltanets()
    g_stored, m_stored = refine_step_grads(stored, DATA, "cuda", precision="bf16")
    g_recomputed, m_recomputed = refine_step_grads(recomputed, DATA, "cuda", precision="bf16", checkpointing=True)
    assert m_recomputed["reward_mean"] == pytest.approx(m_stored["reward_mean"], rel=1e-3)
    for k, g in g_stored.items():
        assert torch.isfinite(g).all(), k
        torch.testing.assert_close(g_recomputed[k], g, atol=1e-4, rtol=1e-2, msg=k)


def test_lact_on_cuda_matches_cpu_and_generates_the_same():
    torch.manual_seed(0)
    cpu_model = LaCTForCausalLM(lact_tiny_config(initializer_range=0.3)).eval()
    gpu_model = LaCTForCausalLM(lact_tiny_config(initializer_range=0.3)).eval()
    gpu_model.load_state_dict(cpu_model.state_dict())
    gpu_model.cuda()
    ids = torch.randint(3, 512, (2, 200), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(gpu_model(ids.cuda()).logits.cpu(), cpu_model(ids).logits, atol=1e-3, rtol=1e-3)
        out_cpu = cpu_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False)
        out_gpu = gpu_model.generate(ids.cuda(), attention_mask=torch.ones_like(ids).cuda(), max_new_tokens=16,
                                     do_sample=False)
    assert torch.equal(out_gpu.cpu(), out_cpu)
