// Small vectorisable math shared by the kernels of pruneopd's C++ extension.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace pruneopd {

// exp(x) for x <= 0 (attention weights after subtracting the max), vectorisable: 2^n * p(r)
// with n = round(x / ln 2), r = x - n ln 2 in [-ln2/2, ln2/2], p the degree-6 Taylor
// polynomial (relative error < 2e-7); x < -87 gives 0. Branch-free, so loops over it vectorise.
inline float exp_neg(float x) {
  const float xc = std::max(x, -87.f);
  // round to nearest (ties to even, as nearbyint) by adding and removing 1.5 * 2^23; unlike
  // nearbyint this is plain arithmetic, so loops over exp_neg vectorise
  const float n = (xc * 1.44269504088896341f + 12582912.f) - 12582912.f;
  const float r = (xc - n * 0.693145751953125f) - n * 1.428606765330187e-06f;
  float p = 1.f / 720.f;
  p = p * r + 1.f / 120.f;
  p = p * r + 1.f / 24.f;
  p = p * r + 1.f / 6.f;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  const float e = p * scale;  // computed unconditionally: the select below is a blend
  return x < -87.f ? 0.f : e;
}

// max(s[0:n]); -inf for n = 0
inline float row_max(const float* s, int64_t n) {
  float m = -INFINITY;
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < n; ++j) m = s[j] > m ? s[j] : m;
  return m;
}

// s[0:n] <- exp(s - m) for m >= max(s) (a softmax's numerators, in place); returns their sum
inline float exp_sub_sum(float* s, int64_t n, float m) {
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < n; ++j) {
    const float e = exp_neg(s[j] - m);
    s[j] = e;
    sum += e;
  }
  return sum;
}

}  // namespace pruneopd
