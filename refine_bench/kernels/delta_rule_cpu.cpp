// The delta rule as one fused loop per (batch, head) on the CPU: forward and backward of
//   S_t = S_{t-1} + beta_t k_t r_t^T,  r_t = v_t - S_{t-1}^T k_t,  o_t = S_t^T (scale q_t).
// The state (K x V float32) stays in the core's cache for the whole sequence, so each token costs about
// 3 K V multiply-adds forward and 7 backward, every one of them on a contiguous row of V floats.
// Compiled on first use by refine_bench/kernels/delta_rule_cpu.py (torch.utils.cpp_extension).
//
// Layout: q, k [B, T, H, K]; v, o [B, T, H, V]; beta [B, T, H]; states [G, N + 1, K, V] (G = B x H, N stretches of
// `every` tokens, the last one possibly shorter): states[:, 0] is the initial state, states[:, n + 1] the state
// after stretch n, so states[:, N] is the final state. The backward walks each stretch from its end backwards,
// undoing one token at a time (S_{t-1} = S_t - beta_t k_t r_t^T) and starting every stretch again from the
// exact stored state, so rounding cannot build up over more than `every` tokens.

#include <ATen/Parallel.h>
#include <torch/extension.h>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define REFINE_BENCH_AVX2 1
#endif

#include <algorithm>
#include <vector>

