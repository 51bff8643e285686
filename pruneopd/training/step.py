"""One OPD step, phase by phase (docs/method.md): the student samples, the teacher scores, the
drift monitor and the method weigh every token, the student updates, the budget moves the cap.

`train.train` sets up a `Run` and calls these in order once per step; each phase takes what
the ones before it produced and returns a small record, so the loop reads as the method.
Sampling goes through `sample_responses` and teacher scoring through `score_batch`: the one
place each engine is chosen.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from pruneopd.config import TrainConfig
from pruneopd.engines.online import OnlinePruner
from pruneopd.engines.rollout import Rollout, repeat_prompts, sample, sample_uniforms
from pruneopd.engines.scoring import TokenScores, score_responses
from pruneopd.method.budget import AdaptivePrefix, ResponseBudget
from pruneopd.method.drift import monitor, reliability_weights
from pruneopd.method.hybrid import group_advantages, tail_mask
from pruneopd.method.losses import masked_token_mean
from pruneopd.tokenizer import decode_response, prompt_ids
from pruneopd.training import step_metrics
from pruneopd.training.objective import token_losses


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
        return torch.where(
            tail_BT, torch.full_like(multipliers_BT, cfg.gate_coef), multipliers_BT
        ), mask_BT
    if cfg.method != "prune":
        return mask_BT.float(), mask_BT
    train_mask_BT = mask_BT & (weights_BT > 0) if cfg.reliable_prefix_only else mask_BT
    return multipliers_BT, train_mask_BT


@dataclass
class Run:
    """What every step of one run shares: config, processes, models, optimiser, budget."""

    cfg: TrainConfig
    d: object  # distributed.Dist
    ps: object  # distributed.ParallelStudent
    student: torch.nn.Module  # full weights on every rank: sampling, evaluation, saving
    teacher: torch.nn.Module
    tok: object
    task: object
    train_problems: list
    opt: torch.optim.Optimizer
    sched: object
    budget: ResponseBudget | AdaptivePrefix | None
    gen: torch.Generator
    rows: slice  # this rank's samples of each step's global batch
    batch_size: int  # the global batch: prompts_per_step x responses_per_prompt
    device: torch.device
    sampler: object = None  # rollout_engine=vllm: a vllm_engine.VLLMSampler (None: lean)
    scorer: object = None  # teacher_engine=vllm: a VLLMTeacher or ServerTeacher (None: hf)


@dataclass
class Batch:
    """Phase 1's output: this rank's prompts and the student's responses to them."""

    problems: list
    prompts: list[list[int]]
    cap: int
    rollout: Rollout
    pruner: OnlinePruner | None
    seconds: float  # sampling only (the pruner's incremental scoring is the teacher's)


def sample_responses(run: Run, prompts, cap: int, draws, pruner) -> Rollout:
    """The sampling interface: the student's responses, with its per-token log-probs and
    top-K ids (and the pruner's stops, when online). `draws`: the lean sampler's uniforms
    [B, cap], or the vLLM engine's per-sample seeds."""
    cfg, tok = run.cfg, run.tok
    if run.sampler is not None:
        return run.sampler.sample(
            prompts,
            max_new_tokens=cap,
            eos_id=tok.eos_token_id,
            pad_id=tok.pad_token_id,
            seeds=draws,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            topk=cfg.topk,
            chunk_size=cfg.chunk_size if pruner else 0,
            on_chunk=pruner,
        )
    uniforms_BN = draws
    return sample(
        run.student,
        prompts,
        max_new_tokens=cap,
        eos_id=tok.eos_token_id,
        pad_id=tok.pad_token_id,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        uniforms_BN=uniforms_BN,
        topk=cfg.topk,
        chunk_size=cfg.chunk_size if pruner else 0,
        on_chunk=pruner,
    )


