// The project's compiled CPU kernels: the fused delta rule (training and prefill) and the decode step's fused
// operations (DeltaNet's token mixer, RMSNorm and the SwiGLU MLP of a few rows), further down.
//
// The delta rule as one fused loop per (batch, head) on the CPU: forward and backward of
//   S_t = S_{t-1} + beta_t k_t r_t^T,  r_t = v_t - S_{t-1}^T k_t,  o_t = S_t^T (scale q_t).
// The state (K x V float32) stays in the core's cache for the whole sequence, so each token costs about
// 3 K V multiply-adds forward and 7 backward, every one of them on a contiguous row of V floats.
// Compiled on first use by refine_bench/kernels/cpu_kernels.py (torch.utils.cpp_extension).
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
#include <cmath>
#include <tuple>
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

// y[r] = dot(W + r D, x) for the rows [0, R) of a row-major weight: threads split the rows when there are
// enough of them to pay for it (a large model's projection), a small model's stay on the calling thread.
inline void matvec(const float* W, const float* x, int64_t R, int64_t D, float* y) {
  const Row<0> row(D);
  at::parallel_for(0, R, std::max<int64_t>(1, (int64_t{1} << 17) / std::max<int64_t>(D, 1)),
                   [&](int64_t begin, int64_t end) {
                     for (int64_t r = begin; r < end; ++r) y[r] = dot(W + r * D, x, row);
                   });
}

// One decoded token of DeltaNet's token mixer, everything between the block's input norm and o_proj, in one
// call: at one token per step the cost of a decode is the number of tensor operations, not the arithmetic.
// Per batch row: proj = [Wq; Wk; Wv] x and beta = sigmoid(Wb x); the causal short convolution over the kept
// window and SiLU; q, k L2-normalised per head (eps 1e-6); the delta-rule step; RMSNorm of each head's output.
// Returns (o [B, value_dim] before o_proj, new conv state [B, C, W - 1], new recurrent state [B, H, K, V]).
std::vector<at::Tensor> deltanet_decode_step(const at::Tensor& x, const at::Tensor& wq, const at::Tensor& wk,
                                             const at::Tensor& wv, const at::Tensor& wb, const at::Tensor& cq,
                                             const at::Tensor& ck, const at::Tensor& cv,
                                             const at::Tensor& conv_state, const at::Tensor& state,
                                             const at::Tensor& norm_weight, double norm_eps, double scale) {
  check(x, "x", 2); check(wq, "wq", 2); check(wk, "wk", 2); check(wv, "wv", 2); check(wb, "wb", 2);
  check(cq, "cq", 3); check(ck, "ck", 3); check(cv, "cv", 3); check(conv_state, "conv_state", 3);
  check(state, "state", 4); check(norm_weight, "norm_weight", 1);
  const int64_t B = x.size(0), D = x.size(1), Kd = wq.size(0), Vd = wv.size(0), H = wb.size(0);
  const int64_t C = 2 * Kd + Vd, W = cq.size(2), K = Kd / H, V = Vd / H;
  TORCH_CHECK(wk.size(0) == Kd && wq.size(1) == D && wk.size(1) == D && wv.size(1) == D && wb.size(1) == D,
              "projection weights do not match x");
  TORCH_CHECK(conv_state.size(0) == B && conv_state.size(1) == C && conv_state.size(2) == W - 1,
              "conv_state must be [B, 2 key_dim + value_dim, conv_size - 1]");
  TORCH_CHECK(state.size(0) == B && state.size(1) == H && state.size(2) == K && state.size(3) == V,
              "state must be [B, H, K, V]");
  auto o = at::empty({B, Vd}, x.options());
  auto new_conv = at::empty_like(conv_state);
  auto new_state = state.clone();
  const float* xp = x.data_ptr<float>();
  const float* weights[3] = {wq.data_ptr<float>(), wk.data_ptr<float>(), wv.data_ptr<float>()};
  const float* convs[3] = {cq.data_ptr<float>(), ck.data_ptr<float>(), cv.data_ptr<float>()};
  const int64_t offsets[4] = {0, Kd, 2 * Kd, C};
  const float *wbp = wb.data_ptr<float>(), *csp = conv_state.data_ptr<float>(), *nw = norm_weight.data_ptr<float>();
  float *op = o.data_ptr<float>(), *ncp = new_conv.data_ptr<float>(), *sp = new_state.data_ptr<float>();
  const Row<0> krow(K), vrow(V);
  std::vector<float> proj(C), qkv(C), beta(H), u(V);
  for (int64_t b = 0; b < B; ++b) {
    const float* xb = xp + b * D;
    for (int64_t part = 0; part < 3; ++part)
      matvec(weights[part], xb, offsets[part + 1] - offsets[part], D, proj.data() + offsets[part]);
    matvec(wbp, xb, H, D, beta.data());
    for (int64_t part = 0; part < 3; ++part) {
      for (int64_t c = offsets[part]; c < offsets[part + 1]; ++c) {
        const int64_t local = c - offsets[part];
        const float p = proj[c];
        const float* window = csp + (b * C + c) * (W - 1);
        const float* w = convs[part] + local * W;
        float y = w[W - 1] * p;
        for (int64_t j = 0; j < W - 1; ++j) y += w[j] * window[j];
        qkv[c] = y / (1.f + std::exp(-y));  // SiLU
        float* next = ncp + (b * C + c) * (W - 1);
        for (int64_t j = 0; j + 1 < W - 1; ++j) next[j] = window[j + 1];
        if (W > 1) next[W - 2] = p;
      }
    }
    for (int64_t h = 0; h < H; ++h) beta[h] = 1.f / (1.f + std::exp(-beta[h]));
    for (int64_t h = 0; h < 2 * H; ++h) {  // L2-normalise each head of q and k
      float* head = qkv.data() + h * K;
      const float inv = 1.f / std::sqrt(dot(head, head, krow) + 1e-6f);
      for (int64_t j = 0; j < K; ++j) head[j] *= inv;
    }
    for (int64_t h = 0; h < H; ++h) {
      const float *qh = qkv.data() + h * K, *kh = qkv.data() + Kd + h * K, *vh = qkv.data() + 2 * Kd + h * V;
      float* S = sp + (b * H + h) * K * V;
      float* oh = op + b * Vd + h * V;
      std::fill(u.begin(), u.end(), 0.f);
      for (int64_t i = 0; i < K; ++i) axpy(kh[i], S + i * V, u.data(), vrow);  // S^T k
      for (int64_t j = 0; j < V; ++j) u[j] = beta[h] * (vh[j] - u[j]);
      std::fill(oh, oh + V, 0.f);
      for (int64_t i = 0; i < K; ++i) {
        axpy(kh[i], u.data(), S + i * V, vrow);
        axpy(static_cast<float>(scale) * qh[i], S + i * V, oh, vrow);
      }
      const float inv = 1.f / std::sqrt(dot(oh, oh, vrow) / V + static_cast<float>(norm_eps));
      for (int64_t j = 0; j < V; ++j) oh[j] *= inv * nw[j];
    }
  }
  return {o, new_conv, new_state};
}

