"""Method `auto` (ours): measure where the teacher stops agreeing with the student's top choice,
then train the pair as the measurement says: full OPD where the agreement holds all along the
response, otherwise an adaptive prefix up to where it decays and past it while full-length
audits say the tail still carries the signal.

What it answers (docs/benchmarks.md section 0): on the long suite's cross pair the released
monitor (top-16 overlap) calls every sample drifted by token ~71, so Prune-OPD trains a
128-token prefix and loses 20 points to full OPD, while the teacher's top-1 agrees with the
student's on 96-98% of the first 448 tokens and only then falls (to 0.87-0.90 near the end;
docs/testbed.md, property 2); the same pair agrees on 98-99% everywhere. On that cross pair,
a prefix that grows from 128 to 448 as its KL is learnt matched full OPD at 0.47x its CPU time
(prefix-adaptive, seed 0), while on the same pair every prefix lost to full OPD. So:

- Measure: the first `auto_probe_steps` steps are full OPD (cap L_max, every token weight 1);
  over their global batches the top-1 agreement `g_t = 1[argmax pi_S(.|y_<t) = argmax
  pi_T(.|y_<t)]` is pooled in buckets of `auto_bucket` positions.
- Decide, after the last of them: with `head` the agreement share of the positions before
  L_min, the horizon R is the start of the first bucket at or past L_min whose share is below
  `head - auto_drop` (a bucket with fewer than 8 x `auto_bucket` tokens says nothing), or L_max
  when there is none. The reference is the pair's own head, not an absolute level: a pair that
  differs alike all along the response has no horizon.
- Train: R = L_max (the agreement holds): the adaptive prefix from L_min up to L_max (what
  beat full OPD on both short pairs at 0.8x its CPU time, docs/benchmarks.md section 14),
  with `auto_curriculum` (the default; false: full OPD to the end, docs/benchmarks.md
  section 16). R < L_max: the adaptive prefix (`budget.AdaptivePrefix`, the `prefix_*`
  keys) from L_min up to R: P grows by `prefix_step` whenever the KL over the trained prefix is learnt or has flattened.
- Audit the tail past R: once P has reached R, every `auto_audit_every`-th step samples to
  L_max and trains as full OPD; when more than `auto_tail_share` of its signal sum |a_t| lies
  past P, P grows by `prefix_step` (it never shrinks). Where the pair drifts is not where
  training stops paying: a false horizon (a noisy decay) must not stop the run for good.

- Weights: 1 on every trained token, or with `auto_iw_gamma` > 0 IW-OPD's soft weights
  (`iw_opd.iw_opd_weights`) over the trained tokens of each sample.

docs/method.md, "Measured horizon (auto)".
"""

from __future__ import annotations

import torch

from pruneopd.errors import ConfigError
from pruneopd.method.base import Method, MethodWeights
from pruneopd.method.budget import AdaptivePrefix
from pruneopd.method.iw_opd import iw_opd_weights
from pruneopd.method.window import tail_signal, window_mask

MIN_BUCKET_SAMPLES = 8  # a bucket speaks with at least 8 x auto_bucket tokens


