// C new tokens per sample through a Llama-family model (RMSNorm, rotary, GQA attention over a
// preallocated KV cache, SwiGLU MLP) for pruneopd.fused, in one C++ call: the decode step
// (C = 1, pruneopd.decode.LeanDecoder.step) and the teacher's chunked prefill while the
// student samples (C > 1, LeanDecoder.forward_chunk). The projections are sgemm calls with
// the output columns split over the threads; RMSNorm, rotary + cache write, attention and
// SiLU * up are plain loops over float32 rows, parallel over (sample, kv head) or rows with
// at::parallel_for.
//
// Shapes: A active samples, C tokens per sample, R = A * C rows, H hidden, Hq / Hkv query /
// key-value heads, D head dim, G = Hq / Hkv, S cache slots, L = start + C slots attended,
// I intermediate, V vocabulary.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <algorithm>
#include <cstring>
#include <vector>

#include "blas.h"
#include "causal_attention.h"
#include "decode_attention.h"
#include "sample_loop.h"
#include "vec_math.h"

namespace {

using pruneopd::attend;
using pruneopd::exp_sub_sum;
using pruneopd::rope;
using pruneopd::row_max;

// RMSNorm of `rows` rows of n floats, rows split over the threads
void rms_rows(const float* x, const float* w, float* out, int64_t rows, int64_t n, float eps) {
  at::parallel_for(0, rows, 8, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) pruneopd::rms_row(x + r * n, w, out + r * n, n, eps);
  });
}

// out[A, N] = beta * out + x[A, K] @ w[N, K]^T with the N columns split over the threads: at
// these sizes (A = a few dozen rows) MKL runs a product on one thread, so the split is what
// puts the second core to work. ATen's matmul where no sgemm_ was found.
void linear_into(const torch::Tensor& x, const torch::Tensor& w, torch::Tensor& out,
                 float beta) {
  if (pruneopd::find_sgemm() == nullptr) {
    if (beta == 0.f)
      out.copy_(at::mm(x, w.t()));
    else
      out.addmm_(x, w.t());
    return;
  }
  const int64_t A = x.size(0), K = x.size(1), N = w.size(0);
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t nt = at::get_num_threads();
  const int64_t grain = std::max<int64_t>(32, (N + nt - 1) / nt);
  at::parallel_for(0, N, grain, [&](int64_t n0, int64_t n1) {
    pruneopd::mm(false, true, A, n1 - n0, K, 1.f, xp, K, wp + n0 * K, K, beta, op + n0, N);
  });
}

}  // namespace

// x [A, K] @ w [N, K]^T -> [A, N] (both contiguous float32), columns split over the threads.
torch::Tensor linear(torch::Tensor x, torch::Tensor w) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat, "float32");
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1), "x [A, K], w [N, K]");
  auto xc = x.contiguous(), wc = w.contiguous();
  auto out = at::empty({x.size(0), w.size(0)}, x.options());
  linear_into(xc, wc, out, 0.f);
  return out;
}

// softmax(Q K^T * scale, causal from slot `start`, masked where att is false) V for the C
// queries of one query head against one kv head's cache rows Kc, Vc ([S, D]): query c sees
// slots 0..start + c. Q rows are ldq floats apart, out rows ldo apart; scratch: sc of
// C * (start + C) floats, inv of C. Two single-threaded sgemm calls (the caller runs units in
// parallel).
static void attend_chunk(const float* Q, int64_t ldq, const float* Kc, const float* Vc,
                         const bool* att, int64_t start, int64_t C, int64_t D, float scale,
                         float* sc, float* inv, float* out, int64_t ldo) {
  const int64_t L = start + C;
  pruneopd::mm(false, true, C, L, D, scale, Q, ldq, Kc, D, 0.f, sc, L);
  for (int64_t c = 0; c < C; ++c) {
    float* s = sc + c * L;
    const int64_t valid = start + c + 1;
    if (att) {
      for (int64_t j = 0; j < valid; ++j) s[j] = att[j] ? s[j] : -INFINITY;
    }
    inv[c] = 1.f / exp_sub_sum(s, valid, row_max(s, valid));
    for (int64_t j = valid; j < L; ++j) s[j] = 0.f;
  }
  pruneopd::mm(false, false, C, D, L, 1.f, sc, L, Vc, D, 0.f, out, ldo);
  for (int64_t c = 0; c < C; ++c)
    for (int64_t d = 0; d < D; ++d) out[c * ldo + d] *= inv[c];
}

