"""The on-policy distillation trainer: full OPD, prefix OPD, Prune-OPD and hybrid in one loop.

    prompts -> student rollouts -> teacher scores -> drift monitor and method weights
            -> per-token loss -> AdamW step -> budget update -> metrics

`train` sets the run up (run directory, models, optimiser, budget, resume) and runs the
steps; each step is the phases of `pruneopd/step.py` in order. See docs/method.md for every
formula.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from pruneopd.config import ConfigError, TrainConfig, config_to_yaml
from pruneopd.engines import choose as engines
from pruneopd.method.budget import AdaptivePrefix, ResponseBudget
from pruneopd.models import note_busy_cores, set_threads
from pruneopd.tokenizer import prompt_ids
from pruneopd.training import distributed
from pruneopd.training.checkpoint import (
    GracefulStop,
    load_trainer_state,
    rng_state,
    set_rng_state,
)
from pruneopd.training.evaluate import (
    DriftCheck,
    cached,
    combine,
    eval_key,
    evaluate,
    reference_cap,
)
from pruneopd.training.pair import (  # noqa: F401  (PairError is part of this module's interface)
    PairError,
    check_context,
    load_pair,
    load_student,
    load_task,
    load_tokenizers,
    train_device,
)
from pruneopd.training.runlog import NullLog, RunLog, check_resumable, prepare_run_dir, versions
from pruneopd.training.step import (  # noqa: F401  (method_weights, response_cap: this module's interface too)
    Run,
    budget_phase,
    method_weights,
    metrics_phase,
    prefix_schedule,
    response_cap,
    sample_phase,
    score_and_weigh,
    update_phase,
)


class TrainingStopped(RuntimeError):
    """The run stopped early (signal or non-finite values) after writing a checkpoint."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _sample_rows(tok, rollout, overlap_BT, weights_BT, events_BT, scores, cap, n) -> list[dict]:
    """A few responses token by token, for `pruneopd inspect`."""
    rows = []
    for i in range(min(n, len(rollout.responses))):
        T = len(rollout.responses[i])
        rows.append(
            {
                "index": i,
                "cap": cap,
                "stopped_by": rollout.stopped_by[i],
                "tokens": tok.convert_ids_to_tokens(rollout.responses[i]),
                "overlap": [round(x, 3) for x in overlap_BT[i, :T].tolist()],
                "weight": [round(x, 3) for x in weights_BT[i, :T].tolist()],
                "events": [int(x) for x in events_BT[i, :T].tolist()],
                "teacher_top": [
                    tok.convert_ids_to_tokens(r) for r in scores.topk_ids_BTK[i, :T, :5].tolist()
                ],
                "teacher_top_p": [
                    [round(p, 3) for p in r]
                    for r in scores.topk_logprobs_BTK[i, :T, :5].exp().tolist()
                ],
            }
        )
    return rows


