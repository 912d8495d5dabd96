"""`refine-bench bench eval --batch-sizes`: batched answering is checked against batch 1 in the same run."""

from __future__ import annotations

import pytest

from refine_bench.bench.eval_bench import run_batch_bench
from tests.report_cli import run_cli


def test_batched_answers_equal_batch_one():
    result = run_batch_bench("deltanet-tiny", length=512, batch_sizes=(1, 2), samples=4, new_tokens=8)
    assert result["batch2_same_answers_as_batch1"] == 1.0
    assert result["batch2_speedup_over_batch1"] == pytest.approx(
        result["seconds_per_sample_batch1"] / result["seconds_per_sample_batch2"], rel=1e-2)


@pytest.mark.parametrize("sizes, message", [("4,8", "start with 1"), ("1,x", "comma-separated integers"),
                                            ("1,0", "positive"), ("1,8 --samples 0", "--samples")])
def test_bad_batch_sizes_exit_2(capsys, sizes, message):
    code, text = run_cli(capsys, "bench", "eval", "--batch-sizes", *sizes.split())
    assert code == 2 and message in text
