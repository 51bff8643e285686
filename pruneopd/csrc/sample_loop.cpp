// Several sampled tokens per call, for pruneopd.fused.FusedDecoder.sample_steps: the pick
// from the logits (inverse CDF with the caller's uniforms, as rollout.pick_tokens), the
// student's log-prob of the pick and its top-k ids, then the decode step that gives the next
// logits, n times, without returning to Python between tokens.
//
// The samples are split into groups, each group running all n steps at once, in one of two
// ways (pruneopd.fused.plan_sampling picks which from the bytes each streams):
// - spread (split = false): each thread runs its groups one after the other, single-threaded
//   (one sgemm per projection of the group's rows). A group's KV cache, read once per step,
//   stays in the CPU caches across its n steps instead of coming from memory at every token:
//   at 32 samples x 500 slots the cache of the whole batch (~70 MB for the long zoo's
//   student) is larger than the L3; a group's is a few MB. Every group re-reads every weight,
//   which costs nothing while the weights fit the caches (the zoo's models, a few MB).
// - split (split = true): the groups run one after the other, each step's projections with
//   their output columns split over the threads, its attention over (sample, kv head) and its
//   picks over the samples. With one group of all samples every weight is read once per step:
//   the way for models whose weights (hundreds of MB) are what is streamed from memory.
// The two give the same picks and logits up to the projections' float rounding.
//
// Shapes: A active samples, n steps, H hidden, Hq / Hkv query / key-value heads, D head dim,
// G = Hq / Hkv, S cache slots, I intermediate, V vocabulary, k top-k, T threads.
#include "sample_loop.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <vector>

#include "blas.h"
#include "decode_attention.h"
#include "vec_math.h"

