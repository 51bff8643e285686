"""The on-policy distillation trainer: full OPD, prefix OPD and Prune-OPD in one loop.

    prompts -> student rollouts -> teacher scores -> drift monitor and method weights
            -> per-token loss -> AdamW step -> budget update -> metrics

See docs/method.md for every formula; the comments below point at its sections.
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

from . import distributed, step_metrics
from .budget import AdaptivePrefix, ResponseBudget
from .checkpoint import (
    GracefulStop,
    load_trainer_state,
    rng_state,
    set_rng_state,
)
from .config import ConfigError, TrainConfig, config_to_yaml
from .drift import monitor, reliability_weights
from .evaluate import combine, evaluate, reference_cap
from .hybrid import group_advantages, tail_mask
from .losses import masked_token_mean
from .models import set_threads
from .objective import token_losses
from .online import OnlinePruner
from .pair import (  # noqa: F401  (PairError is part of this module's interface)
    PairError,
    check_context,
    load_pair,
    load_student,
    load_task,
    load_tokenizers,
    train_device,
)
from .rollout import repeat_prompts, sample, sample_uniforms
from .runlog import NullLog, RunLog, check_resumable, prepare_run_dir, versions
from .scoring import score_responses
from .tokenizer import decode_response, prompt_ids


class TrainingStopped(RuntimeError):
    """The run stopped early (signal or non-finite values) after writing a checkpoint."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def prefix_schedule(cfg: TrainConfig) -> str:
    """fixed | linear | adaptive ("auto": linear if prefix_len_end > 0, else fixed)."""
    if cfg.prefix_schedule != "auto":
        return cfg.prefix_schedule
    return "linear" if cfg.prefix_len_end > 0 else "fixed"


def response_cap(cfg: TrainConfig, step: int, budget) -> int:
    """This step's response-length cap for each method (method.md, Baselines / Budget):
    `budget` is the `ResponseBudget` of prune, the `AdaptivePrefix` of an adaptive prefix."""
    if cfg.method == "prune":
        return budget.length
    if cfg.method == "prefix":
        schedule = prefix_schedule(cfg)
        if schedule == "adaptive":
            return budget.length
        if schedule == "fixed":
            return cfg.prefix_len
        frac = min(1.0, step / max(1, cfg.max_steps - 1))  # linear schedule P_start -> P_end
        return round(cfg.prefix_len + frac * (cfg.prefix_len_end - cfg.prefix_len))
    return cfg.max_len


def method_weights(cfg: TrainConfig, weights_BT, multipliers_BT, mask_BT, tail_BT=None):
    """(loss multiplier, train mask) per token: 1 for full/prefix, m_t for prune; for hybrid
    m_t on the reliable prefix and gate_coef on the tail (`tail_BT`)."""
    if cfg.method == "hybrid":
        return torch.where(tail_BT, torch.full_like(multipliers_BT, cfg.gate_coef),
                           multipliers_BT), mask_BT  # fmt: skip
    if cfg.method != "prune":
        return mask_BT.float(), mask_BT
    train_mask_BT = mask_BT & (weights_BT > 0) if cfg.reliable_prefix_only else mask_BT
    return multipliers_BT, train_mask_BT


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _sample_rows(tok, rollout, overlap_BT, weights_BT, events_BT, scores, cap, n) -> list[dict]:
    """A few responses token by token, for `pruneopd inspect`."""
    rows = []
    for i in range(min(n, len(rollout.responses))):
        T = len(rollout.responses[i])
        rows.append({
            "index": i,
            "cap": cap,
            "stopped_by": rollout.stopped_by[i],
            "tokens": tok.convert_ids_to_tokens(rollout.responses[i]),
            "overlap": [round(x, 3) for x in overlap_BT[i, :T].tolist()],
            "weight": [round(x, 3) for x in weights_BT[i, :T].tolist()],
            "events": [int(x) for x in events_BT[i, :T].tolist()],
            "teacher_top": [tok.convert_ids_to_tokens(r) for r in scores.topk_ids_BTK[i, :T, :5].tolist()],
            "teacher_top_p": [[round(p, 3) for p in r] for r in scores.topk_logprobs_BTK[i, :T, :5].exp().tolist()],
        })  # fmt: skip
    return rows


