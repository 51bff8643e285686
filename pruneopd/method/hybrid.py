"""The hybrid gate (our extension, method `hybrid`): teacher signal on the reliable prefix,
outcome reward on the tail.

Prune-OPD stops trusting the teacher once a sample has drifted (w_t reaches 0), and its
tail then gets only the floor weight w_base. The hybrid method keeps learning there from
the verified answer instead: the `responses_per_prompt` samples of a prompt form a group,
each sample's reward r_i is its answer's correctness, and every tail token (w_t <=
`gate_floor`) is trained with the group-relative advantage (GRPO-style, one update per
batch, so the policy ratio is 1):

    A_i = (r_i - mean_g r) / (std_g r + eps)      (gate_norm: std; population std)
    A_i =  r_i - mean_g r                          (gate_norm: none)
    loss_t = -sg(A_i) * log pi_S(y_t)  for tail tokens, weighted by gate_coef;

the reliable prefix keeps the distillation loss with Prune-OPD's multipliers m_t. An answer
exists only if the sample was not cut, so hybrid samples up to L_max (docs/method.md,
"Hybrid gate").
"""

from __future__ import annotations

import torch

from pruneopd.errors import ConfigError
from pruneopd.method.base import Method, MethodWeights


def group_advantages(
    rewards_B: torch.Tensor, group_size: int, norm: str = "std", eps: float = 1e-6
) -> torch.Tensor:
    """Group-relative advantages `[B]` of rewards `[B]` whose consecutive runs of
    `group_size` samples share a prompt.

    Example: rewards [1, 0, 0, 0], group_size 4, norm "none" -> [0.75, -0.25, -0.25, -0.25];
    norm "std" divides by the population std (0.433) -> [1.732, -0.577, -0.577, -0.577].
    All-equal rewards (and a group of one) give 0.
    """
    if group_size < 1 or rewards_B.numel() % group_size:
        raise ValueError(f"{rewards_B.numel()} rewards do not split into groups of {group_size}")
    if norm not in ("std", "none"):
        raise ValueError(f"gate_norm must be 'std' or 'none', got {norm!r}")
    r_GN = rewards_B.double().view(-1, group_size)
    adv_GN = r_GN - r_GN.mean(dim=1, keepdim=True)
    if norm == "std":
        adv_GN = adv_GN / (r_GN.std(dim=1, unbiased=False, keepdim=True) + eps)
    return adv_GN.reshape(-1).float()


def tail_mask(weights_BT: torch.Tensor, mask_BT: torch.Tensor, floor: float) -> torch.Tensor:
    """Valid tokens at or after the first whose reliability weight is <= `floor` (weights are
    non-increasing, so this is the tail from the gate on)."""
    return mask_BT.bool() & (weights_BT <= floor)


class HybridOPD(Method):
    """Method `hybrid`: Prune-OPD's multipliers on the reliable prefix, the group-relative
    outcome advantage (weighted by `gate_coef`) on the tail where w_t <= `gate_floor`;
    samples up to L_max so that every answer can be checked."""

    name = "hybrid"

    @classmethod
    def check(cls, cfg, *, world: int) -> None:
        if (cfg.prompts_per_step * cfg.responses_per_prompt // world) % cfg.responses_per_prompt:
            raise ConfigError(
                "method=hybrid: each process needs whole groups of "
                f"responses_per_prompt = {cfg.responses_per_prompt} samples"
            )

    def weigh(self, tw, mask_BT, rewards, logratio_BT) -> MethodWeights:
        cfg = self.cfg
        B, T = mask_BT.shape
        tail_BT = tail_mask(tw.weights_BT, mask_BT, cfg.gate_floor)
        rewards_B = torch.tensor(rewards, dtype=torch.float32)
        adv_B = group_advantages(rewards_B, cfg.responses_per_prompt, cfg.gate_norm)
        adv_BT = adv_B.to(mask_BT.device)[:, None].expand(B, T)
        gate_BT = torch.full_like(tw.multipliers_BT, cfg.gate_coef)
        mult_BT = torch.where(tail_BT, gate_BT, tw.multipliers_BT)
        return MethodWeights(mult_BT, mask_BT, tail_BT, adv_BT)
