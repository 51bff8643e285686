"""Benchmark report: `results.json` -> `report.md` tables and PNG plots.

`pruneopd report DIR` re-renders everything from `DIR/results.json` alone (not the runs'
folders), so a report can be rebuilt (or restyled) without rerunning a single step. A
results.json written before results kept binned curves only (with `overlap_samples`, every
per-token overlap of full OPD's samples) is converted in place first (`binned`): same tables.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from pruneopd.tools.bench_results import METHODS, PAIRS, binned, write_results  # noqa: F401
from pruneopd.tools.report_headline import auto_targets, render_headline
from pruneopd.tools.report_plots import PAIR_TITLES, frontier_plot, plots
from pruneopd.tools.report_targets import targets


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


ENDS = (
    "mean_len",
    "eos_rate",
    "drift_rate",
    "reward",
    "drifted_rate",
    "reward_drifted",
    "gate_rate",
)


def summarize(results: dict) -> dict:
    """Per pair and method: means over seeds, and ratios against full OPD."""
    table: dict = {}
    for pair in PAIRS:
        rows = {}
        for m in METHODS:
            runs = [r for r in results["runs"] if r["pair"] == pair and r["method"] == m]
            if not runs:
                continue
            acc_m, acc_s = _mean_std([100 * r["accuracy_after"] for r in runs])
            rows[m] = {
                "n": len(runs),
                "time": statistics.fmean(r["train_seconds"] for r in runs),
                "cpu": (
                    statistics.fmean(r["cpu_seconds"] for r in runs)
                    if all(r.get("cpu_seconds") for r in runs)
                    else None
                ),
                "tokens": statistics.fmean(r["tokens_trained"] for r in runs),
                "acc": acc_m,
                "acc_std": acc_s,
                "before": 100 * statistics.fmean(r["accuracy_before"] for r in runs),
                "final_cap": runs[0]["final_cap"],
                "max_len": runs[0]["config"]["max_len"],
                "split": {
                    k: statistics.fmean(r[k] for r in runs)
                    for k in ("t_sample", "t_teacher", "t_update")
                },
                "ends": {k: _ends([r["steps"].get(k, []) for r in runs]) for k in ENDS},
                "by_drift": _by_drift(runs),
            }
        for m, r in rows.items():
            r.update(_against_full(results["runs"], pair, m))
        table[pair] = rows
    return table


def _against_full(all_runs: list[dict], pair: str, method: str) -> dict:
    """A method's ratios (time, CPU time, tokens) and accuracy difference against full OPD,
    over the seeds both ran (`n_vs_full` of them): a bench that is not finished compares
    like with like; `acc_vs_full_se` is the difference's standard error over those seeds.
    All None without a common seed."""
    by_seed = {
        m: {r["seed"]: r for r in all_runs if r["pair"] == pair and r["method"] == m}
        for m in (method, "full")
    }
    common = sorted(set(by_seed[method]) & set(by_seed["full"]))
    if not common:
        return dict.fromkeys(
            (
                "time_vs_full",
                "cpu_vs_full",
                "tokens_vs_full",
                "acc_vs_full",
                "acc_vs_full_se",
                "n_vs_full",
            )
        )
    mine = [by_seed[method][s] for s in common]
    full = [by_seed["full"][s] for s in common]

    def ratio(key):
        a, b = (sum(r.get(key) or 0 for r in rs) for rs in (mine, full))
        ok = all(r.get(key) for r in mine + full)
        return a / b if ok and b else None

    diffs = [
        100 * (a["accuracy_after"] - b["accuracy_after"]) for a, b in zip(mine, full, strict=True)
    ]
    return {
        "time_vs_full": ratio("train_seconds"),
        "cpu_vs_full": ratio("cpu_seconds"),
        "tokens_vs_full": ratio("tokens_trained"),
        "acc_vs_full": statistics.fmean(diffs),
        # the standard error of the per-seed differences: how far the mean may be from the
        # method's true difference (None with one seed)
        "acc_vs_full_se": statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else None,
        "n_vs_full": len(common),
    }


def _by_drift(runs: list[dict]) -> dict | None:
    """Mean over seeds of the final evaluation's split of the held-out problems by drift
    (share whose greedy response ran out of reliability; accuracy on those and on the rest)."""
    last = [r["evals"][-1] for r in runs if r["evals"] and "drifted_rate" in r["evals"][-1]]
    if not last:
        return None

    def mean(key):
        xs = [e[key] for e in last if e.get(key) is not None]
        return 100 * statistics.fmean(xs) if xs else None

    return {k: mean(k) for k in ("drifted_rate", "accuracy_drifted", "accuracy_reliable")}


def _ends(series: list[list], n: int = 10) -> tuple[float, float]:
    """Mean over runs of a per-step series' first and last `n` steps (missing values skipped)."""
    first = [x for xs in series for x in xs[:n] if x is not None]
    last = [x for xs in series for x in xs[-n:] if x is not None]
    return (
        statistics.fmean(first) if first else float("nan"),
        statistics.fmean(last) if last else float("nan"),
    )


