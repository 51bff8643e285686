"""The speed matrix of issue 30 in one command: the sampler against `model.generate` and the
full-OPD step against TRL's GKD step, over a suite of model pairs, batches and lengths.

Each row runs `benchmarks/rollout_vs_generate.py` or `benchmarks/peer_trl.py` in its own
process on one pair of Hugging Face checkpoints (zoo names or folders), so every ratio is
measured within one process, its sides alternating; this script collects their --json files
and writes the table (with this command, the date and the commit) between the markers of
docs/benchmarks.md section 10, or prints it without --doc. Rows run in the suite's order
(targets first) until --budget-s runs out; the rest are listed as not yet measured.

    python benchmarks/speed_matrix.py --suite issue30 --doc docs/benchmarks.md
    python benchmarks/speed_matrix.py --suite smoke          # seconds: the zoo only
    python benchmarks/rollout_vs_generate.py --suite issue30  # that script's rows only

Suites: `issue30` (the zoo's long student; the SmolLM2 student of `pruneopd real build` at 8
and 32 samples x 128/256/512; the SmolLM2 teacher as the sampled model; full OPD against TRL
on the zoo and the SmolLM2 student), `smoke`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LONG_ZOO = ROOT / "pruneopd" / "zoo_weights" / "long"
START, END = "<!-- speed-matrix:start -->", "<!-- speed-matrix:end -->"


@dataclass(frozen=True)
class Row:
    """One measurement: `script` ("sample" or "step") on `student` (and `teacher` for
    steps), `samples` = prompts x 4 responses, `tokens` new tokens, `target` the ratio the
    issue asks for (1.0: never slower)."""

    label: str
    script: str
    student: str
    teacher: str
    samples: int
    tokens: int
    target: float
    steps: int = 2
    warmup: int = 1
    trl_micro: int = 0  # TRL's samples per forward (0: the whole step)

    def command(self, real: Path, json_out: str, threads: int) -> list[str]:
        models = ["--student", _model_path(self.student, real)]
        models += ["--teacher", _model_path(self.teacher, real)]
        if self.student.startswith("long/"):
            models += ["--zoo", str(LONG_ZOO)]
        script = "rollout_vs_generate.py" if self.script == "sample" else "peer_trl.py"
        extra = ["--no-lean-row", "--no-topk-row"] if self.script == "sample" else []
        if self.trl_micro:
            extra += ["--trl-micro-batch", str(self.trl_micro)]
        return [
            sys.executable,
            str(ROOT / "benchmarks" / script),
            *models,
            "--task",
            "regs",
            "--batch",
            str(self.samples // 4),
            "--responses-per-prompt",
            "4",
            "--new-tokens",
            str(self.tokens),
            "--steps",
            str(self.steps),
            "--warmup",
            str(self.warmup),
            "--threads",
            str(threads),
            *extra,
            "--json",
            json_out,
        ]


def _model_path(name: str, real: Path) -> str:
    """ "real/student" -> <real>/student; "long/student-cross" -> "student-cross" (a name in
    the long zoo, given with --zoo); else the name as given (a zoo name or an HF folder)."""
    kind, _, rest = name.partition("/")
    if kind == "real":
        return str(real / rest)
    if kind == "long":
        return rest
    return name


def _suite(name: str) -> list[Row]:
    zs, zt = "long/student-cross", "long/teacher"
    rs, rt = "real/student", "real/teacher"
    if name == "smoke":
        return [Row("zoo long student", "sample", zs, zt, 8, 32, 1.0, steps=1)]
    if name != "issue30":
        raise SystemExit(f"speed_matrix: unknown suite {name!r} (issue30, smoke)")
    real = dict(steps=1, warmup=0)  # minutes per side and repeat on a shared machine
    return [
        # the targets of issue 30 first, the cheapest first
        Row("zoo long student (0.8M)", "sample", zs, zt, 32, 512, 4.0),
        Row("SmolLM2 student (81M)", "sample", rs, rt, 8, 256, 1.5, **real),
        Row("SmolLM2 student (81M)", "sample", rs, rt, 32, 256, 1.5, **real),
        Row("zoo long student (0.8M)", "step", zs, zt, 32, 512, 2.0),
        Row("SmolLM2 teacher (135M) sampled", "sample", rt, rt, 32, 256, 1.3, **real),
        Row("SmolLM2 student (81M)", "step", rs, rt, 8, 256, 1.5, **real),
        # TRL's logits of 32 x 256 samples (49,152 ids) take more than 24 GiB: its step in
        # micro-batches of 8 samples, the gradient accumulated (pruneopd: one batch, 4.4 GB)
        Row("SmolLM2 student (81M)", "step", rs, rt, 32, 256, 1.5, trl_micro=8, **real),
        # never below 1x: 8 and 32 samples, 128 and 512 tokens, all three models
        Row("SmolLM2 student (81M)", "sample", rs, rt, 8, 128, 1.0, **real),
        Row("SmolLM2 student (81M)", "sample", rs, rt, 32, 128, 1.0, **real),
        Row("zoo long student (0.8M)", "sample", zs, zt, 8, 128, 1.0),
        Row("zoo long student (0.8M)", "sample", zs, zt, 32, 128, 1.0),
        Row("zoo long student (0.8M)", "sample", zs, zt, 8, 512, 1.0),
        Row("SmolLM2 student (81M)", "sample", rs, rt, 8, 512, 1.0, **real),
        Row("SmolLM2 student (81M)", "sample", rs, rt, 32, 512, 1.0, **real),
        Row("SmolLM2 teacher (135M) sampled", "sample", rt, rt, 8, 128, 1.0, **real),
        Row("SmolLM2 teacher (135M) sampled", "sample", rt, rt, 32, 512, 1.0, **real),
    ]


def run_suite(args, only: str | None = None) -> list[tuple[Row, dict | None]]:
    """Every row of the suite (of one script with `only`), until the budget runs out:
    (row, its --json results, or None when not measured)."""
    rows = [r for r in _suite(args.suite) if only is None or r.script == only]
    real = Path(args.real).expanduser()
    deadline = time.monotonic() + args.budget_s
    out = []
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    for row in rows:
        left = deadline - time.monotonic()
        if left <= 0:
            out.append((row, None))
            continue
        with tempfile.TemporaryDirectory() as tmp:
            path = f"{tmp}/row.json"
            cmd = row.command(real, path, args.threads)
            print(
                f"speed_matrix: {row.label}, {row.script}, {row.samples} x {row.tokens}", flush=True
            )
            try:
                subprocess.run(cmd, env=env, check=True, timeout=left)
                res = json.loads(Path(path).read_text())
            except (subprocess.SubprocessError, OSError) as e:
                why = failure(e)
                print(f"speed_matrix: not measured: {why}", flush=True)
                res = {"failed": why}
        out.append((row, res))
    return out


def failure(e: Exception) -> str:
    """Why a row's process gave no result, in a few words for the table."""
    code = getattr(e, "returncode", None)
    if isinstance(e, subprocess.TimeoutExpired):
        return "stopped at the budget"
    if code in (-9, 137):
        return "killed (SIGKILL: out of memory)"
    return f"{type(e).__name__} (exit {code})" if code is not None else type(e).__name__


