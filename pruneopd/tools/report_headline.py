"""The bench report's headline: every method against full OPD on both pairs in one table,
which methods are on the accuracy / CPU-time frontier, what full OPD itself reaches when
stopped early, every seed against full OPD's same seed, and the targets of `auto` (issue
31). Pure functions of `report.summarize`'s table and results.json; `report.render_markdown`
puts them first.
"""

from __future__ import annotations

import statistics

from pruneopd.tools.bench_results import PAIRS


def cost(row: dict) -> float | None:
    """A row's training time against full OPD: CPU time where every run logged it (the bench
    runs two at a time on a shared machine, which inflates wall-clock far more), else
    wall-clock."""
    return row["cpu_vs_full"] if row.get("cpu_vs_full") is not None else row.get("time_vs_full")


def frontier(rows: dict) -> list[str]:
    """The methods no other method beats on both accuracy and cost: for each, no other row has
    accuracy >= and cost <= with one of the two strict (accuracy against full OPD's over the
    seeds both ran, where there is a full OPD). In order of cost."""
    pts = {
        m: (cost(r), r["acc_vs_full"] if r.get("acc_vs_full") is not None else r["acc"])
        for m, r in rows.items()
        if cost(r) is not None
    }

    def beaten(m):
        c, a = pts[m]
        return any(
            c2 <= c and a2 >= a and (c2 < c or a2 > a) for m2, (c2, a2) in pts.items() if m2 != m
        )

    return sorted((m for m in pts if not beaten(m)), key=lambda m: pts[m])


def gain_per_cpu_minute(row: dict) -> float | None:
    """Accuracy gained by distillation (points over the student before) per CPU minute of
    training: how much each unit of compute bought."""
    if not row.get("cpu"):
        return None
    return (row["acc"] - row["before"]) / (row["cpu"] / 60.0)


def full_opd_stopped_early(results: dict, pair: str) -> list[dict]:
    """Full OPD's own curve: at each of its evaluations (every seed evaluated at the same
    steps), the mean accuracy over seeds and the share of its training spent so far (mean
    over seeds). The share is of the response tokens sampled so far (per step: its mean
    length, the batch being fixed), which full OPD's compute follows, where the run logged
    them; else of its wall-clock, which other load on the machine can skew. The baseline a
    cheaper method has to beat: what the same compute buys by stopping full OPD early."""
    runs = [r for r in results["runs"] if r["pair"] == pair and r["method"] == "full"]
    if not runs:
        return []
    steps = [e["step"] for e in runs[0]["evals"]]
    if any([e["step"] for e in r["evals"]] != steps for r in runs):
        return []

    def share(run, i):
        lens = run["steps"].get("mean_len") or []
        if lens and None not in lens and sum(lens) > 0:
            return sum(lens[: run["evals"][i]["step"]]) / sum(lens)
        return run["evals"][i]["train_seconds"] / run["train_seconds"]

    return [
        {
            "step": step,
            "share": statistics.fmean(share(r, i) for r in runs),
            "acc": statistics.fmean(100 * r["evals"][i]["accuracy"] for r in runs),
        }
        for i, step in enumerate(steps)
    ]


def accuracy_vs_full(row: dict) -> str:
    """A row's accuracy against full OPD in points, with its standard error over seeds where
    there are several: "+1.8", "-0.9 ± 0.9"."""
    se = row.get("acc_vs_full_se")
    return f"{row['acc_vs_full']:+.1f}" + (f" ± {se:.1f}" if se is not None else "")


def auto_targets(results: dict, table: dict) -> list[dict]:
    """Issue 31's targets for `auto` on this suite, each {"target", "measured", "met"}; met is
    None where a run it needs is missing. "measured" gives the accuracy difference with its
    standard error over seeds, the CPU-time ratio the target is judged on and the ratio of
    tokens trained (which the machine's load does not move). Long suite: cross >= full - 1
    point at <= 0.5x, same >= full - 1 at <= 1.0x; short suite: both pairs >= full - 1 at <= 1.0x; both suites:
    auto's accuracy gained per CPU minute above iw-opd's and window's on the cross pair."""
    long = results.get("suite") == "long"
    limits = {"cross": 0.5 if long else 1.0, "same": 1.0}
    rows = []
    for pair in PAIRS:
        rs = table.get(pair, {})
        limit = limits[pair]
        target = f"{pair}: auto >= full OPD - 1 point at <= {limit:.1f}x its CPU time"
        if "auto" not in rs or "full" not in rs:
            rows.append({"target": target, "measured": "not run", "met": None})
            continue
        a, c = rs["auto"], cost(rs["auto"])
        rows.append(
            {
                "target": target,
                "measured": f"{accuracy_vs_full(a)} points at {c:.2f}x"
                + (f" (tokens {a['tokens_vs_full']:.2f}x)" if a.get("tokens_vs_full") else "")
                + f" ({a['n_vs_full']} seeds)",
                "met": a["acc_vs_full"] >= -1.0 and c <= limit,
            }
        )
    cross = table.get("cross", {})
    target = "cross: auto's accuracy gained per CPU minute above iw-opd's and window's"
    have = [m for m in ("auto", "iw-opd", "window") if m in cross]
    gains = {m: gain_per_cpu_minute(cross[m]) for m in have}
    if len(have) < 3 or None in gains.values():
        measured = ", ".join(f"{m} {g:.3f}" for m, g in gains.items() if g is not None)
        rows.append({"target": target, "measured": measured or "not run", "met": None})
    else:
        rows.append(
            {
                "target": target,
                "measured": ", ".join(f"{m} {g:.3f}" for m, g in gains.items())
                + " points / CPU min",
                "met": gains["auto"] > gains["iw-opd"] and gains["auto"] > gains["window"],
            }
        )
    return rows


