"""Teacher scoring of sampled responses, whole or chunk by chunk with the teacher's KV cache.

For response position t the teacher distribution is q_t = log pi_T(. | x, y_<t): its
next-token prediction after prompt + y_<t. Full [B, T, V] float32 logits are never built: the
decoder's final hidden states at valid response positions are flattened to [N, H] and pushed
through the lm_head `position_chunk` rows at a time, keeping only the sampled token's log-prob,
the teacher's top-K and the log-probs at given candidate ids.

Assumes logits = lm_head(final hidden state), true of Llama, Qwen2/3 and Mistral models
(models with final logit soft-capping or logit scaling are refused).

Shapes: B = samples, A = samples in a chunk, T = longest response, C = chunk length,
L = sequence length, H = hidden size, V = vocabulary, K = top-K / candidates, N = valid tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import pad_sequence
from transformers import DynamicCache

from pruneopd.engines import attention, decode, fused
from pruneopd.engines.rollout import left_pad, pick_engine
from pruneopd.models import cache_kwarg


@dataclass
class TokenScores:
    """Teacher scores at response positions; zeros where the position is not valid.

    token_logprobs_BT: [B, T] float32, log q_t[y_t] of the sampled token.
    topk_ids_BTK: [B, T, K] long, the teacher's own top-K ids (descending log-prob).
    topk_logprobs_BTK: [B, T, K] float32, their log-probs.
    candidate_logprobs_BTK: [B, T, Kc] float32, log q_t at given candidate ids, or None.
    hidden_NH: [N, H] the teacher's final hidden states at the N valid positions (row-major
        over [B, T]), from which the full-vocabulary losses take q_t without a second teacher
        forward; None from the incremental scorer.
    """

    token_logprobs_BT: torch.Tensor
    topk_ids_BTK: torch.Tensor
    topk_logprobs_BTK: torch.Tensor
    candidate_logprobs_BTK: torch.Tensor | None = None
    hidden_NH: torch.Tensor | None = None


def scores_from_hidden(
    hidden_BTH: torch.Tensor,
    lm_head: torch.nn.Module,
    tokens_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    *,
    k: int,
    candidate_ids_BTK: torch.Tensor | None = None,
    position_chunk: int = 256,
) -> TokenScores:
    """Score tokens_BT from the hidden states predicting them: hidden_BTH[b, t] -> tokens_BT[b, t].

    Only positions with mask_BT True are computed, position_chunk of them at a time, so peak
    memory is [position_chunk, V] float32 whatever B and T are.
    """
    B, T = tokens_BT.shape
    device = hidden_BTH.device
    mask_BT = mask_BT.to(device=device, dtype=torch.bool)
    hidden_NH = hidden_BTH[mask_BT]
    tokens_N = tokens_BT.to(device)[mask_BT]
    N = tokens_N.shape[0]
    token_lp_N = torch.zeros(N, dtype=torch.float32, device=device)
    topk_ids_NK = torch.zeros((N, k), dtype=torch.long, device=device)
    topk_lp_NK = torch.zeros((N, k), dtype=torch.float32, device=device)
    cand_ids_NK = cand_lp_NK = None
    if candidate_ids_BTK is not None:
        cand_ids_NK = candidate_ids_BTK.to(device)[mask_BT]
        cand_lp_NK = torch.zeros(cand_ids_NK.shape, dtype=torch.float32, device=device)
    for n0 in range(0, N, position_chunk):
        rows = slice(n0, n0 + position_chunk)
        logp_nV = torch.log_softmax(lm_head(hidden_NH[rows]).float(), dim=-1)
        token_lp_N[rows] = logp_nV.gather(-1, tokens_N[rows, None])[:, 0]
        topk_lp_NK[rows], topk_ids_NK[rows] = logp_nV.topk(k, dim=-1)
        if cand_ids_NK is not None:
            cand_lp_NK[rows] = logp_nV.gather(-1, cand_ids_NK[rows])

    def unflatten(values_N: torch.Tensor) -> torch.Tensor:
        out = torch.zeros((B, T, *values_N.shape[1:]), dtype=values_N.dtype, device=device)
        out[mask_BT] = values_N
        return out

    return TokenScores(
        token_logprobs_BT=unflatten(token_lp_N),
        topk_ids_BTK=unflatten(topk_ids_NK),
        topk_logprobs_BTK=unflatten(topk_lp_NK),
        candidate_logprobs_BTK=None if cand_lp_NK is None else unflatten(cand_lp_NK),
        hidden_NH=hidden_NH,
    )


@torch.no_grad()
def score_responses(
    teacher: torch.nn.Module,
    prompts: list[list[int]],
    responses: list[list[int]],
    *,
    k: int,
    candidate_ids: torch.Tensor | list[torch.Tensor] | None = None,
    pad_id: int,
    position_chunk: int = 256,
) -> TokenScores:
    """Score whole responses with one forward over right-padded prompt + response.

    candidate_ids: [B, T', Kc] long with T' >= T (e.g. Rollout.student_topk_ids_BTK()), or a list
    of [T_i, Kc] tensors (Rollout.student_topk_ids). Returns [B, T, ...] with T = max len(response).
    """
    decoder, lm_head = _teacher_parts(teacher)
    device = next(teacher.parameters()).device
    B = len(prompts)
    if len(responses) != B:
        raise ValueError(f"{B} prompts but {len(responses)} responses")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    prompt_lens_B = torch.tensor([len(p) for p in prompts], device=device)
    resp_lens_B = torch.tensor([len(r) for r in responses], device=device)
    seqs = [torch.tensor(p + r, dtype=torch.long) for p, r in zip(prompts, responses, strict=True)]
    input_ids_BL = pad_sequence(seqs, batch_first=True, padding_value=pad_id).to(device)
    L = input_ids_BL.shape[1]
    # Right padding + causal attention: padding after a row's last token cannot affect it,
    # so no attention mask is needed, which lets SDPA take its fast causal path.
    with attention.whole_sequence(teacher):  # the causal kernel where available
        hidden_BLH = decoder(input_ids=input_ids_BL, use_cache=False).last_hidden_state

    T = int(resp_lens_B.max()) if B else 0
    pos_T = torch.arange(T, device=device)
    mask_BT = pos_T < resp_lens_B[:, None]
    # Response token t sits at index prompt_len + t and is predicted from index prompt_len + t - 1.
    src_BT = (prompt_lens_B[:, None] - 1 + pos_T).clamp(max=L - 1)
    hidden_BTH = hidden_BLH.gather(1, src_BT[..., None].expand(-1, -1, hidden_BLH.shape[-1]))
    tokens_BT = input_ids_BL.gather(1, (src_BT + 1).clamp(max=L - 1))
    if isinstance(candidate_ids, list):
        candidate_ids = pad_sequence(candidate_ids, batch_first=True, padding_value=0)
    if candidate_ids is not None:
        if candidate_ids.shape[1] < T:
            raise ValueError(f"candidate_ids cover {candidate_ids.shape[1]} positions, need {T}")
        candidate_ids = candidate_ids[:, :T]
    return scores_from_hidden(
        hidden_BTH,
        lm_head,
        tokens_BT,
        mask_BT,
        k=k,
        candidate_ids_BTK=candidate_ids,
        position_chunk=position_chunk,
    )


class IncrementalScorer:
    """Scores responses chunk by chunk as they are sampled, reusing the teacher's KV cache.

    The constructor prefills the cache with the left-padded prompts; that gives q_0. Each
    `score_chunk` feeds the chunk's tokens y_s..y_{s+C-1}, which yields q_{s+1}..q_{s+C}: the
    chunk is scored with q_s..q_{s+C-1} and the final hidden state is kept for the next call.
    Samples left out of a call are dropped from the cache for good, as the rollout drops them.
    """

    def __init__(
        self,
        teacher: torch.nn.Module,
        prompts: list[list[int]],
        *,
        k: int,
        pad_id: int,
        position_chunk: int = 256,
        max_new_tokens: int | None = None,
        engine: str = "auto",
    ):
        """`max_new_tokens` (the rollout's cap) lets the chunks run on a preallocated cache:
        engine "fused" (each chunk one call into the compiled kernel, `fused.FusedDecoder`),
        "lean" (`decode.LeanDecoder`, PyTorch operators) or "auto" (the first of those the
        teacher supports); without it, or with engine "hf", each chunk is a Hugging Face
        forward on a growing cache."""
        if engine not in ("auto", "fused", "lean", "hf"):
            raise ValueError(f"engine must be auto, fused, lean or hf, got {engine!r}")
        if engine in ("fused", "lean") and max_new_tokens is None:
            raise ValueError(f"engine={engine!r} needs max_new_tokens")
        if engine == "auto":
            engine = "hf" if max_new_tokens is None else pick_engine(teacher, "auto")
        else:
            engine = pick_engine(teacher, engine)  # a ValueError when the teacher is unsupported
        self.engine = engine
        self.decoder, self.lm_head = _teacher_parts(teacher)
        self.k, self.pad_id, self.position_chunk = k, pad_id, position_chunk
        self.device = next(teacher.parameters()).device
        input_ids_BP, attention_mask_BP, position_ids_BP = left_pad(prompts, pad_id, self.device)
        self.cache = DynamicCache(config=teacher.config)
        with torch.no_grad():
            hidden_BPH = self.decoder(
                input_ids=input_ids_BP,
                attention_mask=attention_mask_BP,
                position_ids=position_ids_BP,
                **{cache_kwarg(self.decoder): self.cache},
                use_cache=True,
            ).last_hidden_state
        self.sample_ids_A = torch.arange(len(prompts), device=self.device)
        self.attention_mask_AL = attention_mask_BP
        self.next_pos_A = attention_mask_BP.sum(-1)
        self.last_hidden_AH = hidden_BPH[:, -1]
        self.lean = None  # the teacher's cache in LeanDecoder's preallocated layout
        if engine != "hf":
            P = input_ids_BP.shape[1]
            cls = fused.FusedDecoder if engine == "fused" else decode.LeanDecoder
            self.lean = cls(teacher, self.cache, P, max_new_tokens)
            self.lean.read_padding(attention_mask_BP)
            self.cache = None
        self.t = 0  # response tokens fed so far

    @torch.no_grad()
    def score_chunk(
        self,
        sample_ids_A: torch.Tensor,
        tokens_AC: torch.Tensor,
        mask_AC: torch.Tensor,
        candidate_ids_ACK: torch.Tensor | None = None,
    ) -> TokenScores:
        """Score the next C response tokens of the samples sample_ids_A (increasing ids, a subset
        of the previous call's). Positions with mask_AC False (after EOS) score as zeros."""
        self._keep(sample_ids_A.to(self.device))
        mask_AC = mask_AC.to(device=self.device, dtype=torch.bool)
        tokens_AC = tokens_AC.to(self.device).masked_fill(~mask_AC, self.pad_id)
        C = tokens_AC.shape[1]
        if self.lean is not None:  # tokens after EOS are attended by no valid position
            hidden_ACH = self.lean.forward_chunk(tokens_AC, self.next_pos_A, self.t)
        else:
            self.attention_mask_AL = torch.cat(
                [self.attention_mask_AL, mask_AC.to(self.attention_mask_AL.dtype)], dim=1
            )
            hidden_ACH = self.decoder(
                input_ids=tokens_AC,
                attention_mask=self.attention_mask_AL,
                position_ids=self.next_pos_A[:, None] + torch.arange(C, device=self.device),
                **{cache_kwarg(self.decoder): self.cache},
                use_cache=True,
            ).last_hidden_state
        self.t += C
        predicting_ACH = torch.cat([self.last_hidden_AH[:, None], hidden_ACH[:, :-1]], dim=1)
        self.last_hidden_AH = hidden_ACH[:, -1]
        self.next_pos_A = self.next_pos_A + C
        return scores_from_hidden(
            predicting_ACH,
            self.lm_head,
            tokens_AC,
            mask_AC,
            k=self.k,
            candidate_ids_BTK=candidate_ids_ACK,
            position_chunk=self.position_chunk,
        )

    def _keep(self, sample_ids_A: torch.Tensor) -> None:
        """Restrict the cache and state to sample_ids_A."""
        if torch.equal(sample_ids_A, self.sample_ids_A):
            return
        idx_A = torch.searchsorted(self.sample_ids_A, sample_ids_A)
        valid = bool((idx_A < len(self.sample_ids_A)).all()) and torch.equal(
            self.sample_ids_A[idx_A.clamp(max=len(self.sample_ids_A) - 1)], sample_ids_A
        )
        if not valid or bool((idx_A.diff() <= 0).any()):
            raise ValueError("sample_ids_A must be increasing and a subset of the previous call's")
        if self.lean is not None:
            self.lean.select(idx_A)
        else:
            self.cache.batch_select_indices(idx_A)
        self.sample_ids_A = sample_ids_A
        self.attention_mask_AL = self.attention_mask_AL[idx_A]
        self.next_pos_A = self.next_pos_A[idx_A]
        self.last_hidden_AH = self.last_hidden_AH[idx_A]


def _teacher_parts(teacher: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(decoder returning last_hidden_state, lm_head) of a causal LM with plain lm_head logits."""
    config = teacher.config.get_text_config(decoder=True)
    if (
        getattr(config, "final_logit_softcapping", None)
        or getattr(config, "logits_scaling", 1.0) != 1.0
    ):
        raise ValueError("teachers with logit soft-capping or scaling are not supported")
    return teacher.get_decoder(), teacher.get_output_embeddings()
