"""The report's headline, worked by hand: the frontier, full OPD stopped early, accuracy gained
per CPU minute and auto's targets (issue 31), on a results.json of made-up runs."""

from __future__ import annotations

import pytest

from pruneopd.tools.report import render_report, summarize
from pruneopd.tools.report_headline import (
    auto_targets,
    frontier,
    full_opd_stopped_early,
    gain_per_cpu_minute,
    render_headline,
    render_seed_by_seed,
    seed_by_seed,
)


def _run(pair, method, seed, acc, cpu, evals=((50, 0.5, 0.4),)):
    """One run: final accuracy `acc` after `cpu` CPU seconds (wall = cpu); `evals` are
    (step, share of the training time, accuracy) before the last one."""
    return {
        "pair": pair,
        "method": method,
        "seed": seed,
        "train_seconds": cpu,
        "cpu_seconds": cpu,
        "t_sample": cpu / 3,
        "t_teacher": cpu / 3,
        "t_update": cpu / 3,
        "tokens_generated": cpu,
        "tokens_scored": cpu,
        "tokens_trained": cpu,
        "accuracy_before": 0.2,
        "accuracy_after": acc,
        "evals": [{"step": 0, "train_seconds": 0.0, "accuracy": 0.2}]
        + [{"step": s, "train_seconds": f * cpu, "accuracy": a} for s, f, a in evals]
        + [{"step": 100, "train_seconds": cpu, "accuracy": acc}],
        "steps": {"cap": [1, 2], "eff_len_mean": [1, 2], "hit_ratio": [1, 1]},
        "final_cap": None,
        "wall_seconds": cpu,
        "config": {"max_len": 64, "topk": 16},
    }


def _results(suite="long", cross_auto=(0.58, 450.0)):
    # cross: full seed 0 0.60 at 1000 s (seed 1: 0.62 at 1100, which the others did not run);
    # prefix 0.40 at 300; prune 0.35 at 400 (beaten by prefix); iw-opd 0.55 at 800; window
    # 0.50 at 500; auto given. Each is compared with full OPD's seed 0.
    runs = [
        _run("cross", "full", 0, 0.60, 1000.0, evals=((50, 0.5, 0.40),)),
        _run("cross", "full", 1, 0.62, 1100.0, evals=((50, 0.6, 0.50),)),
        _run("cross", "prefix", 0, 0.40, 300.0),
        _run("cross", "prune", 0, 0.35, 400.0),
        _run("cross", "iw-opd", 0, 0.55, 800.0),
        _run("cross", "window", 0, 0.50, 500.0),
        _run("cross", "auto", 0, *cross_auto),
        _run("same", "full", 0, 0.90, 1000.0),
        _run("same", "auto", 0, 0.895, 1000.0),
    ]
    return {
        "preset": "full",
        "settings": {"steps": 100, "seeds": 2, "eval_every": 50, "eval_problems": 8},
        "seeds": 2,
        "date": "2026-12-05 00:00 UTC",
        "versions": {"python": "3", "torch": "2", "transformers": "5", "pruneopd": "0"},
        "cpu_count": 2,
        "runs": runs,
        "overlap_histogram": {},
        "suite": suite,
    }


def test_the_frontier_leaves_out_what_another_method_beats_on_both():
    table = summarize(_results())
    # cost: prefix 0.3, prune 0.4, auto 0.45, window 0.5, iw-opd 0.8, full 1.0
    # accuracy: prefix 40, prune 35 (beaten by prefix), auto 58, window 50 (beaten by auto),
    # iw-opd 55 (beaten by auto), full 60
    assert frontier(table["cross"]) == ["prefix", "auto", "full"]
    # a tie in both is no beating; a tie in cost with more accuracy is
    rows = {"a": {"acc": 50.0, "cpu_vs_full": 0.5}, "b": {"acc": 50.0, "cpu_vs_full": 0.5}}
    assert frontier(rows) == ["a", "b"]
    rows["c"] = {"acc": 51.0, "cpu_vs_full": 0.5}
    assert frontier(rows) == ["c"]


