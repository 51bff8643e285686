"""The method: pure tensor functions of Prune-OPD and its baselines (drift monitor,
reliability weights, budget, losses, the hybrid gate, IW-OPD's weights, the probed window, the reliability horizon)
and the method classes built from the config.

`METHODS` names every method class; `build_method(cfg)` is the one place the config's
`method` (and prefix OPD's schedule) picks one.
"""

from __future__ import annotations

from pruneopd.method.adaptive_prefix import AdaptivePrefixOPD
from pruneopd.method.auto import AutoOPD
from pruneopd.method.base import Method, MethodWeights
from pruneopd.method.full_opd import FullOPD
from pruneopd.method.hybrid import HybridOPD
from pruneopd.method.iw_opd import IWOPD
from pruneopd.method.prefix_opd import PrefixOPD, prefix_schedule
from pruneopd.method.prune_opd import PruneOPD
from pruneopd.method.window import WindowOPD

METHODS: dict[str, type[Method]] = {
    "full": FullOPD,
    "prefix": PrefixOPD,
    "prefix-adaptive": AdaptivePrefixOPD,
    "prune": PruneOPD,
    "hybrid": HybridOPD,
    "iw-opd": IWOPD,
    "window": WindowOPD,
    "auto": AutoOPD,
}


def method_class(cfg) -> type[Method]:
    """The class of `cfg.method` (prefix OPD with prefix_schedule=adaptive: AdaptivePrefixOPD)."""
    name = cfg.method
    if name == "prefix" and prefix_schedule(cfg) == "adaptive":
        name = "prefix-adaptive"
    return METHODS[name]


def build_method(cfg, *, world: int = 1) -> Method:
    """The run's method: checked against the config and the number of processes, then built."""
    cls = method_class(cfg)
    cls.check(cfg, world=world)
    return cls(cfg)


__all__ = ["METHODS", "Method", "MethodWeights", "build_method", "method_class"]
