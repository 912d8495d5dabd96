"""`refine-bench eval` under torchrun (two gloo processes on the CPU) gives the single process's per-sample
results, writes one run record, and prints its result lines once (rank 0 only)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EVAL = ["-m", "refine_bench", "eval", "--model", "deltanet-tiny", "--tasks", "niah_single_1", "--lengths", "512",
        "--limit", "5", "--batch-size", "2", "--max-length", "512", "--device", "cpu"]


def _run(cmd: list[str], out: Path) -> tuple[Path, list[str]]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*cmd, "--output", str(out)], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [p for p in out.iterdir() if not p.name.startswith(".")]
    assert len(runs) == 1  # one record, however many ranks
    return runs[0], proc.stdout.splitlines()


def _samples(run: Path) -> dict[int, list]:
    rows = map(json.loads, (run / "lm_eval" / "samples_niah_single_1.jsonl").read_text().splitlines())
    return {s["doc_id"]: [s["filtered_resps"][0], s["recall"]] for s in rows}


def test_two_gloo_ranks_match_one_process_and_print_once(tmp_path):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    one, one_out = _run([sys.executable, *EVAL], tmp_path / "one")
    if not Path(torchrun).exists():
        pytest.skip("torchrun not found")
    two, two_out = _run([torchrun, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", "29517",
                         *EVAL], tmp_path / "two")
    meta_one, meta_two = (json.loads((r / "run.json").read_text()) for r in (one, two))
    assert meta_one["config"]["world_size"] == 1 and meta_two["config"]["world_size"] == 2
    assert meta_two["config"]["resume"]["computed"] == 5  # answers counted over both ranks
    assert _samples(one) == _samples(two) and len(_samples(one)) == 5
    assert one_out[0] == str(one) and two_out[0] == str(two)
    assert len(two_out) == len(one_out) == 2  # the record's path and one score line, printed once