def test_gain_per_cpu_minute_and_full_opd_stopped_early_by_hand():
    res = _results()
    table = summarize(res)
    # auto: (58 - 20) points over 450 / 60 = 7.5 CPU minutes; full (61% over 1050 s on
    # average): 41 over 17.5
    assert gain_per_cpu_minute(table["cross"]["auto"]) == pytest.approx(38 / 7.5)
    assert gain_per_cpu_minute(table["cross"]["full"]) == pytest.approx(41 / 17.5)
    curve = full_opd_stopped_early(res, "cross")
    assert [c["step"] for c in curve] == [0, 50, 100]
    assert curve[1]["share"] == pytest.approx(0.55)  # (0.5 + 0.6) / 2
    assert curve[1]["acc"] == pytest.approx(45.0)  # (40 + 50) / 2
    assert curve[2] == {"step": 100, "share": 1.0, "acc": pytest.approx(61.0)}
    # with the steps' mean lengths, the share is of the tokens: 50 steps of 10 then 50 of 30
    # tokens: a quarter at step 50, whatever the wall-clock said
    for r in res["runs"][:2]:
        r["steps"]["mean_len"] = [10.0] * 50 + [30.0] * 50
    assert full_opd_stopped_early(res, "cross")[1]["share"] == pytest.approx(0.25)
    # seeds evaluated at different steps: no curve
    res["runs"][1]["evals"][1]["step"] = 40
    assert full_opd_stopped_early(res, "cross") == []


def test_against_full_compares_over_the_seeds_both_ran():
    res = _results()
    cross = summarize(res)["cross"]
    # full's own row: both seeds; the others: seed 0 against full's seed 0 only
    assert cross["full"]["n_vs_full"] == 2 and cross["full"]["acc_vs_full"] == 0.0
    assert cross["full"]["acc"] == pytest.approx(61.0)
    assert cross["auto"]["n_vs_full"] == 1
    assert cross["auto"]["acc_vs_full"] == pytest.approx(-2.0)  # 58 vs 60, not vs 61
    assert cross["auto"]["cpu_vs_full"] == pytest.approx(0.45)  # 450 / 1000, not / 1050
    # a method with no seed in common with full OPD: nothing to compare
    res["runs"] = [
        r
        for r in res["runs"]
        if not (r["pair"] == "cross" and r["method"] == "full" and r["seed"] == 0)
    ]
    assert summarize(res)["cross"]["auto"]["acc_vs_full"] is None


def test_auto_targets_long_and_short_suite():
    long = _results()  # cross auto -2.0 points at 0.45x; same auto -0.5 at 1.0x
    got = {
        t["target"].split(":")[0] + str(i): t
        for i, t in enumerate(auto_targets(long, summarize(long)))
    }
    same, cross, per_cpu = got["same0"], got["cross1"], got["cross2"]
    assert "<= 1.0x" in same["target"] and same["met"] is True
    assert (
        same["measured"] == "-0.5 points at 1.00x (tokens 1.00x) (1 seeds)"
    )  # same: full ran seed 0 only
    assert "<= 0.5x" in cross["target"] and cross["met"] is False  # -2.0 points
    # per CPU minute: auto 38 / 7.5 = 5.067, iw-opd 35 / 13.33 = 2.625, window 30 / 8.33 = 3.6
    assert per_cpu["met"] is True
    assert per_cpu["measured"] == "auto 5.067, iw-opd 2.625, window 3.600 points / CPU min"
    # within a point at 0.45x: met on the long suite
    ok = _results(cross_auto=(0.595, 450.0))
    assert auto_targets(ok, summarize(ok))[1]["met"] is True
    # the short suite asks <= 1.0x on the cross pair too
    short = _results(suite="short", cross_auto=(0.595, 700.0))
    rows = auto_targets(short, summarize(short))
    assert "<= 1.0x" in rows[1]["target"] and rows[1]["met"] is True
    # window missing: the comparison is not made
    short["runs"] = [r for r in short["runs"] if r["method"] != "window"]
    assert auto_targets(short, summarize(short))[2]["met"] is None


