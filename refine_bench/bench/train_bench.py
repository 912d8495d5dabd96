"""`refine-bench bench train`: what a REFINE step costs next to an SFT step, where the time goes, and (with
`--memory`) how much memory a real-size REFINE step needs.

Speed (every ratio measured in the same process, same batch, one optimisation pass each):
- refine_over_sft_step_time: a REFINE step (rollouts + NTP + GRPO) over an SFT step, on a 4-layer d=256 DeltaNet
  at 4,096 tokens (c=8, k=5, n=1, one PPO mini-batch), and on the tiny zoo models;
- branch_over_recompute_speedup: the rollout phase with states branched off the teacher-forced pass over the same
  phase recomputing every prefix (the paper's code);
- rollout_share: the fraction of the REFINE step spent collecting rollouts;
- train_mfu_cpu: model FLOPs per second of the SFT step (6 x parameters outside the input embedding x tokens)
  over the same run's float32 matmul peak;
- fused_over_torch_kernel_sft_speedup: the same SFT step with the delta rule on the PyTorch chunked path over
  the step on the fused CPU kernel (what 'auto' picks on a CPU where it builds).

Memory: peak bytes of one REFINE mid-training step (activation checkpointing, bf16 autocast, float32 master
weights, AdamW state), measured at two depths and two lengths and extrapolated with peak = a + b*L + c*T + d*L*T
to the full model at 16,384 tokens: the process's peak resident memory on a CPU (each point in a fresh process),
the allocator's peak on CUDA; `--real` measures the full model on a GPU instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from refine_bench.bench.timing import matmul_peak_gflops, synchronize
from refine_bench.distributed import DistContext
from refine_bench.kernels import resolve_backend
from refine_bench.models.deltanet import DeltaNetConfig, DeltaNetForCausalLM
from refine_bench.models.zoo import MODELS, load_model
from refine_bench.train.config import RefineConfig, TrainConfig
from refine_bench.train.optimization import Example, optimize_items
from refine_bench.train.parallel import DataParallel
from refine_bench.train.precision import autocast
from refine_bench.train.refine import collect_group_rollouts

GIB = 1024**3
BUDGET_GIB = 80.0
FULL_LENGTH = 16384
WARMUP_LENGTH = 1024  # `--real`: a short step first, so Triton's one-off compile is timed apart


def bench_deltanet(layers: int = 4, hidden: int = 256, vocab: int = 512) -> DeltaNetForCausalLM:
    """The 4-layer d=256 DeltaNet of the cost target (seeded random weights)."""
    torch.manual_seed(0)
    config = DeltaNetConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_heads=hidden // 64,
                            max_position_embeddings=1 << 16)
    return DeltaNetForCausalLM(config).eval()


def _median_time(fn: Callable[[], object], repeats: int, device) -> float:
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _config(arm: str, batch: int, seq_len: int, mode: str = "branch") -> TrainConfig:
    return TrainConfig(arm=arm, phase="mid", steps=1, batch_size=batch, mini_batch_size=batch, seq_len=seq_len, lr=1e-6,
                       refine=RefineConfig(num_chunks=8, rollout_len=5, num_rollouts=1, rollout_mode=mode))


def step_costs(model: torch.nn.Module, seq_len: int, batch: int = 4, repeats: int = 3, prefix: str = "",
               recompute: bool = True, precision: str = "fp32") -> dict[str, float]:
    """SFT and REFINE step seconds on one batch, the rollout phase (branch vs recompute) and the ratios, all
    computed in `precision` (bf16: autocast, as real-size training runs on CUDA)."""
    device = next(model.parameters()).device
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(1)
    items = [Example(torch.randint(3, vocab, (seq_len,), generator=g).to(device)) for _ in range(batch)]
    engine = DataParallel(model, None, DistContext())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    initial = {k: v.clone() for k, v in model.state_dict().items()}

    def step(arm: str) -> Callable[[], object]:
        cfg = _config(arm, batch, seq_len)
        return lambda: optimize_items(engine, optimizer, cfg, items, with_rl=arm == "refine", step=0,
                                      precision=precision)

    def rollouts(mode: str) -> Callable[[], object]:
        cfg = _config("refine", batch, seq_len, mode).refine

        def run():
            with torch.no_grad(), autocast(precision, device):  # as the trainer collects them (one group)
                collect_group_rollouts(model, torch.stack([it.ids for it in items]), cfg,
                                       [torch.Generator().manual_seed(i) for i in range(len(items))])
        return run

    step("sft")()  # warm-up (allocator, AdamW state)
    sft = _median_time(step("sft"), repeats, device)
    refine = _median_time(step("refine"), repeats, device)
    branch = _median_time(rollouts("branch"), repeats, device)
    out = {f"{prefix}sft_step_s": sft, f"{prefix}refine_step_s": refine, f"{prefix}refine_over_sft_step_time":
           refine / sft, f"{prefix}rollout_branch_s": branch, f"{prefix}rollout_share": branch / refine}
    if recompute:
        seconds = _median_time(rollouts("recompute"), 1, device)
        out[f"{prefix}rollout_recompute_s"] = seconds
        out[f"{prefix}branch_over_recompute_speedup"] = seconds / branch
    model.load_state_dict(initial)
    return out


def model_flops_per_token(model: torch.nn.Module) -> float:
    """6 x parameters outside the input embedding (forward + backward of every matmul weight)."""
    embedding = model.get_input_embeddings().weight.numel()
    return 6.0 * (sum(p.numel() for p in model.parameters()) - embedding)


def run_train_bench(quick: bool = False) -> dict[str, float]:
    """All speed figures (see the module docstring); quick: shorter sequences, one repeat."""
    seq_len, repeats = (1024, 1) if quick else (4096, 3)
    results: dict[str, float] = {"matmul_peak_gflops": matmul_peak_gflops()}
    model = bench_deltanet()
    results.update(step_costs(model, seq_len, repeats=repeats))
    tokens = 4 * seq_len
    results["train_mfu_cpu"] = model_flops_per_token(model) * tokens / results["sft_step_s"] / 1e9 / \
        results["matmul_peak_gflops"]
    if model.config.kernel_backend == "auto" and resolve_backend("auto", torch.device("cpu")) == "cpp":
        model.config.kernel_backend = "torch"  # the mixers read it at every forward
        torch_sft = step_costs(model, seq_len, repeats=repeats, recompute=False, prefix="torch_kernel_")
        model.config.kernel_backend = "auto"
        results["torch_kernel_sft_step_s"] = torch_sft["torch_kernel_sft_step_s"]
        results["fused_over_torch_kernel_sft_speedup"] = torch_sft["torch_kernel_sft_step_s"] / results["sft_step_s"]
    for name in ("deltanet-tiny", "lact-tiny"):
        if name in MODELS:
            short = name.replace("-", "_") + "_"
            results.update(step_costs(load_model(name), seq_len, repeats=repeats, prefix=short))
    return results


# ------------------------------------------------------------------------------------------------ memory
def refine_step_peak_bytes(model: torch.nn.Module, seq_len: int, device: str) -> int:
    """Peak bytes of one REFINE mid-training step on one sequence (checkpointing, bf16 autocast, fp32 master
    weights, AdamW state). On CUDA the allocator's peak; on the CPU the process's peak resident memory above
    what it held before the model was built (run it in a fresh process: `_cpu_point`)."""
    model.gradient_checkpointing_enable()
    cfg = TrainConfig(arm="refine", phase="mid", steps=1, batch_size=1, mini_batch_size=1, seq_len=seq_len,
                      precision="bf16")
    vocab = model.config.vocab_size
    items = [Example(torch.randint(3, vocab, (seq_len,), generator=torch.Generator().manual_seed(0)).to(device))]
    engine = DataParallel(model, None, DistContext())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    optimize_items(engine, optimizer, cfg, items, with_rl=True, step=0, precision="bf16")
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated())
    return _peak_rss_bytes()


def _peak_rss_bytes() -> int:
    """This process's peak resident set size (VmHWM), in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def _cpu_point(name: str, layers: int, seq_len: int) -> int:
    """The CPU peak of one (depth, length) point, measured in a fresh interpreter (peak RSS never goes down)."""
    import json
    import subprocess
    import sys

    code = ("import json, torch; from refine_bench.bench import train_bench as b; base = b._peak_rss_bytes(); "
            f"m = b._reduced({name!r}, {layers}); "
            f"print(json.dumps(b.refine_step_peak_bytes(m, {seq_len}, 'cpu') - base))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(json.loads(out.stdout.strip().splitlines()[-1]))


def _reduced(name: str, layers: int):
    """Zoo model `name` with `layers` layers, random weights, float32 (what training holds)."""
    entry = MODELS[name]
    config = entry.make_config()
    config.num_hidden_layers = layers
    torch.manual_seed(0)
    return entry.model_class(config).float()


def measurement_lengths(config) -> tuple[int, int]:
    """The two lengths the memory points use: 2K and 4K, or 2m and 4m for a model whose sliding window or
    fast-weight chunk m is longer than 1K. What a layer keeps per cut state (the window's keys and values, the
    unfinished chunk) grows with length only up to m; points inside that range would put the growth into the
    layers x tokens term and extrapolate it to 16K."""
    m = max(getattr(config, "window_size", 0) or 0, getattr(config, "lact_chunk_size", 0) or 0)
    return (2 * m, 4 * m) if m > 1024 else (2048, 4096)


def extrapolated_peak_gib(name: str, layers: tuple[int, int] = (1, 2), lengths: tuple[int, int] | None = None,
                          device: str = "cpu") -> dict[str, float]:
    """Measure the REFINE step peak at two depths x two lengths and extrapolate to the full depth at 16K."""
    full_layers = MODELS[name].make_config().num_hidden_layers
    lengths = lengths or measurement_lengths(MODELS[name].make_config())
    peaks = {}
    for L in layers:
        for T in lengths:
            if device.startswith("cuda"):
                peaks[(L, T)] = refine_step_peak_bytes(_reduced(name, L).to(device), T, device)
            else:
                peaks[(L, T)] = _cpu_point(name, L, T)
    (l0, l1), (t0, t1) = layers, lengths
    d = (peaks[(l1, t1)] - peaks[(l1, t0)] - peaks[(l0, t1)] + peaks[(l0, t0)]) / ((l1 - l0) * (t1 - t0))
    b = (peaks[(l1, t0)] - peaks[(l0, t0)]) / (l1 - l0) - d * t0
    c = (peaks[(l0, t1)] - peaks[(l0, t0)]) / (t1 - t0) - d * l0
    a = peaks[(l0, t0)] - b * l0 - c * t0 - d * l0 * t0
    full = a + b * full_layers + c * FULL_LENGTH + d * full_layers * FULL_LENGTH
    key = name.replace("-", "_").replace(".", "_")
    out = {f"{key}_refine_step_peak_gib": full / GIB, f"{key}_fits_{int(BUDGET_GIB)}gb": float(full / GIB
                                                                                                  <= BUDGET_GIB)}
    for (L, T), value in peaks.items():
        out[f"{key}_measured_L{L}_T{T}_gib"] = value / GIB
    return out


def run_memory_bench(device: str = "cpu") -> dict[str, float]:
    """The REFINE step peak of both paper models at 16K tokens, extrapolated (see the module docstring)."""
    results = {"budget_gib": BUDGET_GIB}
    for name in ("deltanet-1.3b", "lact-760m"):
        results.update(extrapolated_peak_gib(name, device=device))
    return results


def real_step_figures(name: str, seq_len: int = FULL_LENGTH, device: str = "cuda") -> dict[str, float]:
    """CUDA only: the full model's REFINE step at `seq_len` (peak memory, tokens/s) and its SFT step."""
    key = name.replace("-", "_").replace(".", "_")
    model = load_model(name, dtype=torch.float32, device=device, random_init=True)
    # A short step first: Triton kernels (fla's) compile and autotune on first use, minutes on a fresh machine;
    # that one-off cost is reported apart from the step's.
    start = time.perf_counter()
    refine_step_peak_bytes(model, WARMUP_LENGTH, device)
    warmup = time.perf_counter() - start
    peak = refine_step_peak_bytes(model, seq_len, device)
    costs = step_costs(model, seq_len, batch=1, repeats=1, recompute=False, precision="bf16")
    return {f"{key}_refine_step_peak_gib_measured": peak / GIB, f"{key}_first_short_step_s": warmup,
            f"{key}_refine_tokens_per_s": seq_len / costs["refine_step_s"],
            f"{key}_sft_tokens_per_s": seq_len / costs["sft_step_s"],
            f"{key}_refine_over_sft_step_time": costs["refine_over_sft_step_time"]}
