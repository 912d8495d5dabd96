"""`refine-bench bench kernels`: chunked vs recurrent delta rule, cached vs uncached decoding.

Every ratio is measured in the same process, so machine noise affects both sides alike.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from refine_bench.bench.decode import decode_speed
from refine_bench.bench.lact_bench import lact_bench
from refine_bench.bench.timing import best_time, matmul_peak_gflops
from refine_bench.kernels import cpu_kernel_available, delta_rule_chunked, delta_rule_fused_cpu, delta_rule_recurrent
from refine_bench.models.zoo import load_model


def _delta_inputs(B: int, T: int, H: int, D: int, requires_grad: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, D, generator=g)
    k = torch.nn.functional.normalize(torch.randn(B, T, H, D, generator=g), dim=-1)
    v = torch.randn(B, T, H, D, generator=g)
    beta = torch.rand(B, T, H, generator=g)
    return [x.requires_grad_(requires_grad) for x in (q, k, v, beta)]


def _fwd_bwd(kernel, inputs, seed: int = 1):
    """One forward and one backward of `kernel` from fixed, seeded upstream gradients of its output and final
    state (the usual kernel-benchmark form): no loss of the benchmark's own is timed, and `torch.autograd.grad`
    returns the input gradients instead of accumulating them into `.grad` on every call. The gradients' shapes
    follow the delta rule's layout: the output like v [B, T, H, V], the state [B, H, K, V]."""
    q, k, v, _ = inputs
    g = torch.Generator().manual_seed(seed)
    grad_o = torch.randn(v.shape, generator=g)
    grad_s = torch.randn(q.shape[0], q.shape[2], k.shape[-1], v.shape[-1], generator=g)

    def run():
        o, s = kernel(*inputs)
        torch.autograd.grad((o, s), inputs, (grad_o, grad_s))
    return run


def delta_rule_flops(T: int = 2048, H: int = 4, D: int = 64, B: int = 1, chunk_size: int = 64
                     ) -> tuple[int, int]:
    """(effective, executed) flops of one chunked forward+backward: the recurrent form's count (18 * K * V per
    token and head) and what the chunked kernel's matmuls really do, counted by torch's FlopCounterMode (the
    triangular solve has no count there and is left out)."""
    inputs = _delta_inputs(B, T, H, D, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        _fwd_bwd(lambda *x: delta_rule_chunked(*x, chunk_size=chunk_size), inputs)()
    return 18 * B * H * T * D * D, counter.get_total_flops()


def delta_rule_speed(T: int = 2048, H: int = 4, D: int = 64, B: int = 1) -> dict[str, float]:
    """Forward+backward seconds of the delta-rule paths (chunked, token loop, and the fused CPU kernel when it
    builds), the chunked kernel's effective GFLOP/s (forward alone, and forward+backward) and the fused one's.

    Effective flops are those of the recurrent form, whatever the kernel really executes: 6 * K * V per token
    and head forward (S^T k, the rank-1 update, S^T q), twice that backward. The chunked form executes more
    (its intra-chunk products grow with the chunk size): `delta_rule_executed_over_effective_flops` is that
    factor, counted by torch's FlopCounterMode over one forward+backward (the triangular solve is not
    counted), so 1 / factor is the most of the matmul peak the effective figure can reach.
    """
    inputs = _delta_inputs(B, T, H, D, requires_grad=True)
    chunk_s = best_time(_fwd_bwd(delta_rule_chunked, inputs), repeats=3)
    recurrent_s = best_time(_fwd_bwd(delta_rule_recurrent, inputs), repeats=1, warmup=0)
    with torch.no_grad():
        fwd_s = best_time(lambda: delta_rule_chunked(*inputs), repeats=5)
    effective, executed = delta_rule_flops(T, H, D, B)  # effective: forward + backward (3x the forward's)
    fused: dict[str, float] = {}
    if cpu_kernel_available():  # built before timing: the first call compiles it
        fused_s = best_time(_fwd_bwd(delta_rule_fused_cpu, inputs), repeats=5)
        fused = {"delta_rule_fused_fwd_bwd_s": fused_s, "fused_vs_chunk_speedup": chunk_s / fused_s,
                 "delta_rule_fused_fwd_bwd_gflops": effective / fused_s / 1e9}
    return {
        "delta_rule_chunk_fwd_bwd_s": chunk_s,
        "delta_rule_recurrent_fwd_bwd_s": recurrent_s,
        "chunk_vs_recurrent_speedup": recurrent_s / chunk_s,
        "kernel_gflops": effective / 3 / fwd_s / 1e9,
        "delta_rule_fwd_bwd_gflops": effective / chunk_s / 1e9,
        "delta_rule_executed_over_effective_flops": executed / effective,
        "delta_rule_fwd_bwd_executed_gflops": executed / chunk_s / 1e9,
        **fused,
    }


def run_kernel_bench(quick: bool = False) -> dict[str, float]:
    """All kernel-level figures: delta rule, DeltaNet decoding, and LaCT's (see `lact_bench`)."""
    results: dict[str, float] = {"matmul_peak_gflops": matmul_peak_gflops()}
    results.update(delta_rule_speed(T=512 if quick else 2048))
    # both sides of each fraction come from this run: machine noise affects them alike
    results["kernel_peak_fraction"] = results["kernel_gflops"] / results["matmul_peak_gflops"]
    results["delta_rule_fwd_bwd_peak_fraction"] = results["delta_rule_fwd_bwd_gflops"] / results["matmul_peak_gflops"]
    results["delta_rule_fwd_bwd_executed_peak_fraction"] = (results["delta_rule_fwd_bwd_executed_gflops"]
                                                           / results["matmul_peak_gflops"])
    if "delta_rule_fused_fwd_bwd_gflops" in results:  # the training path on a CPU ('auto' picks it)
        results["delta_rule_fused_fwd_bwd_peak_fraction"] = (results["delta_rule_fused_fwd_bwd_gflops"]
                                                             / results["matmul_peak_gflops"])
    dec = decode_speed(load_model("deltanet-tiny"), prefix_len=1024 if quick else 4096,
                       new_tokens=16 if quick else 64, nocache_tokens=4 if quick else 16)
    results.update({f"deltanet_{k}": v for k, v in dec.items() if k not in ("speedup", "same_tokens")})
    results["deltanet_cached_equals_nocache_tokens"] = dec["same_tokens"]
    results["deltanet_cached_vs_nocache_decode_speedup"] = dec["speedup"]
    results.update(lact_bench(quick))
    return results
