// One query's attention over a KV cache, the rotary embedding and RMSNorm of a row, for the
// C++ extension: the per-token pieces the decode step (fused_decode.cpp) and the multi-token
// sampling loop (sample_loop.cpp) share. Plain loops over float32 rows, single-threaded.
#pragma once

#include <cmath>
#include <cstdint>

#include "vec_math.h"

namespace pruneopd {

// out = x * rsqrt(mean(x^2) + eps) * w, one row of n floats (RMSNorm as Hugging Face's)
inline void rms_row(const float* x, const float* w, float* out, int64_t n, float eps) {
  float ss = 0.f;
#pragma omp simd reduction(+ : ss)
  for (int64_t i = 0; i < n; ++i) ss += x[i] * x[i];
  const float inv = 1.f / std::sqrt(ss / static_cast<float>(n) + eps);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = w[i] * (x[i] * inv);
}

// x[0:D] <- x * cos + rotate_half(x) * sin, rotate_half(x) = [-x[D/2:], x[:D/2]]
inline void rope(float* x, const float* cos, const float* sin, int64_t D) {
  const int64_t h = D / 2;
  float tmp[512];
  for (int64_t i = 0; i < D; ++i) tmp[i] = x[i];
  for (int64_t i = 0; i < h; ++i) x[i] = tmp[i] * cos[i] - tmp[i + h] * sin[i];
  for (int64_t i = h; i < D; ++i) x[i] = tmp[i] * cos[i] + tmp[i - h] * sin[i];
}

// softmax(q . K[j] * scale over slots j < L, masked where att[j] is false) . V, one query
// head of D dims against one kv head's cache rows Kc, Vc ([S, D]); sc: scratch of L floats.
template <int DD>
inline void attend_d(const float* q, const float* Kc, const float* Vc, const bool* att,
                     int64_t L, int64_t, float scale, float* sc, float* out) {
  // scores four slots at a time: four independent dot products keep the FMA units busy
  int64_t j = 0;
  for (; j + 4 <= L; j += 4) {
    const float* k0 = Kc + j * DD;
    float d0 = 0.f, d1 = 0.f, d2 = 0.f, d3 = 0.f;
#pragma omp simd reduction(+ : d0, d1, d2, d3)
    for (int d = 0; d < DD; ++d) {
      d0 += q[d] * k0[d];
      d1 += q[d] * k0[DD + d];
      d2 += q[d] * k0[2 * DD + d];
      d3 += q[d] * k0[3 * DD + d];
    }
    sc[j] = d0 * scale;
    sc[j + 1] = d1 * scale;
    sc[j + 2] = d2 * scale;
    sc[j + 3] = d3 * scale;
  }
  for (; j < L; ++j) {
    const float* kj = Kc + j * DD;
    float dot = 0.f;
#pragma omp simd reduction(+ : dot)
    for (int d = 0; d < DD; ++d) dot += q[d] * kj[d];
    sc[j] = dot * scale;
  }
  if (att) {
    for (int64_t i = 0; i < L; ++i) sc[i] = att[i] ? sc[i] : -INFINITY;
  }
  const float sum = exp_sub_sum(sc, L, row_max(sc, L));
  float acc[DD];
  for (int d = 0; d < DD; ++d) acc[d] = 0.f;
  for (int64_t j = 0; j < L; ++j) {
    const float p = sc[j];
    const float* vj = Vc + j * DD;
#pragma omp simd
    for (int d = 0; d < DD; ++d) acc[d] += p * vj[d];
  }
  const float inv = 1.f / sum;
  for (int d = 0; d < DD; ++d) out[d] = acc[d] * inv;
}

inline void attend_any(const float* q, const float* Kc, const float* Vc, const bool* att,
                       int64_t L, int64_t D, float scale, float* sc, float* out) {
  float mx = -INFINITY;
  for (int64_t j = 0; j < L; ++j) {
    float dot = 0.f;
    for (int64_t d = 0; d < D; ++d) dot += q[d] * Kc[j * D + d];
    const float v = (att && !att[j]) ? -INFINITY : dot * scale;
    sc[j] = v;
    mx = v > mx ? v : mx;
  }
  const float sum = exp_sub_sum(sc, L, mx);
  for (int64_t d = 0; d < D; ++d) out[d] = 0.f;
  for (int64_t j = 0; j < L; ++j)
    for (int64_t d = 0; d < D; ++d) out[d] += sc[j] * Vc[j * D + d];
  for (int64_t d = 0; d < D; ++d) out[d] /= sum;
}

inline void attend(const float* q, const float* Kc, const float* Vc, const bool* att,
                   int64_t L, int64_t D, float scale, float* sc, float* out) {
  switch (D) {
    case 32: return attend_d<32>(q, Kc, Vc, att, L, D, scale, sc, out);
    case 64: return attend_d<64>(q, Kc, Vc, att, L, D, scale, sc, out);
    case 128: return attend_d<128>(q, Kc, Vc, att, L, D, scale, sc, out);
    default: return attend_any(q, Kc, Vc, att, L, D, scale, sc, out);
  }
}

}  // namespace pruneopd
