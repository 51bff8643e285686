"""benchmarks/speed_matrix.py's table: targets and verdicts, TRL's micro-batches named, and a
row whose process failed says why (the matrix of issue 30, docs/benchmarks.md 10)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location(
    "speed_matrix", ROOT / "benchmarks" / "speed_matrix.py"
)
speed_matrix = importlib.util.module_from_spec(spec)
sys.modules["speed_matrix"] = speed_matrix  # dataclasses look their module up
spec.loader.exec_module(speed_matrix)
Row = speed_matrix.Row


def step_result(ours: float, theirs: float, micro: int, batch: int = 8) -> dict:
    side = lambda tok_s: {"median_tok_s": tok_s, "repeats": 1}  # noqa: E731
    return {
        "benchmark": "peer_trl",
        "args": {"batch": batch, "responses_per_prompt": 4},
        "trl_micro_batch": micro,
        "results": [side(ours), side(theirs)],
        "ratio_median": ours / theirs,
    }


def test_table_verdicts_micro_batches_and_failures():
    r32 = Row("student", "step", "real/student", "real/teacher", 32, 256, 1.5, trl_micro=8)
    r8 = Row("student", "step", "real/student", "real/teacher", 8, 256, 1.5)
    rs = Row("teacher", "sample", "real/teacher", "real/teacher", 32, 512, 1.0)
    rows = [
        (r32, step_result(97.0, 58.0, 8)),
        (r8, step_result(79.0, 71.0, 8, batch=2)),
        (rs, {"failed": speed_matrix.failure(subprocess.CalledProcessError(-9, "x"))}),
        (rs, None),
    ]
    lines = speed_matrix.table(rows).splitlines()[2:]
    assert "| 1.67x | 1.5x | yes |" in lines[0]
    assert lines[0].endswith("TRL in micro-batches of 8 samples |")
    assert "| 1.11x | 1.5x | **no** |" in lines[1] and "micro-batches" not in lines[1]
    assert "failed: killed (SIGKILL: out of memory)" in lines[2]
    assert "not yet measured" in lines[3]
    assert "--trl-micro-batch" in r32.command(Path("/r"), "/tmp/x.json", 2)
    assert "--trl-micro-batch" not in r8.command(Path("/r"), "/tmp/x.json", 2)


def test_failure_reasons():
    assert speed_matrix.failure(subprocess.TimeoutExpired("x", 1)) == "stopped at the budget"
    assert speed_matrix.failure(subprocess.CalledProcessError(137, "x")).startswith("killed")
    assert speed_matrix.failure(subprocess.CalledProcessError(1, "x")) == (
        "CalledProcessError (exit 1)"
    )
    assert speed_matrix.failure(FileNotFoundError("python")) == "FileNotFoundError"
