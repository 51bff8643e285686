"""Per-token distillation losses (see docs/method.md, "Per-token objectives").

Every loss here is a pure tensor function that returns a per-token loss `[B, T]` with no
masking or averaging; the caller multiplies by the loss multiplier `m_t` and reduces with
`masked_token_mean`. Log-softmax is always taken in (at least) float32.

Notation: s = log p_S (student), q = log p_T (teacher), sg = stop-gradient (detach).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """Return `x` in float32 unless it is already float32/float64 (bf16/fp16 get upcast)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _log_softmax(logits_BTV: torch.Tensor) -> torch.Tensor:
    return F.log_softmax(_upcast(logits_BTV), dim=-1)


def sampled_rkl(
    student_logprobs_BT: torch.Tensor, teacher_logprobs_BT: torch.Tensor
) -> torch.Tensor:
    """Single-sample reverse-KL policy-gradient loss at the sampled tokens.

    Args:
        student_logprobs_BT: log p_S(y_t) of the sampled tokens, with grad.
        teacher_logprobs_BT: log p_T(y_t) of the same tokens (treated as constant).

    Returns:
        loss_BT: `-sg(A_t) * s_t[y_t]` with advantage `A_t = -(s_t[y_t] - q_t[y_t])`.
        Its value is `(s - q) * s` and its gradient w.r.t. s is `(s - q)`.
    """
    s_BT = _upcast(student_logprobs_BT)
    q_BT = _upcast(teacher_logprobs_BT)
    adv_BT = -(s_BT - q_BT).detach()  # A = -(log p_S - log p_T), no discount, no baseline
    return -adv_BT * s_BT


def topk_rkl_from_candidates(
    student_logprobs_BTK: torch.Tensor, teacher_logprobs_BTK: torch.Tensor
) -> torch.Tensor:
    """Top-K reverse-KL loss from log-probs already gathered at K candidate ids.

    Both inputs are full-vocabulary log-probs (not renormalised) at the same candidate ids,
    normally the student's top-K ("only_stu" candidates).

    Args:
        student_logprobs_BTK: s_t[v] for the K candidates, with grad.
        teacher_logprobs_BTK: q_t[v] for the same candidates (treated as constant).

    Returns:
        loss_BT: `-sum_v sg(r_v) * s[v]` with `r_v = -(s[v] - q[v]) * p~_S(v)`, where
        `p~_S(v) = exp(s[v]) / sum_u exp(s[u])` is renormalised over the K candidates.
    """
    s_BTK = _upcast(student_logprobs_BTK)
    q_BTK = _upcast(teacher_logprobs_BTK)
    p_renorm_BTK = torch.softmax(s_BTK.detach(), dim=-1)  # "student_p" weighting, p~_S
    reward_BTK = (-(s_BTK - q_BTK) * p_renorm_BTK).detach()  # r_v = -(s_v - q_v) p~_S(v)
    return -(reward_BTK * s_BTK).sum(dim=-1)


def topk_rkl(
    student_logits_BTV: torch.Tensor, teacher_logits_BTV: torch.Tensor, k: int
) -> torch.Tensor:
    """Top-K reverse-KL loss (Prune-OPD default) over the student's top-k ids.

    Args:
        student_logits_BTV: student logits, with grad.
        teacher_logits_BTV: teacher logits over the same vocabulary.
        k: number of candidates (the student's top-k by logit), 1 <= k <= V.

    Returns:
        loss_BT: see `topk_rkl_from_candidates`; s and q are full-vocabulary log-softmaxes.
    """
    s_BTV = _log_softmax(student_logits_BTV)
    q_BTV = _log_softmax(teacher_logits_BTV)
    ids_BTK = torch.topk(student_logits_BTV.detach(), k, dim=-1).indices
    return topk_rkl_from_candidates(s_BTV.gather(-1, ids_BTK), q_BTV.gather(-1, ids_BTK))


def _kl(logp_BTV: torch.Tensor, logq_BTV: torch.Tensor) -> torch.Tensor:
    # KL[p || q] = E_p[log p - log q] = sum_v p_v (log p_v - log q_v)
    return (logp_BTV.exp() * (logp_BTV - logq_BTV)).sum(dim=-1)


def full_rkl(student_logits_BTV: torch.Tensor, teacher_logits_BTV: torch.Tensor) -> torch.Tensor:
    """Exact reverse KL, KL(p_S || p_T), per token. Returns loss_BT. Logits must be finite."""
    return _kl(_log_softmax(student_logits_BTV), _log_softmax(teacher_logits_BTV))


def forward_kl(student_logits_BTV: torch.Tensor, teacher_logits_BTV: torch.Tensor) -> torch.Tensor:
    """Exact forward KL, KL(p_T || p_S), per token. Returns loss_BT. Logits must be finite."""
    return _kl(_log_softmax(teacher_logits_BTV), _log_softmax(student_logits_BTV))


