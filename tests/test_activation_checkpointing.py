"""Per-block activation checkpointing: exact gradients for both models, through REFINE's branched snapshots
too, also under bf16 autocast; blocks really are recomputed; a model that cannot do it says so."""

from __future__ import annotations

import pytest
import torch

from refine_bench.errors import UserInputError
from refine_bench.models.deltanet import DeltaNetForCausalLM
from refine_bench.models.lact import LaCTForCausalLM
from refine_bench.models.zoo_configs import lact_tiny_config
from tests.conftest import small_deltanet_config

VOCAB = 97


def make_model(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if family == "deltanet":
        return DeltaNetForCausalLM(small_deltanet_config(initializer_range=0.05))  # chunk 8
    # chunk 8 over 30-token prefixes: several fast-weight updates before and inside the branches
    return LaCTForCausalLM(lact_tiny_config(vocab_size=VOCAB, hidden_size=32, num_attn_heads=4, num_lact_heads=2,
                                            intermediate_size=48, w0_w2_low_rank=4, lact_chunk_size=8, window_size=6,
                                            max_position_embeddings=4096, initializer_range=0.05))


def refine_like_loss(model: torch.nn.Module, autocast: bool = False) -> torch.Tensor:
    """NTP on a teacher-forced pass split at two positions, plus a loss on rollouts branched from the snapshots
    (two rollouts each, logits and last hidden states), as REFINE's grad pass does. The prefix uses tokens
    3..49 and the rollouts tokens 50..96, so an embedding row of a prefix token gets a gradient from the
    rollout loss only through the snapshot."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 50, (1, 30), generator=g)
    rollout = torch.randint(50, VOCAB, (2, 5), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits, hidden, snaps = model.forward_with_snapshots(ids, [13, 22])
        ntp = torch.nn.functional.cross_entropy(logits[0, :-1].float(), ids[0, 1:])
        rl = 0.0
        for snap, target in zip(snaps, (hidden[0, 13], hidden[0, 22]), strict=True):
            out = model(rollout, cache=snap.repeat_interleave(2), use_cache=True, output_hidden_states=True)
            cos = torch.nn.functional.cosine_similarity(out.hidden_states[-1].float(), target.float(), dim=-1)
            rl = rl + out.logits.float().log_softmax(-1)[..., 60].mean() + cos.mean()
    return ntp + 0.2 * rl


def gradients(model: torch.nn.Module, checkpointing: bool, autocast: bool = False) -> dict[str, torch.Tensor]:
    model.zero_grad()
    if checkpointing:
        model.gradient_checkpointing_enable()
    else:
        model.gradient_checkpointing_disable()
    refine_like_loss(model, autocast).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("family", ["deltanet", "lact"])
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_checkpointed_gradients_equal_stored_ones_through_branched_snapshots(family, autocast):
    model = make_model(family)
    stored = gradients(model, checkpointing=False, autocast=autocast)
    recomputed = gradients(model, checkpointing=True, autocast=autocast)
    assert model.is_gradient_checkpointing
    for name, grad in stored.items():
        torch.testing.assert_close(recomputed[name], grad, atol=1e-6, rtol=1e-5, msg=name)
    # the rollout loss reaches the prefix's tokens only through the snapshots' states
    embeddings = recomputed["model.embeddings.weight"]
    assert embeddings[3:50].abs().sum() > 0 and embeddings[50:].abs().sum() > 0


@pytest.mark.parametrize("family", ["deltanet", "lact"])
def test_blocks_are_recomputed_in_the_backward_pass(family):
    model = make_model(family)
    calls = []
    model.model.layers[0].attn.register_forward_hook(lambda *_: calls.append(torch.is_grad_enabled()))
    for checkpointing in (False, True):
        calls.clear()
        model.zero_grad()
        model.gradient_checkpointing_enable() if checkpointing else model.gradient_checkpointing_disable()
        loss = refine_like_loss(model)
        forward_calls = len(calls)
        loss.backward()
        # 3 pieces of the teacher-forced pass + 2 branches; each block runs again in the backward when checkpointed
        assert forward_calls == 5
        assert len(calls) == (10 if checkpointing else 5)
    with torch.no_grad():  # nothing to recompute without a graph
        calls.clear()
        model(torch.randint(3, VOCAB, (1, 9)))
        assert calls == [False]


@pytest.mark.parametrize("family", ["deltanet", "lact"])
def test_bf16_autocast_forward_is_close_to_float32(family):
    """The trainer's CUDA mode (fp32 weights, bf16 autocast) on the CPU: finite, close to the fp32 logits, and
    the recurrent state stays float32."""
    model = make_model(family).eval()
    ids = torch.randint(3, VOCAB, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(ids, use_cache=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(ids, use_cache=True)
    rel = (out.logits.float() - ref.logits).norm() / ref.logits.norm()
    assert torch.isfinite(out.logits).all() and rel < 0.05
    state_key = "recurrent_state" if family == "deltanet" else "w0"
    assert out.cache.layers[0][state_key].dtype == torch.float32


def test_reentrant_checkpointing_and_unsupported_models_are_refused():
    model = make_model("deltanet")
    with pytest.raises(UserInputError, match="use_reentrant"):
        model.gradient_checkpointing_enable({"use_reentrant": True})

    class NoCheckpointing(DeltaNetForCausalLM):
        supports_gradient_checkpointing = False

    with pytest.raises(UserInputError, match="NoCheckpointing does not support activation checkpointing"):
        NoCheckpointing(small_deltanet_config()).gradient_checkpointing_enable()
