"""CUDA checks (skipped without a GPU): fla kernels inside training, devices agree with the CPU path."""

from __future__ import annotations

import pytest
import torch

from refine_bench.models.deltanet import DeltaNetForCausalLM
from refine_bench.models.lact import LaCTForCausalLM
from refine_bench.models.zoo_configs import lact_tiny_config
from refine_bench.train.config import RefineConfig
from refine_bench.train.optimization import sequence_generator
from refine_bench.train.refine import collect_rollouts, sequence_terms
from tests.conftest import small_deltanet_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def refine_step_grads(model, data, device):
    """Gradients of the REFINE loss of each sequence (float32 on both devices; samples from CPU generators)."""
    cfg = RefineConfig(num_chunks=2, rollout_len=3, num_rollouts=2, margin=6, reward="hybrid")
    model = model.to(device)
    rewards = []
    for i, row in enumerate(data):
        ids = row[None].to(device)
        rollouts = collect_rollouts(model, ids, cfg, sequence_generator(3, 0, i))
        terms = sequence_terms(model, ids, cfg, rollouts)
        (terms.ntp_sum / terms.ntp_tokens + 0.2 * terms.rl_sum / terms.rl_tokens).backward()
        rewards.append(rollouts.rewards.cpu())
    return {k: p.grad.detach().cpu() for k, p in model.named_parameters()}, {"reward_mean": float(
        torch.cat(rewards).mean())}


@pytest.mark.parametrize("backend", ["fla", "torch"])
def test_refine_step_on_cuda_matches_cpu(backend):
    """Same samples (CPU generators) and the same gradients, through fla's kernels (incl. the gradient into
    the initial state of branched rollouts) or the torch path on the GPU."""
    data = torch.randint(3, 97, (2, 64), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    cpu_model = DeltaNetForCausalLM(small_deltanet_config())
    gpu_model = DeltaNetForCausalLM(small_deltanet_config(kernel_backend=backend))
    gpu_model.load_state_dict(cpu_model.state_dict())
    cpu_grads, cpu_metrics = refine_step_grads(cpu_model, data, "cpu")
    gpu_grads, gpu_metrics = refine_step_grads(gpu_model, data, "cuda")
    assert gpu_metrics["reward_mean"] == pytest.approx(cpu_metrics["reward_mean"], rel=1e-4)
    for k, g in cpu_grads.items():
        torch.testing.assert_close(gpu_grads[k], g, atol=1e-4, rtol=1e-3, msg=k)


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
