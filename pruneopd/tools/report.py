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


def _time_ratio(a: dict, b: dict) -> tuple[float, str]:
    """Training time of row `a` over row `b`, and how to print it. CPU time when both rows
    have it: the bench runs two runs at a time on a shared machine, and whatever else runs
    inflates wall-clock far more than a single-threaded run's CPU seconds; wall-clock beside it.
    """
    wall = a["time"] / b["time"]
    if a.get("cpu") and b.get("cpu"):
        cpu = a["cpu"] / b["cpu"]
        return cpu, f"{cpu:.2f}x CPU time ({wall:.2f}x wall)"
    return wall, f"{wall:.2f}x"


def targets(results: dict, table: dict) -> list[dict]:
    """The long suite's targets (issues 13 and 16), each with what was measured and whether
    it holds: {"target", "measured", "met"} (met is None when the runs it needs are missing).
    Prune-OPD's best variant is the faster of prune / prune-online among those that keep
    full OPD's accuracy within a point. Times are compared by `_time_ratio`."""
    rows = []
    same, cross = table.get("same", {}), table.get("cross", {})

    def add(target, measured, met):
        rows.append({"target": target, "measured": measured, "met": met})

    def have(pair_rows, *methods):
        return all(m in pair_rows for m in methods)

    if have(cross, "full"):
        variants = [m for m in ("prune", "prune-online") if m in cross]
        ratio = {m: _time_ratio(cross[m], cross["full"]) for m in variants}
        ok = [m for m in variants if cross[m]["acc_vs_full"] >= -1.0]
        best = min(ok, key=lambda m: ratio[m][0]) if ok else None
        shown = "; ".join(
            f"{m} {ratio[m][1]}, {cross[m]['acc']:.1f}% vs {cross['full']['acc']:.1f}%"
            for m in variants
        )
        add(
            "cross: Prune-OPD (released or online) <= 0.5x full OPD's time at accuracy >= full - 1",
            shown or "no runs",
            None if not shown else bool(best and ratio[best][0] <= 0.5),
        )
    if have(same, "full", "prune"):
        caps = [
            r["final_cap"]
            for r in results["runs"]
            if r["pair"] == "same" and r["method"] == "prune"
        ]
        max_len = same["prune"]["max_len"]
        add(
            "same: prune's final cap >= 90% of L_max on every seed",
            f"{', '.join(map(str, caps))} / {max_len}",
            all(c >= 0.9 * max_len for c in caps),
        )
        r = same["prune"]
        ratio, shown = _time_ratio(r, same["full"])
        add(
            "same: prune's accuracy within 1 point of full OPD (or above), time <= 1.10x",
            f"{r['acc_vs_full']:+.1f} points, {shown}",
            r["acc_vs_full"] >= -1.0 and ratio <= 1.10,
        )
    for pair, rs in (("same", same), ("cross", cross)):
        if have(rs, "full"):
            gain = rs["full"]["acc"] - rs["full"]["before"]
            add(
                f"{pair}: full OPD teaches the pair by >= 10 points",
                f"{rs['full']['before']:.1f}% -> {rs['full']['acc']:.1f}% ({gain:+.1f})",
                gain >= 10.0,
            )
    if have(cross, "hybrid", "prune"):
        h, p = cross["hybrid"], cross["prune"]
        ratio, shown = _time_ratio(h, p)
        add(
            "cross: hybrid accuracy >= prune + 2 points at <= 1.2x prune's time",
            f"{h['acc'] - p['acc']:+.1f} points, {shown}",
            h["acc"] - p["acc"] >= 2.0 and ratio <= 1.2,
        )
    if have(cross, "prefix-adaptive", "prefix-sched"):
        a, sch = cross["prefix-adaptive"], cross["prefix-sched"]
        ratio, shown = _time_ratio(a, sch)
        add(
            "cross: prefix-adaptive no more time than prefix-sched at no less accuracy",
            f"{shown} the time, {a['acc'] - sch['acc']:+.1f} points",
            ratio <= 1.0 and a["acc"] >= sch["acc"],
        )
    limit = {"quick": 3600, "full": 4 * 3600}.get(results["preset"])
    walls = [r.get("wall_seconds") for r in results["runs"]]
    name = f"{results['preset']} preset under {(limit or 0) // 60} minutes on 2 cores"
    if limit and results.get("wall_seconds"):
        w = results["wall_seconds"]
        add(name, f"{w / 60:.0f} min", w <= limit)
    elif limit and walls and None not in walls:  # run over several invocations
        jobs = results.get("jobs", 2)
        w = sum(walls) / jobs
        add(
            name,
            f"{w / 60:.0f} min (the runs' wall time / {jobs} jobs: it ran over "
            "several invocations)",
            w <= limit,
        )
    return rows


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
