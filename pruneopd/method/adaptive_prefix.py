"""Prefix OPD with an adaptive schedule (our extension): P starts at `prefix_len` and grows by
`prefix_step` once the reverse KL over the trained prefix is learnt or has flattened
(`budget.AdaptivePrefix`; docs/method.md, "Adaptive prefix schedule")."""

from __future__ import annotations

from pruneopd.method.budget import AdaptivePrefix
from pruneopd.method.prefix_opd import PrefixOPD


class AdaptivePrefixOPD(PrefixOPD):
    name = "prefix-adaptive"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.prefix = AdaptivePrefix(
            cfg.prefix_len,
            cfg.prefix_len_end or cfg.max_len,
            cfg.prefix_step,
            cfg.prefix_window,
            cfg.prefix_kl_threshold,
            cfg.prefix_flat,
        )

    def cap(self, step: int) -> int:
        return self.prefix.length

    def learn(self, step, eff_len_all_B, metrics: dict) -> dict:
        return {"next_cap": self.prefix.update(metrics["rkl"])["next_length"]}

    def final_cap(self) -> int:
        return self.prefix.length

    def state_dict(self) -> dict:
        return self.prefix.state_dict()

    def load_state_dict(self, state: dict | None) -> None:
        self.prefix.load_state_dict(state)
