"""The long cross pair's `auto` runs against full OPD at today's code, seed by seed: tokens
trained and accuracy against the same seed's full-OPD run (docs/benchmarks.md section 13).

    python experiments/horizon_vs_accuracy.py

Reads the committed summaries: docs/bench-long-auto/results.json (the third rule's runs),
docs/bench-long-auto/rule4/ (the fourth rule's) and docs/bench-long-auto/full-today/ (full OPD).
"""

from __future__ import annotations

import json
from pathlib import Path

DOCS = Path(__file__).parents[1] / "docs" / "bench-long-auto"


def main() -> None:
    full = {
        s: json.loads((DOCS / f"full-today/cross/full/seed{s}/summary.json").read_text())
        for s in range(3)
    }
    third = {
        r["seed"]: r
        for r in json.loads((DOCS / "results.json").read_text())["runs"]
        if r["pair"] == "cross" and r["method"] == "auto"
    }
    print("| rule, seed | tokens vs full | CPU time vs full | accuracy | full OPD | vs full |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for rule in ("third", "fourth"):
        for s in range(3):
            a = (
                third[s]
                if rule == "third"
                else json.loads((DOCS / f"rule4/cross/auto/seed{s}/summary.json").read_text())
            )
            f = full[s]
            print(
                f"| {rule}, {s} | {a['tokens_trained'] / f['tokens_trained']:.2f}x | "
                f"{a['cpu_seconds'] / f['cpu_seconds']:.2f}x | {100 * a['accuracy_after']:.1f}% | "
                f"{100 * f['accuracy_after']:.1f}% | "
                f"{100 * (a['accuracy_after'] - f['accuracy_after']):+.1f} |"
            )


if __name__ == "__main__":
    main()