def jsd(
    student_logits_BTV: torch.Tensor, teacher_logits_BTV: torch.Tensor, beta: float
) -> torch.Tensor:
    """Generalised Jensen-Shannon divergence per token, with TRL's `generalized_jsd_loss` convention.

    - beta == 0: KL(p_T || p_S) (forward KL);
    - beta == 1: KL(p_S || p_T) (reverse KL);
    - otherwise: m = (1 - beta) p_S + beta p_T and loss = beta KL(p_T || m) + (1 - beta) KL(p_S || m).

    Note that, as in TRL, the 0 < beta < 1 branch tends to 0 (not to the forward KL) as beta -> 0.
    No temperature. Returns loss_BT.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"jsd: beta must be in [0, 1], got beta={beta}")
    s_BTV = _log_softmax(student_logits_BTV)
    q_BTV = _log_softmax(teacher_logits_BTV)
    if beta == 0.0:
        return _kl(q_BTV, s_BTV)
    if beta == 1.0:
        return _kl(s_BTV, q_BTV)
    # log m = logsumexp(log p_S + log(1 - beta), log p_T + log(beta))
    logm_BTV = torch.logaddexp(s_BTV + math.log(1.0 - beta), q_BTV + math.log(beta))
    return beta * _kl(q_BTV, logm_BTV) + (1.0 - beta) * _kl(s_BTV, logm_BTV)


def _chunk_loss(
    fn: Callable[..., torch.Tensor],
    kwargs: dict,
    student_hidden_CH: torch.Tensor,
    student_head_VH: torch.Tensor,
    teacher_hidden_CH: torch.Tensor,
    teacher_head_VH: torch.Tensor,
) -> torch.Tensor:
    student_logits_1CV = (student_hidden_CH @ student_head_VH.T).unsqueeze(0)
    teacher_logits_1CV = (teacher_hidden_CH @ teacher_head_VH.T).unsqueeze(0)
    return fn(student_logits_1CV, teacher_logits_1CV, **kwargs).squeeze(0)


def chunked_token_loss(
    fn: Callable[..., torch.Tensor],
    student_hidden_NH: torch.Tensor,
    student_head_VH: torch.Tensor,
    teacher_hidden_NH: torch.Tensor,
    teacher_head_VH: torch.Tensor,
    chunk_size: int,
    **kwargs,
) -> torch.Tensor:
    """Apply a logits-based loss (`full_rkl`, `forward_kl`, `jsd`, `topk_rkl`) chunk by chunk.

    For each chunk of C tokens, logits = hidden_CH @ head_VH.T for both models and
    `fn(student_logits_1CV, teacher_logits_1CV, **kwargs)` gives the chunk's losses. Each chunk
    runs under `torch.utils.checkpoint` (non-reentrant), so only the inputs are kept for
    backward and the `[C, V]` logits are recomputed there: neither pass ever holds more than
    one chunk's logits, never the full `[N, V]` of both models.

    Args:
        fn: per-token loss taking `(student_logits_BTV, teacher_logits_BTV, **kwargs)`.
        student_hidden_NH: student final hidden states of the N scored tokens.
        student_head_VH: student output embedding (LM head weight).
        teacher_hidden_NH: teacher final hidden states of the same N tokens.
        teacher_head_VH: teacher LM head weight (same vocabulary V).
        chunk_size: tokens per chunk, >= 1.
        **kwargs: extra arguments for `fn` (e.g. `k=16`, `beta=0.5`).

    Returns:
        loss_N: per-token loss, equal (values and gradients) to the unchunked computation.
    """
    if chunk_size < 1:
        raise ValueError(
            f"chunked_token_loss: chunk_size must be >= 1, got chunk_size={chunk_size}"
        )
    n_tokens = student_hidden_NH.shape[0]
    if teacher_hidden_NH.shape[0] != n_tokens:
        raise ValueError(
            f"chunked_token_loss: student has {n_tokens} tokens, teacher {teacher_hidden_NH.shape[0]}"
        )
    if student_head_VH.shape[0] != teacher_head_VH.shape[0]:
        raise ValueError(
            f"chunked_token_loss: vocab sizes differ, student {student_head_VH.shape[0]}"
            f" vs teacher {teacher_head_VH.shape[0]}"
        )
    chunk_fn = functools.partial(_chunk_loss, fn, kwargs)
    losses = []
    for start in range(0, n_tokens, chunk_size):
        end = start + chunk_size
        losses.append(
            checkpoint(
                chunk_fn,
                student_hidden_NH[start:end],
                student_head_VH,
                teacher_hidden_NH[start:end],
                teacher_head_VH,
                use_reentrant=False,
            )
        )
    if not losses:
        return _upcast(student_hidden_NH).sum(dim=-1)  # empty [0], still attached to the graph
    return torch.cat(losses)


def masked_token_mean(
    loss_BT: torch.Tensor, multiplier_BT: torch.Tensor | None, mask_BT: torch.Tensor
) -> torch.Tensor:
    """Token-mean of `loss * multiplier` over valid tokens.

    Args:
        loss_BT: per-token loss.
        multiplier_BT: loss multiplier m_t (None means 1 everywhere).
        mask_BT: 1/True on valid response tokens, 0/False on prompt and padding.

    Returns:
        Scalar `sum_t loss_t m_t mask_t / max(sum_t mask_t, 1)`; 0 when nothing is valid.
        Masked positions are excluded with `where`, so NaN/inf there cannot leak in.
    """
    valid_BT = mask_BT.bool()
    weighted_BT = loss_BT if multiplier_BT is None else loss_BT * multiplier_BT
    total = torch.where(valid_BT, weighted_BT, torch.zeros_like(weighted_BT)).sum()
    return total / valid_BT.sum().clamp(min=1).to(total.dtype)