def agreement_by_bucket(
    agree_BT: torch.Tensor, mask_BT: torch.Tensor, bucket: int, max_len: int, skip_end: int = 0
) -> tuple[list[float], list[float]]:
    """Top-1 agreements and valid tokens per bucket of `bucket` positions up to `max_len`
    (floats, to be summed over processes and steps). agree_BT: bool [B, T]; mask_BT: valid
    (each row's valid tokens first). `skip_end`: each response's last `skip_end` tokens are
    left out (where a response ends, the answer and EOS, the pair disagrees for another reason
    than drift: the end of a response is not a position where drift has set in).

    Example: agree [[1, 0, 1, 1]], all valid, bucket 2, max_len 4 -> ([1, 2], [2, 2]);
    skip_end 2 -> ([1, 0], [2, 0]).
    """
    n = -(-max_len // bucket)
    B, T = mask_BT.shape
    valid_BT = mask_BT.bool()
    if skip_end > 0:
        len_B = valid_BT.sum(1)
        valid_BT = valid_BT & (
            torch.arange(T, device=mask_BT.device)[None, :] < (len_B - skip_end)[:, None]
        )
    pos_T = torch.arange(T, device=mask_BT.device) // bucket
    idx_BT = pos_T[None, :].expand(B, T)[valid_BT].clamp(max=n - 1)
    agrees = torch.zeros(n, dtype=torch.float64, device=mask_BT.device)
    counts = torch.zeros(n, dtype=torch.float64, device=mask_BT.device)
    agrees.index_add_(0, idx_BT, (agree_BT & valid_BT)[valid_BT].double())
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
    persist: int = 1,
) -> int:
    """With `head` the agreement share of the buckets that start before `min_len`, the start of
    the first run of `persist` consecutive buckets at or past `min_len` whose shares are all
    below `head - drop`; `max_len` when there is none.

    A bucket speaks only with at least MIN_BUCKET_SAMPLES * `bucket` tokens and at least half
    as many as the first bucket (half of the measured responses reach it: past that, the
    responses still running are the unusually long ones, a selection, not the pair's drift);
    a bucket that does not speak breaks a run. Without MIN_BUCKET_SAMPLES * `bucket` head
    tokens there is no horizon.

    Example: buckets of 1 with 8 tokens each, shares 1.0, 0.875, 1.0, 0.5; min_len 1, drop 0.2
    -> head 1.0, the first share below 0.8 is position 3's -> 3 (persist 2: no run -> max_len).
    """
    enough = MIN_BUCKET_SAMPLES * bucket
    starts = [i * bucket for i in range(len(agrees))]
    head_n = sum(c for c, s in zip(counts, starts, strict=True) if s < min_len)
    if head_n < enough:
        return max_len
    head = sum(a for a, s in zip(agrees, starts, strict=True) if s < min_len) / head_n
    speaks = max(enough, counts[0] / 2)
    run = 0
    for i, (a, c, start) in enumerate(zip(agrees, counts, starts, strict=True)):
        if start >= min_len and c >= speaks and a / c < head - drop:
            run += 1
            if run >= max(1, persist):
                return max(min_len, min(starts[i - run + 1], max_len))
        else:
            run = 0
    return max_len


def measured_agreement(
    agree_BT: torch.Tensor, mask_BT: torch.Tensor, cfg
) -> tuple[list[float], list[float]]:
    """`agreement_by_bucket` as method `auto` measures it (and the card forecasts it): buckets
    of the config's auto_bucket up to max_len, each response's last auto_bucket tokens left out."""
    bucket = cfg.auto_bucket
    return agreement_by_bucket(agree_BT, mask_BT, bucket, cfg.max_len, skip_end=bucket)


def configured_horizon(agrees: list[float], counts: list[float], cfg) -> int:
    """`reliability_horizon` with the config's auto_bucket, auto_drop, auto_persist, min_len and max_len (the
    method's decision, and the card's forecast of it)."""
    return reliability_horizon(
        agrees,
        counts,
        bucket=cfg.auto_bucket,
        drop=cfg.auto_drop,
        min_len=cfg.min_len,
        max_len=cfg.max_len,
        persist=cfg.auto_persist,
    )