def _fmt_ratio(x):
    return "-" if x is None else f"{x:.2f}x"


def render_markdown(results: dict, table: dict) -> str:
    s = results["settings"]
    v = results["versions"]
    lines = [
        f"# pruneopd bench ({results.get('suite', 'short')} suite, {results['preset']} preset)",
        "",
        f"{results['date']}; {results['seeds']} seed(s); {s['steps']} steps per run; "
        f"{s['eval_problems']} held-out problems per evaluation; python {v['python']}, "
        f"torch {v['torch']}, transformers {v['transformers']}, pruneopd {v['pruneopd']} "
        f"({(v.get('git_commit') or 'no git')[:10]}); {results['cpu_count']} CPU cores.",
        "",
        "Time is training wall-clock (sampling + teacher + update; evaluation excluded); CPU "
        "time is the training process's CPU seconds over the same steps, which other load on "
        "the machine inflates far less than wall-clock. "
        "Tokens are response tokens trained on. Accuracy is greedy accuracy on the held-out "
        "test split after training (mean ± std over seeds); `vs full` is the difference in "
        "points.",
    ]
    if results.get("missing"):
        lines += [
            "",
            f"**Partial**: {len(results['missing'])} runs of the plan had not finished and are "
            f"left out (`pruneopd bench --finished-only`): {', '.join(results['missing'])}.",
        ]
    if results.get("reused_from"):
        n = sum("reused_from" in r for r in results["runs"])
        made = "; ".join(
            f"{path} ({o.get('date') or '?'}, pruneopd at "
            f"{((o.get('versions') or {}).get('git_commit') or 'no git')[:10]})"
            for path, o in results["reused_from"].items()
        )
        lines += [
            "",
            f"**Reused**: {n} of the {len(results['runs'])} runs were finished by an earlier "
            f"bench and taken from its results.json (`pruneopd bench --reuse`: same preset, "
            f"same config key for key; each run's `reused_from` names it): {made}.",
        ]
    lines += render_headline(results, table)
    for pair in PAIRS:
        rows = table.get(pair, {})
        if not rows:
            continue
        before = next(iter(rows.values()))["before"]
        lines += [
            "",
            f"## {PAIR_TITLES[pair]}",
            "",
            f"Student before distillation: {before:.1f}%.",
            "",
            "| method | time (s) | time vs full | CPU time vs full | tokens vs full | accuracy (%) | accuracy vs full | final cap |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for m, r in rows.items():
            vs = "-" if r["acc_vs_full"] is None else f"{r['acc_vs_full']:+.1f}"
            cap = "-" if r["final_cap"] is None else f"{r['final_cap']} / {r['max_len']}"
            lines.append(
                f"| {m} | {r['time']:.0f} | {_fmt_ratio(r['time_vs_full'])} | "
                f"{_fmt_ratio(r['cpu_vs_full'])} | {_fmt_ratio(r['tokens_vs_full'])} | {r['acc']:.1f} ± {r['acc_std']:.1f} | {vs} | {cap} |"
            )
        split = {m: r["by_drift"] for m, r in rows.items() if r.get("by_drift")}
        if split:
            lines += [
                "",
                "Held-out problems split by drift (final evaluation, mean over seeds): "
                "the share whose greedy response's reliability ran out under the teacher's "
                "scores and the run's monitor, and the accuracy on those and on the rest.",
                "",
                "| method | ran out (%) | accuracy, ran out (%) | accuracy, the rest (%) |",
                "| --- | ---: | ---: | ---: |",
            ]
            for m, b in split.items():
                cells = [
                    "-" if b[k] is None else f"{b[k]:.1f}"
                    for k in ("drifted_rate", "accuracy_drifted", "accuracy_reliable")
                ]
                lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "Samples over training (mean over seeds; first / last 10 steps): "
            "mean length, EOS rate (share of samples that ended by themselves, not by the "
            "cap), drift-event rate, reward (answer right), share of samples whose "
            "reliability ran out (w reached 0), and the reward of those samples.",
            "",
            "| method | mean length | EOS rate | drift rate | reward | ran out | reward, ran out |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for m, r in rows.items():
            e = r["ends"]
            lines.append(
                " | ".join(
                    [f"| {m}"]
                    + [
                        "-" if e[k][0] != e[k][0] else f"{e[k][0]:{f}} / {e[k][1]:{f}}"
                        for k, f in (
                            ("mean_len", ".0f"),
                            ("eos_rate", ".2f"),
                            ("drift_rate", ".3f"),
                            ("reward", ".2f"),
                            ("drifted_rate", ".2f"),
                            ("reward_drifted", ".2f"),
                        )
                    ]
                )
                + " |"
            )
        gated = {
            m: r["ends"]["gate_rate"]
            for m, r in rows.items()
            if r["ends"]["gate_rate"][0] == r["ends"]["gate_rate"][0]
        }
        if gated:
            lines += [
                "",
                "Hybrid gate (first / last 10 steps): share of response tokens past the "
                "gate, trained on the outcome reward instead of the teacher: "
                + "; ".join(f"{m} {a:.2f} / {b:.2f}" for m, (a, b) in gated.items()),
            ]
        lines += [
            "",
            "Time split (s, mean): "
            + "; ".join(
                f"{m} sample {r['split']['t_sample']:.0f} / teacher {r['split']['t_teacher']:.0f} / "
                f"update {r['split']['t_update']:.0f}"
                for m, r in rows.items()
            ),
        ]
        lines += [
            "",
            f"![accuracy vs time](accuracy_vs_time_{pair}.png)",
            f"![cap and effective length](cap_{pair}.png)",
            f"![hit ratio](hit_ratio_{pair}.png)",
        ]
    goals = targets(results, table) if results.get("suite") == "long" else []
    if "auto" in table.get("same", {}) or "auto" in table.get("cross", {}):
        goals += auto_targets(results, table)
    if goals:
        lines += [
            "",
            "## Targets",
            "",
            "Training times are compared by CPU time where every run logged it "
            "(wall-clock beside it), for the reason given above.",
            "",
            "| target | measured | met |",
            "| --- | --- | --- |",
        ]
        for t in goals:
            met = {True: "yes", False: "**no**", None: "-"}[t["met"]]
            lines.append(f"| {t['target']} | {t['measured']} | {met} |")
    lines += ["", "![overlap histogram](overlap_hist.png)", ""]
    if results.get("overlap_by_position"):
        lines += ["![overlap along the response](overlap_by_position.png)", ""]
    return "\n".join(lines)


def render_report(out: str | Path, results: dict | None = None) -> Path:
    """Write `report.md` and the plots into `out` (from `out/results.json` if not given; an
    older results.json with raw per-token samples is first rewritten binned, `binned`); a
    training run's folder (summary.json, no results.json) gets `run_report`'s report."""
    out = Path(out)
    if results is None and not (out / "results.json").exists() and (out / "summary.json").exists():
        from pruneopd.tools.run_report import render_run_report

        return render_run_report(out)  # a training run's folder
    if results is None:
        path = out / "results.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: run `pruneopd bench --out {out}` first")
        try:
            results = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} line {e.lineno}: not valid JSON ({e.msg})") from None
        if "overlap_samples" in results:
            results = binned(results)
            write_results(path, results)
            print(f"{path}: per-token overlaps replaced by their histogram", file=sys.stderr)
    table = summarize(results)
    plots(out, results)
    frontier_plot(out, results, table)
    report = out / "report.md"
    report.write_text(render_markdown(results, table))
    return report
