"""What a method decides, as one small interface: the cap of each step's responses, every
token's loss multiplier and whether it is trained, and what it learns from a step.

The trainer builds one `Method` from the config (`pruneopd.method.build_method`) and calls
only these; a new method is one subclass in its own file plus a line in `METHODS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from pruneopd.method.weighing import TokenWeights

if TYPE_CHECKING:
    from pruneopd.config import TrainConfig


@dataclass
class MethodWeights:
    """The method's say on every token: mult_BT the loss multiplier, train_mask_BT the tokens
    trained; for the hybrid gate also tail_BT (outcome-reward tokens) and adv_BT (their
    group-relative advantage); None for the other methods. audit: this process's sums that
    the method learns from (the window's probe), summed over processes into the step's
    metrics before `learn`; None when there are none."""

    mult_BT: torch.Tensor
    train_mask_BT: torch.Tensor
    tail_BT: torch.Tensor | None = None
    adv_BT: torch.Tensor | None = None
    audit: dict[str, float] | None = None


class Method:
    """Full OPD's choices, which the other methods override: every step samples up to L_max,
    every valid token is trained with weight 1, nothing is learnt from a step."""

    name = "full"
    online = False  # the sampler stops samples whose weight reaches `prune_floor`

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg

    @classmethod
    def check(cls, cfg: TrainConfig, *, world: int) -> None:
        """Raise ConfigError when this method cannot run with `cfg` on `world` processes."""

    def cap(self, step: int) -> int:
        """The response-length cap of step `step` (0-based)."""
        return self.cfg.max_len

    def weigh(
        self,
        tw: TokenWeights,
        mask_BT: torch.Tensor,
        rewards: list[float],
        logratio_BT: torch.Tensor,
    ) -> MethodWeights:
        """Every token's multiplier and train mask from the monitor's weights `tw`, the valid
        tokens `mask_BT`, the samples' outcome rewards and the sampled tokens' log-ratios
        `logratio_BT = log pi_T(y_t) - log pi_S(y_t)` (the sampled-token OPD advantage; the
        student's log-prob is the rollout's)."""
        return MethodWeights(mask_BT.float(), mask_BT)

    def learn(self, step: int, eff_len_all_B: torch.Tensor, metrics: dict) -> dict:
        """After step `step`: update from the global batch's effective reliable lengths and the
        step's metrics; returns the metrics it sets (`next_cap`, and `hit_ratio` where the
        method measures it)."""
        return {"next_cap": self.cap(step + 1)}

    def final_cap(self) -> int | None:
        """The cap a moving controller ended at (None when the cap does not move)."""
        return None

    def state_dict(self) -> dict | None:
        """What a checkpoint keeps of the method (its cap controller), or None."""
        return None

    def load_state_dict(self, state: dict | None) -> None:
        pass
