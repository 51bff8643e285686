// Row-major single-precision matrix products through the BLAS PyTorch links (MKL's sgemm_),
// found at load time with dlsym, for pruneopd's C++ extension: called from inside
// at::parallel_for, each call single-threaded.
#pragma once

#include <dlfcn.h>

#include <cstdint>

namespace pruneopd {

using sgemm_fn = void (*)(const char*, const char*, const int*, const int*, const int*,
                          const float*, const float*, const int*, const float*, const int*,
                          const float*, float*, const int*);

inline sgemm_fn find_sgemm() {
  static sgemm_fn fn = reinterpret_cast<sgemm_fn>(dlsym(RTLD_DEFAULT, "sgemm_"));
  return fn;
}

// Row-major C[m, n] = alpha * op(A) op(B) + beta * C with op(X) = X or X^T, through the
// column-major BLAS: C^T = op(B)^T op(A)^T.
inline void mm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* A,
        int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  const char tra = tb ? 'T' : 'N', trb = ta ? 'T' : 'N';
  const int mi = static_cast<int>(n), ni = static_cast<int>(m), ki = static_cast<int>(k);
  const int la = static_cast<int>(ldb), lb = static_cast<int>(lda), lc = static_cast<int>(ldc);
  find_sgemm()(&tra, &trb, &mi, &ni, &ki, &alpha, B, &la, A, &lb, &beta, C, &lc);
}

}  // namespace pruneopd
