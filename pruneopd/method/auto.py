"""Method `auto` (ours): train up to the teacher's reliability horizon, found by full-length
probes of where the teacher stops agreeing with the student's top choice.

What it answers (docs/benchmarks.md section 0): on the long suite's cross pair the released
monitor (top-16 overlap) calls every sample drifted by token ~71, so Prune-OPD trains a
128-token prefix and loses 20 points to full OPD, while the teacher's top-1 still agrees with
the student's on 96-98% of the first 500 tokens and only falls (to 0.87-0.90) near the end
(docs/testbed.md, property 2). The ranking of the top-16 tail is not what OPD learns from; the
teacher's top choice is. So `auto` asks, along the response, where the teacher's top-1 stops
agreeing with the student's, and trains up to there:

- Probe steps (step 0, then every `auto_probe_every` steps) sample up to L_max; the teacher
  scores every token. Over the global batch's valid tokens, the top-1 agreement
  `1[argmax pi_S(.|y_<t) = argmax pi_T(.|y_<t)]` is pooled in buckets of `auto_bucket`
  positions. The horizon R is the first bucket start at or past L_min from which on the
  pooled agreement is more than `auto_drop` below the agreement before L_min (the teacher
  starts agreeing less as the response goes on), or L_max when there is none. A pair that
  agrees alike all along (however much) keeps R = L_max: `auto` is then full OPD.
- R only grows: a later probe can raise it, never lower it. A decay that appears during
  training is the student's own drift (its samples degrade and the teacher disagrees with
  them), which is what the teacher is there to correct; measured: with a horizon that could
  shrink, the long suite's same pair lost its horizon to L_min at step 50 of 100 (the student's
  agreement fell from 0.995 to 0.96) and ended at 69.9% against full OPD's 91.4%.
- Every step's cap is R (L_max on probes), and only tokens before R are trained (a probe's
  update is an ordinary step's).
- Weights: the monotone reliability weight of the top-1 signal, w_t = clip(1 - auto_w_drop *
  #(top-1 disagreements up to t), 0, 1): a sample whose
  teacher keeps disagreeing with it counts less, none is cut. The multiplier is
  (w_t + w_base) / (1 + w_base): 1 while no disagreement is counted, so a compatible pair's
  step is full OPD's, and w_base / (1 + w_base) at the floor.

docs/method.md, "Reliability horizon (auto)".
"""

from __future__ import annotations

import torch

from pruneopd.errors import ConfigError
from pruneopd.method.base import Method, MethodWeights
from pruneopd.method.drift import reliability_weights
from pruneopd.method.window import window_mask