def sample_phase(run: Run, step: int) -> Batch:
    """1. The student samples its own responses to this step's prompts, up to the cap."""
    cfg, tok = run.cfg, run.tok
    problems = run.train_problems[step * cfg.prompts_per_step : (step + 1) * cfg.prompts_per_step]
    prompts = repeat_prompts([prompt_ids(tok, p) for p in problems], cfg.responses_per_prompt)[
        run.rows
    ]
    cap = response_cap(cfg, step, run.budget)
    if run.sampler is None:  # the global draw, this rank's rows
        draws = sample_uniforms(run.batch_size, cap, run.gen)[run.rows]
    else:
        draws = torch.randint(0, 2**31 - 1, (run.batch_size,), generator=run.gen)[run.rows].tolist()
    run.student.eval()
    t0 = time.perf_counter()
    pruner = None
    if cfg.online_pruning:
        pruner = OnlinePruner(
            run.teacher,
            prompts,
            k=cfg.topk,
            drift_k=cfg.monitor_k,
            pad_id=tok.pad_token_id,
            metric=cfg.drift_metric,
            tau=cfg.tau,
            w_drop=cfg.w_drop,
            floor=cfg.prune_floor,
            max_new_tokens=cap,
        )
    rollout = sample_responses(run, prompts, cap, draws, pruner)
    seconds = time.perf_counter() - t0 - (pruner.seconds if pruner else 0.0)
    return Batch(problems, prompts, cap, rollout, pruner, seconds)


def score_batch(run: Run, batch: Batch, tokens_BT, cand_BTK) -> TokenScores:
    """The scoring interface: the teacher's top-K, its log-probs at the student's candidates
    and at the sampled tokens, for every response token (already done chunkwise when the
    pruner ran during sampling)."""
    B, T = tokens_BT.shape
    if batch.pruner is not None:
        return batch.pruner.assemble(B, T)
    if run.scorer is not None:  # vLLM: the candidates' log-probs only when the loss needs them
        return run.scorer.score(
            batch.prompts,
            batch.rollout.responses,
            k=run.cfg.topk,
            candidate_ids_BTK=cand_BTK if run.cfg.loss == "topk_rkl" else None,
        )
    return score_responses(
        run.teacher,
        batch.prompts,
        batch.rollout.responses,
        k=run.cfg.topk,
        candidate_ids=cand_BTK,
        pad_id=run.tok.pad_token_id,
    )


@dataclass
class Weighed:
    """Phases 2-3's output: the teacher's scores and every token's weights (method.md)."""

    mask_BT: torch.Tensor  # valid response tokens
    tokens_BT: torch.Tensor
    cand_BTK: torch.Tensor | None  # the student's top-K ids at sampling time
    scores: TokenScores
    overlap_BT: torch.Tensor
    events_BT: torch.Tensor
    weights_BT: torch.Tensor  # w_t
    eff_len_all_B: torch.Tensor  # l_i of the global batch (what the budget sees)
    rewards: list[float]
    tail_BT: torch.Tensor | None  # hybrid: tokens after the reliability ran out
    adv_BT: torch.Tensor | None  # hybrid: the group-relative advantage
    mult_BT: torch.Tensor  # the loss multiplier of each token
    train_mask_BT: torch.Tensor
    seconds: float  # scoring and weighing, plus the pruner's incremental scoring


