#!/usr/bin/env bash
# Real-size training figures on one GPU (run from the repository root; results into $OUT or ./gpu-out):
#   1. the CUDA tests (a REFINE step on CUDA gives the CPU samples and gradients, fla and torch backends);
#   2. `bench train --real`: the full DeltaNet-1.3B and LaCT-760M REFINE mid-training step at 16,384 tokens
#      (activation checkpointing, bf16 autocast, float32 master weights, AdamW): peak memory, tokens/s, and the
#      same model's SFT step;
#   3. the memory extrapolation from reduced depth and length (what `bench train --memory` does on a CPU), on
#      CUDA, to set beside (2).
# fla comes from wheels in .whl/ when the machine has no network (see the README's GPU section).
set -uo pipefail
out="${OUT:-gpu-out}"
mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, triton, fla; print('torch', torch.__version__, 'triton', triton.__version__, 'fla', fla.__version__)" \
    | tee -a "$out/gpu.txt"
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tail -5 | tee "$out/cuda-tests.txt"
timeout 420 python3 -m refine_bench bench train --real --json 2>&1 | tee "$out/bench-train-real.txt"
timeout 240 python3 -c "import json; from refine_bench.bench.train_bench import run_memory_bench as m; \
print(json.dumps(m('cuda')))" 2>&1 | tail -5 | tee "$out/bench-train-memory.txt"