def test_the_headline_marks_the_frontier_and_the_report_draws_it(tmp_path):
    res = _results()
    lines = render_headline(res, summarize(res))
    table = [x for x in lines if x.startswith("| ")]
    assert table[0] == (
        "| method | same: accuracy vs full | same: CPU time vs full | "
        "cross: accuracy vs full | cross: CPU time vs full |"
    )
    # one seed where the bench ran two is said; auto beats prune on the cross pair
    assert "| prune | - | - | -25.0 (1) | 0.40x |" in table
    assert "| auto | -0.5 (1) | 1.00x | **-2.0** (1) | **0.45x** |" in table
    assert any("step 50: 45.0% (-16.0) at 0.55x" in x for x in lines)
    render_report(tmp_path, res)
    report = (tmp_path / "report.md").read_text()
    assert "## Headline" in report and "cross: auto >= full OPD - 1 point" in report
    assert (tmp_path / "frontier.png").stat().st_size > 1000


def test_the_difference_to_full_carries_its_standard_error_over_seeds():
    # auto against full on two seeds: +2 and -4 points -> mean -1.0, stdev 4.243, se 3.0
    res = _results()
    res["runs"].append(_run("cross", "auto", 1, 0.58, 450.0))  # full's seed 1: 0.62
    res["runs"][6]["accuracy_after"] = 0.62  # seed 0: 0.62 vs 0.60
    cross = summarize(res)["cross"]
    assert cross["auto"]["acc_vs_full"] == pytest.approx(-1.0)
    assert cross["auto"]["acc_vs_full_se"] == pytest.approx(3.0)
    assert cross["prefix"]["acc_vs_full_se"] is None  # one seed: no spread to speak of
    lines = render_headline(res, summarize(res))
    table = [x for x in lines[: lines.index("### Seed by seed")] if x.startswith("| auto")]
    assert table == ["| auto | -0.5 (1) | 1.00x | **-1.0 ± 3.0** | **0.43x** |"]
    # seed by seed: +2.0 at 0.45x and -4.0 at 0.41x
    assert "| auto | +2.0 at 0.45x | -4.0 at 0.41x |" in lines
    assert auto_targets(res, summarize(res))[1]["measured"] == (
        "-1.0 ± 3.0 points at 0.43x (tokens 0.43x) (2 seeds)"
    )


def test_seed_by_seed_against_full_opds_same_seed_by_hand():
    res = _results()
    per = seed_by_seed(res, "cross")
    # prefix seed 0: 40% against full's 60% on seed 0 at 300 / 1000 CPU s
    assert per["prefix"][0] == pytest.approx({"acc": 40.0, "vs_full": -20.0, "cpu_vs_full": 0.3})
    assert per["full"][1] == pytest.approx({"acc": 62.0, "vs_full": 0.0, "cpu_vs_full": 1.0})
    # a seed full OPD did not run: the accuracy alone
    res["runs"].append(_run("same", "auto", 1, 0.91, 900.0))
    assert seed_by_seed(res, "same")["auto"][1] == {
        "acc": 91.0,
        "vs_full": None,
        "cpu_vs_full": None,
    }
    lines = render_seed_by_seed(res, summarize(res))
    assert "| cross | seed 0 | seed 1 |" in lines
    assert "| prefix | -20.0 at 0.30x | - |" in lines
    assert "| auto | -0.5 at 1.00x | 91.0% |" in lines
    # one seed: nothing to show beyond the headline
    one = {**res, "runs": [r for r in res["runs"] if r["seed"] == 0]}
    assert render_seed_by_seed(one, summarize(one)) == []