class AutoOPD(Method):
    """Method `auto`: full OPD while it measures the top-1 agreement by position, then full OPD
    (no decay) or the adaptive prefix from L_min up to the horizon R, and past R by the tail's
    audits: every `auto_audit_every`-th step samples to L_max and is trained as full OPD, and
    P grows by `prefix_step` when the tail past P holds more than `auto_tail_share` of that
    step's OPD signal."""

    name = "auto"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.horizon: int | None = None  # R: None until the measuring steps are done
        self.agrees = [0.0] * -(-cfg.max_len // cfg.auto_bucket)
        self.counts = [0.0] * len(self.agrees)
        self.prefix: AdaptivePrefix | None = None  # the curriculum up to R (R < L_max)
        self.past = 0  # tokens P has grown past R by the tail's audits
        self.steps = 0  # steps learnt from: the next step's number

    @classmethod
    def check(cls, cfg, *, world: int) -> None:
        if cfg.teachers and cfg.teacher_routing == "mixture":
            raise ConfigError(
                "config key 'method' = 'auto': a mixture of teachers has no single top-1 to "
                "agree with; route each prompt to one teacher (teacher_routing=field) or use "
                "another method"
            )

    def _prefixed(self) -> bool:
        """Whether the run trains a growing prefix once the horizon is known: below a horizon,
        and with `auto_curriculum` also where there is none (up to L_max)."""
        return self.horizon < self.cfg.max_len or self.cfg.auto_curriculum

    def _start_prefix(self) -> None:
        cfg = self.cfg
        self.prefix = AdaptivePrefix(
            min(cfg.min_len, self.horizon),
            self.horizon,
            cfg.prefix_step,
            cfg.prefix_window,
            cfg.prefix_kl_threshold,
            cfg.prefix_flat,
        )

    def length(self) -> int:
        """P: the trained prefix (L_max while measuring and without a horizon)."""
        if self.prefix is None:
            return self.cfg.max_len
        return min(self.prefix.length + self.past, self.cfg.max_len)

    def is_audit(self, step: int) -> bool:
        """Step `step` samples to L_max and audits the tail past P: once P has reached R, every
        `auto_audit_every`-th step (steps k-1, 2k-1, ...) while P < L_max."""
        every = self.cfg.auto_audit_every
        return (
            self.prefix is not None
            and self.prefix.length >= self.horizon
            and self.length() < self.cfg.max_len
            and every > 0
            and (step + 1) % every == 0
        )

    def cap(self, step: int) -> int:
        return self.cfg.max_len if self.is_audit(step) else self.length()

    def weigh(self, tw, mask_BT, rewards, logratio_BT) -> MethodWeights:
        P = self.length()
        audit = None
        if self.horizon is None:  # still measuring
            agrees, counts = measured_agreement(tw.agree_BT.bool(), mask_BT, self.cfg)
            audit = {f"auto_agree_{i}": a for i, a in enumerate(agrees)}
            audit.update({f"auto_count_{i}": c for i, c in enumerate(counts)})
        elif self.is_audit(self.steps):  # an audit: full OPD, the tail's signal measured
            signal = tail_signal(logratio_BT, mask_BT, P)
            audit = {"auto_tail_mass": signal["tail"], "auto_mass": signal["total"]}
            P = self.cfg.max_len
        train_mask_BT = window_mask(mask_BT, P)
        if self.cfg.auto_iw_gamma > 0:  # IW-OPD's soft weights over the trained tokens
            mult_BT = iw_opd_weights(
                logratio_BT, train_mask_BT, self.cfg.auto_iw_gamma, self.cfg.iw_eps
            )
        else:
            mult_BT = train_mask_BT.float()
        return MethodWeights(mult_BT, train_mask_BT, audit=audit)

    def learn(self, step, eff_len_all_B, metrics: dict) -> dict:
        cfg = self.cfg
        out = {}
        if self.horizon is None:
            n = len(self.agrees)
            for i in range(n):  # consumed, not logged
                self.agrees[i] += metrics.pop(f"auto_agree_{i}")
                self.counts[i] += metrics.pop(f"auto_count_{i}")
            if step + 1 >= max(1, cfg.auto_probe_steps):
                self.horizon = configured_horizon(self.agrees, self.counts, cfg)
                out["top1_by_position"] = [
                    round(a / c, 4) if c else None
                    for a, c in zip(self.agrees, self.counts, strict=True)
                ]
                if self._prefixed():
                    self._start_prefix()
        elif "auto_tail_mass" in metrics:  # this step was an audit
            tail, total = metrics.pop("auto_tail_mass"), metrics.pop("auto_mass")
            share = tail / total if total > 0 else 0.0
            if share > cfg.auto_tail_share:
                self.past += cfg.prefix_step
            out["tail_share"] = share
        elif self.prefix is not None and self.prefix.length < self.horizon:
            self.prefix.update(metrics["rkl"])
        self.steps = step + 1
        return {**out, "horizon": self.horizon or cfg.max_len, "next_cap": self.cap(step + 1)}

    def final_cap(self) -> int:
        return self.length()

    def state_dict(self) -> dict:
        return {
            "horizon": self.horizon,
            "agrees": list(self.agrees),
            "counts": list(self.counts),
            "prefix": self.prefix.state_dict() if self.prefix is not None else None,
            "past": self.past,
            "steps": self.steps,
        }

    def load_state_dict(self, state: dict | None) -> None:
        n = len(self.agrees)
        if len(state["agrees"]) != n or len(state["counts"]) != n:
            raise ValueError(
                f"AutoOPD.load_state_dict: {len(state['agrees'])} buckets saved, {n} configured "
                "(max_len or auto_bucket changed since the checkpoint)"
            )
        if "steps" not in state:
            raise ValueError(
                "AutoOPD.load_state_dict: the checkpoint is from auto before the tail's audits "
                "(no 'steps' saved); start the run afresh (another out folder, no resume)"
            )
        self.agrees = [float(x) for x in state["agrees"]]
        self.counts = [float(x) for x in state["counts"]]
        self.horizon = None if state["horizon"] is None else int(state["horizon"])
        self.past, self.steps = int(state["past"]), int(state["steps"])
        self.prefix = None
        if self.horizon is not None and self._prefixed():
            self._start_prefix()
            self.prefix.load_state_dict(state["prefix"])
