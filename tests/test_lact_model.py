"""LaCT model: state carry, fast-weight updates, cached and left-padded generation, snapshots and gradients,
checkpoints in the LaCT repo's key layout, the 760M config, and config errors (fp32, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from refine_bench.errors import CheckpointError, UserInputError
from refine_bench.models.lact import BASE_LR, LaCTAttention, LaCTConfig, LaCTForCausalLM, inv_softplus
from refine_bench.models.zoo_configs import lact_760m_config, lact_tiny_config
from tests.model_contract import (
    check_branch_gradient,
    check_cached_generation,
    check_left_padded_generation,
    check_snapshots,
    left_padded_pair,
)

VOCAB, CHUNK, WINDOW = 97, 8, 6


def small_config(**overrides) -> LaCTConfig:
    kwargs = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attn_heads=4, num_lact_heads=2,
                  intermediate_size=48, w0_w2_low_rank=4, lact_chunk_size=CHUNK, window_size=WINDOW,
                  max_position_embeddings=4096, use_momentum=True,
                  initializer_range=0.3)  # well-separated logits: greedy comparisons free of near-ties
    kwargs.update(overrides)
    return lact_tiny_config(**kwargs)


@pytest.fixture(scope="module")
def model() -> LaCTForCausalLM:
    torch.manual_seed(0)
    return LaCTForCausalLM(small_config()).eval()


def ids(B=2, T=30, seed=0):
    return torch.randint(3, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


def fast_weights(cache, layer=0):
    return [cache.layers[layer][k] for k in ("w0", "w1", "w2")]


@pytest.mark.parametrize("muon", [False, True])
@pytest.mark.parametrize("cuts", [[1], [5], [8], [13], [29], [3, 11, 20]])
def test_forward_in_pieces_equals_one(cuts, muon):
    torch.manual_seed(0)
    m = LaCTForCausalLM(small_config(use_muon=muon, muon_fp32=True)).eval()  # bf16 NS: not split-exact
    x = ids()
    with torch.no_grad():
        one = m(x, use_cache=True)
        cache, logits = None, []
        bounds = [0, *cuts, x.shape[1]]
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            out = m(x[:, a:b], cache=cache, use_cache=True)
            cache = out.cache
            logits.append(out.logits)
    torch.testing.assert_close(torch.cat(logits, 1), one.logits, atol=1e-4, rtol=1e-4)
    assert cache.get_seq_length() == x.shape[1]
    for layer in range(2):
        for key, val in one.cache.layers[layer].items():
            torch.testing.assert_close(cache.layers[layer][key], val, atol=1e-4, rtol=1e-4, msg=key)


def test_short_inputs_keep_the_initial_fast_weights_longer_ones_update(model):
    with torch.no_grad():
        short = model(ids(B=1, T=CHUNK - 1), use_cache=True).cache
        long = model(ids(B=1, T=CHUNK + 1), use_cache=True).cache
        init = model.model.layers[0].attn.initial_fast_weights()
    for w_short, w_long, w0 in zip(fast_weights(short), fast_weights(long), init, strict=True):
        assert torch.equal(w_short[0], w0)
        assert (w_long[0] - w0).abs().max() > 1e-5  # base lr 1e-3: small but real steps


def test_cached_generate_equals_argmax_of_full_forwards_across_chunk_boundaries(model):
    # 10 + 20 tokens with chunk 8: the fast weights update at 16 and 24 while decoding
    check_cached_generation(model, ids(T=10), 20)


def test_left_padded_rows_equal_the_unpadded_sequences(model):
    short, long = ids(B=1, T=9, seed=1), ids(B=1, T=15, seed=2)
    batch, mask = left_padded_pair(model, short, long)
    with torch.no_grad():
        padded = model(batch, attention_mask=mask, use_cache=True)
        alone = model(short, use_cache=True)
    torch.testing.assert_close(padded.logits[0, 6:], alone.logits[0], atol=1e-4, rtol=1e-4)
    for layer in range(2):
        for key, val in alone.cache.layers[layer].items():
            torch.testing.assert_close(padded.cache.layers[layer][key][:1], val, atol=1e-5, rtol=1e-5, msg=key)
    check_left_padded_generation(model, short, long, 12)


def test_snapshots_equal_prefix_states_and_full_logits(model):
    check_snapshots(model, ids(T=30), [5, 16, 21], lambda cache: fast_weights(cache, 1), logits_atol=1e-4)


def test_snapshots_of_a_left_padded_batch_cut_inside_the_padding(model):
    x = ids(T=30)
    mask = torch.ones_like(x)
    mask[0, :12] = 0
    with torch.no_grad():
        logits, _, snaps = model.forward_with_snapshots(x, [5, 12, 20], attention_mask=mask)
        alone = model(x[:1, 12:]).logits
    assert [s.layers[0]["seen"].tolist() for s in snaps] == [[0, 5], [0, 12], [8, 20]]
    torch.testing.assert_close(logits[0, 12:], alone[0], atol=1e-4, rtol=1e-4)


def test_branch_gradient_flows_into_prefix_and_matches_unsplit_computation():
    torch.manual_seed(0)
    m = LaCTForCausalLM(small_config(initializer_range=0.05))
    # prefix 12, continuation 7: the branch completes chunk 2 (16 tokens)
    check_branch_gradient(m, ids(B=1, T=12), ids(B=1, T=7, seed=3), "model.layers.0.attn.w0.w_left")


# ----------------------------------------------------------------------------------------------------------
# checkpoints


def lact_repo_keys(cfg: LaCTConfig) -> dict[str, tuple[int, ...]]:
    """The state-dict layout of the LaCT repo's LaCTForCausalLM (lact_model/modeling_lact.py and
    layer_lact_swiglu.py) for a low-rank, momentum, learnable-ttt-scale config, written out by hand."""
    h, H, r, inner = cfg.hidden_size, cfg.num_lact_heads, cfg.w0_w2_low_rank, cfg.intermediate_size
    d = h // H
    keys = {"model.embeddings.weight": (cfg.vocab_size, h), "model.norm.weight": (h,),
            "lm_head.weight": (cfg.vocab_size, h)}
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        keys.update({
            p + "attn_norm.weight": (h,), p + "mlp_norm.weight": (h,),
            p + "attn.qkv.weight": (3 * h, h), p + "attn.o_proj.weight": (h, h),
            p + "attn.w0.w_left": (H, d, r), p + "attn.w0.w_right": (H, r, d),
            p + "attn.w2.w_left": (H, d, r), p + "attn.w2.w_right": (H, r, d),
            p + "attn.w1": (H, d, d),
            p + "attn.lr_proj.weight": (3 * H, h), p + "attn.lr_proj.bias": (3 * H,),
            p + "attn.qk_scale": (h, 2), p + "attn.qk_offset": (h, 2),
            p + "attn.ttt_scale_proj.weight": (H, h), p + "attn.ttt_scale_proj.bias": (H,),
            p + "attn.ttt_norm.weight": (d,),
            p + "attn.momentum_proj.0.weight": (H, h), p + "attn.momentum_proj.0.bias": (H,),
            p + "mlp.gate_proj.weight": (inner, h), p + "mlp.up_proj.weight": (inner, h),
            p + "mlp.down_proj.weight": (h, inner),
        })
    return keys


def write_repo_checkpoint(directory, cfg, drop=(), reshape=None):
    g = torch.Generator().manual_seed(0)
    state = {k: torch.randn(*shape, generator=g) * 0.1 for k, shape in lact_repo_keys(cfg).items() if k not in drop}
    if reshape:
        state[reshape] = torch.zeros(3, 3)
    # a config.json as the repo writes it (its speed-only switches included)
    config = {k: v for k, v in cfg.to_dict().items() if k not in ("muon_fp32",)}
    config.update(fuse_norm=True, fuse_swiglu=True, fuse_cross_entropy=True, use_fused_kernel=False,
                  last_layer_fuse_norm=True, fp32_states=False, architectures=["LaCTForCausalLM"])
    (directory / "config.json").write_text(json.dumps(config))
    save_file(state, str(directory / "model.safetensors"))
    return state


def test_checkpoint_with_lact_repo_keys_loads_exactly(tmp_path):
    cfg = small_config()
    state = write_repo_checkpoint(tmp_path, cfg)
    m = LaCTForCausalLM.from_pretrained(tmp_path)
    loaded = m.state_dict()
    assert set(loaded) == set(state)
    for k, v in state.items():
        assert torch.equal(loaded[k], v), k
    # save_pretrained / from_pretrained round trip is bit-exact
    m.save_pretrained(tmp_path / "copy", safe_serialization=True)
    again = LaCTForCausalLM.from_pretrained(tmp_path / "copy")
    x = ids(B=1, T=12)
    with torch.no_grad():
        assert torch.equal(m(x).logits, again(x).logits)


def test_checkpoint_with_missing_or_misshaped_fast_weight_keys_names_them(tmp_path):
    cfg = small_config()
    write_repo_checkpoint(tmp_path, cfg, drop=("model.layers.1.attn.w1",), reshape="model.layers.0.attn.w0.w_left")
    with pytest.raises(CheckpointError) as err:
        LaCTForCausalLM.from_pretrained(tmp_path)
    assert "model.layers.1.attn.w1" in str(err.value)
    assert "model.layers.0.attn.w0.w_left" in str(err.value)


def test_760m_config_on_meta_has_the_hand_counted_parameters():
    cfg = lact_760m_config()
    with torch.device("meta"):
        m = LaCTForCausalLM(cfg)
    h, L, V, H, d, r, inner = 1536, 24, 32000, 4, 384, 32, 4096
    per_layer = (
        h + 3 * h * h + h * h  # attn_norm, qkv, o_proj
        + 2 * (H * d * r + H * r * d) + H * d * d  # w0, w2 (low rank), w1
        + (3 * H * h + 3 * H) + 2 * (h * 2)  # lr_proj, qk_scale, qk_offset
        + 2 * (H * h + H) + d  # ttt_scale_proj, momentum_proj, ttt_norm
        + h + 3 * h * inner  # mlp_norm, SwiGLU MLP
    )
    expected = 2 * V * h + h + L * per_layer
    assert expected == 797_625_312
    assert sum(p.numel() for p in m.parameters()) == expected
    assert set(lact_repo_keys(cfg)) == set(m.state_dict())
    assert cfg.mlp_intermediate_size == 4096 and cfg.head_dim == 64 and cfg.fw_head_dim == 384


@pytest.mark.parametrize("field,value", [("lact_chunk_size", 0), ("window_size", -1), ("lact_chunk_size", 10**6),
                                         ("window_size", 2.5), ("ttt_prenorm", True),
                                         ("fast_weight_base_lr", 0.0), ("fast_weight_base_lr", -1e-3),
                                         ("fast_weight_base_lr", True)])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(UserInputError, match=field):
        small_config(**{field: value})


def test_tiny_config_updates_fast_weights_on_short_inputs():
    cfg = lact_tiny_config()
    assert cfg.lact_chunk_size <= 64 and cfg.vocab_size == 512


def test_closed_ttt_gate_makes_the_output_independent_of_the_fast_weights():
    """zero_init_ttt_scale: at initialisation the fast-weight branch adds exactly nothing (silu(0) = 0), so any
    change of the fast weights leaves the logits unchanged, while the gate still receives a gradient."""
    torch.manual_seed(0)
    m = LaCTForCausalLM(small_config(zero_init_ttt_scale=True))
    gate = m.model.layers[0].attn.ttt_scale_proj
    assert gate.weight.abs().max() == 0 and gate.bias.abs().max() == 0
    x = ids(T=3 * CHUNK)
    with torch.no_grad():
        before = m(x).logits
        for layer in m.model.layers:
            layer.attn.w1.mul_(-3.0)
            layer.attn.lr_proj.bias.fill_(2.0)
        after = m(x).logits
    assert torch.equal(before, after)
    m(x, labels=x).loss.backward()
    assert gate.weight.grad.abs().max() > 0
    torch.manual_seed(0)
    default = LaCTForCausalLM(small_config()).model.layers[0].attn.ttt_scale_proj
    assert default.weight.abs().max() > 0  # the repo's random draw stays the default


def test_fast_weight_base_lr_equals_shifting_the_lr_projection_bias():
    """softplus(z + inv_softplus(b)) with the base lr b as a config field is the same model as the repo's base lr
    1e-3 with lr_proj's bias shifted by inv_softplus(b) - inv_softplus(1e-3)."""
    base = 0.016
    torch.manual_seed(0)
    scaled = LaCTForCausalLM(small_config(fast_weight_base_lr=base)).eval()
    shifted = LaCTForCausalLM(small_config()).eval()
    shifted.load_state_dict(scaled.state_dict())
    with torch.no_grad():
        for layer in shifted.model.layers:
            layer.attn.lr_proj.bias.add_(inv_softplus(base) - inv_softplus(BASE_LR))
    x = ids(T=3 * CHUNK + 1)
    with torch.no_grad():
        a, b = scaled(x, use_cache=True), shifted(x, use_cache=True)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=1e-5)
    for key in ("w0", "w1", "w2"):
        torch.testing.assert_close(a.cache.layers[1][key], b.cache.layers[1][key], atol=1e-5, rtol=1e-5)
    plain = LaCTForCausalLM(small_config()).eval()
    plain.load_state_dict(scaled.state_dict())
    with torch.no_grad():
        assert (plain(x).logits - a.logits).abs().max() > 1e-4  # the base lr does change the model
    assert abs(torch.nn.functional.softplus(torch.tensor(inv_softplus(base))).item() - base) < 1e-7