namespace {

// VS > 0 fixes the value dimension at compile time (unrolled rows); VS == 0 reads it at run time.
template <int64_t VS>
struct Row {
  int64_t n;
  explicit Row(int64_t v) : n(VS > 0 ? VS : v) {}
  int64_t size() const { return VS > 0 ? VS : n; }
};

// A row of V floats on the stack when V is fixed (the compiler then keeps it in registers), else on the heap.
template <int64_t VS>
struct Scratch {
  alignas(64) float fixed[VS > 0 ? VS : 1];
  std::vector<float> heap;
  explicit Scratch(int64_t v) : heap(VS > 0 ? 0 : v) {}
  float* data() { return VS > 0 ? fixed : heap.data(); }
};

// Several partial sums (independent FMA chains), added up once at the end.
template <int64_t VS>
inline float dot(const float* __restrict a, const float* __restrict b, Row<VS> r) {
  constexpr int64_t P = 16;
  const int64_t n = r.size(), whole = n - n % P;
  float part[P] = {};
  for (int64_t j = 0; j < whole; j += P) {
#pragma omp simd
    for (int64_t l = 0; l < P; ++l) part[l] += a[j + l] * b[j + l];
  }
  float acc = 0.f;
  for (int64_t j = whole; j < n; ++j) acc += a[j] * b[j];
#pragma omp simd reduction(+ : acc)
  for (int64_t l = 0; l < P; ++l) acc += part[l];
  return acc;
}

constexpr int64_t kBlock = 8;  // rows whose dot products are summed together

// out[m][r] = dot(A + r V, b[m]) for M vectors b and the n <= kBlock rows of a block. The backward needs three
// dot products per row and token; one at a time, each ends in a horizontal sum whose latency the loop then
// waits for. A full block keeps 8 M independent accumulators, reads each row once for all M vectors, and
// sums each vector's 8 accumulators with one transpose (AVX2).
template <int64_t M, int64_t VS>
inline void dot_rows(const float* __restrict A, const float* const (&b)[M], Row<VS> r, int64_t n,
                     float (&out)[M][kBlock]) {
  const int64_t V = r.size();
#ifdef REFINE_BENCH_AVX2
  if (n == kBlock && V % 8 == 0) {
    __m256 acc[M][kBlock];
    for (int64_t m = 0; m < M; ++m)
      for (int64_t i = 0; i < kBlock; ++i) acc[m][i] = _mm256_setzero_ps();
    for (int64_t j = 0; j < V; j += 8) {
      __m256 bj[M];
      for (int64_t m = 0; m < M; ++m) bj[m] = _mm256_loadu_ps(b[m] + j);
      for (int64_t i = 0; i < kBlock; ++i) {
        const __m256 a = _mm256_loadu_ps(A + i * V + j);
        for (int64_t m = 0; m < M; ++m) acc[m][i] = _mm256_fmadd_ps(a, bj[m], acc[m][i]);
      }
    }
    for (int64_t m = 0; m < M; ++m) {
      const __m256 h01 = _mm256_hadd_ps(acc[m][0], acc[m][1]), h23 = _mm256_hadd_ps(acc[m][2], acc[m][3]);
      const __m256 h45 = _mm256_hadd_ps(acc[m][4], acc[m][5]), h67 = _mm256_hadd_ps(acc[m][6], acc[m][7]);
      const __m256 h0123 = _mm256_hadd_ps(h01, h23), h4567 = _mm256_hadd_ps(h45, h67);
      _mm256_storeu_ps(out[m], _mm256_add_ps(_mm256_permute2f128_ps(h0123, h4567, 0x20),
                                             _mm256_permute2f128_ps(h0123, h4567, 0x31)));
    }
    return;
  }
#endif
  for (int64_t m = 0; m < M; ++m)
    for (int64_t i = 0; i < n; ++i) out[m][i] = dot(A + i * V, b[m], r);
}

template <int64_t VS>
inline void axpy(float alpha, const float* __restrict x, float* __restrict y, Row<VS> r) {  // y += alpha x
#pragma omp simd
  for (int64_t j = 0; j < r.size(); ++j) y[j] += alpha * x[j];
}

void check(const at::Tensor& x, const char* name, int64_t dim) {
  TORCH_CHECK(x.scalar_type() == at::kFloat, name, " must be float32");
  TORCH_CHECK(x.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(x.dim() == dim, name, " must have ", dim, " dims");
  TORCH_CHECK(x.device().is_cpu(), name, " must be on the CPU");
}

// Tensors keep the callers' [B, T, H, D] layout: a head's token t starts t * sk (q, k) or t * sv (v, o, r) floats
// after its token 0, and its beta t * H after.
struct Sizes {
  int64_t T, H, K, V, N, every;
  float scale;
  int64_t sk, sv;
};

// One pass over the state per token: the rank-1 update of token t, its output, and S_t^T k_{t+1} (what token
// t + 1 needs before its own update) are computed row by row while the row is in registers.
template <int64_t VS>
void forward_head(const float* q, const float* k, const float* v, const float* beta, const float* s0, float* o,
                  float* r, float* states, const Sizes& z) {
  const Row<VS> row(z.V);
  const int64_t T = z.T, K = z.K, V = row.size(), KV = z.K * row.size();
  Scratch<VS> w_row(V), w_next_row(V), u_row(V), o_row(V);
  float *__restrict w = w_row.data(), *__restrict w_next = w_next_row.data();
  float *__restrict u = u_row.data(), *__restrict acc = o_row.data();
  const std::vector<float> zeros(K, 0.f);  // "k_{T}": the last token has no successor
  float* S = states;  // slot 0 keeps the initial state; the running one starts in slot 1
  std::copy(s0, s0 + KV, S);
  std::copy(S, S + KV, S + KV);
  S += KV;
  std::fill(w, w + V, 0.f);
  for (int64_t i = 0; i < K; ++i) axpy(k[i], S + i * V, w, row);  // S_0^T k_1
  for (int64_t t = 0; t < T; ++t) {
    const float *kt = k + t * z.sk, *qt = q + t * z.sk, *vt = v + t * z.sv;
    const float* k_next = t + 1 < T ? kt + z.sk : zeros.data();
    float *rt = r + t * z.sv, *ot = o + t * z.sv;
    const float b = beta[t * z.H];
    for (int64_t j = 0; j < V; ++j) {
      rt[j] = vt[j] - w[j];
      u[j] = b * rt[j];
      acc[j] = 0.f;
      w_next[j] = 0.f;
    }
    for (int64_t i = 0; i < K; ++i) {
      float* Si = S + i * V;
      axpy(kt[i], u, Si, row);
      axpy(z.scale * qt[i], Si, acc, row);
      axpy(k_next[i], Si, w_next, row);
    }
    std::copy(acc, acc + V, ot);
    std::swap(w, w_next);
    if ((t + 1) % z.every == 0 && t + 1 < T) {  // keep this state; continue in the next slot
      std::copy(S, S + KV, S + KV);
      S += KV;
    }
  }
}

// Token by token from the end, one pass over the state per token: the pass for token t first finishes token
// t + 1 (undo its update, S_{t+1} -> S_t, and its paths through S_t^T k_{t+1}), then does token t's own
// work on the rows of S_t and dS_t. Where a stretch ends, S_t is reloaded from its stored copy instead.
template <int64_t VS>
void backward_head(const float* grad_o, const float* q, const float* k, const float* beta, const float* r,
                   const float* states, float* dq, float* dk, float* dv, float* dbeta, float* dS, const Sizes& z) {
  const Row<VS> row(z.V);
  const int64_t T = z.T, K = z.K, V = row.size(), KV = z.K * row.size();
  std::vector<float> S(KV), undo_k(K), dk_sink(K);
  Scratch<VS> u_row(V), du_row(V), u_next_row(V), dr_next_row(V);
  float *__restrict u = u_row.data(), *__restrict du = du_row.data();
  float *__restrict u_next = u_next_row.data(), *__restrict dr_next = dr_next_row.data();
  std::fill(u_next, u_next + V, 0.f);  // token T does not exist: its leftovers are zeros
  std::fill(dr_next, dr_next + V, 0.f);
  const float* k_next = undo_k.data();  // zeros until a token t + 1 exists
  float* dk_next = dk_sink.data();
  for (int64_t t = T - 1; t >= 0; --t) {
    const float *kt = k + t * z.sk, *qt = q + t * z.sk, *rt = r + t * z.sv, *gt = grad_o + t * z.sv;
    float *dqt = dq + t * z.sk, *dkt = dk + t * z.sk;
    const float b = beta[t * z.H];
    if ((t + 1) % z.every == 0 || t + 1 == T) {  // last token of a stretch: S_t is stored exactly
      const float* stored = states + (t / z.every + 1) * KV;
      std::copy(stored, stored + KV, S.begin());
      std::fill(undo_k.begin(), undo_k.end(), 0.f);
    } else {
      std::copy(k_next, k_next + K, undo_k.begin());
    }
    for (int64_t j = 0; j < V; ++j) {
      u[j] = b * rt[j];
      du[j] = 0.f;
    }
    for (int64_t i0 = 0; i0 < K; i0 += kBlock) {
      const int64_t n = std::min(kBlock, K - i0);
      float *S_blk = S.data() + i0 * V, *dS_blk = dS + i0 * V;
      alignas(32) float s_dots[2][kBlock], ds_dots[1][kBlock];
      for (int64_t m = 0; m < n; ++m) {
        float *__restrict Si = S_blk + m * V, *__restrict dSi = dS_blk + m * V;
        // finish token t + 1: S_t = S_{t+1} - k u^T and dS_t = dS_{t+1} - k dr_{t+1}^T; token t's output adds
        // scale q_t g_t^T to dS_t; du = dS_t^T k
        const float undo = undo_k[i0 + m], kn = k_next[i0 + m], sq = z.scale * qt[i0 + m], kk = kt[i0 + m];
#pragma omp simd
        for (int64_t j = 0; j < V; ++j) Si[j] -= undo * u_next[j];
#pragma omp simd
        for (int64_t j = 0; j < V; ++j) {
          const float d = dSi[j] - kn * dr_next[j] + sq * gt[j];
          dSi[j] = d;
          du[j] += kk * d;
        }
      }
      // dk_{t+1} -= S_t dr_{t+1}; dq_t = scale S_t g_t; dk_t = dS_t u_t
      dot_rows<2>(S_blk, {dr_next, gt}, row, n, s_dots);
      dot_rows<1>(dS_blk, {u}, row, n, ds_dots);
      for (int64_t m = 0; m < n; ++m) {
        dk_next[i0 + m] -= s_dots[0][m];
        dqt[i0 + m] = z.scale * s_dots[1][m];
        dkt[i0 + m] = ds_dots[0][m];
      }
    }
    dbeta[t * z.H] = dot(du, rt, row);
    float* dvt = dv + t * z.sv;
    for (int64_t j = 0; j < V; ++j) {  // r = v - S_{t-1}^T k, so dv = dr = beta du
      dr_next[j] = b * du[j];
      dvt[j] = dr_next[j];
      u_next[j] = u[j];
    }
    k_next = kt;
    dk_next = dkt;
  }
  // finish token 0 against the initial state
  for (int64_t i = 0; i < K; ++i) {
    dk_next[i] -= dot(states + i * V, dr_next, row);
    axpy(-k_next[i], dr_next, dS + i * V, row);
  }
}

template <typename F64, typename F128, typename FAny>
void by_value_dim(int64_t V, F64 f64, F128 f128, FAny fany) {
  if (V == 64) f64();
  else if (V == 128) f128();
  else fany();
}

}  // namespace

// Returns (o [B, T, H, V], r [B, T, H, V], states [G, N + 1, K, V]); r = v - S_{t-1}^T k is what the backward
// needs. The initial state is [B, H, K, V].
std::vector<at::Tensor> delta_rule_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                           const at::Tensor& beta, const at::Tensor& initial_state, double scale,
                                           int64_t every) {
  check(q, "q", 4); check(k, "k", 4); check(v, "v", 4); check(beta, "beta", 3); check(initial_state, "state", 4);
  TORCH_CHECK(every > 0, "every must be positive");
  const int64_t B = q.size(0), T = q.size(1), H = q.size(2), K = q.size(3), V = v.size(3), G = B * H;
  const int64_t N = (T + every - 1) / every;
  const Sizes z{T, H, K, V, N, every, static_cast<float>(scale), H * K, H * V};
  auto o = at::empty({B, T, H, V}, v.options());
  auto r = at::empty({B, T, H, V}, v.options());
  auto states = at::empty({G, N + 1, K, V}, v.options());
  const float *qp = q.data_ptr<float>(), *kp = k.data_ptr<float>(), *vp = v.data_ptr<float>();
  const float *bp = beta.data_ptr<float>(), *s0 = initial_state.data_ptr<float>();
  float *op = o.data_ptr<float>(), *rp = r.data_ptr<float>(), *sp = states.data_ptr<float>();
  at::parallel_for(0, G, 1, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g) {
      const int64_t b = g / H, h = g % H;
      const int64_t ok = b * T * H * K + h * K, ov = b * T * H * V + h * V, ob = b * T * H + h;
      auto args = [&](auto fn) {
        fn(qp + ok, kp + ok, vp + ov, bp + ob, s0 + g * K * V, op + ov, rp + ov, sp + g * (N + 1) * K * V, z);
      };
      by_value_dim(V, [&] { args(forward_head<64>); }, [&] { args(forward_head<128>); },
                   [&] { args(forward_head<0>); });
    }
  });
  return {o, r, states};
}