def agreement_by_bucket(
    agree_BT: torch.Tensor, mask_BT: torch.Tensor, bucket: int, max_len: int
) -> tuple[list[float], list[float]]:
    """Top-1 agreements and valid tokens per bucket of `bucket` positions up to `max_len`
    (floats, to be summed over processes). agree_BT: bool [B, T]; mask_BT: valid [B, T].

    Example: agree [[1, 0, 1, 1]], all valid, bucket 2, max_len 4 -> ([1, 2], [2, 2]).
    """
    n = -(-max_len // bucket)
    B, T = mask_BT.shape
    valid_BT = mask_BT.bool()
    pos_T = torch.arange(T, device=mask_BT.device) // bucket
    idx_BT = pos_T[None, :].expand(B, T)[valid_BT].clamp(max=n - 1)
    agrees = torch.zeros(n, dtype=torch.float64, device=mask_BT.device)
    counts = torch.zeros(n, dtype=torch.float64, device=mask_BT.device)
    agrees.index_add_(0, idx_BT, agree_BT[valid_BT].double())
    counts.index_add_(0, idx_BT, torch.ones_like(idx_BT, dtype=torch.float64))
    return agrees.tolist(), counts.tolist()


def reliability_horizon(
    agrees: list[float],
    counts: list[float],
    *,
    bucket: int,
    drop: float,
    min_len: int,
    max_len: int,
) -> int:
    """Where the teacher starts agreeing less: with `head` the agreement share of the buckets
    before `min_len`, the start of the first bucket at or past `min_len` from which on the
    pooled agreement share (that bucket to the last) is below `head - drop`; `max_len` when
    none is, or when the head or a suffix has fewer than 4 * `bucket` tokens (too few to say).

    Example: buckets of 32 with shares 1.0, 0.98, 0.9, 0.9 (equal counts), min_len 32, drop
    0.05: head 1.0; from 32 on 0.927 < 0.95 -> 32. With min_len 64: head 0.99, from 64 on 0.9 -> 64.
    """
    starts = [i * bucket for i in range(len(agrees))]
    head_a = sum(a for a, s in zip(agrees, starts, strict=True) if s < min_len)
    head_n = sum(c for c, s in zip(counts, starts, strict=True) if s < min_len)
    if head_n < 4 * bucket:
        return max_len
    head = head_a / head_n
    for i, start in enumerate(starts):
        if start < min_len:
            continue
        n = sum(counts[i:])
        if n >= 4 * bucket and sum(agrees[i:]) / n < head - drop:
            return max(min_len, min(start, max_len))
    return max_len


class AutoOPD(Method):
    """Method `auto`: cap and trained tokens up to the probed reliability horizon R, tokens
    weighted by the top-1 reliability weight."""

    name = "auto"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.horizon: int | None = None  # R; None until step 0's probe has measured it

    @classmethod
    def check(cls, cfg, *, world: int) -> None:
        if cfg.teachers and cfg.teacher_routing == "mixture":
            raise ConfigError(
                "config key 'method' = 'auto': a mixture of teachers has no single top-1 to "
                "agree with; route each prompt to one teacher (teacher_routing=field) or use "
                "another method"
            )

    def is_probe(self, step: int) -> bool:
        """Step 0 and every `auto_probe_every`-th step after it sample up to L_max."""
        every = self.cfg.auto_probe_every
        return step == 0 or (every > 0 and step % every == 0)

    def cap(self, step: int) -> int:
        return self.cfg.max_len if self.is_probe(step) or self.horizon is None else self.horizon

    def weigh(self, tw, mask_BT, rewards, logratio_BT) -> MethodWeights:
        cfg = self.cfg
        valid_BT = mask_BT.bool()
        agree_BT = tw.agree_BT.bool() & valid_BT
        _, mult_BT, _ = reliability_weights(
            valid_BT & ~agree_BT, mask_BT, cfg.auto_w_drop, cfg.w_base
        )
        mult_BT = mult_BT / (1.0 + cfg.w_base)  # 1 while reliable: a compatible pair is full OPD
        train_mask_BT = window_mask(mask_BT, self.horizon or cfg.max_len)
        agrees, counts = agreement_by_bucket(agree_BT, mask_BT, cfg.auto_bucket, cfg.max_len)
        audit = {f"auto_agree_{i}": a for i, a in enumerate(agrees)}
        audit.update({f"auto_count_{i}": c for i, c in enumerate(counts)})
        return MethodWeights(torch.where(train_mask_BT, mult_BT, 0.0), train_mask_BT, audit=audit)

    def learn(self, step, eff_len_all_B, metrics: dict) -> dict:
        cfg = self.cfg
        n = -(-cfg.max_len // cfg.auto_bucket)
        agrees = [metrics.pop(f"auto_agree_{i}") for i in range(n)]  # consumed, not logged
        counts = [metrics.pop(f"auto_count_{i}") for i in range(n)]
        seen = sum(counts)
        out = {"top1_agreement": sum(agrees) / seen if seen else 0.0}
        if self.is_probe(step):
            probed = reliability_horizon(
                agrees,
                counts,
                bucket=cfg.auto_bucket,
                drop=cfg.auto_drop,
                min_len=cfg.min_len,
                max_len=cfg.max_len,
            )
            # R only grows: a decay that appears during training is the student's own drift,
            # the errors the teacher is there to correct (docs/method.md)
            self.horizon = max(self.horizon or 0, probed)
            out["probe_horizon"] = probed
        return {**out, "horizon": self.horizon or cfg.max_len, "next_cap": self.cap(step + 1)}

    def final_cap(self) -> int:
        return self.horizon or self.cfg.max_len

    def state_dict(self) -> dict:
        return {"horizon": self.horizon}

    def load_state_dict(self, state: dict | None) -> None:
        if state["horizon"] is None:
            self.horizon = None
            return
        horizon = int(state["horizon"])
        if not 1 <= horizon <= self.cfg.max_len:
            raise ValueError(
                f"AutoOPD.load_state_dict: horizon must be in [1, {self.cfg.max_len}], got {horizon}"
            )
        self.horizon = horizon
