"""`refine-bench bench eval`: memory and time of answering one NIAH sample per length with a tiny model, and
(`--batch-sizes`) the throughput of answering several samples in batches.

Each length runs in a fresh subprocess (so its peak RSS is its own): load the model, build one niah_single_1
sample of exactly that many tokens (prompt + 32 generated tokens), answer it greedily through the
`refine-bench` lm-eval model (twice; the faster time is reported), and report the process's peak RSS and the
seconds spent answering one sample.

The batch figure answers the same NIAH samples (all 128 answer tokens generated, as NIAH's evaluation does when
the model emits no EOS) at each batch size in one process, and reports seconds per sample, the speedup over
batch 1 and the share of samples whose generated tokens equal batch 1's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

BENCH_LENGTHS = (2048, 4096, 8192, 16384)
NEW_TOKENS = 32


def _child(model: str, length: int, new_tokens: int, device: str, repeats: int = 2) -> dict[str, Any]:
    import resource

    import torch
    from lm_eval.api.instance import Instance

    from refine_bench.eval.lm import RefineBenchLM
    from refine_bench.eval.niah import make_sample

    torch.set_num_threads(max(1, torch.get_num_threads()))
    lm = RefineBenchLM(pretrained=model, device=device, max_length=length, batch_size=1)
    doc = make_sample("niah_single_1", length, 0, lm.tokenizer, tokens_to_generate=new_tokens)
    request = Instance(request_type="generate_until", doc=doc, idx=0,
                       arguments=(doc["prompt"], {"until": [], "max_gen_toks": new_tokens, "do_sample": False}))
    seconds = float("inf")
    for _ in range(repeats):  # best of `repeats`: the machine may be shared
        start = time.perf_counter()
        out = lm.generate_until([request], disable_tqdm=True)
        seconds = min(seconds, time.perf_counter() - start)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"length": length, "seconds": seconds, "peak_rss_mib": peak_kib / 1024, "output_chars": len(out[0]),
            "prompt_tokens": len(lm.tok_encode(doc["prompt"]))}


def run_eval_bench(model: str = "deltanet-tiny", lengths: Sequence[int] = BENCH_LENGTHS,
                   new_tokens: int = NEW_TOKENS, device: str = "cpu") -> dict[str, float]:
    """The dict printed by `refine-bench bench eval --json` (needs 2048 and 16384 among `lengths`)."""
    per_length = {}
    for length in lengths:
        proc = subprocess.run(
            [sys.executable, "-m", "refine_bench.bench.eval_bench", model, str(length), str(new_tokens), device],
            capture_output=True, text=True, check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"eval bench child for length {length} failed:\n{proc.stderr[-2000:]}")
        per_length[length] = json.loads(proc.stdout.strip().splitlines()[-1])
    result: dict[str, float] = {}
    for length, row in per_length.items():
        result[f"peak_rss_mib_{length}"] = round(row["peak_rss_mib"], 1)
        result[f"seconds_per_sample_{length}"] = round(row["seconds"], 3)
    if 2048 in per_length and 16384 in per_length:
        result["peak_rss_ratio_16k_over_2k"] = round(
            per_length[16384]["peak_rss_mib"] / per_length[2048]["peak_rss_mib"], 4)
    return result


def run_batch_bench(model: str = "deltanet-small", length: int = 1024, batch_sizes: Sequence[int] = (1, 8),
                    samples: int = 8, new_tokens: int = 128, device: str = "cpu") -> dict[str, float]:
    """Seconds per NIAH sample at each batch size (one process, same samples); needs batch size 1 first."""
    import torch
    from lm_eval.api.instance import Instance

    from refine_bench.errors import UserInputError
    from refine_bench.eval.lm import RefineBenchLM
    from refine_bench.eval.niah import make_sample

    if not batch_sizes or batch_sizes[0] != 1 or min(batch_sizes) < 1:
        raise UserInputError(f"--batch-sizes must start with 1 (the reference) and be positive, got "
                             f"{list(batch_sizes)}")
    if samples < 1 or length < 1:
        raise UserInputError(f"--samples and --length must be positive, got {samples} and {length}")
    result: dict[str, float] = {}
    reference: list[str] = []
    for batch in batch_sizes:
        lm = RefineBenchLM(pretrained=model, device=device, max_length=length, batch_size=batch)
        requests = []
        for index in range(samples):  # four tasks in turn: different needles, haystacks and answers
            task = ("niah_single_1", "niah_single_2", "niah_multikey_1", "niah_multivalue")[index % 4]
            doc = make_sample(task, length, index, lm.tokenizer, tokens_to_generate=new_tokens)
            requests.append(Instance(request_type="generate_until", doc=doc, idx=index, arguments=(
                doc["prompt"], {"until": [], "max_gen_toks": new_tokens, "do_sample": False})))
        start = time.perf_counter()
        with torch.no_grad():
            answers = lm.generate_until(requests, disable_tqdm=True)
        result[f"seconds_per_sample_batch{batch}"] = round((time.perf_counter() - start) / samples, 4)
        if batch == 1:
            reference = answers
        else:
            result[f"batch{batch}_speedup_over_batch1"] = round(
                result["seconds_per_sample_batch1"] / result[f"seconds_per_sample_batch{batch}"], 3)
            result[f"batch{batch}_same_answers_as_batch1"] = sum(
                a == b for a, b in zip(answers, reference, strict=True)) / samples
    return result


if __name__ == "__main__":
    name, length_arg, tokens_arg, device_arg = sys.argv[1:5]
    print(json.dumps(_child(name, int(length_arg), int(tokens_arg), device_arg)))
