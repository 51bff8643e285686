"""Prefix OPD (baseline): responses capped at a prefix P, every prefix token trained with
weight 1. P is fixed (`prefix_len`) or grows linearly from `prefix_len` to `prefix_len_end`
over the run (docs/method.md, "Baselines")."""

from __future__ import annotations

from pruneopd.method.base import Method


def prefix_schedule(cfg) -> str:
    """fixed | linear | adaptive ("auto": linear if prefix_len_end > 0, else fixed)."""
    if cfg.prefix_schedule != "auto":
        return cfg.prefix_schedule
    return "linear" if cfg.prefix_len_end > 0 else "fixed"


class PrefixOPD(Method):
    name = "prefix"

    def cap(self, step: int) -> int:
        cfg = self.cfg
        if prefix_schedule(cfg) == "fixed":
            return cfg.prefix_len
        frac = min(1.0, step / max(1, cfg.max_steps - 1))  # linear schedule P_start -> P_end
        return round(cfg.prefix_len + frac * (cfg.prefix_len_end - cfg.prefix_len))
