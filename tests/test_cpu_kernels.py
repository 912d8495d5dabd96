"""The compiled CPU kernels: the fused delta rule equals the token recurrence (outputs, final state and every
gradient) over the shapes that take its different code paths, the backends choose it and fall back from it as
documented, and the decode step's compiled mixer, norms and MLP equal their op-by-op PyTorch forms."""

from __future__ import annotations

import shutil

import pytest
import torch

from refine_bench.kernels import cpu_kernels as cpu_kernel
from refine_bench.kernels import delta_rule, delta_rule_fused_cpu, delta_rule_recurrent, resolve_backend
from refine_bench.models import deltanet, layers
from refine_bench.models.deltanet import DeltaNetConfig, DeltaNetForCausalLM
from refine_bench.models.layers import RMSNorm, SwiGLUMLP
from tests.test_delta_rule_kernels import grads_of, make_inputs


@pytest.fixture(scope="module", autouse=True)
def built_kernel():
    """With a C++ compiler at hand the kernel must build (a broken build fails here, it is not skipped)."""
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler: the fused CPU kernel cannot be built here")
    cpu_kernel.load_cpu_kernel()


# (T, stretch, K, V): V = 64 and 128 take the unrolled rows, others the run-time size; K = 12 ends in a partial
# block of rows; V = 20 is not a multiple of the 8-float vectors; T = 16 / 64 end exactly on a kept state.
SHAPES = [(1, 16, 16, 8), (16, 16, 16, 8), (37, 16, 16, 8), (100, 32, 16, 16), (70, 64, 64, 64), (64, 64, 64, 64),
          (33, 8, 8, 128), (29, 8, 12, 20)]