namespace pruneopd {
namespace {

// RMSNorm of `rows` rows of n floats (one thread)
void rms(const float* x, const float* w, float* out, int64_t rows, int64_t n, float eps) {
  for (int64_t r = 0; r < rows; ++r) rms_row(x + r * n, w, out + r * n, n, eps);
}

// out[m, N] = beta * out + x[m, K] @ w[N, K]^T: one sgemm per thread over a share of the N
// columns (inside a parallel region, as in the spread mode, one sgemm over all of them)
inline void lin(const float* x, int64_t m, int64_t K, const float* w, int64_t N, float beta,
                float* out) {
  const int64_t nt = at::get_num_threads();
  const int64_t grain = std::max<int64_t>(32, (N + nt - 1) / nt);
  at::parallel_for(0, N, grain, [&](int64_t n0, int64_t n1) {
    mm(false, true, m, n1 - n0, K, 1.f, x, K, w + n0 * K, K, beta, out + n0, N);
  });
}

struct Layer {
  const float *in_norm, *qkv, *o, *post_norm, *gate_up, *down, *qkv_bias;
};

struct Model {
  std::vector<Layer> layers;
  const float* norm;   // final norm [H]
  const float* head;   // [V, H]
  const float* embed;  // [vocab, H]
  int64_t A, H, Hq, Hkv, D, I, V, S;
  float eps, scale;
  const float* cos;  // [positions, D]
  const float* sin;
  float* K;  // [layers, A, Hkv, S, D]
  float* Vc;
  const bool* att;  // [A, S] (true = attend) or null
};

// A group's rows; per thread (T of them: 1 in the spread mode) the attention scores and
// the pick's probabilities and order
struct Scratch {
  std::vector<float> x, h, qkv, attn, gu, act, scores, probs;
  std::vector<int32_t> order;
  int64_t S, V;
  Scratch(const Model& m, int64_t g, int64_t T)
      : x(g * m.H), h(g * m.H), qkv(g * (m.Hq + 2 * m.Hkv) * m.D), attn(g * m.Hq * m.D),
        gu(g * 2 * m.I), act(g * m.I), scores(T * m.S), probs(T * m.V), order(T * m.V), S(m.S),
        V(m.V) {}
  // this thread's share (thread 0 inside a parallel region that runs serially)
  float* scores_of(int64_t t) { return scores.data() + t * S; }
  float* probs_of(int64_t t) { return probs.data() + t * V; }
  int32_t* order_of(int64_t t) { return order.data() + t * V; }
};

// One decode step of the g samples a0..a0+g-1: token tok[r] at cache slot `slot` and rotary
// position pos[r], writing its keys / values into the cache; the logits [g, V] into `logits`.
void decode_rows(const Model& m, int64_t a0, int64_t g, const int64_t* tok, const int64_t* pos,
                 int64_t slot, Scratch& s, float* logits) {
  const int64_t H = m.H, D = m.D, G = m.Hq / m.Hkv, L = slot + 1, I = m.I;
  const int64_t qkv_n = (m.Hq + 2 * m.Hkv) * D;
  for (int64_t r = 0; r < g; ++r)
    std::memcpy(s.x.data() + r * H, m.embed + tok[r] * H, H * sizeof(float));
  for (size_t li = 0; li < m.layers.size(); ++li) {
    const Layer& w = m.layers[li];
    rms(s.x.data(), w.in_norm, s.h.data(), g, H, m.eps);
    if (w.qkv_bias)
      for (int64_t r = 0; r < g; ++r)
        std::memcpy(s.qkv.data() + r * qkv_n, w.qkv_bias, qkv_n * sizeof(float));
    lin(s.h.data(), g, H, w.qkv, qkv_n, w.qkv_bias ? 1.f : 0.f, s.qkv.data());
    // rotary, the cache write and the attention per (row, kv head), split over the threads
    at::parallel_for(0, g * m.Hkv, 1, [&](int64_t u0, int64_t u1) {
      float* scores = s.scores_of(at::get_thread_num());
      for (int64_t u = u0; u < u1; ++u) {
        const int64_t r = u / m.Hkv, kv = u % m.Hkv, a = a0 + r;
        float* row = s.qkv.data() + r * qkv_n;
        const float* c = m.cos + pos[r] * D;
        const float* sn = m.sin + pos[r] * D;
        const bool* att = m.att ? m.att + a * m.S : nullptr;
        float* q = row + kv * G * D;  // the G query heads of this kv head
        for (int64_t j = 0; j < G; ++j) rope(q + j * D, c, sn, D);
        float* k = row + m.Hq * D + kv * D;
        const float* v = row + (m.Hq + m.Hkv) * D + kv * D;
        rope(k, c, sn, D);
        const int64_t off = ((static_cast<int64_t>(li) * m.A + a) * m.Hkv + kv) * m.S * D;
        float* Kc = m.K + off;
        float* Vc = m.Vc + off;
        std::memcpy(Kc + slot * D, k, D * sizeof(float));
        std::memcpy(Vc + slot * D, v, D * sizeof(float));
        float* o = s.attn.data() + r * m.Hq * D + kv * G * D;
        for (int64_t j = 0; j < G; ++j)
          attend(q + j * D, Kc, Vc, att, L, D, m.scale, scores, o + j * D);
      }
    });
    lin(s.attn.data(), g, m.Hq * D, w.o, H, 1.f, s.x.data());
    rms(s.x.data(), w.post_norm, s.h.data(), g, H, m.eps);
    lin(s.h.data(), g, H, w.gate_up, 2 * I, 0.f, s.gu.data());
    for (int64_t r = 0; r < g; ++r) {
      const float* gr = s.gu.data() + r * 2 * I;
      const float* ur = gr + I;
      float* o = s.act.data() + r * I;
      for (int64_t i = 0; i < I; ++i) o[i] = gr[i] / (1.f + std::exp(-gr[i])) * ur[i];
    }
    lin(s.act.data(), g, I, w.down, H, 1.f, s.x.data());
  }
  rms(s.x.data(), m.norm, s.h.data(), g, H, m.eps);
  lin(s.h.data(), g, H, m.head, m.V, 0.f, logits);
}

// Zero the probabilities p[0:V] outside the top_p nucleus, as rollout.top_p_filter: in
// descending order, a token goes when the mass before it (the cumulative sum in double, as
// torch's, minus its own probability) reaches top_p, so the most likely token always stays.
void nucleus(float* p, int64_t V, float top_p, int32_t* ord) {
  std::iota(ord, ord + V, 0);
  std::stable_sort(ord, ord + V, [p](int32_t a, int32_t b) { return p[a] > p[b]; });
  double acc = 0.0;
  for (int64_t i = 0; i < V; ++i) {
    const float pi = p[ord[i]];
    acc += static_cast<double>(pi);
    if (static_cast<float>(acc) - pi >= top_p) p[ord[i]] = 0.f;
  }
}

// The pick from one row of logits, as rollout.pick_tokens and _sample_loop compute it:
// argmax at temperature 0, else the first token whose cumulative probability (of
// softmax(logits / temperature) in the top_p nucleus, summed in double as torch's cumsum)
// exceeds u times the total; its temperature-1 log-prob; the ids of the k largest logits,
// largest first.
int64_t pick(const float* l, int64_t V, float u, float temperature, float top_p, int64_t k,
             float* logp, int32_t* topk, float* p, int32_t* ord) {
  const float mx = row_max(l, V);
  // p: exp(l - max), the softmax numerators at temperature 1
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < V; ++j) {
    p[j] = exp_neg(l[j] - mx);
    sum += p[j];
  }
  const float log_sum = std::log(sum);
  int64_t tok = 0;
  if (temperature == 0.f) {
    for (int64_t j = 1; j < V; ++j)
      if (l[j] > l[tok]) tok = j;
  } else {
    float tsum = sum;
    if (temperature != 1.f) {  // at temperature 1 the numerators above are the ones
      float tmx = -INFINITY;
      for (int64_t j = 0; j < V; ++j) {
        p[j] = l[j] / temperature;
        tmx = std::max(tmx, p[j]);
      }
      tsum = 0.f;
#pragma omp simd reduction(+ : tsum)
      for (int64_t j = 0; j < V; ++j) {
        p[j] = exp_neg(p[j] - tmx);
        tsum += p[j];
      }
    }
    const float inv = 1.f / tsum;
    for (int64_t j = 0; j < V; ++j) p[j] *= inv;
    if (top_p < 1.f) nucleus(p, V, top_p, ord);
    double acc = 0.0;
    for (int64_t j = 0; j < V; ++j) {
      acc += static_cast<double>(p[j]);
      p[j] = static_cast<float>(acc);
    }
    const float target = u * p[V - 1];
    tok = std::upper_bound(p, p + V, target) - p;
    tok = std::min<int64_t>(tok, V - 1);
  }
  *logp = (l[tok] - mx) - log_sum;
  if (k > 0) {
    std::iota(ord, ord + V, 0);
    std::partial_sort(ord, ord + k, ord + V, [l](int32_t a, int32_t b) {
      return l[a] > l[b] || (l[a] == l[b] && a < b);
    });
    std::copy(ord, ord + k, topk);
  }
  return tok;
}

}  // namespace

