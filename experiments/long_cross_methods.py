"""The long cross pair at today's code, seed by seed against full OPD on the same seed: `auto`
(the fourth rule), IW-OPD and the probe-audited window (docs/benchmarks.md section 13).

    python experiments/long_cross_methods.py

Reads the committed summaries in docs/bench-long-auto/: full-today/ (full OPD), rule4/ (auto)
and field/ (iw-opd, window), all made with the bench's overrides.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

DOCS = Path(__file__).parents[1] / "docs" / "bench-long-auto"
FOLDERS = {"full": "full-today", "auto": "rule4", "iw-opd": "field", "window": "field"}


def summary(method: str, seed: int) -> dict | None:
    p = DOCS / FOLDERS[method] / "cross" / method / f"seed{seed}" / "summary.json"
    return json.loads(p.read_text()) if p.exists() else None


def main() -> None:
    print("| method | seed | accuracy | full OPD | vs full | CPU time vs full | tokens vs full |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for method in ("auto", "iw-opd", "window"):
        diffs, cpus, gains, cpu_s = [], [], [], []
        for seed in range(3):
            a, f = summary(method, seed), summary("full", seed)
            if a is None:
                continue
            d = 100 * (a["accuracy_after"] - f["accuracy_after"])
            c = a["cpu_seconds"] / f["cpu_seconds"]
            diffs.append(d)
            cpus.append(c)
            gains.append(100 * (a["accuracy_after"] - a["accuracy_before"]))
            cpu_s.append(a["cpu_seconds"])
            print(
                f"| {method} | {seed} | {100 * a['accuracy_after']:.1f}% | "
                f"{100 * f['accuracy_after']:.1f}% | {d:+.1f} | {c:.2f}x | "
                f"{a['tokens_trained'] / f['tokens_trained']:.2f}x |"
            )
        per_min = statistics.fmean(gains) / (statistics.fmean(cpu_s) / 60)
        print(
            f"| **{method}, mean of {len(diffs)}** | | | | **{statistics.fmean(diffs):+.1f}** | "
            f"**{statistics.fmean(cpus):.2f}x** | gain {per_min:.2f} points / CPU min |"
        )


if __name__ == "__main__":
    main()
