"""Two gloo processes (torchrun, CPU) give the same per-sample results as one process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import json, sys
from lm_eval import simple_evaluate
from lm_eval.tasks import TaskManager
from refine_bench.eval.lm import RefineBenchLM
from refine_bench.eval.runner import tasks_dir
lm = RefineBenchLM(pretrained="deltanet-tiny", device="cpu", batch_size=2, max_length=512)
tm = TaskManager(include_path=str(tasks_dir()), include_defaults=False,
                 metadata={"pretrained": "deltanet-tiny", "max_seq_lengths": [512], "num_samples": 5})
res = simple_evaluate(model=lm, tasks=["niah_single_1"], task_manager=tm, log_samples=True, bootstrap_iters=0)
if lm.rank == 0:
    out = {s["doc_id"]: [s["filtered_resps"][0], s["recall"]] for s in res["samples"]["niah_single_1"]}
    json.dump({"world": lm.world_size, "samples": out}, open(sys.argv[1], "w"))
"""


def _run(cmd: list[str], tmp: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((tmp / "out.json").read_text())


def test_two_gloo_ranks_match_one_process(tmp_path):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    script = tmp_path / "evalrun.py"
    script.write_text(SCRIPT)
    single_dir, multi_dir = tmp_path / "one", tmp_path / "two"
    single_dir.mkdir()
    multi_dir.mkdir()
    one = _run([sys.executable, str(script), str(single_dir / "out.json")], single_dir)
    if not Path(torchrun).exists():
        pytest.skip("torchrun not found")
    two = _run([torchrun, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", "29517",
                str(script), str(multi_dir / "out.json")], multi_dir)
    assert one["world"] == 1 and two["world"] == 2
    assert sorted(one["samples"]) == sorted(two["samples"]) and len(one["samples"]) == 5
    assert one["samples"] == two["samples"]
