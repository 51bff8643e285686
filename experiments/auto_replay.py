"""Where method `auto` would put a pair's horizon, from the untrained pair's samples, under
variants of its rule: each response's last tokens kept or left out, several drops, one bucket
or runs of two (the config's rule: skip_end = auto_bucket, its auto_drop and auto_persist).

Samples N held-out problems per seed from the student (T=1, the config's cap), scores them
with the teacher (as `pruneopd card` does), and prints R per seed and variant (`-` = no
horizon: full OPD). The samples are cached in --cache so variants can be added for free.

    python experiments/auto_replay.py --config configs/long/auto-same.yaml --seeds 0,1,2 --n 192
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from pruneopd.config import load_config
from pruneopd.method.auto import (
    agreement_by_bucket,
    configured_horizon,
    measured_agreement,
    reliability_horizon,
)
from pruneopd.tools.testbed import sample_pair
from pruneopd.training.pair import load_pair, load_task, load_tokenizers, train_device


def samples(cfg, n: int, seed: int, cache: Path) -> tuple[torch.Tensor, torch.Tensor]:
    path = cache / f"{Path(cfg.student).name}-{cfg.task}-{cfg.max_len}-n{n}-s{seed}.pt"
    if path.exists():
        d = torch.load(path)
        return d["agree_BT"], d["mask_BT"]
    tok = load_tokenizers(cfg)
    task = load_task(cfg, tok)
    difficulty = cfg.difficulty or task.default_difficulty
    problems = task.problems("train", n, seed=seed, difficulty=difficulty)
    student, teacher = load_pair(cfg, tok, train_device(cfg))
    ps = sample_pair(
        student, teacher, tok, task, problems, k=1, max_new_tokens=cfg.max_len, seed=seed
    )
    agree_BT = (ps.s_BTK[..., 0] == ps.t_BTK[..., 0]) & ps.mask_BT
    cache.mkdir(parents=True, exist_ok=True)
    torch.save({"agree_BT": agree_BT, "mask_BT": ps.mask_BT}, path)
    return agree_BT, ps.mask_BT


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--n", type=int, default=192, help="samples per seed (auto's probe: 6 x 32)")
    ap.add_argument("--drops", default="0.02,0.03")
    ap.add_argument("--cache", default="runs/auto-replay")
    args = ap.parse_args()
    cfg = load_config(args.config, [])
    b = cfg.auto_bucket
    print(f"{args.config}: bucket {b}, min_len {cfg.min_len}, max_len {cfg.max_len}")
    for seed in [int(s) for s in args.seeds.split(",")]:
        agree_BT, mask_BT = samples(cfg, args.n, seed, Path(args.cache))
        row = []
        for skip in (0, b):
            a, c = agreement_by_bucket(agree_BT, mask_BT, b, cfg.max_len, skip_end=skip)
            for drop in [float(x) for x in args.drops.split(",")]:
                for persist in (1, 2):
                    r = reliability_horizon(
                        a,
                        c,
                        bucket=b,
                        drop=drop,
                        min_len=cfg.min_len,
                        max_len=cfg.max_len,
                        persist=persist,
                    )
                    row.append(f"{skip}/{drop}/{persist}: {r if r < cfg.max_len else '-'}")
        a, c = measured_agreement(agree_BT, mask_BT, cfg)
        r = configured_horizon(a, c, cfg)
        print(f"seed {seed}: the config's rule: {r if r < cfg.max_len else '-'}")
        print("  skip_end/drop/persist: " + "; ".join(row))
        print(
            "  top-1 agreement by bucket: "
            + " ".join(f"{x / y:.3f}" if y else "-" for x, y in zip(a, c, strict=True))
        )


if __name__ == "__main__":
    main()
