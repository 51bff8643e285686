"""Keep a long bench's finished runs across sessions (a session ends whatever runs): copy the
finished runs of a bench (summary.json present) into DST/runs, without checkpoints, final
weights or TensorBoard files; samples.jsonl kept only for full OPD runs and only the fields
`gather` reads (step, overlap). DST should lie outside git: bench run folders are not
committed (.gitignore ignores runs/*/*/seed*/ and eval_cache/); a finished bench keeps
results.json, report.md, plots and logs.

    python experiments/persist_bench.py bench-long-full docs/bench-long-full

To continue: copy DST/runs and DST/eval_cache back into the bench's --out and rerun the same
`pruneopd bench` command at the same commit; finished runs are not run again.
"""

import json
import shutil
import sys
from pathlib import Path

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
n = 0
for summ in sorted(src.glob("runs/*/*/seed*/summary.json")):
    rd = summ.parent
    out = dst / rd.relative_to(src)
    out.mkdir(parents=True, exist_ok=True)
    keep = (
        "summary.json",
        "config.yaml",
        "versions.json",
        "wall.json",
        "metrics.jsonl",
        "stdout.log",
        "stderr.log",
    )
    for f in keep:
        if (rd / f).exists():
            shutil.copy(rd / f, out / f)
    if rd.parent.name == "full" and (rd / "samples.jsonl").exists():
        with open(rd / "samples.jsonl") as fi, open(out / "samples.jsonl", "w") as fo:
            for line in fi:
                r = json.loads(line)
                fo.write(json.dumps({"step": r["step"], "overlap": r["overlap"]}) + "\n")
    n += 1
if (src / "eval_cache").exists():
    shutil.copytree(src / "eval_cache", dst / "eval_cache", dirs_exist_ok=True)
print(f"{n} finished runs copied to {dst}")