// RMSNorm of a few rows (a decoded token's hidden state): y = x / sqrt(mean(x^2) + eps) * weight over the last
// dim of a float32 [N, D] tensor; one call instead of the five or so operations torch runs for it.
at::Tensor rms_norm_rows(const at::Tensor& x, const at::Tensor& weight, double eps) {
  check(x, "x", 2); check(weight, "weight", 1);
  const int64_t N = x.size(0), D = x.size(1);
  TORCH_CHECK(weight.size(0) == D, "weight must have x's last dim");
  auto y = at::empty_like(x);
  const float *xp = x.data_ptr<float>(), *wp = weight.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const Row<0> row(D);
  for (int64_t n = 0; n < N; ++n) {
    const float* xr = xp + n * D;
    const float inv = 1.f / std::sqrt(dot(xr, xr, row) / D + static_cast<float>(eps));
    for (int64_t j = 0; j < D; ++j) yp[n * D + j] = xr[j] * inv * wp[j];
  }
  return y;
}

// The SwiGLU MLP of a few rows: down(silu(gate x) * up x), float32 [N, D] -> [N, D]; one call per decoded token.
at::Tensor swiglu_rows(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& up, const at::Tensor& down) {
  check(x, "x", 2); check(gate, "gate", 2); check(up, "up", 2); check(down, "down", 2);
  const int64_t N = x.size(0), D = x.size(1), I = gate.size(0);
  TORCH_CHECK(gate.size(1) == D && up.size(0) == I && up.size(1) == D && down.size(0) == D && down.size(1) == I,
              "MLP weights do not match x");
  auto y = at::empty_like(x);
  std::vector<float> g(I), h(I);
  for (int64_t n = 0; n < N; ++n) {
    const float* xr = x.data_ptr<float>() + n * D;
    matvec(gate.data_ptr<float>(), xr, I, D, g.data());
    matvec(up.data_ptr<float>(), xr, I, D, h.data());
    for (int64_t i = 0; i < I; ++i) h[i] *= g[i] / (1.f + std::exp(-g[i]));
    matvec(down.data_ptr<float>(), h.data(), D, I, y.data_ptr<float>() + n * D);
  }
  return y;
}

