"""The long suite's targets of issues 13 and 16 (Prune-OPD against full OPD, hybrid, the
adaptive prefix, the preset's time), each with what was measured and whether it holds; the
report's "Targets" section lists them beside `auto`'s (report_headline.auto_targets)."""

from __future__ import annotations


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
            f"{shown} of prefix-sched's, {a['acc'] - sch['acc']:+.1f} points",
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
