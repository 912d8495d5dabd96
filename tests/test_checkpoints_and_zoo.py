"""Checkpoint layout (fla keys), strict loading, save/load round trip, zoo and CLI errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from refine_bench.errors import CheckpointError, UserInputError
from refine_bench.models import zoo
from refine_bench.models.checkpoint import read_config_dict
from refine_bench.models.deltanet import DeltaNetForCausalLM
from refine_bench.models.hub import checkpoint_root
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


def test_cli_models_lists_parameter_counts_and_hub_ids():
    res = run_cli("models")
    assert res.returncode == 0
    lines = {ln.split()[0]: ln for ln in res.stdout.splitlines() if ln.strip()}
    assert f"{count_parameters(MODELS['deltanet-1.3b']) / 1e6:,.1f}M" in lines["deltanet-1.3b"]
    assert "hub: fla-hub/delta_net-1.3B-100B" in lines["deltanet-1.3b"]
    assert "hub: YunjinZhang/lact_llm" in lines["lact-760m"]
    assert "make small-models" in lines["deltanet-small"] and "seeded" in lines["lact-tiny"]


# ----------------------------------------------------------------------------------------------------------
# unreadable checkpoints and wrong paths: one line naming the file


def test_cli_truncated_safetensors_exits_2_naming_the_file(tmp_path, small_deltanet):
    save_checkpoint(small_deltanet, load_tiny_tokenizer(), tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    res = run_cli("eval", "--model", str(tmp_path), "--tasks", "niah_single_1", "--lengths", "1024", "--limit", "1")
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and str(weights) in lines[0] and "truncated or corrupt" in lines[0]


def shard_index(directory, weight_map):
    """Turn a single-file checkpoint into a sharded one with the given index."""
    (directory / "model.safetensors").rename(directory / "model-00001.safetensors")
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


@pytest.mark.parametrize(
    "damage,file,expected",
    [
        (lambda d: (d / "model.safetensors").write_bytes(b"not a safetensors file" * 4), "model.safetensors",
         "not a readable safetensors file"),
        (lambda d: (d / "model.safetensors").write_bytes(b""), "model.safetensors", "truncated or corrupt"),
        (lambda d: (d / "config.json").write_text('{"model_type": "delta_'), "config.json", "not valid JSON"),
        (lambda d: (d / "config.json").write_text("[1, 2]"), "config.json", "must hold a JSON object"),
        (lambda d: shard_index(d, {"a": "model-00002.safetensors"}), "model-00002.safetensors", "is missing"),
    ],
    ids=["garbage", "empty", "truncated-json", "json-list", "missing-shard"],
)
def test_unreadable_checkpoint_files_are_named(tmp_path, small_deltanet, damage, file, expected):
    save_checkpoint(small_deltanet, load_tiny_tokenizer(), tmp_path)
    damage(tmp_path)
    with pytest.raises(CheckpointError) as err:
        load_model(tmp_path)
    assert str(tmp_path / file) in str(err.value) and expected in str(err.value)


def test_a_file_or_a_folder_without_config_is_not_a_model(tmp_path, small_deltanet):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(UserInputError, match=r"notes.txt is a file, not a model"):
        load_model(text)
    save_checkpoint(small_deltanet, load_tiny_tokenizer(), tmp_path / "ckpt")
    with pytest.raises(UserInputError, match=r"is a file, not a model.*pass its folder .*ckpt"):
        load_model(tmp_path / "ckpt" / "model.safetensors")
    (tmp_path / "ckpt" / "config.json").unlink()
    with pytest.raises(UserInputError, match=r"ckpt is not a model checkpoint: config.json is missing"):
        load_model(tmp_path / "ckpt")
    with pytest.raises(UserInputError, match="does not exist"):
        load_model(tmp_path / "nowhere")


# ----------------------------------------------------------------------------------------------------------
# shipped models


def test_shipped_model_without_its_weights_names_the_file_and_the_rebuild_command(tmp_path, monkeypatch):
    monkeypatch.setattr(zoo, "ASSETS_ROOT", tmp_path)  # a checkout where `make small-models` has not run
    for name in ("deltanet-small", "lact-small"):
        assert MODELS[name].shipped and MODELS[name].hub_id is None
        with pytest.raises(CheckpointError) as err:
            load_model(name)
        assert str(tmp_path / name / "config.json") in str(err.value)
        assert "rebuild it with `make small-models`" in str(err.value)
        # the tokenizer is the project's own, so pretraining the model from scratch needs no shipped file
        assert load_tokenizer(name).vocab_size == MODELS[name].make_config().vocab_size


def test_shipped_model_loads_and_a_corrupt_one_names_the_file_and_the_rebuild_command(tmp_path, monkeypatch):
    monkeypatch.setattr(zoo, "ASSETS_ROOT", tmp_path)
    entry = MODELS["deltanet-small"]
    model = load_model("deltanet-small", random_init=True, seed=4)
    save_checkpoint(model, load_tiny_tokenizer(), tmp_path / "deltanet-small")
    loaded = load_model("deltanet-small")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    assert load_tokenizer("deltanet-small")("needle", add_special_tokens=False).input_ids == \
        load_tiny_tokenizer()("needle", add_special_tokens=False).input_ids
    weights = tmp_path / "deltanet-small" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError) as err:
        load_model("deltanet-small")
    assert str(weights) in str(err.value) and f"rebuild it with `{entry.rebuild_command}`" in str(err.value)


@pytest.mark.parametrize("name", ["deltanet-small", "lact-small"])
def test_shipped_config_matches_the_zoo_architecture(name):
    entry = MODELS[name]
    if zoo.missing_shipped_files(entry):
        pytest.skip(f"{name} is not built in this checkout (make small-models)")
    shipped = entry.model_class.config_class.from_dict(read_config_dict(zoo.shipped_dir(entry))).to_dict()
    ours = entry.make_config().to_dict()
    ignore = {"architectures", "dtype", "transformers_version", "_name_or_path"}
    assert {k: v for k, v in shipped.items() if k not in ignore} == {k: v for k, v in ours.items() if k not in ignore}


# ----------------------------------------------------------------------------------------------------------
# hub checkpoints


def test_lact_760m_resolves_to_the_papers_hub_checkpoint_and_offline_says_how_to_pass_a_copy(tmp_path, monkeypatch):
    import huggingface_hub.constants

    entry = MODELS["lact-760m"]
    assert entry.hub_id == "YunjinZhang/lact_llm" and entry.tokenizer is None
    assert entry.fallback_tokenizer == "fla-hub/transformer-1.3B-100B"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    for load in (load_model, load_tokenizer):
        with pytest.raises(UserInputError) as err:
            load("lact-760m")
        message = str(err.value)
        assert "cannot fetch 'YunjinZhang/lact_llm'" in message
        assert "huggingface-cli download YunjinZhang/lact_llm --local-dir DIR" in message and "--model DIR" in message


def test_checkpoint_root_in_a_hub_snapshot(tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.raises(UserInputError, match="holds no config.json"):
        checkpoint_root(tmp_path, "x/y")
    (tmp_path / "a" / "config.json").write_text("{}")
    assert checkpoint_root(tmp_path, "x/y") == tmp_path / "a"
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "config.json").write_text("{}")
    with pytest.raises(UserInputError, match=r"several checkpoints \(a, b\).*--model .*/NAME"):
        checkpoint_root(tmp_path, "x/y")
    (tmp_path / "config.json").write_text("{}")
    assert checkpoint_root(tmp_path, "x/y") == tmp_path


# weight hashes


def test_weights_sha256_is_the_file_hash_or_a_hash_of_the_shard_lines(tmp_path):
    import hashlib

    from refine_bench.models.checkpoint import weights_sha256

    assert weights_sha256(tmp_path) is None
    (tmp_path / "model.safetensors").write_bytes(b"abc")
    sha_abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # SHA-256 of b"abc"
    assert weights_sha256(tmp_path) == sha_abc
    (tmp_path / "model.safetensors").rename(tmp_path / "model-00002-of-00002.safetensors")
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"")
    sha_empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    lines = f"model-00001-of-00002.safetensors {sha_empty}\nmodel-00002-of-00002.safetensors {sha_abc}\n"
    assert weights_sha256(tmp_path) == hashlib.sha256(lines.encode()).hexdigest()


def test_model_weights_sha256_of_names_and_folders(tmp_path):
    import hashlib

    assert zoo.model_weights_sha256("deltanet-tiny") is None  # a seeded init: the seed identifies it
    save_checkpoint(load_model("deltanet-tiny", seed=3), load_tiny_tokenizer(), tmp_path)
    expected = hashlib.sha256((tmp_path / "model.safetensors").read_bytes()).hexdigest()
    assert zoo.model_weights_sha256(tmp_path) == zoo.model_weights_sha256(str(tmp_path)) == expected
    entry = MODELS["deltanet-small"]
    if not zoo.missing_shipped_files(entry):
        shipped = (zoo.shipped_dir(entry) / "model.safetensors").read_bytes()
        assert zoo.model_weights_sha256("deltanet-small") == hashlib.sha256(shipped).hexdigest()
