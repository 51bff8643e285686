"""Experiment (session 4, not part of the package): how much `verbose` can the cross-family
student write and still be taught by full OPD?

Copies the shipped zoo to OUT, rebuilds only `student-cross` there with `cross_own_share`
SHARE (the share of its SFT traces in the `verbose` style; the rest `terse`), evaluated every
EVAL_EVERY steps (one intra-op thread, so the build is bit-reproducible), then runs the
`full-cross` preset on it for 60 steps with evaluations at 0, 30 and 60 (200 problems) into
OUT/full-cross, and prints the accuracies.

    python experiments/cross_student_share.py SHARE OUT [EVAL_EVERY]   # e.g. 0.35 /tmp/z35 5

Session 4 (OMP_NUM_THREADS=1): 0.9 (EVAL_EVERY 10) kept at step 470, full OPD 39.5% -> 0.0%
(30) -> 0.0% (60); 0.35 (5) kept at step 620, 47.5% -> 72.5% -> 81.5%; 0.2 (5) kept at step
555, 30.5% -> 66.5% -> 82.5%. The shipped student-cross is the 0.35 build (the same weights
come from `pruneopd zoo build --only student-cross` with EVAL_EVERY 10: its evaluations at
610 and 620 are the same as with 5).
"""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from pruneopd.models import zoo_dir
from pruneopd.tools.zoo import ZooSpec, build_zoo

share, out = float(sys.argv[1]), Path(sys.argv[2])
eval_every = int(sys.argv[3]) if len(sys.argv) > 3 else 10
torch.set_num_threads(1)
if not out.exists():
    shutil.copytree(zoo_dir(), out)
spec = dataclasses.replace(ZooSpec(), cross_own_share=share, student_eval_every=eval_every)
report = build_zoo(out, spec, seed=0, only=("student-cross",))
print(json.dumps(report["models"]["student-cross"]))
run = out / "full-cross"
preset = Path(__file__).parents[1] / "pruneopd" / "configs" / "full-cross.yaml"
cmd = [
    sys.executable,
    "-m",
    "pruneopd",
    "train",
    "--config",
    str(preset),
    "max_steps=60",
    "eval_every=30",
    "eval_problems=200",
    f"out={run}",
    "progress=false",
]
env = {**os.environ, "PRUNEOPD_ZOO": str(out), "OMP_NUM_THREADS": "1"}
subprocess.run(cmd, env=env, check=True)
rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
print({r["step"]: r["eval/accuracy"] for r in rows if "eval/accuracy" in r})