def seed_by_seed(results: dict, pair: str) -> dict[str, dict[int, dict]]:
    """Per method and seed on `pair`: the run's accuracy (%) and, where full OPD ran the same
    seed, its difference in points and its CPU-time ratio against that run ({"acc",
    "vs_full", "cpu_vs_full"}; the last two None without full OPD's seed). What the mean over
    seeds hides: one seed far off, or a method that wins on one seed and loses on the next."""
    runs = [r for r in results["runs"] if r["pair"] == pair]
    full = {r["seed"]: r for r in runs if r["method"] == "full"}
    out: dict[str, dict[int, dict]] = {}
    for r in runs:
        f = full.get(r["seed"])
        both = f is not None and r.get("cpu_seconds") and f.get("cpu_seconds")
        out.setdefault(r["method"], {})[r["seed"]] = {
            "acc": 100 * r["accuracy_after"],
            "vs_full": None if f is None else 100 * (r["accuracy_after"] - f["accuracy_after"]),
            "cpu_vs_full": r["cpu_seconds"] / f["cpu_seconds"] if both else None,
        }
    return out


def render_seed_by_seed(results: dict, table: dict) -> list[str]:
    """Markdown lines: per pair, every method's seeds against full OPD's same seed (accuracy
    difference in points and CPU-time ratio; the accuracy alone where full OPD did not run
    that seed). Nothing with a single seed."""
    seeds = sorted({r["seed"] for r in results["runs"]})
    if len(seeds) < 2:
        return []
    lines = [
        "",
        "### Seed by seed",
        "",
        "Each run against full OPD's run of the same seed: accuracy difference in points and "
        "CPU time as a ratio (the accuracy in % where full OPD's seed is missing).",
    ]
    for pair in PAIRS:
        if not table.get(pair):
            continue
        per = seed_by_seed(results, pair)
        lines += [
            "",
            f"| {pair} | " + " | ".join(f"seed {s}" for s in seeds) + " |",
            "| --- |" + " ---: |" * len(seeds),
        ]
        for m in table[pair]:
            cells = []
            for s in seeds:
                c = per.get(m, {}).get(s)
                if c is None:
                    cells.append("-")
                elif c["vs_full"] is None:
                    cells.append(f"{c['acc']:.1f}%")
                else:
                    ratio = "" if c["cpu_vs_full"] is None else f" at {c['cpu_vs_full']:.2f}x"
                    cells.append(f"{c['vs_full']:+.1f}{ratio}")
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


def render_headline(results: dict, table: dict) -> list[str]:
    """Markdown lines: the headline table (accuracy and CPU time against full OPD, every
    method and pair, the frontier marked), full OPD stopped early, the frontier plot."""
    pairs = [p for p in PAIRS if table.get(p)]
    if not pairs:
        return []
    methods = list(dict.fromkeys(m for p in pairs for m in table[p]))
    on_front = {p: set(frontier(table[p])) for p in pairs}
    head = ["method"]
    for p in pairs:
        head += [f"{p}: accuracy vs full", f"{p}: CPU time vs full"]
    lines = [
        "",
        "## Headline: every method against full OPD",
        "",
        "Against full OPD over the seeds both ran (their number in brackets where it differs "
        "from the bench's): accuracy in points (± the standard error of the per-seed "
        "differences: a difference inside about twice it is not one the seeds can tell from "
        "noise), CPU time as a ratio. **Bold**: on the frontier (no other method is both as "
        "accurate and as cheap).",
        "",
        "| " + " | ".join(head) + " |",
        "| --- |" + " ---: |" * (len(head) - 1),
    ]
    for m in methods:
        cells = [m]
        for p in pairs:
            r = table[p].get(m)
            if r is None:
                cells += ["-", "-"]
                continue
            paired = r.get("n_vs_full") or r["n"]
            n = "" if paired == results.get("seeds") else f" ({paired})"
            acc = "-" if r["acc_vs_full"] is None else accuracy_vs_full(r)
            if m == "full":
                acc = "+0.0"  # against itself, seed by seed
            c = cost(r)
            cpu = "-" if c is None else f"{c:.2f}x"
            if m in on_front[p]:
                acc, cpu = f"**{acc}**", f"**{cpu}**"
            cells += [acc + n, cpu]
        lines.append("| " + " | ".join(cells) + " |")
    for p in pairs:
        curve = [c for c in full_opd_stopped_early(results, p) if 0 < c["share"] < 1]
        if curve and "full" in table[p]:
            shown = "; ".join(
                f"step {c['step']}: {c['acc']:.1f}% ({c['acc'] - table[p]['full']['acc']:+.1f}) "
                f"at {c['share']:.2f}x"
                for c in curve
            )
            lines += ["", f"Full OPD stopped early, {p} pair (its own evaluations): {shown}."]
    lines += ["", "![accuracy against CPU time, every method](frontier.png)"]
    return lines + render_seed_by_seed(results, table)