// Hidden states [A * C, H] after the last norm, for C new tokens per sample (row a * C + c)
// at cache slots start..start + C - 1, writing their keys / values into K, V ([layers, A,
// Hkv, S, D], float32, contiguous); query c attends slots 0..start + c.
// weights: per layer 7 tensors: input norm [H], qkv [(Hq + 2 Hkv) D, H], o [H, Hq D],
// post norm [H], gate_up [2 I, H], down [H, I], qkv bias [(Hq + 2 Hkv) D] or an empty tensor;
// then the final norm [H]. pos_A: rotary position of each sample's first token (long);
// cos_SD / sin_SD the rotary tables; attend_AS: bool [A, S] (true = attend) or empty.
// C = 1 is the decode step (attention per query as dot products over the cache); C > 1 a
// chunked prefill (the teacher scoring while the student samples), attention as sgemm calls.
torch::Tensor forward_tokens(torch::Tensor x_RH, const std::vector<torch::Tensor>& weights,
                             torch::Tensor K, torch::Tensor V, torch::Tensor pos_A,
                             torch::Tensor cos_SD, torch::Tensor sin_SD,
                             torch::Tensor attend_AS, int64_t start, int64_t C,
                             int64_t n_heads, int64_t n_kv, double eps, double scale) {
  TORCH_CHECK(x_RH.scalar_type() == at::kFloat && x_RH.is_contiguous(), "x: float32");
  TORCH_CHECK(K.is_contiguous() && V.is_contiguous(), "K, V: contiguous");
  TORCH_CHECK(C >= 1 && x_RH.size(0) % C == 0, "x: [A * C, H]");
  const int64_t R = x_RH.size(0), A = R / C, H = x_RH.size(1);
  const int64_t n_layers = K.size(0), S = K.size(3), D = K.size(4);
  TORCH_CHECK(K.size(1) == A && K.size(2) == n_kv, "K: [layers, A, Hkv, S, D]");
  TORCH_CHECK(start + C <= S, "the chunk runs past the cache");
  TORCH_CHECK(D <= 512 && D % 2 == 0, "head dim");
  TORCH_CHECK(C == 1 || pruneopd::find_sgemm() != nullptr, "no sgemm_ in the loaded BLAS");
  TORCH_CHECK(static_cast<int64_t>(weights.size()) == 7 * n_layers + 1, "weights");
  const int64_t G = n_heads / n_kv, L = start + C;
  const int64_t qkv_n = (n_heads + 2 * n_kv) * D;
  const bool masked = attend_AS.numel() > 0;
  const float fscale = static_cast<float>(scale), feps = static_cast<float>(eps);
  auto pos = pos_A.contiguous();
  const int64_t* pos_p = pos.data_ptr<int64_t>();
  const float* cos_p = cos_SD.data_ptr<float>();
  const float* sin_p = sin_SD.data_ptr<float>();
  const bool* att_p = masked ? attend_AS.data_ptr<bool>() : nullptr;

  auto x = x_RH.clone();
  auto h = at::empty_like(x);
  auto attn = at::empty({R, n_heads * D}, x.options());
  float* K_p = K.data_ptr<float>();
  float* V_p = V.data_ptr<float>();

  for (int64_t li = 0; li < n_layers; ++li) {
    const torch::Tensor* w = &weights[7 * li];
    rms_rows(x.data_ptr<float>(), w[0].data_ptr<float>(), h.data_ptr<float>(), R, H, feps);
    auto qkv = at::empty({R, qkv_n}, x.options());
    if (w[6].numel() > 0) qkv.copy_(w[6].expand({R, qkv_n}));
    linear_into(h, w[1], qkv, w[6].numel() > 0 ? 1.f : 0.f);
    float* qkv_p = qkv.data_ptr<float>();
    float* attn_p = attn.data_ptr<float>();
    float* Kl = K_p + li * A * n_kv * S * D;
    float* Vl = V_p + li * A * n_kv * S * D;
    // rotary on q and k, k and v into the cache, then attention per (sample, kv head)
    at::parallel_for(0, A * n_kv, 4, [&](int64_t t0, int64_t t1) {
      std::vector<float> scores(static_cast<size_t>(C * L)), inv(static_cast<size_t>(C));
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t a = t / n_kv, kv = t % n_kv;
        float* Kc = Kl + (a * n_kv + kv) * S * D;
        float* Vc = Vl + (a * n_kv + kv) * S * D;
        for (int64_t c = 0; c < C; ++c) {
          float* row = qkv_p + (a * C + c) * qkv_n;
          const float* cs = cos_p + (pos_p[a] + c) * D;
          const float* sn = sin_p + (pos_p[a] + c) * D;
          float* q = row + kv * G * D;  // the G query heads of this kv head
          for (int64_t g = 0; g < G; ++g) rope(q + g * D, cs, sn, D);
          float* k = row + n_heads * D + kv * D;
          const float* v = row + (n_heads + n_kv) * D + kv * D;
          rope(k, cs, sn, D);
          std::memcpy(Kc + (start + c) * D, k, D * sizeof(float));
          std::memcpy(Vc + (start + c) * D, v, D * sizeof(float));
        }
        const bool* att = masked ? att_p + a * S : nullptr;
        const float* q0 = qkv_p + a * C * qkv_n + kv * G * D;
        float* o = attn_p + a * C * n_heads * D + kv * G * D;
        for (int64_t g = 0; g < G; ++g) {
          if (C == 1)
            attend(q0 + g * D, Kc, Vc, att, L, D, fscale, scores.data(), o + g * D);
          else
            attend_chunk(q0 + g * D, qkv_n, Kc, Vc, att, start, C, D, fscale, scores.data(),
                         inv.data(), o + g * D, n_heads * D);
        }
      }
    });
    linear_into(attn, w[2], x, 1.f);
    rms_rows(x.data_ptr<float>(), w[3].data_ptr<float>(), h.data_ptr<float>(), R, H, feps);
    auto gu = at::empty({R, w[4].size(0)}, x.options());  // [R, 2 I]: gate then up
    linear_into(h, w[4], gu, 0.f);
    const int64_t I = gu.size(1) / 2;
    auto act = at::empty({R, I}, x.options());
    float* gu_p = gu.data_ptr<float>();
    float* act_p = act.data_ptr<float>();
    at::parallel_for(0, R, 8, [&](int64_t a0, int64_t a1) {
      for (int64_t a = a0; a < a1; ++a) {
        const float* gr = gu_p + a * 2 * I;
        const float* ur = gr + I;
        float* o = act_p + a * I;
        for (int64_t i = 0; i < I; ++i) o[i] = gr[i] / (1.f + std::exp(-gr[i])) * ur[i];
      }
    });
    linear_into(act, w[5], x, 1.f);
  }
  rms_rows(x.data_ptr<float>(), weights[7 * n_layers].data_ptr<float>(), h.data_ptr<float>(),
           R, H, feps);
  return h;
}

