"""`pruneopd bench`: every method on both zoo pairs, side by side, same everything else.

For each suite (`short`: the regs zoo, presets in `configs/`; `long`: the long-horizon loop
zoo, presets in `configs/long/`, docs/testbed.md), pair (same-family, cross-family), method (full OPD, prefix OPD fixed and
scheduled, Prune-OPD as released, Prune-OPD with online pruning, the hybrid gate, the adaptive
prefix, IW-OPD, the probe-audited window, auto: `METHODS`) and seed, one training run
from the preset `configs/{method}-{pair}.yaml`, with the preset's steps, prompts, optimizer
and evaluation overridden identically for every run. Runs go to `OUT/runs/{pair}/{method}/
seed{k}/`; a run that already has its `summary.json` is not run again, so an interrupted
benchmark continues where it stopped. Then everything is gathered into `OUT/results.json`
and rendered into `OUT/report.md` and plots (`pruneopd.tools.report`). results.json keeps
per-step series and binned curves, never per-token samples (the overlaps of full OPD's samples
as a histogram, `overlap_histogram`; along the response in bins of 32 positions,
`overlap_by_position`): the report renders from it alone, so a bench's output to keep is
results.json, report.md, the plots and the logs, not `OUT/runs/` or `OUT/eval_cache/`.

Runs execute as separate `pruneopd train` processes, `jobs` at a time, each with
`threads` intra-op threads (default: 2 jobs x 1 thread on a 2-core machine), so each run's
wall-clock is measured under the same load as every other's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from pruneopd.tools.bench_results import (  # noqa: F401  (this module's interface too)
    CONFIGS,
    CORE_METHODS,
    METHODS,
    OVERLAP_BINS,
    PAIRS,
    STEP_KEYS,
    SUITE_CONFIGS,
    binned,
    overlap_by_position,
    overlap_histogram,
    write_results,
)
from pruneopd.tools.bench_reuse import expected_config, load_reused
from pruneopd.training.checkpoint import GracefulStop


@dataclass(frozen=True)
class BenchPreset:
    steps: int
    seeds: int
    eval_every: int
    eval_problems: int  # >= 200 held-out problems; the cap never cuts the teacher


PRESETS = {
    "quick": BenchPreset(steps=60, seeds=1, eval_every=30, eval_problems=200),
    "full": BenchPreset(steps=100, seeds=3, eval_every=25, eval_problems=256),
}
# the long suite's evaluations are ~4x the short one's (650-token answers, up to a 1,334-token
# cap): its full preset evaluates at steps 0, 50 and 100 (step 0 once per pair: eval_cache)
SUITE_PRESETS = {
    "short": PRESETS,
    "long": {**PRESETS, "full": replace(PRESETS["full"], eval_every=50)},
}


def run_dir(out: Path, pair: str, method: str, seed: int) -> Path:
    return out / "runs" / pair / method / f"seed{seed}"


def run_overrides(preset: BenchPreset, out: Path, pair: str, method: str, seed: int) -> list[str]:
    """The keys every run shares, on top of its preset file."""
    return [
        f"max_steps={preset.steps}",
        f"seed={seed}",
        f"eval_every={preset.eval_every}",
        f"eval_problems={preset.eval_problems}",
        f"out={run_dir(out, pair, method, seed)}",
        "progress=false",
        "save_every=10",
        "log_samples=4",
        "resume=auto",
        f"eval_cache={out / 'eval_cache'}",  # a pair's step-0 evaluation, run once
    ]


def plan(preset: BenchPreset, seeds: int, methods=METHODS) -> list[tuple[str, str, int]]:
    return [(pair, m, s) for s in range(seeds) for pair in PAIRS for m in methods]


def _run_one(out, preset, suite, pair, method, seed, threads, log) -> subprocess.Popen | None:
    rd = run_dir(out, pair, method, seed)
    if (rd / "summary.json").exists():
        log(f"bench: {pair}/{method}/seed{seed} already done")
        return None
    rd.mkdir(parents=True, exist_ok=True)
    cmd = [
        *_same_code_cli(),
        "train",
        "--config",
        str(SUITE_CONFIGS[suite] / f"{method}-{pair}.yaml"),
        *run_overrides(preset, out, pair, method, seed),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    log(f"bench: start {pair}/{method}/seed{seed}")
    # the child gets its own copies of the log files' descriptors; ours close at once
    # a session of its own: a terminal's Ctrl-C reaches the run once, passed on by the bench
    with open(rd / "stdout.log", "w") as out_f, open(rd / "stderr.log", "w") as err_f:
        return subprocess.Popen(cmd, env=env, stdout=out_f, stderr=err_f, start_new_session=True)


def _same_code_cli() -> list[str]:
    """The command that runs `pruneopd.cli` from the code this bench runs: `python -m` would
    put the working directory first on the child's path, so a bench started in a checkout
    whose files change while it runs would train later runs with other code."""
    root = str(Path(__file__).resolve().parents[2])
    return [
        sys.executable,
        "-c",
        f"import sys; sys.path.insert(0, {root!r}); from pruneopd.cli import main; main(sys.argv[1:])",
    ]


def _add_wall(rd: Path, seconds: float) -> None:
    """Add a run's wall-clock seconds (training and evaluation) to `rd/wall.json`: a run
    resumed by a later invocation accumulates its parts."""
    path = rd / "wall.json"
    before = json.loads(path.read_text())["seconds"] if path.exists() else 0.0
    path.write_text(json.dumps({"seconds": before + seconds}))


def run_bench(
    out: str | Path,
    preset_name: str = "quick",
    seeds: int | None = None,
    jobs: int = 2,
    threads: int = 1,
    steps: int | None = None,
    eval_problems: int | None = None,
    log=print,
    suite: str = "short",
    methods: tuple = METHODS,
    finished_only: bool = False,
    reuse: tuple = (),
) -> dict:
    """Run (or finish) the benchmark into `out`; returns the gathered results.

    Resumable: a run with its summary is not run again, a half-finished one continues from
    its newest checkpoint (every 10 steps), so rerunning the command after an interruption
    finishes the benchmark. `finished_only`: run nothing, report the plan's finished runs
    (results.json's `missing` names the others). `reuse`: earlier results.json files whose
    finished runs are taken instead of running them again (`bench_reuse`)."""
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ValueError(
            f"unknown bench method {bad[0] if bad else ''!r} (choose from {', '.join(METHODS)})"
        )
    if suite not in SUITE_CONFIGS:
        raise ValueError(f"unknown suite {suite!r} (choose from {', '.join(SUITE_CONFIGS)})")
    if preset_name not in PRESETS:
        raise ValueError(f"unknown bench preset {preset_name!r} (choose from {', '.join(PRESETS)})")
    preset = SUITE_PRESETS[suite][preset_name]
    if steps is not None or eval_problems is not None:  # for tests and quick looks
        preset = BenchPreset(
            steps or preset.steps,
            preset.seeds,
            min(preset.eval_every, steps or preset.steps),
            eval_problems or preset.eval_problems,
        )
    seeds = seeds or preset.seeds
    if seeds < 1 or jobs < 1 or threads < 1:
        raise ValueError(
            f"--seeds, --jobs and --threads must be >= 1 (got {seeds}, {jobs}, {threads})"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    reused, reused_files, origins = _reusable(reuse, out, preset, suite, seeds, methods, log)
    todo = [] if finished_only else plan(preset, seeds, methods)
    done_here = {k for k in todo if (run_dir(out, *k) / "summary.json").exists()}
    todo = [k for k in todo if k not in reused or k in done_here]
    running: list[tuple[subprocess.Popen, tuple]] = []
    started: dict[tuple, float] = {}
    skipped = 0  # runs finished or begun by an earlier invocation
    failed = []
    t0 = time.time()
    stop, passed_on = GracefulStop(), False
    try:
        with stop:
            while (todo and not stop.requested) or running:
                if stop.requested and not passed_on:  # start no more; the running runs
                    passed_on = True  # finish their step, save a checkpoint and exit
                    for proc, _ in running:
                        proc.send_signal(signal.Signals[stop.signal_name])
                while todo and len(running) < jobs and not stop.requested:
                    key = todo.pop(0)
                    if (
                        run_dir(out, *key).exists()
                        and not (run_dir(out, *key) / "summary.json").exists()
                    ):
                        skipped += 1  # a run resumed from its checkpoint: part of it ran earlier
                    proc = _run_one(out, preset, suite, *key, threads, log)
                    if proc is not None:
                        running.append((proc, key))
                        started[key] = time.time()
                    else:
                        skipped += 1
                for proc, key in list(running):
                    if proc.poll() is not None:
                        running.remove((proc, key))
                        _add_wall(run_dir(out, *key), time.time() - started.pop(key))
                        code = proc.returncode
                        status = (
                            "done"
                            if code == 0
                            else "stopped, checkpoint saved"
                            if passed_on and code in (130, 143)
                            else f"FAILED ({code})"
                        )
                        log(f"bench: {'/'.join(map(str, key))} {status} [{time.time() - t0:.0f} s]")
                        if code != 0 and not passed_on:
                            failed.append(key)
                time.sleep(0.2)
    except KeyboardInterrupt:  # a second signal: the runs stop at once (each one's newest
        for proc, _ in running:  # checkpoint on disk stays valid)
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc, _ in running:
            proc.wait()
        raise
    if stop.requested:
        log(
            f"bench: stopped by {stop.signal_name}; the runs that were running saved a "
            "checkpoint: run the same command again to continue"
        )
        raise KeyboardInterrupt
    if failed:
        first = run_dir(out, *failed[0]) / "stderr.log"
        raise RuntimeError(
            f"{len(failed)} bench run(s) failed, e.g. {'/'.join(map(str, failed[0]))}; see {first}"
        )
    results = gather(out, preset, preset_name, seeds, methods, finished_only, reused, reused_files)
    used = {r["reused_from"] for r in results["runs"] if "reused_from" in r}
    if used:  # where each reused run was made: the date and code of its bench
        results["reused_from"] = {o: origins[o] for o in sorted(used)}
    if not results["runs"]:
        raise ValueError(f"{out}: no finished bench run to report (run `pruneopd bench` first)")
    results["suite"] = suite
    # the bench's wall time, when this invocation ran every run from its start
    results["wall_seconds"] = time.time() - t0 if not (skipped or finished_only or reused) else None
    results["jobs"] = jobs
    write_results(out / "results.json", results)
    from pruneopd.tools.report import render_report

    render_report(out, results)
    return results


def _reusable(reuse, out, preset, suite, seeds, methods, log) -> tuple[dict, dict]:
    """The runs of the `reuse` files this bench takes as finished (`bench_reuse.load_reused`)."""
    if not reuse:
        return {}, {}, {}
    planned = set(plan(preset, seeds, methods))

    def expected_for(pair, method, seed):
        if (pair, method, seed) not in planned:
            return None
        return expected_config(
            SUITE_CONFIGS[suite] / f"{method}-{pair}.yaml",
            run_overrides(preset, out, pair, method, seed),
        )

    reused, files, origins = load_reused(list(reuse), asdict(preset), expected_for, log)
    log(f"bench: {len(reused)} finished runs reused from {', '.join(files)}")
    return reused, files, origins


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def gather(
    out: Path,
    preset: BenchPreset,
    preset_name: str,
    seeds: int,
    methods=METHODS,
    finished_only: bool = False,
    reused: dict | None = None,
    reused_files: dict | None = None,
) -> dict:
    """Every number the report needs, from the runs' summary.json / metrics.jsonl / samples;
    `finished_only`: the runs without a summary are left out and named in `missing`.
    `reused`: (pair, method, seed) -> an earlier results.json's record, taken where OUT has
    no summary; a pair with a reused full OPD run takes its overlap histogram (and, for
    seed 0, its curves along the response) from that record's file."""
    reused, reused_files = reused or {}, reused_files or {}
    overlap_from: dict[str, str] = {}  # pair -> the reused file its overlap histogram comes from
    from pruneopd.training.runlog import versions

    runs = []
    missing = []
    overlap: dict[str, list[float]] = {p: [] for p in PAIRS}  # per token, binned below
    by_position: dict[str, dict] = {}
    for pair, method, seed in plan(preset, seeds, methods):
        rd = run_dir(out, pair, method, seed)
        if (pair, method, seed) in reused and not (rd / "summary.json").exists():
            rec = reused[(pair, method, seed)]
            runs.append({k: v for k, v in rec.items() if k != "_file"})
            if method == "full":
                path = rec["_file"]
                src = reused_files[path]
                overlap_from.setdefault(pair, path)
                if seed == 0 and pair in src.get("overlap_by_position", {}):
                    by_position[pair] = src["overlap_by_position"][pair]
            continue
        if finished_only and not (rd / "summary.json").exists():
            missing.append(f"{pair}/{method}/seed{seed}")
            continue
        s = json.loads((rd / "summary.json").read_text())
        rows = [r for r in _read_jsonl(rd / "metrics.jsonl") if "loss" in r]
        runs.append(
            {
                "pair": pair,
                "method": method,
                "seed": seed,
                "train_seconds": s["train_seconds"],
                "cpu_seconds": s.get(
                    "cpu_seconds"
                ),  # process CPU time of the steps (None: older runs)
                "t_sample": s["t_sample"],
                "t_teacher": s["t_teacher"],
                "t_update": s["t_update"],
                "tokens_generated": s["tokens_generated"],
                "tokens_scored": s["tokens_scored"],
                "tokens_trained": s["tokens_trained"],
                "accuracy_before": s["accuracy_before"],
                "accuracy_after": s["accuracy_after"],
                "partial_credit_after": s["partial_credit_after"],
                "evals": [
                    {
                        "step": e["step"],
                        "train_seconds": e.get("train_seconds", 0.0),
                        "accuracy": e["accuracy"],
                        "cut_rate": e["cut_rate"],
                        **{
                            k: e[k]
                            for k in ("drifted_rate", "accuracy_drifted", "accuracy_reliable")
                            if k in e
                        },
                    }
                    for e in s["evals"]
                ],
                "steps": {k: [r.get(k) for r in rows] for k in STEP_KEYS},
                "final_cap": s["final_cap"],
                "wall_seconds": (
                    json.loads((rd / "wall.json").read_text())["seconds"]
                    if (rd / "wall.json").exists()
                    else None
                ),
                "config": s["config"],
            }
        )
        if method == "full":  # the uncut responses show the pair's overlap distribution
            logged = _read_jsonl(rd / "samples.jsonl")
            for r in logged:
                overlap[pair].extend(r["overlap"])
            if seed == 0:  # along the response, in the first and the last tenth of training
                steps = sorted({r["step"] for r in logged})
                tenth = max(1, len(steps) // 10)
                by_position[pair] = {
                    when: overlap_by_position([r["overlap"] for r in logged if r["step"] in sel])
                    for when, sel in (("first", set(steps[:tenth])), ("last", set(steps[-tenth:])))
                }
    histogram = {pair: overlap_histogram(xs) for pair, xs in overlap.items()}
    for pair, path in overlap_from.items():
        histogram[pair] = binned(reused_files[path])["overlap_histogram"][pair]
    return {
        "preset": preset_name,
        "settings": asdict(preset),
        "seeds": seeds,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "versions": versions(),
        "cpu_count": os.cpu_count(),
        "runs": runs,
        "overlap_histogram": histogram,
        "overlap_by_position": by_position,
        **({"missing": missing} if missing else {}),
    }
