"""From the teacher's scores to every token's reliability weight: the drift settings of a run
as one value, and the one function that every user of the monitor calls (the step, the
held-out evaluation, online pruning, the test bed's card, the benchmarks).

    o_t = |TopK'(s_t) ∩ TopK'(q_t)| / K'      e_t = 1[o_t < tau]   (or the top-p acceptance)
    w_t = clip(1 - w_drop * sum_{j<=t} e_j, 0, 1)      m_t = w_t + w_base

docs/method.md, "Drift monitor" and "Reliability weights".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from pruneopd.method.drift import monitor, reliability_weights


@dataclass(frozen=True)
class DriftSettings:
    """The drift monitor's and the weights' settings (config keys in brackets).

    metric: "topk_overlap" or "teacher_top_p_accept" [drift_metric].
    k: K' the monitor compares, a prefix of both models' sorted top-K lists [drift_k, or topk].
    tau: event threshold on the overlap (or the teacher's nucleus mass) [tau].
    w_drop: reliability lost per event [w_drop]; w_base: loss-multiplier floor [w_base].
    """

    metric: str
    k: int
    tau: float
    w_drop: float
    w_base: float

    @classmethod
    def from_config(cls, cfg) -> DriftSettings:
        return cls(cfg.drift_metric, cfg.monitor_k, cfg.tau, cfg.w_drop, cfg.w_base)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class TokenWeights:
    """What the monitor and the weights say about every response token (zeros where invalid).

    overlap_BT: float32 top-K' overlap o_t; events_BT: bool e_t; weights_BT: float32 w_t;
    multipliers_BT: float32 m_t; eff_len_B: long, the effective reliable length l_i.
    agree_BT: bool, the student's and the teacher's top-1 are the same token (method `auto`'s
    signal); None where several teachers' weights are mixed.
    """

    overlap_BT: torch.Tensor
    events_BT: torch.Tensor
    weights_BT: torch.Tensor
    multipliers_BT: torch.Tensor
    eff_len_B: torch.Tensor
    agree_BT: torch.Tensor | None = None


def weigh_tokens(
    drift: DriftSettings,
    student_topk_ids_BTK: torch.Tensor,
    teacher_topk_ids_BTK: torch.Tensor,
    teacher_topk_logprobs_BTK: torch.Tensor,
    tokens_BT: torch.Tensor,
    mask_BT: torch.Tensor,
) -> TokenWeights:
    """The monitor over the first `drift.k` of both sorted top-K lists, then the monotone
    weights. Shapes: [B, T, K] with K >= drift.k; tokens_BT the sampled ids, mask_BT valid."""
    k = drift.k
    overlap_BT, events_BT = monitor(
        drift.metric,
        student_topk_ids_BTK[..., :k],
        teacher_topk_ids_BTK[..., :k],
        teacher_topk_logprobs_BTK[..., :k],
        tokens_BT,
        mask_BT,
        drift.tau,
    )
    weights_BT, multipliers_BT, eff_len_B = reliability_weights(
        events_BT, mask_BT, drift.w_drop, drift.w_base
    )
    agree_BT = (student_topk_ids_BTK[..., 0] == teacher_topk_ids_BTK[..., 0]) & mask_BT.bool()
    return TokenWeights(overlap_BT, events_BT, weights_BT, multipliers_BT, eff_len_B, agree_BT)
