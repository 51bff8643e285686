"""What a bench keeps: its grid (the preset names it runs, the pairs, the suites' preset
folders), the per-step keys of results.json, and results.json's binned curves (the overlap
histogram, curves along the response), with the conversion of an older file's raw per-token
samples. Shared by the bench, its report and the test bed's card.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

PAIRS = ("same", "cross")
METHODS = (
    "full",
    "prefix",
    "prefix-sched",
    "prune",
    "prune-online",
    "hybrid",
    "prefix-adaptive",
    "iw-opd",
    "window",
    "auto",
)
CORE_METHODS = METHODS[:5]  # the released method and its baselines; then ours, then the field's
CONFIGS = Path(__file__).parents[1] / "configs"
SUITE_CONFIGS = {"short": CONFIGS, "long": CONFIGS / "long"}
STEP_KEYS = (
    "cap",
    "eff_len_mean",
    "hit_ratio",
    "overlap",
    "drift_rate",
    "mean_len",
    "eos_rate",
    "pruned_rate",
    "reward",
    "rkl",
    "loss",
    "drifted_rate",
    "reward_drifted",
    "gate_rate",
)


def write_results(path: Path, results: dict) -> None:
    """results.json: indented, each list of numbers on one line (a per-step series, a curve)."""
    text = json.dumps(results, indent=1)
    flat = re.compile(r"\[\n\s*([^\[\]{}\"]*?)\n\s*\]")  # a list of numbers, nulls, booleans
    path.write_text(flat.sub(lambda m: "[" + re.sub(r",\n\s*", ", ", m.group(1)) + "]", text))


def position_curves(values_BT: torch.Tensor, mask_BT: torch.Tensor, bin_size: int) -> dict:
    """Mean of a per-token statistic in bins of `bin_size` response positions.

    Returns {"start": [first position of each bin], "mean": [...], "tokens": [valid tokens in
    the bin]}; bins without a valid token are left out (so late bins, which only the longest
    responses reach, are averaged over fewer samples: "tokens" says how many).
    """
    import torch

    if bin_size < 1:
        raise ValueError(f"bin_size must be >= 1, got {bin_size}")
    B, T = values_BT.shape
    nbins = -(-T // bin_size)
    pad = nbins * bin_size - T
    v = torch.nn.functional.pad(values_BT.double() * mask_BT, (0, pad)).view(B, nbins, bin_size)
    m = torch.nn.functional.pad(mask_BT.double(), (0, pad)).view(B, nbins, bin_size)
    sums, counts = v.sum((0, 2)), m.sum((0, 2))
    keep = counts > 0
    return {
        "start": [i * bin_size for i in range(nbins) if keep[i]],
        "mean": [float(x) for x in (sums[keep] / counts[keep])],
        "tokens": [int(x) for x in counts[keep]],
    }


OVERLAP_BINS = 20  # the histogram of per-token overlaps: 20 bins of 0.05 over [0, 1]


def overlap_histogram(values: list[float], bins: int = OVERLAP_BINS) -> dict:
    """Per-token overlaps (in [0, 1]) binned: {"edges": [bins + 1 edges over [0, 1]],
    "counts": [tokens in each bin], "tokens": every token, "mean": their mean (None if none)}.

    The bins are numpy.histogram's (half-open, the last one closed; what `plt.hist` draws),
    so the report's histogram drawn from the counts is the one drawn from the tokens."""
    import numpy as np

    counts, edges = np.histogram(np.asarray(values, dtype=np.float64), bins=bins, range=(0, 1))
    return {
        "edges": [float(e) for e in edges],
        "counts": [int(c) for c in counts],
        "tokens": len(values),
        "mean": math.fsum(values) / len(values) if values else None,
    }


def overlap_by_position(samples: list[list[float]], bin_size: int = 32) -> dict:
    """Mean per-token overlap in bins of response positions over `samples` (lists of a
    response's per-token overlaps): {"start": [...], "mean": [...], "tokens": [...]}."""
    import torch

    if not samples:
        return {"start": [], "mean": [], "tokens": []}
    T = max(map(len, samples))
    values_BT = torch.zeros(len(samples), T, dtype=torch.float64)
    mask_BT = torch.zeros(len(samples), T, dtype=torch.bool)
    for i, o in enumerate(samples):
        values_BT[i, : len(o)] = torch.tensor(o, dtype=torch.float64)
        mask_BT[i, : len(o)] = True
    return position_curves(values_BT, mask_BT, bin_size)


def binned(results: dict) -> dict:
    """`results` in today's format: an older file's raw per-token overlaps (`overlap_samples`,
    pair -> every token's overlap) become their histogram (`overlap_histogram`, in its place);
    anything else is returned as it is."""
    if "overlap_samples" not in results:
        return results
    return {
        ("overlap_histogram" if k == "overlap_samples" else k): (
            {pair: overlap_histogram(xs) for pair, xs in v.items()} if k == "overlap_samples" else v
        )
        for k, v in results.items()
    }
