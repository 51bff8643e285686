"""Peak memory of one training step at 4,096 response tokens on a real pair, per setting.

Each setting runs in its own process (peak RSS is per process): `pruneopd train` for one full
OPD step of 16 samples x 256 tokens (`max_len=256`; a sample that stops early makes fewer
tokens, the count is printed) with evaluation off, then the process's peak RSS
(`resource.getrusage`). The defaults measure the issue's four settings on the real pair of
`pruneopd real build`:

    python benchmarks/real_memory.py --student ~/.cache/pruneopd/real/student \
        --teacher ~/.cache/pruneopd/real/teacher --data ~/.cache/pruneopd/real/sums/train.jsonl

Settings are `;`-separated lists of key=value overrides (`--settings`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

DEFAULT_SETTINGS = (
    "loss=topk_rkl",  # the defaults: loss_chunk from the vocabulary, checkpointing by itself
    "loss=full_rkl",
    "loss=topk_rkl activation_memory_gb=0",  # no gradient checkpointing
    "loss=topk_rkl loss_chunk=4096 activation_memory_gb=0",  # the defaults before
    "loss=full_rkl loss_chunk=4096 activation_memory_gb=0",
)


def one(args, overrides: list[str]) -> dict:
    """Run one step in this process; return tokens trained and peak RSS."""
    from pruneopd.config import load_config
    from pruneopd.training.train import train

    out = Path(tempfile.mkdtemp(prefix="real-memory-"))
    base = [f"student={args.student}", f"teacher={args.teacher}", f"data={args.data}"]
    base += ["method=full", "max_steps=1", "prompts_per_step=4", "responses_per_prompt=4"]
    base += [f"max_len={args.max_len}", "min_len=32", "init_len=32", "eval_every=0"]
    base += ["eval_problems=1", "eval_max_len=8", "tensorboard=false", "progress=false"]
    base += ["log_samples=0", "save_every=0", f"out={out}"]
    train(load_config(None, base + overrides))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    row = next(r for r in rows if "loss" in r)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "settings": " ".join(overrides),
        "tokens": row["tokens_trained"],
        "peak_rss_gb": round(peak_kb / 2**20, 2),
        "loss": row.get("loss"),
        "grad_norm": row.get("grad_norm"),
        "update_seconds": round(row["t_update"], 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--student", required=True)
    p.add_argument("--teacher", required=True)
    p.add_argument("--data", required=True, help="JSONL prompts with answers")
    p.add_argument("--max-len", type=int, default=256)
    p.add_argument("--settings", default=";".join(DEFAULT_SETTINGS))
    p.add_argument("--one", help=argparse.SUPPRESS)  # run one setting in this process
    p.add_argument("--json", help="also write the rows to this file")
    args = p.parse_args()
    if args.one is not None:
        print(json.dumps(one(args, args.one.split())))
        return
    rows = []
    for setting in args.settings.split(";"):
        cmd = [sys.executable, __file__, "--one", setting.strip()]
        cmd += ["--student", args.student, "--teacher", args.teacher, "--data", args.data]
        cmd += ["--max-len", str(args.max_len)]
        res = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
        if res.returncode != 0:
            sys.exit(f"{setting}: failed: {res.stderr.strip().splitlines()[-1:]}")
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(
            f"{r['settings']:<45} tokens {r['tokens']}  peak RSS {r['peak_rss_gb']:.2f} GB  "
            f"loss {r['loss']}  grad norm {r['grad_norm']}",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