std::vector<torch::Tensor> sample_steps(
    torch::Tensor logits_AV, const std::vector<torch::Tensor>& weights, torch::Tensor head_VH,
    torch::Tensor embed, torch::Tensor K, torch::Tensor V, torch::Tensor pos_A,
    torch::Tensor cos_SD, torch::Tensor sin_SD, torch::Tensor attend_AS,
    torch::Tensor uniforms_An, int64_t slot, int64_t n, double temperature, double top_p,
    int64_t k, const std::vector<int64_t>& eos_ids, bool decode_last, int64_t group, bool split,
    int64_t n_heads, int64_t n_kv, double eps, double scale) {
  for (const auto* t : {&logits_AV, &head_VH, &embed, &K, &V, &cos_SD, &sin_SD})
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous() && t->device().is_cpu(),
                "sample_steps: contiguous float32 CPU tensors expected");
  TORCH_CHECK(find_sgemm() != nullptr, "no sgemm_ in the loaded BLAS");
  const int64_t A = logits_AV.size(0), Vv = logits_AV.size(1);
  const int64_t n_layers = K.size(0), S = K.size(3), D = K.size(4), H = embed.size(1);
  TORCH_CHECK(K.size(1) == A && K.size(2) == n_kv && V.sizes() == K.sizes(),
              "K, V: [layers, A, Hkv, S, D]");
  TORCH_CHECK(static_cast<int64_t>(weights.size()) == 7 * n_layers + 1, "weights");
  TORCH_CHECK(head_VH.size(0) == Vv && head_VH.size(1) == H, "head: [V, H]");
  TORCH_CHECK(n >= 1 && slot + n <= S + (decode_last ? 0 : 1), "the steps run past the cache");
  TORCH_CHECK(D <= 512 && D % 2 == 0 && k <= Vv, "head dim, k");
  const bool greedy = temperature == 0.0;
  TORCH_CHECK(greedy || (uniforms_An.size(0) == A && uniforms_An.size(1) >= n),
              "uniforms: [A, >= n]");
  auto u = greedy ? uniforms_An : uniforms_An.to(at::kFloat).contiguous();
  auto pos = pos_A.to(at::kLong).contiguous();

  Model m{{}, weights[7 * n_layers].data_ptr<float>(), head_VH.data_ptr<float>(),
          embed.data_ptr<float>(), A, H, n_heads, n_kv, D, weights[5].size(1), Vv, S,
          static_cast<float>(eps), static_cast<float>(scale), cos_SD.data_ptr<float>(),
          sin_SD.data_ptr<float>(), K.data_ptr<float>(), V.data_ptr<float>(),
          attend_AS.numel() > 0 ? attend_AS.data_ptr<bool>() : nullptr};
  for (int64_t li = 0; li < n_layers; ++li) {
    const torch::Tensor* w = &weights[7 * li];
    m.layers.push_back({w[0].data_ptr<float>(), w[1].data_ptr<float>(), w[2].data_ptr<float>(),
                        w[3].data_ptr<float>(), w[4].data_ptr<float>(), w[5].data_ptr<float>(),
                        w[6].numel() > 0 ? w[6].data_ptr<float>() : nullptr});
  }
  auto opts = logits_AV.options();
  auto tok_An = at::zeros({A, n}, opts.dtype(at::kLong));
  auto logp_An = at::zeros({A, n}, opts);
  auto topk_Ank = at::zeros({A, n, std::max<int64_t>(k, 1)}, opts.dtype(at::kInt));
  auto len_A = at::zeros({A}, opts.dtype(at::kLong));
  auto logits = logits_AV.clone();  // the next call's logits, row by row
  float* lg = logits.data_ptr<float>();
  int64_t* tk = tok_An.data_ptr<int64_t>();
  float* lp = logp_An.data_ptr<float>();
  int32_t* tp = topk_Ank.data_ptr<int32_t>();
  int64_t* ln = len_A.data_ptr<int64_t>();
  const float* up = greedy ? nullptr : u.data_ptr<float>();
  const int64_t* pp = pos.data_ptr<int64_t>();
  const int64_t kk = std::max<int64_t>(k, 1), un = greedy ? 0 : u.size(1);
  const float temp = static_cast<float>(temperature), ftop_p = static_cast<float>(top_p);
  group = std::max<int64_t>(1, std::min(group, A));
  const int64_t n_groups = (A + group - 1) / group;
  const int64_t T = split ? std::max<int64_t>(1, at::get_num_threads()) : 1;

  // all n steps of group gi (rows a0..a0+g-1); inside a parallel region (spread) every
  // at::parallel_for below runs serially as thread 0
  auto run_group = [&](int64_t gi, Scratch& s) {
    const int64_t a0 = gi * group, g = std::min(group, A - a0);
    std::vector<int64_t> cur(g), cpos(g);
    std::vector<char> done(g, 0), hit(g, 0);
    int64_t live = g;
    for (int64_t step = 0; step < n && live > 0; ++step) {
      at::parallel_for(0, g, 1, [&](int64_t r0, int64_t r1) {
        const int64_t th = at::get_thread_num();
        for (int64_t r = r0; r < r1; ++r) {
          if (done[r]) continue;
          const int64_t a = a0 + r;
          const float ua = greedy ? 0.f : up[a * un + step];
          const int64_t t = pick(lg + a * Vv, Vv, ua, temp, ftop_p, k, lp + a * n + step,
                                 tp + (a * n + step) * kk, s.probs_of(th), s.order_of(th));
          tk[a * n + step] = t;
          ln[a] = step + 1;
          cur[r] = t;
          cpos[r] = pp[a] + step;
          hit[r] = std::find(eos_ids.begin(), eos_ids.end(), t) != eos_ids.end();
        }
      });
      for (int64_t r = 0; r < g; ++r)
        if (!done[r] && hit[r]) {
          done[r] = 1;
          --live;
        }
      if (live == 0 || (step + 1 == n && !decode_last)) break;
      // finished rows are decoded too (their results are never read), so the group stays
      // one block of rows for the projections
      decode_rows(m, a0, g, cur.data(), cpos.data(), slot + step, s, lg + a0 * Vv);
    }
  };
  if (split) {
    Scratch s(m, group, T);
    for (int64_t gi = 0; gi < n_groups; ++gi) run_group(gi, s);
  } else {
    // every thread's share of the scratch: with one group, parallel_for may run it outside a
    // parallel region, and then the group's own parallel_for calls do use the threads
    const int64_t T_all = std::max<int64_t>(1, at::get_num_threads());
    at::parallel_for(0, n_groups, 1, [&](int64_t g0, int64_t g1) {
      Scratch s(m, group, T_all);
      for (int64_t gi = g0; gi < g1; ++gi) run_group(gi, s);
    });
  }
  return {tok_An, logp_An, topk_Ank, len_A, logits};
}

}  // namespace pruneopd