// The tensors of one DeltaNet block in the order `deltanet_decode_stack` reads them, and its norms' eps.
constexpr size_t kBlockTensors = 14;  // attn_norm, Wq, Wk, Wv, Wb, conv q, k, v, o_norm, Wo, mlp_norm, gate, up, down
constexpr size_t kBlockNorms = 3;     // attn_norm, o_norm, mlp_norm

// One decoded token through a whole stack of DeltaNet blocks, each x += o_proj(mixer(norm(x))) then
// x += mlp(norm(x)), in one call: a small model's token is a few hundred microseconds of Python dispatch around a
// few tens of arithmetic. x [B, hidden] is the residual stream entering the first block; per block, 14 tensors
// (kBlockTensors), a conv state and a recurrent state as for `deltanet_decode_step`, and 3 norm eps. Returns
// (x leaving the last block, the new conv states, the new recurrent states).
std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> deltanet_decode_stack(
    const at::Tensor& x, const std::vector<at::Tensor>& weights, const std::vector<at::Tensor>& conv_states,
    const std::vector<at::Tensor>& states, const std::vector<double>& eps, double scale) {
  check(x, "x", 2);
  const size_t L = states.size();
  TORCH_CHECK(weights.size() == kBlockTensors * L && conv_states.size() == L && eps.size() == kBlockNorms * L,
              "deltanet_decode_stack needs ", kBlockTensors, " tensors, a conv state, a recurrent state and ",
              kBlockNorms, " eps per block");
  const int64_t B = x.size(0), D = x.size(1);
  auto h = x.clone();
  std::vector<at::Tensor> new_conv, new_states;
  std::vector<float> add(D);
  for (size_t l = 0; l < L; ++l) {
    const at::Tensor* w = weights.data() + kBlockTensors * l;
    const double* e = eps.data() + kBlockNorms * l;
    check(w[9], "o_proj", 2);
    TORCH_CHECK(w[9].size(0) == D, "o_proj must map back to the hidden size");
    auto mixed = deltanet_decode_step(rms_norm_rows(h, w[0], e[0]), w[1], w[2], w[3], w[4], w[5], w[6], w[7],
                                      conv_states[l], states[l], w[8], e[1], scale);
    const int64_t Vd = mixed[0].size(1);
    TORCH_CHECK(w[9].size(1) == Vd, "o_proj must take the mixer's value_dim");
    float* hp = h.data_ptr<float>();
    for (int64_t b = 0; b < B; ++b) {
      matvec(w[9].data_ptr<float>(), mixed[0].data_ptr<float>() + b * Vd, D, Vd, add.data());
      for (int64_t j = 0; j < D; ++j) hp[b * D + j] += add[j];
    }
    h.add_(swiglu_rows(rms_norm_rows(h, w[10], e[2]), w[11], w[12], w[13]));
    new_conv.push_back(mixed[1]);
    new_states.push_back(mixed[2]);
  }
  return {h, new_conv, new_states};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  // a sequence takes milliseconds: let other Python threads (data loading, logging) run meanwhile
  m.def("forward", &delta_rule_forward, "fused delta rule forward (CPU, float32)",
        py::call_guard<py::gil_scoped_release>());
  m.def("backward", &delta_rule_backward, "fused delta rule backward (CPU, float32)",
        py::call_guard<py::gil_scoped_release>());
  m.def("swiglu_rows", &swiglu_rows, "SwiGLU MLP of a few float32 rows (CPU)");
  m.def("rms_norm_rows", &rms_norm_rows, "RMSNorm over the last dim of a few float32 rows (CPU)");
  m.def("deltanet_decode_step", &deltanet_decode_step, "one decoded token of DeltaNet's mixer (CPU, float32)");
  m.def("deltanet_decode_stack", &deltanet_decode_stack, "one decoded token of a DeltaNet block stack (CPU, float32)");
}
