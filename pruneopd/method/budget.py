"""Dynamic response budget: the global response-length cap L (see docs/method.md).

After each step, with b = max(L_min, L - margin) and h = mean_i 1[l_i >= b] over the
effective reliable lengths l_i of the step's samples:
  h >= h_min  ->  L <- min(L + step, L_max), misses <- 0
  otherwise   ->  misses += 1; when misses == patience: L <- max(L - step, L_min), misses <- 0
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


@dataclass
class ResponseBudget:
    """Global response-length cap that grows while samples stay reliable up to the cap.

    Attributes:
        init_len: initial cap L_init.
        min_len: lower bound L_min (>= 1).
        max_len: upper bound L_max.
        step: amount the cap grows or shrinks by (>= 0).
        margin: the hit boundary is `max(min_len, length - margin)` (>= 0).
        hit_ratio: threshold h_min in [0, 1] on the fraction of samples that hit the boundary.
        patience: consecutive misses before the cap shrinks (>= 1).
        length: current cap L (starts at init_len).
        misses: consecutive steps with h < hit_ratio since the last change or hit.
    """

    init_len: int
    min_len: int
    max_len: int
    step: int
    margin: int
    hit_ratio: float
    patience: int
    length: int = field(init=False)
    misses: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if self.min_len < 1:
            raise ValueError(f"ResponseBudget: min_len must be >= 1, got min_len={self.min_len}")
        if self.max_len < self.min_len:
            raise ValueError(
                f"ResponseBudget: max_len must be >= min_len, got max_len={self.max_len}, "
                f"min_len={self.min_len}"
            )
        if not self.min_len <= self.init_len <= self.max_len:
            raise ValueError(
                f"ResponseBudget: init_len must be in [min_len, max_len] = "
                f"[{self.min_len}, {self.max_len}], got init_len={self.init_len}"
            )
        if self.step < 0:
            raise ValueError(f"ResponseBudget: step must be >= 0, got step={self.step}")
        if self.margin < 0:
            raise ValueError(f"ResponseBudget: margin must be >= 0, got margin={self.margin}")
        if not 0.0 <= self.hit_ratio <= 1.0:
            raise ValueError(
                f"ResponseBudget: hit_ratio must be in [0, 1], got hit_ratio={self.hit_ratio}"
            )
        if self.patience < 1:
            raise ValueError(f"ResponseBudget: patience must be >= 1, got patience={self.patience}")
        self.length = int(self.init_len)
        self.misses = 0

    def boundary(self) -> int:
        """Hit boundary b = max(min_len, length - margin) for the current cap."""
        return max(self.min_len, self.length - self.margin)

    def update(self, effective_len_B: torch.Tensor | Sequence[int]) -> dict:
        """Update the cap from the step's effective reliable lengths l_i.

        Args:
            effective_len_B: l_i per sample (tensor or list of ints); empty means h = 0.

        Returns:
            dict with `hit_ratio` (measured h), `boundary` (b), `length` (the cap used for this
            step), `next_length` (the cap for the next step), `misses` (after the update),
            `num_hits` and `num_samples`.
        """
        if isinstance(effective_len_B, torch.Tensor):
            lengths = [int(x) for x in effective_len_B.reshape(-1).tolist()]
        else:
            lengths = [int(x) for x in effective_len_B]
        used_length = self.length
        boundary = self.boundary()
        num_hits = sum(1 for x in lengths if x >= boundary)
        hit_ratio = num_hits / len(lengths) if lengths else 0.0
        if hit_ratio >= self.hit_ratio:
            self.length = min(self.length + self.step, self.max_len)
            self.misses = 0
        else:
            self.misses += 1
            if self.misses >= self.patience:
                self.length = max(self.length - self.step, self.min_len)
                self.misses = 0
        return {
            "hit_ratio": hit_ratio,
            "boundary": boundary,
            "length": used_length,
            "next_length": self.length,
            "misses": self.misses,
            "num_hits": num_hits,
            "num_samples": len(lengths),
        }

    def state_dict(self) -> dict:
        """Mutable state for checkpointing (the configuration is not included)."""
        return {"length": self.length, "misses": self.misses}

    def load_state_dict(self, state: dict) -> None:
        """Restore `length` and `misses`; the length must fit this budget's [min_len, max_len]."""
        length, misses = int(state["length"]), int(state["misses"])
        if not self.min_len <= length <= self.max_len:
            raise ValueError(
                f"ResponseBudget.load_state_dict: length must be in [{self.min_len}, "
                f"{self.max_len}], got length={length}"
            )
        if not 0 <= misses < self.patience:
            raise ValueError(
                f"ResponseBudget.load_state_dict: misses must be in [0, {self.patience}), "
                f"got misses={misses}"
            )
        self.length, self.misses = length, misses


@dataclass
class AdaptivePrefix:
    """Prefix OPD's prefix length P, grown when the trained prefix stops teaching.

    After each step the step's mean teacher-student reverse KL over the trained prefix is
    recorded (since the last change of P). Once `window` values are in: with m1, m2 the means
    of the window's first and second halves,
      mean(window) <= kl_threshold            (the prefix is learnt)      or
      m1 - m2 <= flat * m1                    (the KL has flattened)
      ->  P <- min(P + step, max_len), the record restarts;
    otherwise P holds. docs/method.md, "Adaptive prefix schedule".
    """

    init_len: int
    max_len: int
    step: int
    window: int
    kl_threshold: float
    flat: float
    length: int = field(init=False)
    kls: list = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        if not 1 <= self.init_len <= self.max_len:
            raise ValueError(
                f"AdaptivePrefix: need 1 <= init_len <= max_len, got {self.init_len}, {self.max_len}"
            )
        if self.window < 2:
            raise ValueError(f"AdaptivePrefix: window must be >= 2, got {self.window}")
        self.length = int(self.init_len)
        self.kls = []

    def update(self, kl: float) -> dict:
        """Record this step's KL; returns `length` (used this step), `next_length`, `grew`."""
        used = self.length
        self.kls.append(float(kl))
        grew = False
        if len(self.kls) >= self.window:
            recent = self.kls[-self.window :]
            half = self.window // 2
            m1 = sum(recent[:half]) / half
            m2 = sum(recent[half:]) / (self.window - half)
            learnt = sum(recent) / self.window <= self.kl_threshold
            flattened = m1 - m2 <= self.flat * abs(m1)
            if (learnt or flattened) and self.length < self.max_len:
                self.length = min(self.length + self.step, self.max_len)
                self.kls = []
                grew = True
        return {"length": used, "next_length": self.length, "grew": grew}

    def state_dict(self) -> dict:
        return {"length": self.length, "kls": list(self.kls)}

    def load_state_dict(self, state: dict) -> None:
        self.length, self.kls = int(state["length"]), [float(x) for x in state["kls"]]