def test_small_model_knobs_round_trip_through_config_json(tmp_path):
    cfg = small_config(fast_weight_base_lr=0.02, zero_init_ttt_scale=True)
    cfg.save_pretrained(tmp_path)
    loaded = LaCTConfig.from_pretrained(tmp_path)
    assert loaded.fast_weight_base_lr == 0.02 and loaded.zero_init_ttt_scale is True
    assert LaCTConfig().fast_weight_base_lr == 1e-3 and LaCTConfig().zero_init_ttt_scale is False


GOLDEN = Path(__file__).parent / "data" / "lact_repo_layer_golden.safetensors"


@pytest.mark.parametrize("tag,low_rank,momentum", [("lowrank_momentum", 4, True), ("fullrank", -1, False)])
def test_layer_equals_the_lact_repo_layer_on_its_recorded_outputs(tag, low_rank, momentum):
    """Parity with the LaCT repo's own layer: the fixture holds the weights, the input and the output of the repo's
    `LaCTSWIGLULayer` (lact_llm at commit 1f84d47, float32 on a CPU, fla's RMSNorm / rotary replaced by plain
    torch), produced once outside this project. Learning rates ~3 make the chunk updates change the output."""
    data = load_file(GOLDEN)
    prefix = f"{tag}.state."
    state = {k[len(prefix):]: v for k, v in data.items() if k.startswith(prefix)}
    cfg = LaCTConfig(hidden_size=64, num_hidden_layers=1, num_attn_heads=4, num_lact_heads=2, lact_chunk_size=16,
                     window_size=12, w0_w2_low_rank=low_rank, use_momentum=momentum, use_muon=False,
                     rope_theta=1e6, max_position_embeddings=4096, vocab_size=64)
    layer = LaCTAttention(cfg, 0)
    layer.load_state_dict(state, strict=True)
    x = data[f"{tag}.x"]
    with torch.no_grad():
        out, _ = layer(x, LaCTAttention.context(cfg, x, None, None), None)
    torch.testing.assert_close(out, data[f"{tag}.expected"], atol=2e-5, rtol=1e-5)