@pytest.mark.parametrize("T,every,K,V", SHAPES)
@pytest.mark.parametrize("with_state", [False, True])
def test_fused_equals_recurrent_outputs_states_and_grads(T, every, K, V, with_state):
    inputs = make_inputs(T=T, K=K, V=V, with_state=with_state)
    o_r, s_r, g_r = grads_of(delta_rule_recurrent, inputs)
    o_f, s_f, g_f = grads_of(delta_rule_fused_cpu, inputs, chunk_size=every)
    torch.testing.assert_close(o_f, o_r, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(s_f, s_r, atol=2e-5, rtol=1e-5)
    assert len(g_f) == len(g_r)
    for name, a, b in zip("q k v beta h0".split(), g_f, g_r):
        torch.testing.assert_close(a, b, atol=5e-5, rtol=1e-4, msg=lambda m, name=name: f"grad of {name}: {m}")


def test_hand_computed_single_step():
    # K = V = 1: S1 = S0 + beta * k * (v - S0 * k); o = S1 * q (scale = 1 for K = 1)
    q, k, v = (torch.tensor(x).view(1, 1, 1, 1) for x in (2.0, 1.0, 3.0))
    beta = torch.tensor(0.5).view(1, 1, 1)
    s0 = torch.tensor(1.0).view(1, 1, 1, 1).requires_grad_(True)
    o, s = delta_rule_fused_cpu(q, k, v, beta, s0)
    assert s.item() == 2.0 and o.item() == 4.0
    # d(o + s)/d S0 = (1 - beta k^2) (q + 1) = 0.5 * 3
    (o.sum() + s.sum()).backward()
    assert s0.grad.item() == 1.5


def test_state_carried_across_a_split_equals_one_pass():
    q, k, v, beta, h0 = make_inputs(T=50, K=16, V=16)
    o_full, s_full = delta_rule_fused_cpu(q, k, v, beta, h0, chunk_size=16)
    o1, s1 = delta_rule_fused_cpu(q[:, :21], k[:, :21], v[:, :21], beta[:, :21], h0, chunk_size=16)
    o2, s2 = delta_rule_fused_cpu(q[:, 21:], k[:, 21:], v[:, 21:], beta[:, 21:], s1, chunk_size=16)
    torch.testing.assert_close(torch.cat([o1, o2], 1), o_full, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(s2, s_full, atol=1e-6, rtol=1e-6)


def test_bf16_inputs_get_bf16_gradients_close_to_float32():
    inputs = make_inputs(T=40, K=16, V=16)
    o32, _, g32 = grads_of(delta_rule_fused_cpu, inputs)
    o16, s16, g16 = grads_of(delta_rule_fused_cpu, [x.bfloat16() for x in inputs])
    assert o16.dtype == torch.bfloat16 and s16.dtype == torch.float32
    assert all(g.dtype == torch.bfloat16 for g in g16)
    for a, b in zip(g16, g32):
        assert (a.float() - b).norm() / b.norm() < 0.02
    assert (o16.float() - o32).norm() / o32.norm() < 0.02


def test_auto_picks_the_fused_kernel_on_cpu_and_it_matches_the_torch_path():
    assert resolve_backend("auto", torch.device("cpu")) == "cpp"
    inputs = make_inputs(T=45, K=16, V=16)
    o_c, s_c, g_c = grads_of(delta_rule, inputs, backend="cpp", chunk_size=16)
    o_t, s_t, g_t = grads_of(delta_rule, inputs, backend="torch", chunk_size=16)
    torch.testing.assert_close(o_c, o_t, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(s_c, s_t, atol=2e-5, rtol=1e-5)
    for a, b in zip(g_c, g_t):
        torch.testing.assert_close(a, b, atol=5e-5, rtol=1e-4)


def test_cpp_backend_is_cpu_only():
    with pytest.raises(ValueError, match="'cpp' runs on the CPU only"):
        resolve_backend("cpp", torch.device("meta"))


def test_a_failed_build_falls_back_to_torch_and_names_the_cause(monkeypatch):
    monkeypatch.setattr(cpu_kernel, "_module", None)
    monkeypatch.setattr(cpu_kernel, "_failure", "the compiled CPU kernels could not be built (no compiler)")
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    with pytest.raises(RuntimeError, match="could not be built \\(no compiler\\)"):
        resolve_backend("cpp", torch.device("cpu"))
    inputs = make_inputs(T=20)
    torch.testing.assert_close(delta_rule(*inputs)[0], delta_rule_recurrent(*inputs)[0], atol=1e-5, rtol=1e-5)


def test_deltanet_trains_the_same_on_the_fused_and_the_torch_kernels():
    """A whole model's loss and gradients (prefill length beyond the token-loop threshold, so 'chunk' mode)."""
    losses, grads = [], []
    for backend in ("cpp", "torch"):
        config = DeltaNetConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_heads=2, kernel_backend=backend,
                                chunk_size=16)
        torch.manual_seed(0)
        model = DeltaNetForCausalLM(config)
        ids = torch.randint(0, 64, (2, 40), generator=torch.Generator().manual_seed(1))
        loss = model(ids, labels=ids).loss
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-4)


def test_compiled_norm_and_mlp_rows_equal_their_torch_formulas():
    g = torch.Generator().manual_seed(0)
    norm, mlp = RMSNorm(128, eps=1e-5), SwiGLUMLP(128, 256)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(128, generator=g))
        for p in mlp.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    x = torch.randn(2, 1, 128, generator=g)
    with torch.no_grad():
        assert layers._compiled_rows(x, norm.weight)
        y_norm, y_mlp = norm(x), mlp(x)
    torch.testing.assert_close(y_norm, x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight,
                               atol=1e-6, rtol=1e-5)
    reference = mlp.down_proj(torch.nn.functional.silu(mlp.gate_proj(x)) * mlp.up_proj(x))
    torch.testing.assert_close(y_mlp, reference.detach(), atol=1e-6, rtol=1e-5)


