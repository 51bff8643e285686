"""Drift monitor and monotone reliability weights (see docs/method.md).

Pure tensor functions: top-K overlap between student and teacher, prefix-drift events,
the teacher top-p acceptance alternative, and the weights / loss multipliers / effective
reliable lengths derived from the events.
"""

from __future__ import annotations

import torch


def topk_overlap_from_ids(
    student_topk_ids_BTK: torch.Tensor, teacher_topk_ids_BTK: torch.Tensor
) -> torch.Tensor:
    """Overlap `|S ∩ T| / K` of two id sets of size K per position.

    Ids inside each set are assumed distinct (as from `torch.topk`); order does not matter.

    Args:
        student_topk_ids_BTK: student's top-K ids.
        teacher_topk_ids_BTK: teacher's top-K ids (same K).

    Returns:
        overlap_BT: float32 in [0, 1].
    """
    if student_topk_ids_BTK.shape != teacher_topk_ids_BTK.shape:
        raise ValueError(
            "topk_overlap_from_ids: id tensors must have the same shape, got "
            f"{tuple(student_topk_ids_BTK.shape)} and {tuple(teacher_topk_ids_BTK.shape)}"
        )
    k = student_topk_ids_BTK.shape[-1]
    # [B, T, K, 1] == [B, T, 1, K] -> is each student id somewhere in the teacher set?
    same_BTKK = student_topk_ids_BTK.unsqueeze(-1) == teacher_topk_ids_BTK.unsqueeze(-2)
    n_shared_BT = same_BTKK.any(dim=-1).sum(dim=-1)
    return n_shared_BT.float() / k


def topk_overlap(
    student_logits_BTV: torch.Tensor, teacher_logits_BTV: torch.Tensor, k: int
) -> torch.Tensor:
    """Top-K overlap `o_t = |TopK(s_t) ∩ TopK(q_t)| / K` from full logits. Returns overlap_BT."""
    student_ids_BTK = torch.topk(student_logits_BTV, k, dim=-1).indices
    teacher_ids_BTK = torch.topk(teacher_logits_BTV, k, dim=-1).indices
    return topk_overlap_from_ids(student_ids_BTK, teacher_ids_BTK)


def drift_events(overlap_BT: torch.Tensor, mask_BT: torch.Tensor, tau: float) -> torch.Tensor:
    """Prefix-drift events `e_t = 1[o_t < tau]`, False outside the mask. Returns events_BT (bool)."""
    return (overlap_BT < tau) & mask_BT.bool()


def teacher_top_p_accept_events(
    sampled_ids_BT: torch.Tensor,
    teacher_topk_ids_BTK: torch.Tensor,
    teacher_topk_logprobs_BTK: torch.Tensor,
    mask_BT: torch.Tensor,
    top_p: float,
) -> torch.Tensor:
    """Drift events from the teacher's top-p nucleus taken within its top-K.

    The top-K probabilities are renormalised to sum to 1 and sorted in decreasing order; the
    nucleus is the shortest prefix whose cumulative probability is >= top_p (the top-1 id is
    always in it). `e_t = 1` when the sampled token is outside the nucleus (in particular,
    when it is outside the teacher's top-K).

    Args:
        sampled_ids_BT: the student's sampled token ids y_t.
        teacher_topk_ids_BTK: the teacher's top-K ids.
        teacher_topk_logprobs_BTK: the teacher's log-probs at those ids (any normalisation).
        mask_BT: valid response positions.
        top_p: nucleus mass (method.md uses p = tau).

    Returns:
        events_BT: bool, False outside the mask.
    """
    probs_BTK = torch.softmax(teacher_topk_logprobs_BTK.float(), dim=-1)  # renormalise over K
    sorted_probs_BTK, order_BTK = torch.sort(probs_BTK, dim=-1, descending=True)
    sorted_ids_BTK = teacher_topk_ids_BTK.gather(-1, order_BTK)
    # id j is in the nucleus iff the mass strictly before it is still < top_p
    mass_before_BTK = torch.cumsum(sorted_probs_BTK, dim=-1) - sorted_probs_BTK
    in_nucleus_BTK = mass_before_BTK < top_p
    in_nucleus_BTK[..., 0] = True
    hit_BTK = (sorted_ids_BTK == sampled_ids_BT.unsqueeze(-1)) & in_nucleus_BTK
    return ~hit_BTK.any(dim=-1) & mask_BT.bool()


