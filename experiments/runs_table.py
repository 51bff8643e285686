"""One markdown table of several training runs side by side (the real pair's runs of
docs/benchmarks.md section 12): accuracy at each evaluation, time, tokens, the cap's path,
the EOS rate and the monitor's view. A run stopped before its end is read from its metrics.

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


def ending_note_step(steps: list[dict]) -> int | None:
    """The step at which the trainer's EndingWatch says the student stopped ending (or None)."""
    from pruneopd.training.ending_watch import EndingWatch

    watch = EndingWatch()
    for r in steps:
        if watch.update(r["step"], r["eos_rate"], r["mean_len"], r["cap"]):
            return r["step"]
    return None


def summarize(run: Path) -> dict:
    """A run's numbers; a run stopped before its end (no summary.json) from its metrics, with
    its time as the sum of its steps' (wall) times and no CPU time."""
    metrics = rows(run)
    steps = [r for r in metrics if "loss" in r]
    if (run / "summary.json").exists():
        s = json.loads((run / "summary.json").read_text())
        method, evals, cpu = (
            s["config"]["method"],
            {e["step"]: e["accuracy"] for e in s["evals"]},
            s["cpu_seconds"],
        )
        generated, trained = s["tokens_generated"], s["tokens_trained"]
    else:
        import yaml

        method = yaml.safe_load((run / "config.yaml").read_text())["method"]
        evals = {r["step"]: r["eval/accuracy"] for r in metrics if "eval/accuracy" in r}
        cpu = None
        generated = sum(r["tokens_generated"] for r in steps)
        trained = sum(r["tokens_trained"] for r in steps)
    return {
        "name": run.name,
        "method": method,
        "evals": evals,
        "cpu": cpu,
        "step_s": sum(r["t_sample"] + r["t_teacher"] + r["t_update"] for r in steps) / len(steps),
        "generated": generated,
        "trained": trained,
        "steps": len(steps),
        "cap": cap_path(steps),
        "mean_len": sum(r["mean_len"] for r in steps) / len(steps),
        "eos_last": steps[-1]["eos_rate"],
        "note_at": ending_note_step(steps),
        "weight": sum(r["weight_mean"] for r in steps) / len(steps),
        "eff_len": sum(r["eff_len_mean"] for r in steps) / len(steps),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", type=Path)
    args = ap.parse_args()
    runs = [summarize(r) for r in args.runs]
    points = sorted({k for r in runs for k in r["evals"]})
    head = ["run", "method", "steps", *(f"acc. step {k}" for k in points)]
    head += ["CPU s", "s / step (wall)", "tokens sampled / step", "cap", "mean len"]
    head += ["EOS rate, last step", "'stopped ending' note at", "weight mean", "reliable length"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in runs:
        cells = [r["name"], r["method"], str(r["steps"])]
        cells += [f"{100 * r['evals'][k]:.1f}%" if k in r["evals"] else "-" for k in points]
        cells += [f"{r['cpu']:,.0f}" if r["cpu"] is not None else "(stopped)", f"{r['step_s']:.0f}"]
        cells += [f"{r['generated'] / r['steps']:,.0f}", r["cap"], f"{r['mean_len']:.0f}"]
        cells += [f"{r['eos_last']:.2f}", str(r["note_at"] or "-")]
        cells += [f"{r['weight']:.2f}", f"{r['eff_len']:.0f}"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
