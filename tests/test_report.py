"""results.json keeps binned curves, not per-token samples: the bins of small inputs worked by
hand, an older file converted in place by `pruneopd report`, and the report rendered from the
bins alone (no runs' folders)."""

from __future__ import annotations

import copy
import json

import pytest

from pruneopd.tools.bench import (
    OVERLAP_BINS,
    overlap_by_position,
    overlap_histogram,
    write_results,
)
from pruneopd.tools.report import binned, render_report


def test_overlap_histogram_by_hand():
    # top-16 overlaps are multiples of 1/16; 20 bins of 0.05: [0, 0.05), ..., [0.95, 1]
    xs = [0.0, 0.0625, 0.25, 0.5, 0.5, 0.75, 0.9375, 1.0]
    h = overlap_histogram(xs)
    assert OVERLAP_BINS == 20 and len(h["edges"]) == 21 and len(h["counts"]) == 20
    assert h["edges"][0] == 0.0 and h["edges"][-1] == 1.0
    assert h["edges"][10] == pytest.approx(0.5)
    counts = [0] * 20
    for b in (0, 1, 5, 10, 10, 15, 18, 19):  # 0.25 -> [0.25, 0.3); 1.0 -> the last, closed bin
        counts[b] += 1
    assert h["counts"] == counts
    assert h["tokens"] == 8 and h["mean"] == pytest.approx(4.0 / 8)
    four = overlap_histogram([0.0, 0.25, 0.5, 0.8, 1.0, 1.0], bins=4)
    assert four["edges"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert four["counts"] == [1, 1, 1, 3] and four["mean"] == pytest.approx(3.55 / 6)
    empty = overlap_histogram([])
    assert empty["counts"] == [0] * 20 and empty["tokens"] == 0 and empty["mean"] is None


def test_overlap_by_position_by_hand():
    # two responses' per-token overlaps, bins of 2 positions: [0, 2) and [2, 4)
    c = overlap_by_position([[1.0, 0.5, 0.0], [0.5]], bin_size=2)
    assert c == {"start": [0, 2], "mean": [pytest.approx(2.0 / 3), 0.0], "tokens": [3, 1]}
    assert overlap_by_position([]) == {"start": [], "mean": [], "tokens": []}


def _run(pair, method, acc, seconds):
    n = 12
    return {
        "pair": pair,
        "method": method,
        "seed": 0,
        "train_seconds": seconds,
        "cpu_seconds": seconds * 0.8,
        "t_sample": seconds / 2,
        "t_teacher": seconds / 4,
        "t_update": seconds / 4,
        "tokens_generated": 1000,
        "tokens_scored": 1000,
        "tokens_trained": 800 if method == "prune" else 1000,
        "accuracy_before": 0.25,
        "accuracy_after": acc,
        "partial_credit_after": acc,
        "evals": [
            {"step": 0, "train_seconds": 0.0, "accuracy": 0.25, "cut_rate": 0.0},
            {"step": n, "train_seconds": seconds, "accuracy": acc, "cut_rate": 0.0},
        ],
        "steps": {
            "cap": [64 + 8 * i for i in range(n)],
            "eff_len_mean": [50.0 + i for i in range(n)],
            "hit_ratio": [0.5] * n,
            "mean_len": [40.0 + 2 * i for i in range(n)],
            "eos_rate": [0.5] * n,
            "drift_rate": [0.01] * n,
            "reward": [0.1 * (i >= 6) for i in range(n)],
            "gate_rate": [None] * n,
        },
        "final_cap": 152 if method == "prune" else None,
        "wall_seconds": seconds + 5,
        "config": {"max_len": 192, "topk": 16, "drift_k": 16},
    }


OVERLAPS = {
    "same": [1.0, 0.9375, 0.9375, 0.875, 0.5],
    "cross": [0.25, 0.5, 0.5, 0.0625, 1.0, 0.75],
}


def _old_results() -> dict:
    """A results.json as the bench wrote it before it kept bins: raw per-token overlaps."""
    return {
        "preset": "quick",
        "settings": {"steps": 12, "seeds": 1, "eval_every": 6, "eval_problems": 8},
        "seeds": 1,
        "date": "2026-12-01 00:00 UTC",
        "versions": {
            "python": "3.11",
            "torch": "2.13.0",
            "transformers": "5.24.0",
            "pruneopd": "0.1.0",
            "git_commit": "0123456789abcdef",
        },
        "cpu_count": 2,
        "runs": [
            _run(p, m, acc, s)
            for p in ("same", "cross")
            for m, acc, s in (("full", 0.5, 100.0), ("prune", 0.45, 60.0))
        ],
        "overlap_samples": copy.deepcopy(OVERLAPS),
        "overlap_by_position": {
            p: {w: overlap_by_position([OVERLAPS[p]], bin_size=2) for w in ("first", "last")}
            for p in ("same", "cross")
        },
        "suite": "short",
    }


def test_binned_replaces_the_per_token_overlaps_by_their_histogram():
    old = _old_results()
    new = binned(old)
    assert "overlap_samples" not in new and "overlap_samples" in old  # old left as it was
    keys = list(old)
    keys[keys.index("overlap_samples")] = "overlap_histogram"
    assert list(new) == keys  # in the same place
    assert all(new[k] == old[k] for k in old if k != "overlap_samples")
    h = new["overlap_histogram"]
    assert h["same"]["tokens"] == 5 and h["cross"]["tokens"] == 6
    same, cross = [0] * 20, [0] * 20
    for b in (19, 18, 18, 17, 10):  # 1.0, 0.9375 (x2), 0.875, 0.5
        same[b] += 1
    for b in (5, 10, 10, 1, 19, 15):  # 0.25, 0.5 (x2), 0.0625, 1.0, 0.75
        cross[b] += 1
    assert h["same"]["counts"] == same and h["cross"]["counts"] == cross
    assert h["cross"]["mean"] == pytest.approx(3.0625 / 6)
    assert binned(new) is new  # already binned: as it is


def test_write_results_puts_each_list_of_numbers_on_one_line(tmp_path):
    res = binned(_old_results())
    res["names"] = ["a, b", "[c]"]  # lists of strings stay as json.dumps writes them
    write_results(tmp_path / "results.json", res)
    text = (tmp_path / "results.json").read_text()
    assert json.loads(text) == res
    assert '"cap": [64, 72, 80, 88, 96, 104, 112, 120, 128, 136, 144, 152]' in text
    assert '"gate_rate": [null, null, null' in text
    assert '"names": [\n' in text


def test_report_converts_an_old_results_json_and_renders_from_the_bins(tmp_path, capsys):
    """`pruneopd report DIR` on a folder holding only an older results.json (no runs/):
    the file is rewritten binned, and the report is the one rendered from binned results."""
    old_dir, new_dir = tmp_path / "old", tmp_path / "new"
    old_dir.mkdir()
    new_dir.mkdir()
    (old_dir / "results.json").write_text(json.dumps(_old_results(), indent=1))
    render_report(old_dir)
    assert "per-token overlaps replaced by their histogram" in capsys.readouterr().err
    converted = json.loads((old_dir / "results.json").read_text())
    assert converted == binned(_old_results())
    report = (old_dir / "report.md").read_text()
    assert "| full | 100 | 1.00x | 1.00x | 1.00x | 50.0 ± 0.0 | +0.0 | - |" in report
    assert "| prune | 60 | 0.60x | 0.60x | 0.80x | 45.0 ± 0.0 | -5.0 | 152 / 192 |" in report
    assert "| full | 49 / 53 | 0.50 / 0.50 | 0.010 / 0.010 | 0.04 / 0.06 | - | - |" in report
    plots = sorted(p.name for p in old_dir.glob("*.png"))
    assert "overlap_hist.png" in plots and "overlap_by_position.png" in plots
    assert all((old_dir / p).stat().st_size > 1000 for p in plots)
    # the binned file renders again to the same report, without converting anything
    (new_dir / "results.json").write_text((old_dir / "results.json").read_text())
    render_report(new_dir)
    assert capsys.readouterr().err == ""
    assert (new_dir / "report.md").read_text() == report
    assert sorted(p.name for p in new_dir.glob("*.png")) == plots


def test_the_overlap_histogram_is_drawn_from_the_counts(tmp_path, monkeypatch):
    """The histogram plot gets the bins and their counts: the bars plt.hist would draw from
    the tokens themselves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.axes
    import numpy as np

    drawn = {}
    real_hist = matplotlib.axes.Axes.hist

    def spy(self, x, *args, **kwargs):
        out = real_hist(self, x, *args, **kwargs)
        drawn[kwargs.get("label", "").split()[0]] = out[0]
        return out

    monkeypatch.setattr(matplotlib.axes.Axes, "hist", spy)
    render_report(tmp_path, binned(_old_results()))
    for pair, xs in OVERLAPS.items():
        want, _ = np.histogram(xs, bins=20, range=(0, 1), density=True)
        assert np.allclose(drawn[pair], want)


def test_every_bench_method_has_a_plot_colour():
    from pruneopd.tools.bench_results import METHODS
    from pruneopd.tools.report_plots import METHOD_COLORS

    assert list(METHOD_COLORS) == list(METHODS)
    assert len(set(METHOD_COLORS.values())) == len(METHODS)
