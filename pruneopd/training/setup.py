"""A run's set-up: every check a run would hit, before anything is written or computed, then
the run itself (run directory, models, optimiser, method, engines) as one typed `Run`.

`check_run(cfg)` is what `pruneopd train --check` and every torchrun rank do first;
`setup_run(cfg)` calls it and then builds. The order of the loads is the order of the
random draws, so a run is reproducible from its seed.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from pruneopd.config import ConfigError, TrainConfig, config_to_yaml
from pruneopd.engines import choose as engines
from pruneopd.engines.records import left_pad
from pruneopd.errors import say
from pruneopd.method import build_method, method_class
from pruneopd.method.weighing import DriftSettings
from pruneopd.models import note_busy_cores
from pruneopd.tasks import Problem, Task
from pruneopd.teacher_entries import teacher_entries
from pruneopd.tokenizer import prompt_ids
from pruneopd.training import distributed, lora
from pruneopd.training.checkpoint import load_trainer_state
from pruneopd.training.evaluate import DriftCheck, reference_cap
from pruneopd.training.pair import (
    check_context,
    checkpointing_note,
    load_pair,
    load_student,
    load_task,
    load_tokenizers,
    train_device,
)
from pruneopd.training.panel import build_panel, check_routes, entry_config
from pruneopd.training.runlog import (
    NullLog,
    RunLog,
    check_resumable,
    prepare_run_dir,
    versions,
)
from pruneopd.training.step import Run


@dataclass
class Checked:
    """What the checks loaded: the run can start from here without a second load."""

    cfg: TrainConfig
    d: distributed.Dist
    device: torch.device
    resume_from: Path | None
    saved: dict | None  # the checkpoint's trainer state when resuming
    tok: object
    task: Task
    student: torch.nn.Module
    teacher: torch.nn.Module | list  # weights, or a shell when a vLLM engine holds them
    train_problems: list[Problem]
    test_problems: list[Problem]
    eval_cap: int
    longest_prompt: int
    notes: list[str]  # start-up lines (main process, after every check): padding, engines


@dataclass
class Prepared:
    """A run ready for its first step: the `Run` the phases share, plus what the loop keeps
    around it (log, evaluation set, checkpoint to resume)."""

    run: Run
    log: RunLog | NullLog
    saved: dict | None
    test_problems: list[Problem]
    eval_cap: int
    eval_drift: DriftCheck | None  # which held-out responses drift (teacher weights here only)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def check_run(cfg: TrainConfig) -> Checked:
    """Every check a run would hit (run directory and checkpoint, data, models, vocabularies,
    context window, engines, the method against the process count); writes nothing.
    Raises ConfigError / PairError with a one-line message."""
    device = train_device(cfg)
    world = distributed.world_size()
    batch = cfg.prompts_per_step * cfg.responses_per_prompt
    if batch % world:
        raise ConfigError(
            f"prompts_per_step x responses_per_prompt = {batch} samples per step "
            f"cannot be split evenly over {world} processes"
        )
    method_class(cfg).check(cfg, world=world)
    if cfg.lora_r:
        lora.require_peft(cfg)
    d = distributed.init(device)
    resume_from = distributed.on_main(d, lambda: prepare_run_dir(cfg, dry_run=True))
    saved = load_trainer_state(resume_from) if resume_from is not None else None
    if saved is not None:
        check_resumable(cfg, saved["config"], resume_from)
    _seed_everything(cfg.seed)
    tok = load_tokenizers(cfg)
    task = load_task(cfg, tok)  # data errors surface before models load
    student, teacher = load_pair(cfg, tok, device)  # with `teachers`: a list of them
    if saved is not None and cfg.lora_r:  # the frozen weights are cfg.student's
        lora.load_adapters(student, resume_from / "student")
    elif saved is not None:
        student = load_student(str(resume_from / "student"), cfg, device)
    difficulty = cfg.difficulty or task.default_difficulty
    n_prompts = cfg.max_steps * cfg.prompts_per_step
    train_problems = task.problems("train", n_prompts, seed=cfg.seed, difficulty=difficulty)
    test_problems = task.problems("test", cfg.eval_problems, seed=0, difficulty=difficulty)
    eval_cap = cfg.eval_max_len or reference_cap(task, tok, test_problems) or cfg.max_len
    longest_prompt = max(len(prompt_ids(tok, p)) for p in train_problems + test_problems)
    # the padding the sampler and scorer use (a pad-less tokenizer pads with EOS or unk)
    left_pad([prompt_ids(tok, p) for p in (train_problems + test_problems)[:2]], tok.pad_token_id)
    models, vocab = {"student": student}, student.config.vocab_size
    if cfg.teachers:  # every teacher's checks, as a run with it alone would make them
        check_routes(cfg, train_problems + test_problems)
        for e, t in zip(teacher_entries(cfg), teacher, strict=True):
            models[f"teacher {e.name!r}"] = t
            engines.check(entry_config(cfg, e), world=d.world, device=device, vocab=vocab)
    else:
        models["teacher"] = teacher
    check_context(cfg, models, longest_prompt, eval_cap)
    engines.check(cfg, world=d.world, device=device, vocab=vocab)
    longest = longest_prompt + max(cfg.max_len, cfg.prefix_len, cfg.prefix_len_end)
    checkpointing = checkpointing_note(cfg, student, batch // world, longest)
    return Checked(
        cfg,
        d,
        device,
        resume_from,
        saved,
        tok,
        task,
        student,
        teacher,
        train_problems,
        test_problems,
        eval_cap,
        longest_prompt,
        [n for n in (getattr(tok, "padding_note", None), checkpointing) if n],
    )


def setup_run(c: Checked) -> Prepared:
    """From a checked config to a run: the run directory (an old run's files removed only now),
    config.yaml / versions.json / the log, the (data-parallel) student, optimiser and
    schedule, the method, the sampler and the teacher."""
    cfg, d = c.cfg, c.d
    distributed.on_main(d, lambda: prepare_run_dir(cfg))
    out = Path(cfg.out)
    if d.main:
        note_busy_cores()  # every check passed: the heavy work starts here
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(config_to_yaml(cfg))
        (out / "versions.json").write_text(json.dumps(versions(), indent=2))
        log = RunLog(
            out,
            tensorboard=cfg.tensorboard,
            resume=c.saved["log_offsets"] if c.saved else None,
            step=c.saved["step"] if c.saved else 0,
            wandb_project=cfg.wandb_project if cfg.wandb else None,
            config=asdict(cfg),
        )
    else:
        log = NullLog()
    batch_size = cfg.prompts_per_step * cfg.responses_per_prompt
    ps = distributed.ParallelStudent(c.student, cfg.parallel, d)
    student = ps.model  # full weights on every rank: sampling, evaluation, saving
    opt = torch.optim.AdamW(ps.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    )
    method = build_method(cfg, world=d.world)
    drift = DriftSettings.from_config(cfg)
    longest_response = max(cfg.max_len, cfg.prefix_len, cfg.prefix_len_end)
    where = dict(
        device=c.device, world=d.world, max_model_len=c.longest_prompt + longest_response + 1
    )
    panel = None
    if cfg.teachers:  # several teachers, each on its own engine, behind one `Panel`
        kw = engines.engine_settings(cfg, **where)
        sampler = engines.build_sampler(cfg, student, c.tok, **kw)
        teacher = panel = build_panel(cfg, c.teacher, c.tok, **kw)
    else:
        sampler, teacher = engines.build(cfg, student, c.teacher, c.tok, **where)
    if d.main:
        say(engines.describe(cfg, sampler))
    eval_drift = DriftCheck(teacher, cfg.topk, drift) if teacher.model is not None else None
    run = Run(
        cfg=cfg,
        d=d,
        ps=ps,
        student=student,
        sampler=sampler,
        teacher=teacher,
        method=method,
        drift=drift,
        tok=c.tok,
        task=c.task,
        train_problems=c.train_problems,
        opt=opt,
        sched=sched,
        gen=torch.Generator().manual_seed(cfg.seed),
        rows=slice(*d.split(batch_size)),  # this rank's samples of each step's global batch
        batch_size=batch_size,
        device=c.device,
        panel=panel,
    )
    return Prepared(run, log, c.saved, c.test_problems, c.eval_cap, eval_drift)


def local_run(
    cfg: TrainConfig,
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    tok,
    task: Task,
    problems: list[Problem],
    *,
    eos_id: int | None = None,
) -> Run:
    """A one-process `Run` over models already loaded, without a run directory or a log: the
    trainer's own phases on given problems (step i takes problems[i * prompts_per_step:]), for
    the benchmarks. `eos_id` replaces the tokenizer's (an id never sampled makes every
    response run to the cap)."""
    d = distributed.Dist(device=torch.device("cpu"))
    ps = distributed.ParallelStudent(student, cfg.parallel, d)
    opt = torch.optim.AdamW(ps.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    sampler, scorer = engines.build(
        cfg, ps.model, teacher, tok, device=d.device, world=1, max_model_len=0
    )
    if eos_id is not None:
        sampler.settings = replace(sampler.settings, eos_id=eos_id)
    batch_size = cfg.prompts_per_step * cfg.responses_per_prompt
    return Run(
        cfg=cfg,
        d=d,
        ps=ps,
        student=ps.model,
        sampler=sampler,
        teacher=scorer,
        method=build_method(cfg),
        drift=DriftSettings.from_config(cfg),
        tok=tok,
        task=task,
        train_problems=problems,
        opt=opt,
        sched=sched,
        gen=torch.Generator().manual_seed(cfg.seed),
        rows=slice(0, batch_size),
        batch_size=batch_size,
        device=d.device,
    )
