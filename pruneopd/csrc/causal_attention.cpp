// Causal self-attention over whole sequences (prefill, training forward) for
// pruneopd.attention: softmax(Q K^T * scale, causal) V and its gradients, float32 on the CPU.
//
// PyTorch's CPU flash-attention kernel splits the keys into blocks of 512, so at the lengths
// this package trains on (a few hundred to a few thousand tokens) it computes nearly the whole
// T x T score matrix even when is_causal is set. Here each block of BQ query rows is scored
// only against the keys up to its last row: the arithmetic of the causal triangle plus half a
// BQ x BQ block per block row. Per block row the scores fit in cache, so the softmax is exact
// (no running rescale); the backward recomputes them from the saved log-sum-exp, as flash
// attention does. Work is split over (batch, kv head) units, each holding its group's query
// heads, so the key/value gradients of a unit have one writer.
//
// Shapes: B batch, Hq / Hkv query / key-value heads (G = Hq / Hkv), T tokens, D head dim,
// n = keys a block row sees. Matrix products are single-threaded BLAS calls (sgemm) inside
// the parallel loop; the BLAS is the one PyTorch links (found at load time with dlsym).
#include "causal_attention.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "blas.h"
#include "vec_math.h"

namespace pruneopd {
namespace {

constexpr int64_t BQ = 64;  // query rows per block row

void check(const torch::Tensor& x, const char* name) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.device().is_cpu() && x.is_contiguous(),
              name, ": contiguous float32 CPU tensor expected");
  TORCH_CHECK(x.dim() == 4, name, ": [B, heads, T, D] expected");
}

// P[r, j] = exp(S[r, j] - sub[r]) for keys j <= i0 + r, 0 beyond (the causal edge), in place
// on S ([rows, n]); returns nothing, the caller chooses sub (row max or saved log-sum-exp).
inline void exp_causal(float* S, int64_t rows, int64_t n, int64_t i0, const float* sub) {
  for (int64_t r = 0; r < rows; ++r) {
    float* s = S + r * n;
    const int64_t valid = i0 + r + 1;
    const float m = sub[r];
#pragma omp simd
    for (int64_t j = 0; j < valid; ++j) s[j] = exp_neg(s[j] - m);
    for (int64_t j = valid; j < n; ++j) s[j] = 0.f;
  }
}

}  // namespace

bool causal_attention_has_blas() { return find_sgemm() != nullptr; }

// q [B, Hq, T, D], k / v [B, Hkv, T, D] -> out [B, Hq, T, D], lse [B, Hq, T] (the log-sum-exp
// of each query's scaled scores, for the backward).
std::vector<torch::Tensor> causal_attention_fwd(torch::Tensor q, torch::Tensor k,
                                                torch::Tensor v, double scale) {
  check(q, "q");
  check(k, "k");
  check(v, "v");
  TORCH_CHECK(find_sgemm() != nullptr, "no sgemm_ in the loaded BLAS");
  const int64_t B = q.size(0), Hq = q.size(1), T = q.size(2), D = q.size(3);
  const int64_t Hkv = k.size(1);
  TORCH_CHECK(k.sizes() == v.sizes() && k.size(0) == B && k.size(2) == T && k.size(3) == D,
              "k, v: [B, Hkv, T, D] with q's B, T, D");
  TORCH_CHECK(Hkv > 0 && Hq % Hkv == 0, "query heads must be a multiple of kv heads");
  const int64_t G = Hq / Hkv;
  auto out = at::empty_like(q);
  auto lse = at::empty({B, Hq, T}, q.options());
  const float* q_p = q.data_ptr<float>();
  const float* k_p = k.data_ptr<float>();
  const float* v_p = v.data_ptr<float>();
  float* o_p = out.data_ptr<float>();
  float* l_p = lse.data_ptr<float>();
  const float fs = static_cast<float>(scale);
  at::parallel_for(0, B * Hkv, 1, [&](int64_t u0, int64_t u1) {
    std::vector<float> S(static_cast<size_t>(BQ * T));
    std::vector<float> inv(BQ);
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t b = u / Hkv, hk = u % Hkv;
      const float* K = k_p + u * T * D;
      const float* V = v_p + u * T * D;
      for (int64_t g = 0; g < G; ++g) {
        const int64_t h = b * Hq + hk * G + g;
        const float* Q = q_p + h * T * D;
        float* O = o_p + h * T * D;
        float* L = l_p + h * T;
        for (int64_t i0 = 0; i0 < T; i0 += BQ) {
          const int64_t rows = std::min(BQ, T - i0), n = i0 + rows;
          float* s = S.data();
          mm(false, true, rows, n, D, fs, Q + i0 * D, D, K, D, 0.f, s, n);
          for (int64_t r = 0; r < rows; ++r) {  // exp(s - max), its sum, the log-sum-exp
            float* sr = s + r * n;
            const int64_t valid = i0 + r + 1;
            const float m = row_max(sr, valid);
            const float sum = exp_sub_sum(sr, valid, m);
            for (int64_t j = valid; j < n; ++j) sr[j] = 0.f;
            inv[r] = 1.f / sum;
            L[i0 + r] = m + std::log(sum);
          }
          float* Oi = O + i0 * D;
          mm(false, false, rows, D, n, 1.f, s, n, V, D, 0.f, Oi, D);  // unnormalised P V
          for (int64_t r = 0; r < rows; ++r)
            for (int64_t d = 0; d < D; ++d) Oi[r * D + d] *= inv[r];
        }
      }
    }
  });
  return {out, lse};
}

