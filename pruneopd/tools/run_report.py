"""`pruneopd report RUN_DIR` on one training run (its summary.json): the run's accuracy, and
with several teachers a table of each teacher's share and how it judged its samples."""

from __future__ import annotations

import json
from pathlib import Path


def _cell(x, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def render_markdown(summary: dict, name: str) -> str:
    cfg = summary["config"]
    lines = [
        f"# pruneopd run {name}",
        "",
        f"{cfg['method']} OPD on {cfg.get('data') or cfg['task']}, {cfg['max_steps']} steps: "
        f"held-out accuracy {summary['accuracy_before']:.3f} -> {summary['accuracy_after']:.3f}; "
        f"{summary['tokens_trained']} tokens trained; {summary['train_seconds']:.0f} s training.",
    ]
    teachers = summary.get("teachers")
    if teachers:
        rule = cfg["teacher_routing"]
        how = (
            f"routed by `{cfg['teacher_field']}`"
            if rule == "field"
            else f"mixed with weights {cfg['teacher_weights'] or 'equal'}"
        )
        lines += [
            "",
            f"## Teachers ({how})",
            "",
            "Over the run, per teacher: the samples it judged and their tokens, the mean "
            "top-K overlap and drift-event rate over those tokens, the samples' mean answer "
            "reward and effective reliable length.",
            "",
            "| teacher | samples | tokens | overlap | drift rate | reward | effective length |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for t, r in teachers.items():
            lines.append(
                f"| {t} | {r['samples']} | {r['tokens']} | {_cell(r['overlap'], '.3f')} | "
                f"{_cell(r['drift_rate'], '.3f')} | {_cell(r['reward'], '.3f')} | "
                f"{_cell(r['eff_len'], '.1f')} |"
            )
    return "\n".join(lines) + "\n"


def render_run_report(out: str | Path) -> Path:
    """Write `out/report.md` from `out/summary.json`."""
    out = Path(out)
    path = out / "summary.json"
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} line {e.lineno}: not valid JSON ({e.msg})") from None
    report = out / "report.md"
    report.write_text(render_markdown(summary, out.name))
    return report
