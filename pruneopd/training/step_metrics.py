"""The per-step metrics of docs/method.md ("Metrics every run logs"), reduced across ranks.

Each rank sums over its own samples and tokens; `Dist.sum` adds the sums of every rank, and the
means are taken over the global batch, so a data-parallel step logs what one process would.
"""

from __future__ import annotations

import torch

from pruneopd.method.drift import ran_out_B

# sums over tokens (divided by the valid-token count) and over samples (by the sample count)
_TOKEN_SUMS = ("overlap", "drift_rate", "weight_mean", "rkl")
_SAMPLE_SUMS = ("reward", "mean_len", "eos_rate", "pruned_rate")


def local_sums(
    overlap_BT: torch.Tensor,
    events_BT: torch.Tensor,
    weights_BT: torch.Tensor,
    mult_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    train_mask_BT: torch.Tensor,
    rkl_BT: torch.Tensor,
    rewards: list[float],
    lengths: list[int],
    stopped_by: list[str],
) -> dict[str, float]:
    """This rank's sums: token sums over `mask_BT`, multiplier sum over `train_mask_BT`; a
    sample "drifted" when its reliability ran out (`drift.ran_out_B`)."""
    drifted_B = ran_out_B(weights_BT, mask_BT).tolist()
    return {
        "drifted": float(sum(drifted_B)),
        "reward_drifted": float(sum(r for r, d in zip(rewards, drifted_B, strict=True) if d)),
        "overlap": float(overlap_BT[mask_BT].sum()),
        "drift_rate": float(events_BT[mask_BT].float().sum()),
        "weight_mean": float(weights_BT[mask_BT].sum()),
        "rkl": float(rkl_BT[mask_BT].sum()),
        "multiplier_mean": float(mult_BT[train_mask_BT].sum()),
        "reward": float(sum(rewards)),
        "mean_len": float(sum(lengths)),
        "eos_rate": float(stopped_by.count("eos")),
        "pruned_rate": float(stopped_by.count("pruned")),
        "tokens_generated": float(mask_BT.sum()),
        "tokens_trained": float(train_mask_BT.sum()),
        "samples": float(len(lengths)),
    }


def reduce_means(sums: dict[str, float], dist) -> dict[str, float]:
    """Sum `local_sums` over ranks and turn them into the logged means and counts.

    Example (one rank): overlap sums 3.0 over 4 valid tokens -> "overlap" 0.75.
    """
    keys = sorted(sums)
    total = dict(zip(keys, dist.sum([sums[k] for k in keys]), strict=True))
    n_valid, n_train, n = total["tokens_generated"], total["tokens_trained"], total["samples"]
    out = {k: total[k] / n_valid if n_valid else 0.0 for k in _TOKEN_SUMS}
    out["multiplier_mean"] = total["multiplier_mean"] / n_train if n_train else 0.0
    out.update({k: total[k] / n for k in _SAMPLE_SUMS})
    out["tokens_generated"] = out["tokens_scored"] = int(n_valid)
    out["tokens_trained"] = int(n_train)
    out["drifted_rate"] = total["drifted"] / n if n else 0.0
    if total["drifted"]:  # the answer reward of the samples whose reliability ran out
        out["reward_drifted"] = total["reward_drifted"] / total["drifted"]
    return out