def test_compiled_rows_serve_only_a_few_rows_without_autograd():
    w = torch.ones(128)
    with torch.no_grad():
        assert layers._compiled_rows(torch.zeros(1, 4, 128), w)
        assert not layers._compiled_rows(torch.zeros(1, 5, 128), w)  # a prompt: torch's matmuls
        assert not layers._compiled_rows(torch.zeros(1, 1, 128, dtype=torch.bfloat16), w)
    assert not layers._compiled_rows(torch.zeros(1, 1, 128), w)  # autograd on: torch
    assert RMSNorm(128)(torch.randn(1, 1, 128)).grad_fn is not None


def _greedy_logits(model, ids, steps, per_block=False):
    """Logits of greedy decoding from the cache; per_block=True asks for hidden states, which only the per-block
    loop returns, so the compiled whole-stack step stands aside."""
    with torch.no_grad():
        out = model(ids, use_cache=True)
        logits, cache = [out.logits[:, -1]], out.cache
        for _ in range(steps):
            out = model(logits[-1].argmax(-1, keepdim=True), cache=cache, use_cache=True,
                        output_hidden_states=per_block)
            logits.append(out.logits[:, -1])
            cache = out.cache
    return torch.stack(logits, 1)


# head dims 64 (unrolled rows) and 32; value heads twice the key heads (o_proj not square)
@pytest.mark.parametrize("hidden,heads,expand_v", [(128, 2, 1.0), (96, 3, 1.0), (64, 2, 2.0)])
def test_compiled_decode_step_equals_the_torch_token_step(monkeypatch, hidden, heads, expand_v):
    """Greedy decoding of a batch through the compiled whole-stack step, and through the per-block compiled mixer
    step, norms and MLP, gives the logits of the op-by-op PyTorch step (the compiled kernels switched off)."""
    config = DeltaNetConfig(vocab_size=97, hidden_size=hidden, num_hidden_layers=2, num_heads=heads,
                            expand_v=expand_v)
    torch.manual_seed(0)
    model = DeltaNetForCausalLM(config).eval()
    ids = torch.randint(0, 97, (2, 20), generator=torch.Generator().manual_seed(1))
    stacked = _greedy_logits(model, ids, steps=6)
    compiled = _greedy_logits(model, ids, steps=6, per_block=True)
    torch.testing.assert_close(stacked, compiled, atol=2e-5, rtol=1e-5)
    attn, state = model.model.layers[0].attn, {"conv_state": torch.zeros(1), "recurrent_state": torch.zeros(1)}
    with torch.no_grad():
        assert attn._can_decode_compiled(torch.zeros(2, 1, hidden), state)
    assert not attn._can_decode_compiled(torch.zeros(2, 1, hidden), state)  # autograd on: the torch step
    model.config.kernel_backend = "torch"
    reference = _greedy_logits(model, ids, steps=6)
    torch.testing.assert_close(compiled, reference, atol=2e-5, rtol=1e-5)


def _count_compiled_calls(monkeypatch) -> dict[str, int]:
    calls = {"stack": 0, "mixer": 0, "norm": 0, "mlp": 0}

    def counting(name, fn):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(deltanet, "deltanet_decode_stack_cpu", counting("stack", deltanet.deltanet_decode_stack_cpu))
    monkeypatch.setattr(deltanet, "deltanet_decode_step_cpu", counting("mixer", deltanet.deltanet_decode_step_cpu))
    monkeypatch.setattr(layers, "rms_norm_rows_cpu", counting("norm", layers.rms_norm_rows_cpu))
    monkeypatch.setattr(layers, "swiglu_rows_cpu", counting("mlp", layers.swiglu_rows_cpu))
    return calls