def reliability_weights(
    events_BT: torch.Tensor, mask_BT: torch.Tensor, w_drop: float, w_base: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Monotone reliability weights, loss multipliers and effective reliable lengths.

    C_t = sum_{j <= t, j valid} e_j (current token included);
    w_t = clip(1 - w_drop * C_t, 0, 1); m_t = w_t + w_base; both 0 outside the mask;
    l_i = #{valid t : w_t > 1e-8}.

    The weights are computed in float64 so that e.g. 1 - 0.01 * 100 is exactly 0 and the
    1e-8 threshold is not defeated by float32 rounding; they are returned as float32.

    Args:
        events_BT: drift events (bool or 0/1); events outside the mask are ignored.
        mask_BT: valid response positions (holes anywhere are handled).
        w_drop: delta, the weight lost per drift event.
        w_base: constant added to the weight to form the loss multiplier.

    Returns:
        weights_BT: float32 w_t.
        multipliers_BT: float32 m_t.
        effective_len_B: long l_i.
    """
    valid_BT = mask_BT.bool()
    counted_BT = events_BT.bool() & valid_BT
    count_BT = torch.cumsum(counted_BT.to(torch.float64), dim=-1)  # C_t
    weights_BT = (1.0 - w_drop * count_BT).clamp(0.0, 1.0)
    weights_BT = torch.where(valid_BT, weights_BT, torch.zeros_like(weights_BT))
    multipliers_BT = torch.where(valid_BT, weights_BT + w_base, torch.zeros_like(weights_BT))
    effective_len_B = ((weights_BT > 1e-8) & valid_BT).sum(dim=-1).long()
    return weights_BT.float(), multipliers_BT.float(), effective_len_B


def ran_out_B(weights_BT: torch.Tensor, mask_BT: torch.Tensor) -> torch.Tensor:
    """Per sample: did its reliability run out, i.e. w_t <= 1e-8 at some valid token (the
    1e-8 threshold of `reliability_weights`)? The "drifted" samples of the step metrics and of
    the held-out evaluation.

    Example: weights [[1, 0.5, 0], [1, 0, 0]] with mask [[1, 1, 1], [1, 0, 0]] -> [True, False].
    """
    return ((weights_BT <= 1e-8) & mask_BT.bool()).any(dim=-1)


def monitor(
    metric: str,
    student_topk_ids_BTK: torch.Tensor,
    teacher_topk_ids_BTK: torch.Tensor,
    teacher_topk_logprobs_BTK: torch.Tensor,
    tokens_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    tau: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The drift monitor as the trainer runs it: `(overlap_BT, events_BT)`.

    Overlap is always the top-K overlap (it is logged either way); events come from
    `metric`: "topk_overlap" (overlap < tau) or "teacher_top_p_accept" (sampled token
    outside the teacher's top-p nucleus with p = tau, taken within its top-K).
    """
    overlap_BT = topk_overlap_from_ids(student_topk_ids_BTK, teacher_topk_ids_BTK)
    overlap_BT = torch.where(mask_BT.bool(), overlap_BT, torch.zeros_like(overlap_BT))
    if metric == "topk_overlap":
        events_BT = drift_events(overlap_BT, mask_BT, tau)
    elif metric == "teacher_top_p_accept":
        events_BT = teacher_top_p_accept_events(
            tokens_BT, teacher_topk_ids_BTK, teacher_topk_logprobs_BTK, mask_BT, tau
        )
    else:
        raise ValueError(f"unknown drift metric {metric!r}")
    return overlap_BT, events_BT