// Returns (dq, dk, dv, dbeta, d initial_state), each in its input's layout.
std::vector<at::Tensor> delta_rule_backward(const at::Tensor& grad_o, const at::Tensor& grad_final,
                                            const at::Tensor& q, const at::Tensor& k, const at::Tensor& beta,
                                            const at::Tensor& r, const at::Tensor& states, double scale,
                                            int64_t every) {
  check(grad_o, "grad_o", 4); check(grad_final, "grad_final", 4); check(q, "q", 4); check(k, "k", 4);
  check(beta, "beta", 3); check(r, "r", 4); check(states, "states", 4);
  const int64_t B = q.size(0), T = q.size(1), H = q.size(2), K = q.size(3), V = r.size(3), G = B * H;
  const int64_t N = states.size(1) - 1;
  const Sizes z{T, H, K, V, N, every, static_cast<float>(scale), H * K, H * V};
  auto dq = at::empty_like(q), dk = at::empty_like(q), dv = at::empty_like(r), dbeta = at::empty_like(beta);
  auto ds = grad_final.clone();  // the gradient w.r.t. the current state, carried backwards to the initial one
  const float *gop = grad_o.data_ptr<float>(), *qp = q.data_ptr<float>(), *kp = k.data_ptr<float>();
  const float *bp = beta.data_ptr<float>(), *rp = r.data_ptr<float>(), *sp = states.data_ptr<float>();
  float *dqp = dq.data_ptr<float>(), *dkp = dk.data_ptr<float>(), *dvp = dv.data_ptr<float>();
  float *dbp = dbeta.data_ptr<float>(), *dsp = ds.data_ptr<float>();
  at::parallel_for(0, G, 1, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g) {
      const int64_t b = g / H, h = g % H;
      const int64_t ok = b * T * H * K + h * K, ov = b * T * H * V + h * V, ob = b * T * H + h;
      auto args = [&](auto fn) {
        fn(gop + ov, qp + ok, kp + ok, bp + ob, rp + ov, sp + g * (N + 1) * K * V, dqp + ok, dkp + ok, dvp + ov,
           dbp + ob, dsp + g * K * V, z);
      };
      by_value_dim(V, [&] { args(backward_head<64>); }, [&] { args(backward_head<128>); },
                   [&] { args(backward_head<0>); });
    }
  });
  return {dq, dk, dv, dbeta, ds};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &delta_rule_forward, "fused delta rule forward (CPU, float32)");
  m.def("backward", &delta_rule_backward, "fused delta rule backward (CPU, float32)");
}
