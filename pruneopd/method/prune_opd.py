"""Prune-OPD as released: tokens weighted by the loss multipliers m_t = w_t + w_base, the cap
moved by the dynamic response budget from the batch's hit ratio; optionally (our extensions)
only the reliable prefix trained (`reliable_prefix_only`) and drifted samples stopped during
sampling (`online_pruning`). docs/method.md, "Reliability weights" and "Dynamic budget"."""

from __future__ import annotations

from pruneopd.method.base import Method, MethodWeights
from pruneopd.method.budget import ResponseBudget


class PruneOPD(Method):
    name = "prune"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.online = cfg.online_pruning
        self.budget = ResponseBudget(
            cfg.init_len,
            cfg.min_len,
            cfg.max_len,
            cfg.budget_step,
            cfg.budget_margin,
            cfg.hit_ratio,
            cfg.patience,
        )

    def cap(self, step: int) -> int:
        return self.budget.length

    def weigh(self, tw, mask_BT, rewards, logratio_BT) -> MethodWeights:
        train_mask_BT = mask_BT & (tw.weights_BT > 0) if self.cfg.reliable_prefix_only else mask_BT
        return MethodWeights(tw.multipliers_BT, train_mask_BT)

    def learn(self, step, eff_len_all_B, metrics: dict) -> dict:
        hit = self.budget.update(eff_len_all_B)
        return {"hit_ratio": hit["hit_ratio"], "next_cap": hit["next_length"]}

    def final_cap(self) -> int:
        return self.budget.length

    def state_dict(self) -> dict:
        return self.budget.state_dict()

    def load_state_dict(self, state: dict | None) -> None:
        self.budget.load_state_dict(state)
