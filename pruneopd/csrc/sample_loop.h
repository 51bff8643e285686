// Several sampled tokens per call (sample_loop.cpp), for pruneopd.fused.
#pragma once

#include <torch/extension.h>

#include <vector>

namespace pruneopd {

// From the logits [A, V] of each active sample's next token, n times: pick the token (argmax
// at temperature 0, else the inverse CDF at uniforms_An[a, step] within the top_p nucleus),
// record its temperature-1 log-prob and the top-k ids, then (unless it was a stop id in
// eos_ids: EOS, a chat template's end-of-turn token; or the last
// step without decode_last) decode it at cache slot slot + step. Returns tokens [A, n] (long),
// log-probs [A, n], top-k ids [A, n, max(k, 1)] (int32), tokens produced [A] (long: n, or up
// to the EOS), and the logits [A, V] after the last decode (valid for the samples that did
// not stop). weights as forward_tokens' (fused_decode.cpp); head [V, H], embed [vocab, H].
// The samples run in groups of `group` rows: spread over the threads (split = false) or one
// group after the other with each step split over the threads (split = true).
std::vector<torch::Tensor> sample_steps(
    torch::Tensor logits_AV, const std::vector<torch::Tensor>& weights, torch::Tensor head_VH,
    torch::Tensor embed, torch::Tensor K, torch::Tensor V, torch::Tensor pos_A,
    torch::Tensor cos_SD, torch::Tensor sin_SD, torch::Tensor attend_AS,
    torch::Tensor uniforms_An, int64_t slot, int64_t n, double temperature, double top_p,
    int64_t k, const std::vector<int64_t>& eos_ids, bool decode_last, int64_t group, bool split,
    int64_t n_heads, int64_t n_kv, double eps, double scale);

}  // namespace pruneopd
