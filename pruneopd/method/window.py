"""A probe-audited adaptive window (method `window`), after ADWIN (Tang et al. 2026, "Adaptive
Windows for Horizon-Aware On-Policy Distillation", arXiv 2605.28396): train on a short rollout
window H and let periodic full-length probes say whether the tail past H carries signal.

The paper's abstract gives the design (train on short teacher-anchored prefixes; delayed
full-rollout probes audit prefix-full alignment and set the next horizon, with staleness
control) but we found no text of its exact rule, so this is our documented version of it
(docs/method.md, "Probe-audited window"):

- Steps run with cap H (`window_len` at the start), every valid token trained with weight 1.
- Every `window_probe_every`-th step (steps k-1, 2k-1, ...) is a probe: it samples up to
  L_max and the teacher scores every token, but only the first H tokens of each sample are
  trained, so the update is a window step's; the tail is only audited.
- The audit: with `a_t = log pi_T(y_t) - log pi_S(y_t)` the sampled-token OPD signal, the
  probe's tail share `s = sum_{t >= H} |a_t| / sum_t |a_t|` over the global batch's valid tokens.
  `s > window_tail_share`: H <- min(H + window_step, L_max) (the tail carries signal);
  otherwise H <- max(H - window_step, window_min). The new H holds from the next step on.

Our trainer is synchronous, so a probe's verdict is one step old when it applies (no staleness
to control), and a probe is a whole step's batch rather than a few samples: a batched sampler
runs as long as its longest row, so capping the other rows saves no sampling time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from pruneopd.method.base import Method, MethodWeights


def window_mask(mask_BT: torch.Tensor, window: int) -> torch.Tensor:
    """The valid tokens `[B, T]` at response positions < `window` (what a step trains)."""
    pos_T = torch.arange(mask_BT.shape[1], device=mask_BT.device)
    return mask_BT.bool() & (pos_T < window)[None, :]


def tail_signal(logratio_BT: torch.Tensor, mask_BT: torch.Tensor, window: int) -> dict:
    """This batch's OPD signal mass: `tail` = sum of |a_t| over valid tokens at positions >=
    `window`, `total` = over all valid tokens (floats, to be summed over processes).

    Example: a = [[1, -1, 2, 0]], all valid, window 2 -> tail 2, total 4 (share 0.5).
    """
    valid_BT = mask_BT.bool()
    d_BT = torch.where(valid_BT, logratio_BT.double().abs(), 0.0)
    head = float(d_BT[window_mask(valid_BT, window)].sum())
    total = float(d_BT.sum())
    return {"tail": total - head, "total": total}


@dataclass
class ProbedWindow:
    """The window H and its probe schedule (config keys in brackets).

    init_len: H at the start [window_len]; min_len: H's floor [window_min]; max_len: L_max,
    H's ceiling and the probes' cap [max_len]; step: change per audit [window_step];
    probe_every: every k-th step probes (0: never, H stays) [window_probe_every];
    tail_share: grow when the probe's tail share exceeds this [window_tail_share].
    """

    init_len: int
    min_len: int
    max_len: int
    step: int
    probe_every: int
    tail_share: float
    length: int = field(init=False)

    def __post_init__(self) -> None:
        if not 1 <= self.min_len <= self.init_len <= self.max_len:
            raise ValueError(
                "ProbedWindow: need 1 <= min_len <= init_len <= max_len, got "
                f"{self.min_len}, {self.init_len}, {self.max_len}"
            )
        self.length = int(self.init_len)

    def is_probe(self, step: int) -> bool:
        """Step `step` (0-based) samples up to L_max: steps k-1, 2k-1, ... for k = probe_every."""
        return self.probe_every > 0 and (step + 1) % self.probe_every == 0

    def cap(self, step: int) -> int:
        return self.max_len if self.is_probe(step) else self.length

    def update(self, tail: float, total: float) -> dict:
        """A probe's audit: the tail share s = tail / total (0 when total is 0) moves H.
        Returns `share`, `length` (H before) and `next_length`."""
        used = self.length
        share = tail / total if total > 0 else 0.0
        if share > self.tail_share:
            self.length = min(self.length + self.step, self.max_len)
        else:
            self.length = max(self.length - self.step, self.min_len)
        return {"share": share, "length": used, "next_length": self.length}

    def state_dict(self) -> dict:
        return {"length": self.length}

    def load_state_dict(self, state: dict) -> None:
        length = int(state["length"])
        if not self.min_len <= length <= self.max_len:
            raise ValueError(
                f"ProbedWindow.load_state_dict: length must be in [{self.min_len}, "
                f"{self.max_len}], got length={length}"
            )
        self.length = length


class WindowOPD(Method):
    """Method `window`: cap H (L_max on probe steps), the first H tokens of each sample
    trained with weight 1, H moved by each probe's audit of the tail."""

    name = "window"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.window = ProbedWindow(
            cfg.window_len,
            cfg.window_min,
            cfg.max_len,
            cfg.window_step,
            cfg.window_probe_every,
            cfg.window_tail_share,
        )

    def cap(self, step: int) -> int:
        return self.window.cap(step)

    def weigh(self, tw, mask_BT, rewards, logratio_BT) -> MethodWeights:
        H = self.window.length
        train_mask_BT = window_mask(mask_BT, H)
        signal = tail_signal(logratio_BT, mask_BT, H)
        audit = {"window_tail_mass": signal["tail"], "window_mass": signal["total"]}
        return MethodWeights(train_mask_BT.float(), train_mask_BT, audit=audit)

    def learn(self, step, eff_len_all_B, metrics: dict) -> dict:
        out = {"window": self.window.length}
        if self.window.is_probe(step):
            audit = self.window.update(metrics["window_tail_mass"], metrics["window_mass"])
            out = {"window": audit["next_length"], "probe_tail_share": audit["share"]}
        return {**out, "next_cap": self.window.cap(step + 1)}

    def final_cap(self) -> int:
        return self.window.length

    def state_dict(self) -> dict:
        return self.window.state_dict()

    def load_state_dict(self, state: dict | None) -> None:
        self.window.load_state_dict(state)