def ratio(res: dict) -> tuple[float, str]:
    """(ratio, detail) of one row's --json: the median-based ratio and both sides' tok/s."""
    if res["benchmark"] == "peer_trl":
        ours, theirs = res["results"][0], res["results"][1]
        detail = _detail(ours, theirs, "TRL")
        a = res.get("args", {})
        micro, whole = (
            res.get("trl_micro_batch"),
            a.get("batch", 0) * a.get("responses_per_prompt", 0),
        )
        if micro and micro < whole:
            detail += f"; TRL in micro-batches of {micro} samples"
        return res["ratio_median"], detail
    first, gen = res["results"][0], res["results"][-1]
    return first["ratio"], _detail(first, gen, "generate")


def _detail(ours: dict, theirs: dict, name: str) -> str:
    return (
        f"{ours['median_tok_s']:.0f} vs {theirs['median_tok_s']:.0f} tok/s ({name}), "
        f"{ours['repeats']} repeats"
    )


def table(results: list[tuple[Row, dict | None]]) -> str:
    """The markdown table of the results, with each row's target and verdict."""
    lines = [
        "| model | measured | samples x tokens | ratio | target | met | tokens/s (median) |",
        "| --- | --- | --- | ---: | ---: | --- | --- |",
    ]
    for row, res in results:
        what = "sampler vs `generate`" if row.script == "sample" else "full-OPD step vs TRL GKD"
        size = f"{row.samples} x {row.tokens}"
        if res is None or "failed" in res:
            why = "not yet measured" if res is None else f"failed: {res['failed']}"
            lines.append(f"| {row.label} | {what} | {size} | - | {row.target:.1f}x | {why} | - |")
            continue
        r, detail = ratio(res)
        met = "yes" if r >= row.target else "**no**"
        lines.append(
            f"| {row.label} | {what} | {size} | {r:.2f}x | {row.target:.1f}x | {met} | {detail} |"
        )
    return "\n".join(lines)


def write_doc(doc: Path, text: str) -> None:
    """Put `text` between the markers of `doc` (appending both when absent)."""
    s = doc.read_text() if doc.exists() else ""
    block = f"{START}\n{text}\n{END}"
    if START in s and END in s:
        s = s[: s.index(START)] + block + s[s.index(END) + len(END) :]
    else:
        s = s.rstrip("\n") + "\n\n" + block + "\n"
    doc.write_text(s)


def report(args, results, argv: list[str]) -> str:
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cmd = " ".join(["python", *argv])
    return (
        f"Measured {when} at commit {commit}, {args.threads} threads, with:\n\n"
        f"```bash\n{cmd}\n```\n\n{table(results)}"
    )


def add_suite_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--suite", default=None, help="run this suite's rows (issue30, smoke)")
    p.add_argument(
        "--real",
        default="~/.cache/pruneopd/real",
        help="folder of the real pair (`pruneopd real build`)",
    )
    p.add_argument("--budget-s", type=float, default=3600, help="stop starting rows after this")
    p.add_argument("--doc", default=None, help="write the table into this markdown file")


def suite_main(args, argv: list[str], only: str | None = None) -> None:
    """Run a suite (the rows of one script with `only`), print and optionally write it."""
    results = run_suite(args, only)
    text = report(args, results, argv)
    print(text)
    if args.doc:
        write_doc(Path(args.doc), text)
        print(f"wrote {args.doc}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_suite_args(p)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    args.suite = args.suite or "issue30"
    suite_main(args, ["benchmarks/speed_matrix.py", *sys.argv[1:]])


if __name__ == "__main__":
    main()
