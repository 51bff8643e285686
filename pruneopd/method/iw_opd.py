"""IW-OPD (Xie et al. 2026, "On the Position Bias of On-Policy Distillation", arXiv 2606.22600;
TRL's `IWOPDTrainer`): every sample runs to L_max and every token is trained, each with a soft
weight that falls with the student-teacher discrepancy accumulated over its prefix.

With `a_t = log pi_T(y_t) - log pi_S(y_t)` the sampled-token OPD advantage of token t of a
sample (the student's log-prob is the rollout's), `d_t = |a_t|`, the discrepancy before t
`D_<t = sum_{j<t} d_j` and the sample's total `D = max(sum_j d_j, eps)`:

    w_t = 1 + gamma * (1 - D_<t / D)          (gamma `iw_gamma` 0.5, eps `iw_eps` 1e-8)

so the first token gets 1 + gamma, a token after all of the sample's discrepancy gets 1, and the
weight falls where the prefix drifts from the teacher, not at a fixed position. The weights are
constants of the update (no gradient), multiplying the run's per-token loss (`loss`);
`loss: sampled_rkl` is the paper's sampled-token objective `-w_t a_t log pi_S(y_t)` exactly.
docs/method.md, "IW-OPD".
"""

from __future__ import annotations

import torch

from pruneopd.method.base import Method, MethodWeights


def iw_opd_weights(
    logratio_BT: torch.Tensor, mask_BT: torch.Tensor, gamma: float, eps: float = 1e-8
) -> torch.Tensor:
    """IW-OPD's weight `w_t = 1 + gamma * (1 - D_<t / D)` of every token `[B, T]` (0 where not
    valid), from the sampled-token log-ratios `logratio_BT = log pi_T(y_t) - log pi_S(y_t)`.

    Example, gamma 0.5: log-ratios [-1, 2, 0, -1] -> d [1, 2, 0, 1], D 4, D_<t [0, 1, 3, 3]
    -> w [1.5, 1.375, 1.125, 1.125]. A sample without discrepancy (D = 0 < eps) gets 1 + gamma
    on every token.
    """
    valid_BT = mask_BT.bool()
    d_BT = torch.where(valid_BT, logratio_BT.double().abs(), 0.0)
    before_BT = d_BT.cumsum(dim=1) - d_BT  # D_<t, exclusive of token t
    total_B1 = d_BT.sum(dim=1, keepdim=True).clamp(min=eps)
    w_BT = 1.0 + gamma * (1.0 - before_BT / total_B1)
    return torch.where(valid_BT, w_BT, torch.zeros_like(w_BT)).float()


class IWOPD(Method):
    """Method `iw-opd`: full OPD's cap L_max and trained tokens, each token's loss weighted by
    `iw_opd_weights`."""

    name = "iw-opd"

    def weigh(self, tw, mask_BT, rewards, logratio_BT) -> MethodWeights:
        mult_BT = iw_opd_weights(logratio_BT, mask_BT, self.cfg.iw_gamma, self.cfg.iw_eps)
        return MethodWeights(mult_BT, mask_BT)
