"""The small models' build recipes (scripts/build_small_models.py): every stage that continues from a mid-run
checkpoint finds it on disk, and the tokens recorded are the ones the final weights saw."""

import pytest

from tests.conftest import load_script


@pytest.fixture(scope="module")
def build():
    return load_script("build_small_models")


def test_kept_checkpoints_follow_save_every_keep_last_and_stop_after(build):
    assert build.kept_checkpoint_steps({"steps": 1500, "save-every": 250}) == [1250, 1500]
    assert build.kept_checkpoint_steps({"steps": 1500, "save-every": 250, "stop-after": 750}) == [500, 750]
    assert build.kept_checkpoint_steps({"steps": 1000, "save-every": 300, "keep-last": 3}) == [600, 900, 1000]
    assert build.kept_checkpoint_steps({"steps": 600}) == [600]


def test_shipped_recipes_continue_from_checkpoints_that_exist(build):
    for model in build.RECIPES:
        build.check_recipe(model)


def test_a_stage_continuing_from_a_pruned_checkpoint_is_refused(build, monkeypatch):
    drill, far, *rest = build.RECIPES["lact-small"]
    full_drill = {k: v for k, v in drill.items() if k != "stop-after"}  # 1,500 steps keep step-1250 and step-1500
    monkeypatch.setitem(build.RECIPES, "lact-small", [full_drill, far, *rest])
    with pytest.raises(ValueError, match=r"stage 2 continues from checkpoints/step-750, but stage 1 keeps only "
                                         r"steps \[1250, 1500\]"):
        build.check_recipe("lact-small")


def test_tokens_count_what_the_final_weights_saw(build):
    # deltanet-small: 500 x 16 x 256 + 300 x 16 x 256 + 400 x 16 x 512 + 600 x 16 x 512 (its shipped training.json)
    assert build.stage_tokens(build.RECIPES["deltanet-small"]) == 11_468_800
    # lact-small: 750 x 16 x 256 + 600 x 8 x 512 + 300 x 16 x 512 + 150 x 8 x 1024 (its shipped training.json)
    assert build.stage_tokens(build.RECIPES["lact-small"]) == 9_216_000
