"""The benchmark's machinery on the fast zoo: every method on both pairs (2 steps each),
results.json with every field, the report and plots, and `pruneopd report` re-rendering."""

from __future__ import annotations

import json

import pytest

from pruneopd.bench import METHODS, PAIRS, STEP_KEYS, run_bench
from pruneopd.cli import main

RUN_FIELDS = ("pair method seed train_seconds t_sample t_teacher t_update tokens_generated "
              "tokens_scored tokens_trained accuracy_before accuracy_after evals steps "
              "final_cap config").split()  # fmt: skip
PLOTS = ["accuracy_vs_time_same.png", "accuracy_vs_time_cross.png", "cap_same.png",
         "cap_cross.png", "hit_ratio_same.png", "hit_ratio_cross.png", "overlap_hist.png"]  # fmt: skip


@pytest.fixture(scope="module")
def bench(tmp_path_factory, fast_zoo):
    out = tmp_path_factory.mktemp("bench")
    mp = pytest.MonkeyPatch()
    mp.setenv("PRUNEOPD_ZOO", str(fast_zoo))
    try:
        run_bench(out, "quick", jobs=2, steps=2, eval_problems=4, log=lambda s: None)
    finally:
        mp.undo()
    return out


def test_results_have_every_field_for_every_run(bench):
    res = json.loads((bench / "results.json").read_text())
    assert {(r["pair"], r["method"]) for r in res["runs"]} == {
        (p, m) for p in PAIRS for m in METHODS
    }
    for r in res["runs"]:
        assert all(f in r for f in RUN_FIELDS), set(RUN_FIELDS) - set(r)
        assert r["train_seconds"] > 0 and r["tokens_trained"] > 0
        assert [e["step"] for e in r["evals"]] == [0, 2]
        assert all(len(r["steps"][k]) == 2 for k in STEP_KEYS)
        assert r["config"]["max_steps"] == 2 and r["config"]["eval_problems"] == 4
    assert res["versions"]["torch"] and res["overlap_samples"]["cross"]


def test_report_and_plots_are_written_and_rerendered(bench, capsys):
    report = (bench / "report.md").read_text()
    for pair in ("same-family", "cross-family"):
        assert pair in report
    assert report.count("| full | ") == 4 and "1.00x" in report  # results + samples tables
    for p in PLOTS:
        assert (bench / p).stat().st_size > 1000, p
        (bench / p).unlink()
    (bench / "report.md").unlink()
    main(["report", str(bench)])
    assert all((bench / p).exists() for p in PLOTS) and (bench / "report.md").read_text() == report


def test_finished_runs_are_not_run_again(bench):
    before = (bench / "results.json").read_text()
    logs = []
    run_bench(bench, "quick", jobs=2, steps=2, eval_problems=4, log=logs.append)
    assert sum("already done" in x for x in logs) == len(PAIRS) * len(METHODS)
    assert json.loads(before)["runs"] == json.loads((bench / "results.json").read_text())["runs"]


def test_report_without_results_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["report", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "results.json not found" in err


@pytest.fixture(scope="module")
def bench_long(tmp_path_factory, fast_zoo):
    out = tmp_path_factory.mktemp("bench-long")
    mp = pytest.MonkeyPatch()
    mp.setenv("PRUNEOPD_ZOO", str(fast_zoo))
    try:
        run_bench(out, "quick", jobs=2, steps=2, eval_problems=4, log=lambda s: None, suite="long")
    finally:
        mp.undo()
    return out


def test_long_suite_bench_runs_every_method_on_the_long_presets(bench_long):
    res = json.loads((bench_long / "results.json").read_text())
    assert res["suite"] == "long"
    assert {(r["pair"], r["method"]) for r in res["runs"]} == {
        (p, m) for p in PAIRS for m in METHODS
    }
    for r in res["runs"]:
        assert r["config"]["task"] == "loop" and r["config"]["student"].startswith("long/")
    for pair in PAIRS:  # overlap along the response, first and last tenth of full OPD's steps
        curves = res["overlap_by_position"][pair]
        assert curves["first"]["start"][0] == 0 and curves["last"]["tokens"]
    assert (bench_long / "overlap_by_position.png").stat().st_size > 1000
    assert "long suite" in (bench_long / "report.md").read_text()


def test_long_suite_bench_resumes(bench_long, fast_zoo, monkeypatch):
    monkeypatch.setenv("PRUNEOPD_ZOO", str(fast_zoo))
    # a run that was killed before its summary is run again, from its checkpoint; the rest
    # are not
    victim = bench_long / "runs" / "cross" / "prune" / "seed0"
    (victim / "summary.json").unlink()
    logs = []
    run_bench(bench_long, "quick", jobs=2, steps=2, eval_problems=4, log=logs.append,
              suite="long")  # fmt: skip
    assert sum("already done" in x for x in logs) == len(PAIRS) * len(METHODS) - 1
    assert any("start cross/prune/seed0" in x for x in logs)
    assert (victim / "summary.json").exists()


def test_unknown_suite_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown suite 'huge'"):
        run_bench(tmp_path, "quick", suite="huge")