def score_and_weigh(run: Run, batch: Batch) -> Weighed:
    """2. The teacher scores every response token; 3. the drift monitor, the reliability
    weights and the method's multipliers (and, for hybrid, the outcome reward's tail)."""
    cfg, d, device = run.cfg, run.d, run.device
    t0 = time.perf_counter()
    r = batch.rollout
    mask_BT = r.response_mask_BT.to(device)
    B, T = mask_BT.shape
    tokens_BT = r.response_tokens_BT(run.tok.pad_token_id).to(device)
    cand_BTK = r.student_topk_ids_BTK()
    cand_BTK = cand_BTK.to(device) if cand_BTK is not None else None
    scores = score_batch(run, batch, tokens_BT, cand_BTK)
    dk = cfg.monitor_k  # both top-K lists are sorted: the top-k' set is a prefix
    overlap_BT, events_BT = monitor(
        cfg.drift_metric,
        cand_BTK[..., :dk],
        scores.topk_ids_BTK[..., :dk],
        scores.topk_logprobs_BTK[..., :dk],
        tokens_BT,
        mask_BT,
        cfg.tau,
    )
    weights_BT, multipliers_BT, eff_len_B = reliability_weights(
        events_BT, mask_BT, cfg.w_drop, cfg.w_base
    )
    eff_len_all_B = d.gather(eff_len_B)  # the budget sees the global batch
    texts = [decode_response(run.tok, x) for x in r.responses]
    first = run.rows.start  # global index of this rank's first sample
    rewards = [
        run.task.check(batch.problems[(first + i) // cfg.responses_per_prompt], t)
        for i, t in enumerate(texts)
    ]
    tail_BT = adv_BT = None
    if cfg.method == "hybrid":  # the outcome reward takes over where w_t <= gate_floor
        tail_BT = tail_mask(weights_BT, mask_BT, cfg.gate_floor)
        adv_B = group_advantages(
            torch.tensor(rewards, dtype=torch.float32), cfg.responses_per_prompt, cfg.gate_norm
        ).to(device)
        adv_BT = adv_B[:, None].expand(B, T)
    mult_BT, train_mask_BT = method_weights(cfg, weights_BT, multipliers_BT, mask_BT, tail_BT)
    seconds = time.perf_counter() - t0 + (batch.pruner.seconds if batch.pruner else 0.0)
    return Weighed(
        mask_BT,
        tokens_BT,
        cand_BTK,
        scores,
        overlap_BT,
        events_BT,
        weights_BT,
        eff_len_all_B,
        rewards,
        tail_BT,
        adv_BT,
        mult_BT,
        train_mask_BT,
        seconds,
    )


@dataclass
class Update:
    """Phase 4's output."""

    loss: torch.Tensor  # the global token mean (a scalar, summed over ranks)
    grad_norm: torch.Tensor
    finite: bool
    train_logprobs_BT: torch.Tensor  # the update's own log-prob of each sampled token
    seconds: float


def update_phase(run: Run, batch: Batch, w: Weighed) -> Update:
    """4. The update: the token mean of m_t * loss_t over the trained tokens, one AdamW step
    (skipped, with the gradients dropped, when the loss or gradients are not finite)."""
    cfg, d, ps, device = run.cfg, run.d, run.ps, run.device
    ps.train()
    t0 = time.perf_counter()
    if run.sampler is not None:
        run.sampler.sleep()  # a GPU engine frees the device for the update
    input_ids_BL = batch.rollout.to_padded(run.tok.pad_token_id)[0].to(device)
    prompt_lens_B = torch.tensor([len(p) for p in batch.prompts], device=device)
    s = w.scores
    hidden_NH = None if s.hidden_NH is None else s.hidden_NH[w.train_mask_BT[w.mask_BT]]
    loss_BT, lp_BT = token_losses(
        cfg.loss,
        ps.loss_module,
        run.teacher,
        input_ids_BL,
        prompt_lens_B,
        w.tokens_BT,
        w.train_mask_BT,
        candidate_ids_BTK=w.cand_BTK,
        teacher_candidate_logprobs_BTK=s.candidate_logprobs_BTK,
        teacher_token_logprobs_BT=s.token_logprobs_BT,
        teacher_hidden_NH=hidden_NH,
        jsd_beta=cfg.jsd_beta,
        chunk=cfg.loss_chunk,
        tail_BT=w.tail_BT,
        advantage_BT=w.adv_BT,
    )
    # the token mean over the global batch: this rank's share, times the world size
    # because DDP / FSDP average gradients over ranks
    n_mine = int(w.train_mask_BT.sum())
    n_all = d.sum([n_mine])[0]
    loss_mine = masked_token_mean(loss_BT, w.mult_BT, w.train_mask_BT) * (n_mine / max(n_all, 1))
    run.opt.zero_grad(set_to_none=True)
    (loss_mine * d.world).backward()
    loss = torch.tensor(d.sum([loss_mine.item()])[0])
    grad_norm = ps.clip_grad_norm(cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
    finite = bool(torch.isfinite(loss)) and bool(torch.isfinite(grad_norm))
    if finite:
        run.opt.step()
        run.sched.step()
        ps.after_update()
    elif cfg.on_nonfinite == "skip":
        run.opt.zero_grad(set_to_none=True)
    if run.sampler is not None:  # the next rollouts come from the new weights
        run.sampler.wake()
        run.sampler.push_weights(run.student)
    return Update(loss, grad_norm, finite, lp_BT, time.perf_counter() - t0)


def budget_phase(run: Run, step: int, w: Weighed) -> tuple[dict, int]:
    """5. The budget moves the cap for the next step (prune only; an adaptive prefix moves
    after the metrics, from the prefix's reverse KL). Returns (the update's record, or {};
    the next step's cap)."""
    if isinstance(run.budget, ResponseBudget):
        hit = run.budget.update(w.eff_len_all_B)
        return hit, hit["next_length"]
    return {}, response_cap(run.cfg, step + 1, run.budget)


def metrics_phase(
    run: Run, batch: Batch, w: Weighed, upd: Update, hit: dict, next_cap: int
) -> dict:
    """6. The step's metrics (method.md, "Metrics every run logs"), over the global batch; an
    adaptive prefix moves its cap here, from the prefix's reverse KL."""
    cfg, d, r = run.cfg, run.d, batch.rollout
    rollout_lp_BT = r.student_logprobs_BT().to(run.device)
    rkl_BT = rollout_lp_BT - w.scores.token_logprobs_BT
    sums = step_metrics.local_sums(
        w.overlap_BT,
        w.events_BT,
        w.weights_BT,
        w.mult_BT,
        w.mask_BT,
        w.train_mask_BT,
        rkl_BT,
        w.rewards,
        r.response_lengths.tolist(),
        r.stopped_by,
    )
    mis = logprob_mismatch_sums(rollout_lp_BT, upd.train_logprobs_BT, w.train_mask_BT)
    mis_sum, mis_n = d.sum([mis["sum"], mis["n"]])
    boundary = max(cfg.min_len, batch.cap - cfg.budget_margin)
    eff_B = w.eff_len_all_B.float()
    times = d.sum([batch.seconds, w.seconds, upd.seconds])  # logged: the mean over ranks
    m = {
        "loss": upd.loss.item(),
        **step_metrics.reduce_means(sums, d),
        "eff_len_mean": float(eff_B.mean()),
        "eff_len_median": float(eff_B.median()),
        "hit_ratio": hit.get("hit_ratio", float((eff_B >= boundary).float().mean())),
        "cap": batch.cap,
        "next_cap": next_cap,
        "logprob_mismatch": mis_sum / mis_n if mis_n else 0.0,
        "t_sample": times[0] / d.world,
        "t_teacher": times[1] / d.world,
        "t_update": times[2] / d.world,
        "lr": run.sched.get_last_lr()[0],
        "grad_norm": float(upd.grad_norm),
        "skipped": int(not upd.finite),
    }
    if isinstance(run.budget, AdaptivePrefix):
        m["next_cap"] = run.budget.update(m["rkl"])["next_length"]
    if w.tail_BT is not None:
        m["gate_rate"] = d.sum([float(w.tail_BT.sum())])[0] / max(1, m["tokens_generated"])
    return m


def logprob_mismatch_sums(rollout_logprobs_BT, train_logprobs_BT, train_mask_BT) -> dict:
    """Sum of |log p_rollout(y_t) - log p_train(y_t)| over the trained tokens, and their count:
    the sampler's log-prob of each token against the update's forward on the same token (the
    training / inference mismatch RL frameworks monitor; float rounding when both are one
    model's weights in fp32, larger if the sampler ran on stale weights)."""
    diff_BT = (rollout_logprobs_BT - train_logprobs_BT).abs()
    return {"sum": float(diff_BT[train_mask_BT].sum()), "n": float(train_mask_BT.sum())}