// The decode step: forward_tokens with one token per sample at cache slot `slot`.
torch::Tensor decode_step(torch::Tensor x_AH, const std::vector<torch::Tensor>& weights,
                          torch::Tensor K, torch::Tensor V, torch::Tensor pos_A,
                          torch::Tensor cos_SD, torch::Tensor sin_SD, torch::Tensor attend_AS,
                          int64_t slot, int64_t n_heads, int64_t n_kv, double eps,
                          double scale) {
  return forward_tokens(x_AH, weights, K, V, pos_A, cos_SD, sin_SD, attend_AS, slot, 1,
                        n_heads, n_kv, eps, scale);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("decode_step", &decode_step, "one fused decode step (pruneopd.fused)");
  m.def("forward_tokens", &forward_tokens,
        "C tokens per sample through every layer, into the cache (pruneopd.fused)");
  m.def("sample_steps", &pruneopd::sample_steps,
        "n sampled tokens per call: pick, log-prob, top-k, decode (pruneopd.fused)");
  m.def("linear", &linear, "x @ w.T, columns split over the threads (pruneopd.fused)");
  m.def("causal_attention_has_blas", &pruneopd::causal_attention_has_blas,
        "whether the BLAS the attention kernel calls is loaded");
  m.def("causal_attention_fwd", &pruneopd::causal_attention_fwd,
        "causal attention forward -> (out, lse) (pruneopd.attention)");
  m.def("causal_attention_bwd", &pruneopd::causal_attention_bwd,
        "causal attention backward -> (dq, dk, dv) (pruneopd.attention)");
}