def train(cfg: TrainConfig, dry_run: bool = False) -> dict:
    """Run (or resume) one distillation run; returns its summary.

    `dry_run` checks everything a run needs (run directory, checkpoint, models, vocabularies,
    prompts against the context window) and returns before writing or computing anything.
    """
    device = train_device(cfg)
    B_all = cfg.prompts_per_step * cfg.responses_per_prompt
    if B_all % distributed.world_size():
        raise ConfigError(
            f"prompts_per_step x responses_per_prompt = {B_all} samples per step "
            f"cannot be split evenly over {distributed.world_size()} processes"
        )
    d = distributed.init(device)
    resume_from = distributed.on_main(d, lambda: prepare_run_dir(cfg, dry_run=dry_run))
    saved = load_trainer_state(resume_from) if resume_from is not None else None
    if saved is not None:
        check_resumable(cfg, saved["config"], resume_from)
    set_threads()
    _seed_everything(cfg.seed)
    out = Path(cfg.out)
    task = load_task(cfg, load_tokenizers(cfg))  # data errors surface before models load
    student, teacher, tok = load_pair(cfg)
    if saved is not None:
        student = load_student(str(resume_from / "student"), cfg)
    difficulty = cfg.difficulty or task.default_difficulty
    n_prompts = cfg.max_steps * cfg.prompts_per_step
    train_problems = task.problems("train", n_prompts, seed=cfg.seed, difficulty=difficulty)
    test_problems = task.problems("test", cfg.eval_problems, seed=0, difficulty=difficulty)
    eval_cap = reference_cap(task, tok, test_problems) or cfg.max_len
    longest_prompt = max(len(prompt_ids(tok, p)) for p in train_problems + test_problems)
    check_context(cfg, {"student": student, "teacher": teacher}, longest_prompt, eval_cap)
    engines.check(cfg, world=d.world, device=device, vocab=student.config.vocab_size)
    if dry_run:
        return {"checked": True, "resume_from": str(resume_from) if resume_from else None}

    if d.main:
        note_busy_cores()  # every check passed: the heavy work starts here
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(config_to_yaml(cfg))
        (out / "versions.json").write_text(json.dumps(versions(), indent=2))
        log = RunLog(
            out,
            tensorboard=cfg.tensorboard,
            resume=saved["log_offsets"] if saved else None,
            step=saved["step"] if saved else 0,
            wandb_project=cfg.wandb_project if cfg.wandb else None,
            config=asdict(cfg),
        )
    else:
        log = NullLog()
    ps = distributed.ParallelStudent(student, cfg.parallel, d)
    student = ps.model  # full weights on every rank: sampling, evaluation, saving
    rows = slice(*d.split(B_all))  # this rank's samples of each step's global batch

    opt = torch.optim.AdamW(ps.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    )
    budget = None  # the controller of the cap: prune's budget, or an adaptive prefix
    if cfg.method == "prune":
        budget = ResponseBudget(
            cfg.init_len,
            cfg.min_len,
            cfg.max_len,
            cfg.budget_step,
            cfg.budget_margin,
            cfg.hit_ratio,
            cfg.patience,
        )
    elif cfg.method == "prefix" and prefix_schedule(cfg) == "adaptive":
        budget = AdaptivePrefix(
            cfg.prefix_len,
            cfg.prefix_len_end or cfg.max_len,
            cfg.prefix_step,
            cfg.prefix_window,
            cfg.prefix_kl_threshold,
            cfg.prefix_flat,
        )
    if cfg.method == "hybrid" and (B_all // distributed.world_size()) % cfg.responses_per_prompt:
        raise ConfigError(
            "method=hybrid: each process needs whole groups of "
            f"responses_per_prompt = {cfg.responses_per_prompt} samples"
        )
    gen = torch.Generator().manual_seed(cfg.seed)

    drift = None  # which held-out responses drift: needs the teacher's weights in the trainer
    if cfg.teacher_engine == "hf":
        drift = DriftCheck(
            teacher, cfg.topk, cfg.monitor_k, cfg.drift_metric, cfg.tau, cfg.w_drop, cfg.w_base
        )

    def run_eval(step: int) -> dict:
        def compute() -> dict:
            mine = test_problems[slice(*d.split(len(test_problems)))]
            res = (
                evaluate(
                    student,
                    tok,
                    task,
                    mine,
                    max_new_tokens=eval_cap,
                    samples=cfg.eval_samples,
                    seed=cfg.seed,
                    drift=drift,
                )
                if mine
                else None
            )
            return combine(d.gather_objects(res))

        if step == 0 and cfg.eval_cache and d.world == 1:  # the same weights, the same result
            key = eval_key(
                student,
                tok,
                task,
                test_problems,
                cap=eval_cap,
                samples=cfg.eval_samples,
                seed=cfg.seed if cfg.eval_samples else 0,
                drift=drift.settings() if drift else None,
            )
            res, _ = cached(cfg.eval_cache, key, compute)
        else:
            res = compute()
        log.log(step, {f"eval/{k}": v for k, v in res.items() if isinstance(v, (int, float))})
        return res

    def trainer_state(step: int, rng: dict, offsets: dict) -> dict:
        """Everything besides the weights that step `step + 1` needs to run as if never stopped."""
        return {
            "config": asdict(cfg),
            "optimizer": ps.optimizer_state(opt),
            "scheduler": sched.state_dict(),
            "budget": budget.state_dict() if budget is not None else None,
            "rng": rng,
            "log_offsets": offsets,
            "history": history,
            "totals": dict(totals),
            "acc": acc,
            "next_prompt": step * cfg.prompts_per_step,
        }

    if saved is not None:
        ps.load_optimizer_state(opt, saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        if budget is not None:
            budget.load_state_dict(saved["budget"])
        set_rng_state(saved["rng"], gen)
        history, totals, acc, start = saved["history"], saved["totals"], saved["acc"], saved["step"]
        before = history["eval"][0]
    else:
        history = {"eval": []}
        before = run_eval(0)
        history["eval"].append({"step": 0, **before})
        acc, start = before["accuracy"], 0
        totals = {
            "t_sample": 0.0,
            "t_teacher": 0.0,
            "t_update": 0.0,
            "tokens_generated": 0,
            "tokens_scored": 0,
            "tokens_trained": 0,
            "skipped_steps": 0,
            "cpu_seconds": 0.0,
        }
    longest_response = max(cfg.max_len, cfg.prefix_len, cfg.prefix_len_end)
    sampler, scorer = engines.build(
        cfg,
        student,
        teacher,
        tok,
        device=device,
        world=d.world,
        max_model_len=longest_prompt + longest_response + 1,
    )
    run = Run(
        cfg,
        d,
        ps,
        student,
        teacher,
        tok,
        task,
        train_problems,
        opt,
        sched,
        budget,
        gen,
        rows,
        B_all,
        device,
        sampler,
        scorer,
    )
    bar = tqdm(
        range(start, cfg.max_steps),
        desc=f"{cfg.method} OPD",
        disable=not (cfg.progress and d.main),
        initial=start,
        total=cfg.max_steps,
    )
    stop = GracefulStop()
    with stop:
        for step in bar:
            rng_at_start, offsets_at_start = rng_state(gen), log.offsets()
            cpu0 = (
                time.process_time()
            )  # CPU time: a cost that other load on the machine does not inflate
            batch = sample_phase(run, step)  # 1. the student samples its own responses
            w = score_and_weigh(run, batch)  # 2-3. the teacher scores, the monitor weighs
            upd = update_phase(run, batch, w)  # 4. the update
            if not upd.finite and cfg.on_nonfinite == "skip":
                totals["skipped_steps"] += 1
            elif not upd.finite:  # keep the last good state: weights, optimizer, RNG at step start
                path = distributed.save_once(
                    d,
                    out,
                    step,
                    student,
                    trainer_state(step, rng_at_start, offsets_at_start),
                    cfg.keep_checkpoints,
                )
                log.close()
                bad = "loss" if not torch.isfinite(upd.loss) else "gradients"
                raise TrainingStopped(
                    f"non-finite {bad} at step {step + 1} (loss {upd.loss.item():.4g}, grad norm "
                    f"{float(upd.grad_norm):.4g}); last good step saved in {path}; lower lr, or "
                    "set on_nonfinite=skip",
                    exit_code=1,
                )
            hit, next_cap = budget_phase(run, step, w)  # 5. the budget moves the cap
            m = metrics_phase(run, batch, w, upd, hit, next_cap)  # 6. what every run logs
            totals["cpu_seconds"] = totals.get("cpu_seconds", 0.0) + time.process_time() - cpu0
            for k in ("t_sample", "t_teacher", "t_update"):
                totals[k] += m[k]
            for k in ("tokens_generated", "tokens_scored", "tokens_trained"):
                totals[k] += m[k]
            log.log(step + 1, m)
            if cfg.log_samples and d.main:
                log.samples(
                    step + 1,
                    _sample_rows(
                        tok,
                        batch.rollout,
                        w.overlap_BT,
                        w.weights_BT,
                        w.events_BT,
                        w.scores,
                        batch.cap,
                        cfg.log_samples,
                    ),
                )
            if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.max_steps:
                res = run_eval(step + 1)
                history["eval"].append({"step": step + 1, "train_seconds": _train_s(totals), **res})
                acc = res["accuracy"]
            bar.set_postfix(
                L=batch.cap,
                hit=f"{m['hit_ratio']:.2f}",
                len=f"{m['mean_len']:.0f}",
                rkl=f"{m['rkl']:.3f}",
                acc=f"{acc:.3f}",
            )
            last = step + 1 == cfg.max_steps
            stopping = d.any(stop.requested)  # a signal to any rank stops every rank
            if last or stopping or (cfg.save_every and (step + 1) % cfg.save_every == 0):
                path = distributed.save_once(
                    d,
                    out,
                    step + 1,
                    student,
                    trainer_state(step + 1, rng_state(gen), log.offsets()),
                    cfg.keep_checkpoints,
                )
            if stopping and not last:
                log.close()
                raise TrainingStopped(
                    f"stopped by {stop.signal_name or 'a signal to another rank'} after step "
                    f"{step + 1} of {cfg.max_steps}; "
                    f"checkpoint {path}; continue with the same command and resume=auto",
                    exit_code=stop.exit_code or 143,
                )

    after = run_eval(cfg.max_steps)
    history["eval"].append({"step": cfg.max_steps, "train_seconds": _train_s(totals), **after})
    if not d.main:
        return {}
    student.save_pretrained(out / "final")
    tok.save_pretrained(out / "final")
    summary = {
        "config": asdict(cfg),
        "accuracy_before": before["accuracy"],
        "accuracy_after": after["accuracy"],
        "partial_credit_before": before["partial_credit"],
        "partial_credit_after": after["partial_credit"],
        "train_seconds": _train_s(totals),
        **totals,
        "final_cap": budget.length if budget is not None else None,
        "evals": history["eval"],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    log.close()
    return summary


def _train_s(totals: dict) -> float:
    return totals["t_sample"] + totals["t_teacher"] + totals["t_update"]
