"""GPU check: fla's kernels against the project's PyTorch path in bf16, and throughput at real sizes.

Run on a CUDA machine from the repository root:

    PYTHONPATH=. python scripts/gpu_check.py --out gpu_check.json

Parity uses fla's tolerance convention (relative L2 error below ~0.006-0.008 in bf16) against the torch
path computed in float32 from the same bf16 inputs. Throughput is forward+backward tokens/s in bf16 of one
layer and of the whole model at the paper's shapes (random weights), with peak GPU memory.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable

import torch

TOLERANCE = 0.008


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return ((a.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-12)).item()


def timed(fn: Callable[[], object], repeats: int = 5, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def delta_rule_parity(B=2, T=2048, H=16, D=128) -> dict[str, float]:
    from refine_bench.kernels import delta_rule

    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(B, T, H, D, device="cuda", generator=g)
    k = torch.nn.functional.normalize(torch.randn(B, T, H, D, device="cuda", generator=g), dim=-1)
    v = torch.randn(B, T, H, D, device="cuda", generator=g)
    beta = torch.rand(B, T, H, device="cuda", generator=g)
    h0 = torch.randn(B, H, D, D, device="cuda", generator=g) * 0.1
    inputs = [x.bfloat16() for x in (q, k, v, beta)]
    do = torch.randn(B, T, H, D, device="cuda", generator=g).bfloat16()
    results = {}
    for mode, length in (("chunk", T), ("recurrent", 128)):
        outs = {}
        for backend in ("fla", "torch"):
            leaves = [x[:, :length].detach().clone().requires_grad_(True) for x in inputs]
            state = h0.clone().requires_grad_(True)
            if backend == "torch":
                cast = [x.float() for x in leaves]
                o, s = delta_rule(*cast, state, mode=mode, backend="torch")
            else:
                o, s = delta_rule(*leaves, state, mode=mode, backend="fla")
            (o.float() * do[:, :length].float()).sum().backward(retain_graph=False)
            outs[backend] = (o.detach(), s.detach(), [x.grad for x in leaves] + [state.grad])
        fo, fs, fg = outs["fla"]
        to, ts, tg = outs["torch"]
        results[f"delta_{mode}_o_rel_err"] = rel_err(fo, to)
        results[f"delta_{mode}_state_rel_err"] = rel_err(fs, ts)
        for name, a, b in zip(("dq", "dk", "dv", "dbeta", "dh0"), fg, tg, strict=True):
            results[f"delta_{mode}_{name}_rel_err"] = rel_err(a, b)
    return results


def model_parity(model_name: str, T: int = 512) -> dict[str, float]:
    """Logits of the bf16 model on the fla and torch backends, each against the float32 torch model.

    A random-init deep model amplifies bf16 rounding, so the bf16-torch error is the yardstick for fla's.
    """
    from refine_bench.models.zoo import load_model

    model = load_model(model_name, dtype=torch.float32, device="cuda", random_init=True)
    ids = torch.randint(3, model.config.vocab_size, (2, T), device="cuda")
    results = {}
    with torch.no_grad():
        model.config.kernel_backend = "torch"  # layers read the shared config at call time
        ref = model(ids).logits.float()
        model.to(torch.bfloat16)
        for backend in ("fla", "torch"):
            model.config.kernel_backend = backend
            results[f"{model_name}_bf16_{backend}_vs_fp32_logits_err"] = rel_err(model(ids).logits, ref)
    model.config.kernel_backend = "auto"
    return results


def throughput(build: Callable[[], torch.nn.Module], make_input: Callable[[], torch.Tensor], tokens: int,
               prefix: str) -> dict[str, float]:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    module = build()
    x = make_input()

    def step():
        out = module(x)
        out = out.logits if hasattr(out, "logits") else out[0] if isinstance(out, tuple) else out
        out.float().mean().backward()

    seconds = timed(step, repeats=3, warmup=1)
    peak = torch.cuda.max_memory_allocated() / 2**30

    return {f"{prefix}_fwd_bwd_tokens_per_s": tokens / seconds, f"{prefix}_peak_mem_gib": peak}


class _LayerOnly(torch.nn.Module):
    """One block of a zoo model's architecture over a fresh unpadded sequence, returning its hidden output."""

    def __init__(self, name: str) -> None:
        super().__init__()
        from refine_bench.models.backbone import FastWeightBlock
        from refine_bench.models.zoo import MODELS

        entry = MODELS[name]
        self.config = entry.make_config()
        self.mixer_class = entry.model_class.mixer_class
        self.block = FastWeightBlock(self.config, self.mixer_class(self.config, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ctx = self.mixer_class.context(self.config, x, None, None)
        return self.block(x, ctx, None)[0]


def _layer(name: str, **config: object) -> _LayerOnly:
    layer = _LayerOnly(name)
    for key, value in config.items():
        setattr(layer.config, key, value)  # the mixers read the shared config at call time
    return layer.to("cuda", torch.bfloat16)


def deltanet_throughput(B=4, T=2048) -> dict[str, float]:
    from refine_bench.models.zoo import MODELS, load_model

    results = {}
    hidden = MODELS["deltanet-1.3b"].make_config().hidden_size
    for backend in ("fla", "torch"):
        results.update(throughput(
            lambda backend=backend: _layer("deltanet-1.3b", kernel_backend=backend),
            lambda: torch.randn(B, T, hidden, device="cuda", dtype=torch.bfloat16, requires_grad=True),
            B * T, f"deltanet_layer_{backend}"))

    results.update(throughput(
        lambda: load_model("deltanet-1.3b", dtype=torch.bfloat16, device="cuda", random_init=True),
        lambda: torch.randint(3, 32000, (B, T), device="cuda"), B * T, "deltanet_1.3b_model_fla"))
    return results


def lact_sections(B: int = 2, T: int = 8192) -> dict[str, float]:
    """LaCT at the 760M shape: bf16 vs fp32 logits (4096 tokens = two fast-weight chunks), one layer and the
    whole model forward+backward tokens/s with peak memory."""
    from refine_bench.models.zoo import MODELS, load_model

    results = model_parity("lact-760m", T=4096)
    hidden = MODELS["lact-760m"].make_config().hidden_size
    results.update(throughput(
        lambda: _layer("lact-760m"),
        lambda: torch.randn(B, T, hidden, device="cuda", dtype=torch.bfloat16, requires_grad=True),
        B * T, "lact_layer"))
    results.update(throughput(
        lambda: load_model("lact-760m", dtype=torch.bfloat16, device="cuda", random_init=True),
        lambda: torch.randint(3, 32000, (B, T), device="cuda"), B * T, "lact_760m_model"))
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="gpu_check.json")
    parser.add_argument("--skip-lact", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this script checks the GPU path")
    import fla
    import triton

    info = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "fla": getattr(fla, "__version__", "?"), "python": platform.python_version()}
    print(json.dumps(info))
    results: dict[str, float] = {}
    sections = [delta_rule_parity, lambda: model_parity("deltanet-1.3b"), deltanet_throughput]
    if not args.skip_lact:
        sections.append(lact_sections)
    for section in sections:
        try:
            part = section()
        except Exception as exc:  # report and go on: one broken section must not hide the others
            import traceback

            traceback.print_exc()
            part = {f"error_{getattr(section, '__name__', 'section')}": f"{type(exc).__name__}: {exc}"}
        for k, v in part.items():
            print(f"{k:55s} {v:.6g}" if isinstance(v, float) else f"{k:55s} {v}", flush=True)
        results.update(part)
    parity = {k: v for k, v in results.items() if k.startswith("delta_") and k.endswith("rel_err")}
    results["parity_ok"] = all(v < TOLERANCE for v in parity.values())
    with open(args.out, "w") as fh:
        json.dump({"info": info, "results": results, "tolerance": TOLERANCE}, fh, indent=1)
    print(json.dumps({"parity_ok": results["parity_ok"], **info}))


if __name__ == "__main__":
    main()
