"""The bench report's plots (PNG, matplotlib): accuracy against CPU time, the cap and the hit
ratio along training, the overlap histogram and the overlap along the response, all drawn from
results.json (`bench_results`)."""

from __future__ import annotations

from pathlib import Path

from pruneopd.tools.bench_results import METHODS, PAIRS

PAIR_TITLES = {
    "same": "same-family pair (student-same)",
    "cross": "cross-family pair (student-cross)",
}


# one colour per bench method, in METHODS' order (tests/test_report.py checks every method has one)
METHOD_COLORS = dict(
    zip(
        METHODS,
        [
            "tab:gray",
            "tab:blue",
            "tab:cyan",
            "tab:red",
            "tab:orange",
            "tab:green",
            "tab:purple",
            "tab:brown",
            "tab:olive",
            "black",
        ],
        strict=True,
    )
)


def plots(out: Path, results: dict) -> list[Path]:
    """The bench's PNG plots in `out`, drawn from results.json's binned curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    colors = METHOD_COLORS
    for pair in PAIRS:
        runs = [r for r in results["runs"] if r["pair"] == pair]
        if not runs:
            continue
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for r in runs:
            ax.plot(
                [e["train_seconds"] for e in r["evals"]],
                [100 * e["accuracy"] for e in r["evals"]],
                marker="o",
                color=colors[r["method"]],
                alpha=0.8,
                label=r["method"] if r["seed"] == 0 else None,
            )
        ax.set(
            xlabel="training wall-clock (s)",
            ylabel="held-out accuracy (%)",
            title=f"accuracy vs time: {PAIR_TITLES[pair]}",
        )
        ax.legend()
        written.append(_save(fig, out / f"accuracy_vs_time_{pair}.png"))

        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for r in runs:
            if r["seed"] != 0:
                continue
            c = colors[r["method"]]
            ax.plot(r["steps"]["cap"], color=c, label=f"{r['method']} cap L")
            ax.plot(
                r["steps"]["eff_len_mean"],
                color=c,
                linestyle=":",
                label=f"{r['method']} effective length",
            )
        ax.set(xlabel="step", ylabel="tokens", title=f"cap and effective reliable length: {pair}")
        ax.legend(fontsize=7)
        written.append(_save(fig, out / f"cap_{pair}.png"))

        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for r in runs:
            if r["seed"] == 0:
                ax.plot(r["steps"]["hit_ratio"], color=colors[r["method"]], label=r["method"])
        ax.set(
            xlabel="step",
            ylabel="hit ratio h",
            title=f"hit ratio per step: {pair}",
            ylim=(-0.02, 1.02),
        )
        ax.legend(fontsize=7)
        written.append(_save(fig, out / f"hit_ratio_{pair}.png"))

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    k = results["runs"][0]["config"].get("drift_k") or results["runs"][0]["config"]["topk"]
    for pair in PAIRS:
        h = results["overlap_histogram"].get(pair)
        if h and h["tokens"]:  # the bins, each weighted by its tokens
            ax.hist(
                h["edges"][:-1],
                bins=h["edges"],
                weights=h["counts"],
                alpha=0.6,
                density=True,
                label=f"{pair} ({h['tokens']} tokens)",
            )
    ax.set(
        xlabel=f"top-{k} overlap per token (monitor K)",
        ylabel="density",
        title="student/teacher overlap on the student's samples (full OPD runs)",
    )
    if ax.get_legend_handles_labels()[0]:  # no histogram without full OPD's samples
        ax.legend()
    written.append(_save(fig, out / "overlap_hist.png"))

    by_position = results.get("overlap_by_position") or {}
    if by_position:  # along the response, early and late in full OPD's training (seed 0)
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for pair, color in zip(PAIRS, ("tab:blue", "tab:red"), strict=True):
            for when, style in (("first", ":"), ("last", "-")):
                curve = by_position.get(pair, {}).get(when)
                if curve and curve["start"]:
                    ax.plot(
                        curve["start"],
                        curve["mean"],
                        color=color,
                        linestyle=style,
                        label=f"{pair}, {when} tenth of the steps",
                    )
        ax.set(
            xlabel="response position (tokens)",
            ylabel=f"mean top-{k} overlap",
            title="overlap along the response (full OPD, seed 0)",
            ylim=(0, 1.02),
        )
        ax.legend(fontsize=7)
        written.append(_save(fig, out / "overlap_by_position.png"))
    return written


def frontier_plot(out: Path, results: dict, table: dict) -> Path | None:
    """`frontier.png`: final accuracy against CPU time (both against full OPD), one panel per
    pair: each method's mean over seeds with its spread, every seed faint, the frontier
    (`report_headline.frontier`) joined, and full OPD's own evaluations along its run as the
    curve of stopping it early."""
    from pruneopd.tools.report_headline import cost, frontier, full_opd_stopped_early

    pairs = [p for p in PAIRS if table.get(p) and "full" in table[p]]
    if not pairs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(pairs), figsize=(6.0 * len(pairs), 4.4), squeeze=False)
    for ax, pair in zip(axes[0], pairs, strict=True):
        rows = table[pair]
        full = rows["full"]
        for m, r in rows.items():
            c = cost(r)
            if c is None:
                continue
            seeds = [x for x in results["runs"] if x["pair"] == pair and x["method"] == m]
            use_cpu = r.get("cpu_vs_full") is not None
            xs = [
                (x["cpu_seconds"] / full["cpu"]) if use_cpu else (x["train_seconds"] / full["time"])
                for x in seeds
            ]
            color = METHOD_COLORS[m]
            ax.scatter(
                xs, [100 * x["accuracy_after"] for x in seeds], color=color, alpha=0.25, s=14
            )
            ax.errorbar([c], [r["acc"]], yerr=[r["acc_std"]], color=color, marker="o", capsize=3)
            ax.annotate(m, (c, r["acc"]), textcoords="offset points", xytext=(5, 4), fontsize=7)
        front = frontier(rows)
        ax.plot(
            [cost(rows[m]) for m in front],
            [rows[m]["acc"] for m in front],
            color="black",
            linewidth=0.8,
            alpha=0.5,
            label="frontier",
        )
        curve = full_opd_stopped_early(results, pair)
        if curve:
            ax.plot(
                [c["share"] for c in curve],
                [c["acc"] for c in curve],
                color=METHOD_COLORS["full"],
                linestyle="--",
                label="full OPD stopped early",
            )
        ax.set(
            xlabel="CPU time vs full OPD",
            ylabel="held-out accuracy (%)",
            title=f"accuracy against compute: {pair}",
        )
        ax.legend(fontsize=7, loc="lower right")
    return _save(fig, out / "frontier.png")


def _save(fig, path: Path) -> Path:
    """The figure as a 256-colour PNG (a third of the RGBA file's size, the same look)."""
    import io

    import matplotlib.pyplot as plt
    from PIL import Image

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    with Image.open(buf) as im:
        im.convert("RGB").quantize(256).save(path, optimize=True)
    return path