// Gradients of causal_attention_fwd: dq [B, Hq, T, D], dk / dv [B, Hkv, T, D].
std::vector<torch::Tensor> causal_attention_bwd(torch::Tensor q, torch::Tensor k,
                                                torch::Tensor v, torch::Tensor o,
                                                torch::Tensor lse, torch::Tensor dout,
                                                double scale) {
  check(q, "q");
  check(k, "k");
  check(v, "v");
  check(o, "out");
  check(dout, "grad_out");
  TORCH_CHECK(lse.is_contiguous() && lse.scalar_type() == at::kFloat, "lse: float32");
  TORCH_CHECK(find_sgemm() != nullptr, "no sgemm_ in the loaded BLAS");
  const int64_t B = q.size(0), Hq = q.size(1), T = q.size(2), D = q.size(3);
  const int64_t Hkv = k.size(1), G = Hq / Hkv;
  auto dq = at::empty_like(q);
  auto dk = at::zeros_like(k);
  auto dv = at::zeros_like(v);
  const float* q_p = q.data_ptr<float>();
  const float* k_p = k.data_ptr<float>();
  const float* v_p = v.data_ptr<float>();
  const float* o_p = o.data_ptr<float>();
  const float* l_p = lse.data_ptr<float>();
  const float* do_p = dout.data_ptr<float>();
  float* dq_p = dq.data_ptr<float>();
  float* dk_p = dk.data_ptr<float>();
  float* dv_p = dv.data_ptr<float>();
  const float fs = static_cast<float>(scale);
  at::parallel_for(0, B * Hkv, 1, [&](int64_t u0, int64_t u1) {
    std::vector<float> P(static_cast<size_t>(BQ * T)), dP(static_cast<size_t>(BQ * T));
    std::vector<float> delta(static_cast<size_t>(T));
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t b = u / Hkv, hk = u % Hkv;
      const float* K = k_p + u * T * D;
      const float* V = v_p + u * T * D;
      float* dK = dk_p + u * T * D;
      float* dV = dv_p + u * T * D;
      for (int64_t g = 0; g < G; ++g) {
        const int64_t h = b * Hq + hk * G + g;
        const float* Q = q_p + h * T * D;
        const float* O = o_p + h * T * D;
        const float* dO = do_p + h * T * D;
        const float* L = l_p + h * T;
        float* dQ = dq_p + h * T * D;
        for (int64_t t = 0; t < T; ++t) {  // delta_t = dO_t . O_t
          float acc = 0.f;
#pragma omp simd reduction(+ : acc)
          for (int64_t d = 0; d < D; ++d) acc += dO[t * D + d] * O[t * D + d];
          delta[t] = acc;
        }
        for (int64_t i0 = 0; i0 < T; i0 += BQ) {
          const int64_t rows = std::min(BQ, T - i0), n = i0 + rows;
          float* p = P.data();
          float* dp = dP.data();
          mm(false, true, rows, n, D, fs, Q + i0 * D, D, K, D, 0.f, p, n);
          exp_causal(p, rows, n, i0, L + i0);
          mm(true, false, n, D, rows, 1.f, p, n, dO + i0 * D, D, 1.f, dV, D);  // dV += P^T dO
          mm(false, true, rows, n, D, 1.f, dO + i0 * D, D, V, D, 0.f, dp, n);  // dP = dO V^T
          for (int64_t r = 0; r < rows; ++r) {  // dS = P * (dP - delta) * scale
            const float* pr = p + r * n;
            float* dr = dp + r * n;
            const float dl = delta[i0 + r];
#pragma omp simd
            for (int64_t j = 0; j < n; ++j) dr[j] = pr[j] * (dr[j] - dl) * fs;
          }
          mm(false, false, rows, D, n, 1.f, dp, n, K, D, 0.f, dQ + i0 * D, D);  // dQ = dS K
          mm(true, false, n, D, rows, 1.f, dp, n, Q + i0 * D, D, 1.f, dK, D);  // dK += dS^T Q
        }
      }
    }
  });
  return {dq, dk, dv};
}

}  // namespace pruneopd
