// Causal self-attention over whole sequences, forward and backward (causal_attention.cpp).
#pragma once

#include <torch/extension.h>

#include <vector>

namespace pruneopd {

bool causal_attention_has_blas();

std::vector<torch::Tensor> causal_attention_fwd(torch::Tensor q, torch::Tensor k,
                                                torch::Tensor v, double scale);

std::vector<torch::Tensor> causal_attention_bwd(torch::Tensor q, torch::Tensor k,
                                                torch::Tensor v, torch::Tensor o,
                                                torch::Tensor lse, torch::Tensor dout,
                                                double scale);

}  // namespace pruneopd
