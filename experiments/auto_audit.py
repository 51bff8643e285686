"""`auto`'s designs against full OPD, the probe-audited window and the adaptive prefix, seed by
seed: the fifth (the tail's audits) against the fourth (stop at the horizon), docs/benchmarks.md
section 15, and the sixth (`auto_curriculum=true`: the adaptive prefix up to L_max where there
is no horizon), section 16.

    python experiments/auto_audit.py

Reads committed files only: the fifth design's runs in docs/bench-long-auto/audit/ and the
sixth's in docs/bench-long-auto/curriculum/ (made with the bench's overrides); on the short
suite the other methods from the bench of section 14 (`git show
c39cd15:docs/bench-short/results.json`, the fourth design's auto included); on the long cross
pair from docs/bench-long-auto/{full-today,rule4,field}/; the long same pair's full OPD, the
fifth design and the adaptive prefix from the long bench at today's code
(`git show 6afd5f8:docs/bench-long-next/results.json`, before its auto runs became the sixth
design's; the finished bench is docs/bench-long/).
"""

from __future__ import annotations

import json
import statistics
import subprocess
from pathlib import Path

ROOT = Path(__file__).parents[1]
DOCS = ROOT / "docs" / "bench-long-auto"
SHORT_BENCH = "c39cd15:docs/bench-short/results.json"  # section 14's bench, the fourth design
LONG = {"full": "full-today", "auto (4th)": "rule4", "window": "field"}
# the long bench in progress when sections 15-16 were written (its auto: the fifth design)
LONG_BENCH = "6afd5f8:docs/bench-long-next/results.json"
LABELS = ("full", "auto (4th)", "auto (5th)", "auto (6th)", "window", "prefix-adaptive")


def _designs(runs: dict, suite: str, pairs: tuple[str, ...]) -> None:
    """Add the fifth and sixth designs' committed runs of `suite` to `runs`."""
    for label, folder in (("auto (5th)", "audit"), ("auto (6th)", "curriculum")):
        for pair in pairs:
            for seed in range(3):
                path = DOCS / folder / suite / pair / "auto" / f"seed{seed}" / "summary.json"
                s = _summary(path)
                if s is not None:
                    runs[(pair, label, seed)] = s


def _summary(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def short_runs() -> dict:
    """(pair, label, seed) -> run summary, short suite."""
    text = subprocess.run(
        ["git", "show", SHORT_BENCH], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    runs = {}
    for r in json.loads(text)["runs"]:
        label = {"auto": "auto (4th)"}.get(r["method"], r["method"])
        runs[(r["pair"], label, r["seed"])] = r
    _designs(runs, "short", ("same", "cross"))
    return runs


def long_runs() -> dict:
    """(pair, label, seed) -> run summary, long suite: the cross pair from the folders of
    sections 13 and 15, the same pair from the long bench (its auto is the fifth design)."""
    runs = {}
    for seed in range(3):
        for label, folder in LONG.items():
            method = label.split(" ")[0]
            s = _summary(DOCS / folder / "cross" / method / f"seed{seed}" / "summary.json")
            if s is not None:
                runs[("cross", label, seed)] = s
    text = subprocess.run(
        ["git", "show", LONG_BENCH], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    if text:
        for r in json.loads(text)["runs"]:
            label = {"auto": "auto (5th)"}.get(r["method"], r["method"])
            if label in LABELS and (r["pair"] == "same" or label == "prefix-adaptive"):
                runs[(r["pair"], label, r["seed"])] = r
    _designs(runs, "long", ("same", "cross"))
    return runs


def table(title: str, runs: dict, pairs: tuple[str, ...]) -> None:
    print(f"\n{title}\n")
    print(
        "| pair | method | accuracy per seed | vs full (mean) | CPU time vs full | tokens vs full "
        "| gain per CPU min |"
    )
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    for pair in pairs:
        for label in LABELS:
            seeds = [s for s in range(3) if (pair, label, s) in runs and (pair, "full", s) in runs]
            if not seeds:
                continue
            rs = [runs[(pair, label, s)] for s in seeds]
            fs = [runs[(pair, "full", s)] for s in seeds]
            acc = ", ".join(f"{100 * r['accuracy_after']:.1f}" for r in rs)
            diff = statistics.fmean(
                100 * (r["accuracy_after"] - f["accuracy_after"])
                for r, f in zip(rs, fs, strict=True)
            )
            cpu = statistics.fmean(
                r["cpu_seconds"] / f["cpu_seconds"] for r, f in zip(rs, fs, strict=True)
            )
            tok = statistics.fmean(
                r["tokens_trained"] / f["tokens_trained"] for r, f in zip(rs, fs, strict=True)
            )
            gain = statistics.fmean(100 * (r["accuracy_after"] - r["accuracy_before"]) for r in rs)
            per_min = gain / (statistics.fmean(r["cpu_seconds"] for r in rs) / 60)
            print(
                f"| {pair} | {label} | {acc} (seeds {', '.join(map(str, seeds))}) | {diff:+.1f} | "
                f"{cpu:.2f}x | {tok:.2f}x | {per_min:.2f} |"
            )


def main() -> None:
    table("Short suite (3 seeds where run)", short_runs(), ("same", "cross"))
    table("Long suite", long_runs(), ("same", "cross"))


if __name__ == "__main__":
    main()