def train(cfg: TrainConfig, dry_run: bool = False) -> dict:
    """Run (or resume) one distillation run; returns its summary.

    `dry_run` checks everything a run needs (run directory, checkpoint, models, vocabularies,
    prompts against the context window) and returns before writing or computing anything.
    """
    device = train_device(cfg)
    B_all = cfg.prompts_per_step * cfg.responses_per_prompt
    if B_all % distributed.world_size():
        raise ConfigError(f"prompts_per_step x responses_per_prompt = {B_all} samples per step "
                          f"cannot be split evenly over {distributed.world_size()} processes")  # fmt: skip
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
    if dry_run:
        return {"checked": True, "resume_from": str(resume_from) if resume_from else None}

    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(config_to_yaml(cfg))
        (out / "versions.json").write_text(json.dumps(versions(), indent=2))
        log = RunLog(out, tensorboard=cfg.tensorboard, resume=saved["log_offsets"] if saved else None,
                     step=saved["step"] if saved else 0, wandb_project=cfg.wandb_project if cfg.wandb else None,
                     config=asdict(cfg))  # fmt: skip
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
        budget = ResponseBudget(cfg.init_len, cfg.min_len, cfg.max_len, cfg.budget_step,
                                cfg.budget_margin, cfg.hit_ratio, cfg.patience)  # fmt: skip
    elif cfg.method == "prefix" and prefix_schedule(cfg) == "adaptive":
        budget = AdaptivePrefix(cfg.prefix_len, cfg.prefix_len_end or cfg.max_len,
                                cfg.prefix_step, cfg.prefix_window, cfg.prefix_kl_threshold,
                                cfg.prefix_flat)  # fmt: skip
    if cfg.method == "hybrid" and (B_all // distributed.world_size()) % cfg.responses_per_prompt:
        raise ConfigError("method=hybrid: each process needs whole groups of "
                          f"responses_per_prompt = {cfg.responses_per_prompt} samples")  # fmt: skip
    gen = torch.Generator().manual_seed(cfg.seed)

    def run_eval(step: int) -> dict:
        mine = test_problems[slice(*d.split(len(test_problems)))]
        res = evaluate(student, tok, task, mine, max_new_tokens=eval_cap,
                       samples=cfg.eval_samples, seed=cfg.seed) if mine else None  # fmt: skip
        res = combine(d.gather_objects(res))
        log.log(step, {f"eval/{k}": v for k, v in res.items() if isinstance(v, (int, float))})
        return res

    def trainer_state(step: int, rng: dict, offsets: dict) -> dict:
        """Everything besides the weights that step `step + 1` needs to run as if never stopped."""
        return {
            "config": asdict(cfg), "optimizer": ps.optimizer_state(opt), "scheduler": sched.state_dict(),
            "budget": budget.state_dict() if budget is not None else None, "rng": rng,
            "log_offsets": offsets, "history": history, "totals": dict(totals), "acc": acc,
            "next_prompt": step * cfg.prompts_per_step,
        }  # fmt: skip

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
        totals = {"t_sample": 0.0, "t_teacher": 0.0, "t_update": 0.0, "tokens_generated": 0,
                  "tokens_scored": 0, "tokens_trained": 0, "skipped_steps": 0}  # fmt: skip
    bar = tqdm(range(start, cfg.max_steps), desc=f"{cfg.method} OPD", disable=not (cfg.progress and d.main),
               initial=start, total=cfg.max_steps)  # fmt: skip
    stop = GracefulStop()
    with stop:
        for step in bar:
            rng_at_start, offsets_at_start = rng_state(gen), log.offsets()
            problems = train_problems[
                step * cfg.prompts_per_step : (step + 1) * cfg.prompts_per_step
            ]
            prompts = repeat_prompts([prompt_ids(tok, p) for p in problems],
                                     cfg.responses_per_prompt)[rows]  # fmt: skip
            cap = response_cap(cfg, step, budget)
            uniforms_BN = sample_uniforms(B_all, cap, gen)[rows]  # global draw, this rank's rows

            # 1. the student samples its own responses
            student.eval()
            t0 = time.perf_counter()
            pruner = None
            if cfg.online_pruning:
                pruner = OnlinePruner(teacher, prompts, k=cfg.topk, drift_k=cfg.monitor_k,
                                      pad_id=tok.pad_token_id,
                                      metric=cfg.drift_metric, tau=cfg.tau, w_drop=cfg.w_drop,
                                      floor=cfg.prune_floor)  # fmt: skip
            rollout = sample(
                student, prompts, max_new_tokens=cap, eos_id=tok.eos_token_id,
                pad_id=tok.pad_token_id, temperature=cfg.temperature, top_p=cfg.top_p,
                uniforms_BN=uniforms_BN, topk=cfg.topk, chunk_size=cfg.chunk_size if pruner else 0,
                on_chunk=pruner,
            )  # fmt: skip
            t_sample = time.perf_counter() - t0 - (pruner.seconds if pruner else 0.0)

            # 2. the teacher scores every response token (already done chunkwise when online)
            t0 = time.perf_counter()
            mask_BT = rollout.response_mask_BT.to(device)
            B, T = mask_BT.shape
            tokens_BT = rollout.response_tokens_BT(tok.pad_token_id).to(device)
            cand_BTK = rollout.student_topk_ids_BTK()
            cand_BTK = cand_BTK.to(device) if cand_BTK is not None else None
            if pruner is not None:
                scores = pruner.assemble(B, T)
            else:
                scores = score_responses(teacher, prompts, rollout.responses, k=cfg.topk,
                                         candidate_ids=cand_BTK, pad_id=tok.pad_token_id)  # fmt: skip
            # 3. drift monitor, reliability weights, method multipliers (method.md)
            dk = cfg.monitor_k  # both top-K lists are sorted: the top-k' set is a prefix
            overlap_BT, events_BT = monitor(cfg.drift_metric, cand_BTK[..., :dk],
                                            scores.topk_ids_BTK[..., :dk],
                                            scores.topk_logprobs_BTK[..., :dk], tokens_BT, mask_BT,
                                            cfg.tau)  # fmt: skip
            weights_BT, multipliers_BT, eff_len_B = reliability_weights(
                events_BT, mask_BT, cfg.w_drop, cfg.w_base
            )
            eff_len_all_B = d.gather(eff_len_B)  # the budget sees the global batch
            texts = [decode_response(tok, r) for r in rollout.responses]
            first = rows.start  # global index of this rank's first sample
            rewards = [task.check(problems[(first + i) // cfg.responses_per_prompt], t)
                       for i, t in enumerate(texts)]  # fmt: skip
            tail_BT = adv_BT = None
            if cfg.method == "hybrid":  # the outcome reward takes over where w_t <= gate_floor
                tail_BT = tail_mask(weights_BT, mask_BT, cfg.gate_floor)
                adv_B = group_advantages(torch.tensor(rewards, dtype=torch.float32),
                                         cfg.responses_per_prompt, cfg.gate_norm).to(device)  # fmt: skip
                adv_BT = adv_B[:, None].expand(B, T)
            mult_BT, train_mask_BT = method_weights(cfg, weights_BT, multipliers_BT, mask_BT,
                                                    tail_BT)  # fmt: skip
            t_teacher = time.perf_counter() - t0 + (pruner.seconds if pruner else 0.0)

            # 4. the update: token-mean of m_t * loss_t over valid response tokens
            ps.train()
            t0 = time.perf_counter()
            input_ids_BL = rollout.to_padded(tok.pad_token_id)[0].to(device)
            prompt_lens_B = torch.tensor([len(p) for p in prompts], device=device)
            loss_BT, _ = token_losses(
                cfg.loss, ps.loss_module, teacher, input_ids_BL, prompt_lens_B, tokens_BT, train_mask_BT,
                candidate_ids_BTK=cand_BTK, teacher_candidate_logprobs_BTK=scores.candidate_logprobs_BTK,
                teacher_token_logprobs_BT=scores.token_logprobs_BT,
                teacher_hidden_NH=None if scores.hidden_NH is None else scores.hidden_NH[train_mask_BT[mask_BT]],
                jsd_beta=cfg.jsd_beta,
                chunk=cfg.loss_chunk, tail_BT=tail_BT, advantage_BT=adv_BT,
            )  # fmt: skip
            # the token mean over the global batch: this rank's share, times the world size
            # because DDP / FSDP average gradients over ranks
            n_mine = int(train_mask_BT.sum())
            n_all = d.sum([n_mine])[0]
            loss_mine = masked_token_mean(loss_BT, mult_BT, train_mask_BT) * (
                n_mine / max(n_all, 1)
            )
            opt.zero_grad(set_to_none=True)
            (loss_mine * d.world).backward()
            loss = torch.tensor(d.sum([loss_mine.item()])[0])
            grad_norm = ps.clip_grad_norm(cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
            finite = bool(torch.isfinite(loss)) and bool(torch.isfinite(grad_norm))
            if finite:
                opt.step()
                sched.step()
                ps.after_update()
            elif cfg.on_nonfinite == "skip":
                opt.zero_grad(set_to_none=True)
                totals["skipped_steps"] += 1
            else:  # keep the last good state: weights, optimizer and RNG as at this step's start
                path = distributed.save_once(d, out, step, student, trainer_state(step, rng_at_start, offsets_at_start),
                             cfg.keep_checkpoints)  # fmt: skip
                log.close()
                raise TrainingStopped(
                    f"non-finite {'loss' if not torch.isfinite(loss) else 'gradients'} at step "
                    f"{step + 1} (loss {loss.item():.4g}, grad norm {float(grad_norm):.4g}); "
                    f"last good step saved in {path}; lower lr, or set on_nonfinite=skip",
                    exit_code=1,
                )
            t_update = time.perf_counter() - t0

            # 5. the budget moves the cap for the next step (prune only; an adaptive prefix
            # moves after the metrics, from the prefix's reverse KL)
            hit = budget.update(eff_len_all_B) if isinstance(budget, ResponseBudget) else {}
            next_cap = hit["next_length"] if hit else response_cap(cfg, step + 1, budget)

            # 6. metrics (method.md, "Metrics every run logs")
            rkl_BT = rollout.student_logprobs_BT().to(device) - scores.token_logprobs_BT
            sums = step_metrics.local_sums(overlap_BT, events_BT, weights_BT, mult_BT, mask_BT,
                                           train_mask_BT, rkl_BT, rewards,
                                           rollout.response_lengths.tolist(), rollout.stopped_by)  # fmt: skip
            boundary = max(cfg.min_len, cap - cfg.budget_margin)
            times = d.sum([t_sample, t_teacher, t_update])  # logged: the mean over ranks
            m = {
                "loss": loss.item(),
                **step_metrics.reduce_means(sums, d),
                "eff_len_mean": float(eff_len_all_B.float().mean()),
                "eff_len_median": float(eff_len_all_B.float().median()),
                "hit_ratio": hit.get("hit_ratio", float((eff_len_all_B >= boundary).float().mean())),
                "cap": cap,
                "next_cap": next_cap,
                "t_sample": times[0] / d.world,
                "t_teacher": times[1] / d.world,
                "t_update": times[2] / d.world,
                "lr": sched.get_last_lr()[0],
                "grad_norm": float(grad_norm),
                "skipped": int(not finite),
            }  # fmt: skip
            if isinstance(budget, AdaptivePrefix):
                m["next_cap"] = budget.update(m["rkl"])["next_length"]
            if tail_BT is not None:
                m["gate_rate"] = d.sum([float(tail_BT.sum())])[0] / max(1, m["tokens_generated"])
            for k in ("t_sample", "t_teacher", "t_update"):
                totals[k] += m[k]
            for k in ("tokens_generated", "tokens_scored", "tokens_trained"):
                totals[k] += m[k]
            log.log(step + 1, m)
            if cfg.log_samples and d.main:
                log.samples(step + 1, _sample_rows(tok, rollout, overlap_BT, weights_BT, events_BT,
                                                   scores, cap, cfg.log_samples))  # fmt: skip
            if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.max_steps:
                res = run_eval(step + 1)
                history["eval"].append({"step": step + 1, "train_seconds": _train_s(totals), **res})
                acc = res["accuracy"]
            bar.set_postfix(L=cap, hit=f"{m['hit_ratio']:.2f}", len=f"{m['mean_len']:.0f}",
                            rkl=f"{m['rkl']:.3f}", acc=f"{acc:.3f}")  # fmt: skip
            last = step + 1 == cfg.max_steps
            stopping = d.any(stop.requested)  # a signal to any rank stops every rank
            if last or stopping or (cfg.save_every and (step + 1) % cfg.save_every == 0):
                path = distributed.save_once(d, out, step + 1, student,
                             trainer_state(step + 1, rng_state(gen), log.offsets()),
                             cfg.keep_checkpoints)  # fmt: skip
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
