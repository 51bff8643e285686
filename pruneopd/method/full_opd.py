"""Full OPD (baseline): every response sampled up to L_max, every token trained with weight 1."""

from __future__ import annotations

from pruneopd.method.base import Method


class FullOPD(Method):
    name = "full"
