"""pruneopd: fast, reliability-aware on-policy distillation (Prune-OPD)."""

__version__ = "0.1.0"
