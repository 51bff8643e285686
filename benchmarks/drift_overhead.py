"""Cost of the drift monitor per Prune-OPD step, as a share of the step's wall time.

Runs real Prune-OPD steps on the built-in pair with the prune-cross preset's settings
(pruneopd/configs/prune-cross.yaml; `key=value` arguments override it, as for `pruneopd
train`): the student samples (EOS ends a sample, cap --new-tokens), the teacher scores every
token (top-K + the student's candidates), the drift monitor runs, then the preset's loss,
backward and an AdamW step: the trainer's own phases (pruneopd/training/step.py), no logging
or eval.

"Drift" here is what Prune-OPD adds to a step: `pruneopd.method.drift.monitor` (top-K overlap and
drift events), `reliability_weights` (weights, loss multipliers, effective lengths) and
`ResponseBudget.update` (the next cap). It is timed as a micro-benchmark: --repeats calls on
each step's own tensors, median per call (one call is far below a millisecond, where a
single timing is mostly timer noise); in the step it is part of the score phase.
share = drift time / whole step time, per step, then the median over steps. Target: < 5%.
The step-time split (sample / score and weigh / update) is printed too.

Run (real measurement):
    python benchmarks/drift_overhead.py --steps 10 --batch 8 --responses-per-prompt 4 \\
        --new-tokens 128 --json drift_overhead.json
Smoke test:
    python benchmarks/drift_overhead.py --steps 2 --batch 2 --new-tokens 16
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch
from _common import (
    add_common_args,
    bench_run,
    environment,
    load_models,
    opd_step,
    print_table,
    setup,
    write_json,
)

import pruneopd
from pruneopd.config import load_config
from pruneopd.method.drift import monitor, reliability_weights

PRESET = Path(pruneopd.__file__).parent / "configs" / "prune-cross.yaml"


def time_drift(run, w, repeats: int) -> dict:
    """Median seconds per call of each drift piece on this step's scores, and of the three
    together: the monitor and the weights (`weigh_tokens`, timed apart) and the budget."""
    drift, budget = run.drift, copy.deepcopy(run.method.budget)
    k, s = drift.k, w.scores
    drift_in = (
        drift.metric,
        w.cand_BTK[..., :k],
        s.topk_ids_BTK[..., :k],
        s.topk_logprobs_BTK[..., :k],
        w.tokens_BT,
        w.mask_BT,
        drift.tau,
    )
    parts = {"monitor": [], "weights": [], "budget": [], "drift": []}
    for _ in range(repeats):
        t0 = time.perf_counter()
        _, events_BT = monitor(*drift_in)
        t1 = time.perf_counter()
        _, _, eff_len_B = reliability_weights(events_BT, w.mask_BT, drift.w_drop, drift.w_base)
        t2 = time.perf_counter()
        budget.update(eff_len_B)
        t3 = time.perf_counter()
        for key, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t3 - t0), strict=True):
            parts[key].append(v)
    return {key: statistics.median(v) for key, v in parts.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(p, steps=10, batch=8, new_tokens=128)
    p.add_argument("--config", default=str(PRESET), help="preset (default: prune-cross)")
    p.add_argument("--repeats", type=int, default=50, help="drift calls per step, micro-bench")
    p.add_argument("overrides", nargs="*", help="key=value config overrides (e.g. drift_k=16)")
    args = p.parse_args()
    setup(args)
    cfg = load_config(args.config, args.overrides)
    student, teacher, tok = load_models(args)
    n = args.new_tokens  # the budget cannot move: every step samples up to the same cap
    overrides = dict(
        method="prune", max_len=n, init_len=n, min_len=n, max_steps=args.warmup + args.steps
    )
    for key in ("student", "teacher", "task", "seed"):
        overrides[key] = getattr(args, key)
    overrides["prompts_per_step"] = args.batch
    overrides["responses_per_prompt"] = args.responses_per_prompt
    cfg = load_config(args.config, [*args.overrides, *(f"{k}={v}" for k, v in overrides.items())])
    run = bench_run(
        args, cfg, student, teacher, tok, args.warmup + args.steps, eos_id=tok.eos_token_id
    )
    torch.manual_seed(args.seed)

    steps, micro = [], []
    for i in range(args.warmup + args.steps):
        r = opd_step(run, i)
        if i < args.warmup:
            continue
        m = time_drift(run, r["weighed"], args.repeats)
        steps.append({k: v for k, v in r.items() if k != "weighed"})
        micro.append(m)
        print(
            f"step {i + 1 - args.warmup}: {r['tokens']} tokens, step {r['t_step']:.3f}s, "
            f"drift {m['drift'] * 1e3:.3f} ms ({100 * m['drift'] / r['t_step']:.3f}%)"
        )

    def med(key, rows=steps):
        return statistics.median(row[key] for row in rows)

    total = sum(s["t_step"] for s in steps)  # shares of the summed time, so they add up to 100
    split = [
        {"phase": k[2:], "median_s": med(k), "share": 100 * sum(s[k] for s in steps) / total}
        for k in ("t_sample", "t_score", "t_update", "t_step")
    ]
    pieces = [
        {
            "piece": k,
            "median_ms": 1e3 * med(k, micro),
            "share": statistics.median(
                100 * m[k] / s["t_step"] for m, s in zip(micro, steps, strict=True)
            ),
        }
        for k in ("monitor", "weights", "budget", "drift")
    ]
    share = pieces[-1]["share"]
    B = args.batch * args.responses_per_prompt
    print(
        f"\nPrune-OPD step ({Path(args.config).name}, loss {cfg.loss}, drift "
        f"{cfg.drift_metric} K={cfg.monitor_k}), {B} samples, cap {args.new_tokens}, "
        f"median {med('tokens'):.0f} tokens/step, {args.threads} threads"
    )
    print_table(
        split,
        [
            ("phase", "phase", ""),
            ("median_s", "median s", ".4f"),
            ("share", "% of all steps", ".2f"),
        ],
    )
    print(f"\ndrift micro-benchmark ({args.repeats} calls per step, median per call)")
    print_table(
        pieces,
        [("piece", "piece", ""), ("median_ms", "ms/call", ".3f"), ("share", "% of step", ".3f")],
    )
    verdict = "meets" if share < 5.0 else "misses"
    print(f"drift share of the step: {share:.3f}% (micro-benchmark) -> {verdict} the < 5% target")
    write_json(
        args.json,
        {
            "benchmark": "drift_overhead",
            **environment(args),
            "config": {
                k: getattr(cfg, k)
                for k in ("loss", "topk", "drift_metric", "tau", "w_drop", "w_base")
            },
            "monitor_k": cfg.monitor_k,
            "split": split,
            "drift_pieces": pieces,
            "share_micro": share,
            "steps": steps,
            "micro": micro,
        },
    )


if __name__ == "__main__":
    main()