@pytest.mark.parametrize("per_block", [False, True])
@pytest.mark.parametrize("backend", ["auto", "cpp", "torch"])
def test_kernel_backend_torch_keeps_every_decode_op_on_torch(monkeypatch, backend, per_block):
    """`kernel_backend="torch"` turns off the compiled stack step, mixer step, norms and MLP alike, read at each
    call (the bench flips it on a loaded model); `auto` and `cpp` decode a token through the whole-stack step, or,
    when the per-block loop runs (hidden states asked for), through the mixer step, norms and MLP."""
    config = DeltaNetConfig(vocab_size=97, hidden_size=128, num_hidden_layers=2, num_heads=2)
    torch.manual_seed(0)
    model = DeltaNetForCausalLM(config).eval()
    ids = torch.randint(0, 97, (1, 12), generator=torch.Generator().manual_seed(1))
    model.config.kernel_backend = backend
    calls = _count_compiled_calls(monkeypatch)
    _greedy_logits(model, ids, steps=3, per_block=per_block)
    # 3 decoded tokens x (2 layers x (mixer step, its 2 norms, MLP) + the final norm); o_norm is inside the step;
    # the stack step computes all but the final norm
    if backend == "torch":
        expected = {"stack": 0, "mixer": 0, "norm": 0, "mlp": 0}
    elif per_block:
        expected = {"stack": 0, "mixer": 6, "norm": 15, "mlp": 6}
    else:
        expected = {"stack": 3, "mixer": 0, "norm": 3, "mlp": 0}
    assert calls == expected


class _ScaledLinear(torch.nn.Linear):
    """An adapter-like subclass: the compiled steps, which read weights directly, would skip its scaling."""

    def forward(self, x):
        return 2 * super().forward(x)


def _hooked(model):
    return model.model.layers[1].mlp_norm.register_forward_hook(lambda mod, args, out: out * 0.5)


def _adapted(model):
    attn = model.model.layers[0].mlp
    scaled = _ScaledLinear(attn.up_proj.in_features, attn.up_proj.out_features, bias=False)
    scaled.weight = attn.up_proj.weight
    attn.up_proj = scaled


def _globally_hooked(model):
    return torch.nn.modules.module.register_module_forward_hook(
        lambda mod, args, out: out * 0.5 if mod is model.model.layers[0].mlp else None)


@pytest.mark.parametrize("change", [_hooked, _adapted, _globally_hooked])
def test_hooks_and_adapters_turn_the_stack_step_aside(monkeypatch, change):
    """A forward hook (on a module or global) or an nn.Linear subclass anywhere in the stack sends decoding to the
    module-by-module path, so what they add is applied: the logits equal the PyTorch path's with the same change,
    and differ from the unchanged model's."""
    config = DeltaNetConfig(vocab_size=97, hidden_size=128, num_hidden_layers=2, num_heads=2)
    torch.manual_seed(0)
    model = DeltaNetForCausalLM(config).eval()
    ids = torch.randint(0, 97, (1, 12), generator=torch.Generator().manual_seed(1))
    plain = _greedy_logits(model, ids, steps=3)
    handle = change(model)
    try:
        calls = _count_compiled_calls(monkeypatch)
        changed = _greedy_logits(model, ids, steps=3)
        assert calls["stack"] == 0
        model.config.kernel_backend = "torch"
        reference = _greedy_logits(model, ids, steps=3)
    finally:
        if handle is not None:
            handle.remove()
    torch.testing.assert_close(changed, reference, atol=2e-5, rtol=1e-5)
    assert (changed - plain).abs().max() > 1e-3


def test_a_batch_of_more_than_a_few_rows_decodes_block_by_block(monkeypatch):
    """Up to COMPILED_MAX_ROWS rows take the whole-stack step; a larger batch (REFINE's rollouts) the per-block
    path, whose projections and MLP are torch's matmuls."""
    config = DeltaNetConfig(vocab_size=97, hidden_size=128, num_hidden_layers=2, num_heads=2)
    torch.manual_seed(0)
    model = DeltaNetForCausalLM(config).eval()
    for rows, stack_calls in ((layers.COMPILED_MAX_ROWS, 2), (layers.COMPILED_MAX_ROWS + 1, 0)):
        ids = torch.randint(0, 97, (rows, 12), generator=torch.Generator().manual_seed(1))
        calls = _count_compiled_calls(monkeypatch)
        _greedy_logits(model, ids, steps=2)
        assert calls["stack"] == stack_calls
