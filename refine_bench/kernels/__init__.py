"""Fast-weight kernels shared by every model, each beside its naive reference (as in fla):

- delta rule: `delta_rule_chunked` (WY/UT form, training and prefill), `delta_rule_fused_cpu` (one compiled
  loop per head, training and prefill on the CPU) and `delta_rule_recurrent` (the token loop: the reference,
  and the decoding path); `delta_rule` dispatches between them and fla's Triton kernels;
- causal depthwise short convolution with a carried state;
- LaCT: `lact_swiglu` (chunked apply-then-update of SwiGLU fast weights), reference `lact_swiglu_naive`;
- sliding-window attention: `window_attention` (SDPA, window cache), reference `window_attention_naive`.

Kernels are configured by their arguments only (no environment variables).
"""

from __future__ import annotations

from refine_bench.kernels.attention import apply_rope, empty_window_cache, rope_cos_sin, window_attention
from refine_bench.kernels.attention_naive import window_attention_naive
from refine_bench.kernels.backend import BACKENDS, fla_available, resolve_backend
from refine_bench.kernels.cpu_kernels import (
    compiled_cpu_applies,
    cpu_kernel_available,
    delta_rule_fused_cpu,
    deltanet_decode_stack_cpu,
    deltanet_decode_step_cpu,
    rms_norm_rows_cpu,
    swiglu_rows_cpu,
)
from refine_bench.kernels.delta_rule import (
    delta_rule,
    delta_rule_chunked,
    delta_rule_recurrent,
    delta_rule_step,
)
from refine_bench.kernels.delta_rule_args import check_delta_rule_args
from refine_bench.kernels.lact import (
    LaCTPlan,
    init_lact_state,
    lact_flops,
    lact_swiglu,
    make_lact_plan,
    swiglu_apply,
    swiglu_chunk_step,
    zeropower_newton_schulz5,
)
from refine_bench.kernels.lact_naive import lact_swiglu_naive, newton_schulz5_naive
from refine_bench.kernels.short_conv import causal_depthwise_conv1d

__all__ = [
    "BACKENDS",
    "LaCTPlan",
    "apply_rope",
    "causal_depthwise_conv1d",
    "check_delta_rule_args",
    "compiled_cpu_applies",
    "cpu_kernel_available",
    "delta_rule",
    "delta_rule_chunked",
    "delta_rule_fused_cpu",
    "delta_rule_recurrent",
    "delta_rule_step",
    "deltanet_decode_stack_cpu",
    "deltanet_decode_step_cpu",
    "empty_window_cache",
    "fla_available",
    "init_lact_state",
    "lact_flops",
    "lact_swiglu",
    "lact_swiglu_naive",
    "make_lact_plan",
    "newton_schulz5_naive",
    "resolve_backend",
    "rms_norm_rows_cpu",
    "rope_cos_sin",
    "swiglu_apply",
    "swiglu_rows_cpu",
    "swiglu_chunk_step",
    "window_attention",
    "window_attention_naive",
    "zeropower_newton_schulz5",
]
