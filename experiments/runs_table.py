"""One markdown table of several training runs side by side (the real pair's runs of
docs/benchmarks.md section 12): accuracy at each evaluation, CPU time, tokens, the cap's path
and the monitor's view, each against the first run named.

    python experiments/runs_table.py runs/real/full runs/real/prune runs/real/prefix
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]


def cap_path(steps: list[dict]) -> str:
    """The cap as it moved: 'value (from step s)' at each change."""
    out, last = [], None
    for r in steps:
        if r.get("cap") != last:
            out.append(f"{r['cap']} (step {r['step']})")
            last = r.get("cap")
    return ", ".join(out) if len(out) <= 6 else ", ".join(out[:3] + ["...", *out[-2:]])


def summarize(run: Path) -> dict:
    s = json.loads((run / "summary.json").read_text())
    steps = [r for r in rows(run) if "loss" in r]
    evals = {e["step"]: e["accuracy"] for e in s["evals"]}
    return {
        "name": run.name,
        "method": s["config"]["method"],
        "evals": evals,
        "cpu": s["cpu_seconds"],
        "train_s": s["train_seconds"],
        "generated": s["tokens_generated"],
        "trained": s["tokens_trained"],
        "steps": len(steps),
        "cap": cap_path(steps),
        "mean_len": sum(r["mean_len"] for r in steps) / len(steps),
        "weight": sum(r["weight_mean"] for r in steps) / len(steps),
        "eff_len": sum(r["eff_len_mean"] for r in steps) / len(steps),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", type=Path)
    args = ap.parse_args()
    runs = [summarize(r) for r in args.runs]
    ref = runs[0]
    points = sorted({k for r in runs for k in r["evals"]})
    head = ["run", "method", *(f"acc. step {k}" for k in points)]
    head += ["CPU s", "vs first", "tokens sampled", "vs first", "tokens trained", "cap", "mean len"]
    head += ["weight mean", "reliable length"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in runs:
        cells = [r["name"], r["method"]]
        cells += [f"{100 * r['evals'][k]:.1f}%" if k in r["evals"] else "-" for k in points]
        cells += [f"{r['cpu']:,.0f}", f"{r['cpu'] / ref['cpu']:.2f}x"]
        cells += [f"{r['generated']:,}", f"{r['generated'] / ref['generated']:.2f}x"]
        cells += [f"{r['trained']:,}", r["cap"], f"{r['mean_len']:.0f}"]
        cells += [f"{r['weight']:.2f}", f"{r['eff_len']:.0f}"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
