"""What each `pruneopd` command does (`cli.py` parses the command line and calls these).

Bad input (config, files, models) ends with one line on stderr and exit code 2 (`_die`).
"""

from __future__ import annotations

import json
from pathlib import Path

from pruneopd.errors import say

EXIT_USAGE = 2


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
        finished_only=args.finished_only,
        reuse=tuple(args.reuse),
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

    def under_real(name: str | None, default: str) -> Path:
        path = Path(name or default).expanduser()
        return path if path.is_absolute() or path.exists() else real / path

    start = under_real(getattr(args, "start", None), args.role)
    out = under_real(getattr(args, "out", None), f"{args.role}-sums")
    if start.resolve() == out.resolve():
        _die(f"real tune: --from and --out are the same folder ({out}): name another --out")
    for f in (start / "config.json", data / "train.jsonl", data / "dev.jsonl"):
        if not f.exists():
            _die(f"{f} does not exist: run `pruneopd real build` and `pruneopd real task` first")
    steps, target = TUNE_DEFAULTS[args.role]
    set_threads()
    res = tune(
        start,
        data / "train.jsonl",
        data / "dev.jsonl",
        out,
        steps=args.steps or steps,
        lr=args.lr,
        batch_size=args.batch,
        eval_every=args.eval_every,
        target=target if args.target is None else args.target,
        seed=getattr(args, "seed", 0),
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
