"""A LoRA student against the full student: peak memory and step time of the trainer's own OPD
step (pruneopd/training/step.py phases, over `setup.local_run`), same pair, prompts and work.

Each side runs in a fresh process of its own (this script with --side), so that its peak
resident memory (`ru_maxrss`) is its own: the models loaded, then --warmup untimed and --steps
timed steps of full OPD (loss topk_rkl, eos id -1 so that every response runs to --new-tokens).
- full: every weight trains (AdamW state for all of them);
- lora: `lora_r` adapters on `--targets` (training/lora.py), the optimizer over the adapters
  only, the samplers reading the merged copy of the adapted projections.
Reported per side: trainable parameters, resident memory after loading the models and at the
peak, and the median wall time of the step and of its phases (sample, score, update).

Run (the real pair of `pruneopd real build`, ~minutes on 2 cores):
    python benchmarks/lora_vs_full.py --student ~/.cache/pruneopd/real/student \\
        --teacher ~/.cache/pruneopd/real/teacher --task regs --threads 2 \\
        --batch 2 --responses-per-prompt 4 --new-tokens 128 --steps 3 --json lora.json
Smoke test (the shipped zoo):
    python benchmarks/lora_vs_full.py --steps 1 --batch 1 --responses-per-prompt 2 --new-tokens 8
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

from _common import (
    NEVER_EOS,
    add_common_args,
    bench_config,
    bench_run,
    environment,
    load_models,
    opd_step,
    print_table,
    setup,
    write_json,
)


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_side(args) -> dict:
    """One side in this process: load, (wrap), step; its numbers."""
    setup(args)
    load_at_start = os.getloadavg()[0]  # the machine is shared: what else ran beside the side
    student, teacher, tok = load_models(args)
    loaded = _rss_mib()
    lora = {}
    if args.side == "lora":
        lora = dict(lora_r=args.lora_r, lora_alpha=2.0 * args.lora_r)
        lora["lora_target_modules"] = args.targets.split(",")
    cfg = bench_config(args, **lora)
    if args.side == "lora":
        from pruneopd.training.lora import adapt

        student = adapt(student, cfg)
    n_steps = args.warmup + args.steps
    run = bench_run(args, cfg, student, teacher, tok, n_steps, eos_id=NEVER_EOS)
    trainable = sum(p.numel() for p in run.ps.parameters())
    steps = [opd_step(run, i) for i in range(n_steps)][args.warmup :]
    med = {k: statistics.median(s[k] for s in steps) for k in ("t_step", "t_sample", "t_score")}
    return {
        "side": args.side,
        "trainable_params": trainable,
        "rss_loaded_mib": loaded,
        "rss_peak_mib": _rss_mib(),
        **med,
        "t_update": statistics.median(s["t_update"] for s in steps),
        "tokens": steps[0]["tokens"],
        "loss_last": steps[-1]["loss"],
        "load_average": [load_at_start, os.getloadavg()[0]],
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_common_args(p, steps=3, batch=2, new_tokens=128)
    p.add_argument("--lora-r", type=int, default=16, help="LoRA rank (lora_alpha = 2 r)")
    p.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj", help="LoRA targets")
    p.add_argument("--side", choices=("full", "lora"), default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.side:  # a child: one side, its result as JSON on the last line
        print(json.dumps(run_side(args)))
        return
    setup(args)  # the threads environment() records: the sides' own
    argv = sys.argv[1:]
    if "--json" in argv:  # the children print their results; only this process writes
        i = argv.index("--json")
        argv = argv[:i] + argv[i + 2 :]
    rows = []
    for side in ("full", "lora"):
        cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--side", side]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode:
            raise SystemExit(f"{side} side failed:\n{res.stderr[-3000:]}")
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    for r in rows:
        r["trainable_m"] = r["trainable_params"] / 1e6
        r["load"] = "-".join(f"{x:.1f}" for x in r["load_average"])
    print_table(
        rows,
        [
            ("side", "student", ""),
            ("trainable_m", "trainable (M)", ".3f"),
            ("rss_loaded_mib", "RSS loaded (MiB)", ".0f"),
            ("rss_peak_mib", "RSS peak (MiB)", ".0f"),
            ("t_step", "step (s)", ".2f"),
            ("t_sample", "sample (s)", ".2f"),
            ("t_score", "score (s)", ".2f"),
            ("t_update", "update (s)", ".2f"),
            ("load", "load avg", ""),
        ],
    )
    full, lo = rows
    print(
        f"LoRA / full: peak RSS {lo['rss_peak_mib'] / full['rss_peak_mib']:.2f}x, "
        f"training memory above the loaded models "
        f"{(lo['rss_peak_mib'] - lo['rss_loaded_mib']) / (full['rss_peak_mib'] - full['rss_loaded_mib']):.2f}x, "
        f"step time {lo['t_step'] / full['t_step']:.2f}x"
    )
    write_json(args.json, {"env": environment(args), "rows": rows})


if __name__ == "__main__":
    main()
