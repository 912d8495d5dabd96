"""Checkpoint layout (fla keys), strict loading, save/load round trip, zoo and CLI errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from refine_bench.errors import CheckpointError, UserInputError
from refine_bench.models.deltanet import DeltaNetForCausalLM
from refine_bench.models.tokenizer import load_tiny_tokenizer
from refine_bench.models.zoo import MODELS, count_parameters, load_model, load_tokenizer, save_checkpoint


def test_keys_and_shapes_match_fla_deltanet_at_1_3b():
    fla_models = pytest.importorskip("fla.models")
    ours_cfg = MODELS["deltanet-1.3b"].make_config()
    fla_cfg = fla_models.DeltaNetConfig(**{k: getattr(ours_cfg, k) for k in (
        "vocab_size", "hidden_size", "num_hidden_layers", "num_heads", "hidden_ratio", "conv_size")})
    with torch.device("meta"):
        theirs = fla_models.DeltaNetForCausalLM(fla_cfg)
        ours = DeltaNetForCausalLM(ours_cfg)
    their_shapes = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    our_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert our_shapes == their_shapes
    assert our_shapes["model.layers.0.attn.q_conv1d.weight"] == (2048, 1, 4)
    assert our_shapes["model.layers.23.mlp.gate_proj.weight"] == (5632, 2048)
    assert count_parameters(MODELS["deltanet-1.3b"]) == sum(v.numel() for v in theirs.state_dict().values())


def test_save_load_round_trip_is_bit_exact(tmp_path, small_deltanet):
    save_checkpoint(small_deltanet, load_tiny_tokenizer(), tmp_path)
    loaded = load_model(tmp_path)
    for (k, a), (k2, b) in zip(small_deltanet.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and a.dtype == b.dtype and torch.equal(a, b), k
    x = torch.randint(3, 97, (1, 20))
    with torch.no_grad():
        assert torch.equal(small_deltanet(x).logits, loaded(x).logits)
    assert load_tokenizer(tmp_path)("needle 42", add_special_tokens=False).input_ids == \
        load_tiny_tokenizer()("needle 42", add_special_tokens=False).input_ids


def test_bf16_round_trip_keeps_dtype(tmp_path, small_deltanet):
    model = small_deltanet.to(torch.bfloat16)
    save_checkpoint(model, load_tiny_tokenizer(), tmp_path)
    loaded = load_model(tmp_path)
    assert next(loaded.parameters()).dtype == torch.bfloat16
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def test_old_attn_norm_key_is_mapped(tmp_path, small_deltanet):
    save_checkpoint(small_deltanet, load_tiny_tokenizer(), tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    renamed = {k.replace(".attn.o_norm.", ".attn.norm."): v for k, v in state.items()}
    assert any(".attn.norm." in k for k in renamed)
    save_file(renamed, tmp_path / "model.safetensors")
    loaded = load_model(tmp_path)
    ours, ref = loaded.model.layers[1].attn.o_norm.weight, small_deltanet.model.layers[1].attn.o_norm.weight
    torch.testing.assert_close(ours, ref)


@pytest.mark.parametrize(
    "edit,expected",
    [
        (lambda s: s.pop("model.layers.1.attn.b_proj.weight"), "1 missing keys: model.layers.1.attn.b_proj.weight"),
        (lambda s: s.__setitem__("model.extra.weight", torch.zeros(1)), "1 unexpected keys: model.extra.weight"),
        (lambda s: s.__setitem__("model.norm.weight", torch.zeros(5)), "mis-shaped keys: model.norm.weight"),
    ],
)
def test_mismatched_checkpoint_raises_listing_keys(tmp_path, small_deltanet, edit, expected):
    save_checkpoint(small_deltanet, load_tiny_tokenizer(), tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    edit(state)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=expected.replace("[", r"\[")):
        load_model(tmp_path)


def test_pickle_only_checkpoint_is_refused_by_default(tmp_path, small_deltanet):
    save_checkpoint(small_deltanet, load_tiny_tokenizer(), tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(small_deltanet.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pickle"):
        load_model(tmp_path)


def test_unknown_model_type_and_unknown_name(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(UserInputError, match="model_type 'llama'"):
        load_model(tmp_path)
    with pytest.raises(UserInputError, match="valid names: .*deltanet-tiny"):
        load_model("deltanet-huge")


def test_tiny_model_is_deterministic_per_seed():
    a, b, c = (load_model("deltanet-tiny", seed=s) for s in (0, 0, 1))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "refine_bench", *args], capture_output=True, text=True, timeout=300)


def test_cli_unknown_model_exits_2_and_lists_names():
    res = run_cli("run", "--model", "nope")
    assert res.returncode == 2
    assert "unknown model 'nope'" in res.stderr and "deltanet-tiny" in res.stderr


def test_cli_models_lists_parameter_counts():
    res = run_cli("models")
    assert res.returncode == 0
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("deltanet-1.3b"))
    assert f"{count_parameters(MODELS['deltanet-1.3b']) / 1e6:,.1f}M" in line
