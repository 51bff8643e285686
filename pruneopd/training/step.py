"""One OPD step, phase by phase (docs/method.md): the student samples, the teacher scores,
the drift monitor and the method weigh every token, the student updates, the method learns
from the step (the budget moves the cap).

`train.train` builds a `Run` (`setup.setup_run`) and calls these in order once per step; each
phase takes what the ones before it produced and returns a small record, so the loop reads as
the method. The phases reach the engines only through `run.sampler` (a `Sampler`) and
`run.teacher` (a `Teacher`), and the method only through `run.method` (a `Method`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from pruneopd.config import TrainConfig
from pruneopd.engines.faults import EngineFailure
from pruneopd.engines.interfaces import Sampler, Teacher
from pruneopd.engines.online import OnlinePruner
from pruneopd.engines.rollout import Rollout, repeat_prompts
from pruneopd.engines.scoring import TokenScores
from pruneopd.method import Method, MethodWeights
from pruneopd.method.losses import masked_token_mean
from pruneopd.method.weighing import DriftSettings, TokenWeights, weigh_tokens
from pruneopd.tasks import Problem, Task
from pruneopd.tokenizer import decode_response, prompt_ids
from pruneopd.training import step_metrics
from pruneopd.training.distributed import Dist, ParallelStudent
from pruneopd.training.objective import loss_chunk_for, token_losses
from pruneopd.training.panel import Judged, Panel


@dataclass
class Run:
    """What every step of one run shares (built by `setup.setup_run`)."""

    cfg: TrainConfig
    d: Dist
    ps: ParallelStudent
    student: torch.nn.Module  # full weights on every rank: evaluation, saving
    sampler: Sampler
    teacher: Teacher
    method: Method
    drift: DriftSettings
    tok: object  # a transformers tokenizer
    task: Task
    train_problems: list[Problem]
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    gen: torch.Generator
    rows: slice  # this rank's samples of each step's global batch
    batch_size: int  # the global batch: prompts_per_step x responses_per_prompt
    device: torch.device
    panel: Panel | None = None  # several teachers (then also `teacher`): routed or mixed


def on_every_rank(d: Dist, call):
    """`call()` (an engine's sampling or scoring); when an engine fails (`EngineFailure`) on any
    rank, every rank raises it, so that none waits in a collective for a rank that stopped and
    every rank saves the same checkpoint. One process: just `call()`."""
    if d.world == 1:
        return call()
    failure, out = None, None
    try:
        out = call()
    except EngineFailure as e:
        failure = e
    if d.any(failure is not None):
        mine = None if failure is None else (type(failure), str(failure))
        kind, message = next(f for f in d.gather_objects(mine) if f is not None)
        raise failure or kind(f"another process stopped: {message}")
    return out


@dataclass
class Batch:
    """Phase 1's output: this rank's prompts and the student's responses to them."""

    problems: list
    prompts: list[list[int]]
    cap: int
    rollout: Rollout
    pruner: OnlinePruner | None
    seconds: float  # sampling only (the pruner's incremental scoring is the teacher's)


def sample_phase(run: Run, step: int) -> Batch:
    """1. The student samples its own responses to this step's prompts, up to the cap."""
    cfg = run.cfg
    n = cfg.prompts_per_step
    problems = run.train_problems[step * n : (step + 1) * n]
    prompts = repeat_prompts([prompt_ids(run.tok, p) for p in problems], cfg.responses_per_prompt)
    prompts = prompts[run.rows]
    cap = run.method.cap(step)
    draws = run.sampler.draws(run.batch_size, cap, run.gen)[run.rows]  # the global draw, my rows
    run.student.eval()
    t0 = time.perf_counter()
    pruner = None
    if run.method.online:  # the teacher scores every chunk; drifted samples stop early
        scorer = run.teacher.incremental(prompts, k=cfg.topk, max_new_tokens=cap)
        pruner = OnlinePruner(scorer, run.drift, cfg.prune_floor)
    rollout = on_every_rank(run.d, lambda: run.sampler.sample(prompts, cap, draws, on_chunk=pruner))
    seconds = time.perf_counter() - t0 - (pruner.seconds if pruner else 0.0)
    return Batch(problems, prompts, cap, rollout, pruner, seconds)


@dataclass
class Weighed:
    """Phases 2-3's output: the teacher's scores and every token's weights (method.md)."""

    mask_BT: torch.Tensor  # valid response tokens
    tokens_BT: torch.Tensor
    cand_BTK: torch.Tensor  # the student's top-K ids at sampling time
    scores: TokenScores
    tw: TokenWeights  # the monitor's o_t, e_t, w_t, m_t, l_i
    mw: MethodWeights  # the method's multiplier and train mask (and the hybrid tail)
    eff_len_all_B: torch.Tensor  # l_i of the global batch (what the budget sees)
    rewards: list[float]
    seconds: float  # scoring and weighing, plus the pruner's incremental scoring
    judged: Judged | None = None  # several teachers: each one's view, for its metrics


def score_and_weigh(run: Run, batch: Batch) -> Weighed:
    """2. The teacher scores every response token (already done chunk by chunk when the pruner
    ran during sampling); 3. the drift monitor's weights and the method's multipliers."""
    cfg, device = run.cfg, run.device
    t0 = time.perf_counter()
    r = batch.rollout
    mask_BT = r.response_mask_BT.to(device)
    B, T = mask_BT.shape
    tokens_BT = r.response_tokens_BT(run.tok.pad_token_id).to(device)
    cand_BTK = r.student_topk_ids_BTK().to(device)
    first = run.rows.start  # global index of this rank's first sample
    per = cfg.responses_per_prompt
    mine = [batch.problems[(first + i) // per] for i in range(B)]  # each sample's problem
    judged = None
    if batch.pruner is not None:
        scores = batch.pruner.assemble(B, T)
    elif run.panel is not None:  # each sample scored and judged by its teacher(s)
        owners = run.panel.owners(mine)
        judged = on_every_rank(
            run.d,
            lambda: run.panel.judge(
                run.drift,
                batch.prompts,
                r.responses,
                owners,
                k=cfg.topk,
                cand_BTK=cand_BTK,
                tokens_BT=tokens_BT,
                mask_BT=mask_BT,
            ),
        )
        scores = judged.scores
    else:
        scores = on_every_rank(
            run.d,
            lambda: run.teacher.score(
                batch.prompts, r.responses, k=cfg.topk, candidate_ids_BTK=cand_BTK
            ),
        )
    if judged is not None:
        tw = judged.tw
    else:
        tw = weigh_tokens(
            run.drift, cand_BTK, scores.topk_ids_BTK, scores.topk_logprobs_BTK, tokens_BT, mask_BT
        )
    eff_len_all_B = run.d.gather(tw.eff_len_B)  # the budget sees the global batch
    texts = [decode_response(run.tok, x) for x in r.responses]
    rewards = [run.task.check(p, t) for p, t in zip(mine, texts, strict=True)]
    logratio_BT = scores.token_logprobs_BT - r.student_logprobs_BT().to(device)  # a_t
    mw = run.method.weigh(tw, mask_BT, rewards, logratio_BT)
    seconds = time.perf_counter() - t0 + (batch.pruner.seconds if batch.pruner else 0.0)
    return Weighed(
        mask_BT, tokens_BT, cand_BTK, scores, tw, mw, eff_len_all_B, rewards, seconds, judged
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
    mw = w.mw
    ps.train()
    t0 = time.perf_counter()
    run.sampler.before_update()
    input_ids_BL = batch.rollout.to_padded(run.tok.pad_token_id)[0].to(device)
    prompt_lens_B = torch.tensor([len(p) for p in batch.prompts], device=device)
    s = w.scores
    hidden_NH = None if s.hidden_NH is None else s.hidden_NH[mw.train_mask_BT[w.mask_BT]]
    loss_BT, lp_BT = token_losses(
        cfg.loss,
        ps.loss_module,
        run.teacher.model,
        input_ids_BL,
        prompt_lens_B,
        w.tokens_BT,
        mw.train_mask_BT,
        candidate_ids_BTK=w.cand_BTK,
        teacher_candidate_logprobs_BTK=s.candidate_logprobs_BTK,
        teacher_token_logprobs_BT=s.token_logprobs_BT,
        teacher_hidden_NH=hidden_NH,
        jsd_beta=cfg.jsd_beta,
        chunk=cfg.loss_chunk or loss_chunk_for(run.student.config.vocab_size),
        tail_BT=mw.tail_BT,
        advantage_BT=mw.adv_BT,
    )
    # the token mean over the global batch: this rank's share, times the world size
    # because DDP / FSDP average gradients over ranks
    n_mine = int(mw.train_mask_BT.sum())
    n_all = d.sum([n_mine])[0]
    loss_mine = masked_token_mean(loss_BT, mw.mult_BT, mw.train_mask_BT) * (n_mine / max(n_all, 1))
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
    run.sampler.push_weights(run.student)  # the next rollouts come from the new weights
    return Update(loss, grad_norm, finite, lp_BT, time.perf_counter() - t0)


def metrics_phase(run: Run, step: int, batch: Batch, w: Weighed, upd: Update) -> dict:
    """5. The step's metrics (method.md, "Metrics every run logs") over the global batch, and
    what the method learns from them: its cap for the next step (`next_cap`; the budget's
    `hit_ratio` for Prune-OPD)."""
    cfg, d, r, tw, mw = run.cfg, run.d, batch.rollout, w.tw, w.mw
    rollout_lp_BT = r.student_logprobs_BT().to(run.device)
    rkl_BT = rollout_lp_BT - w.scores.token_logprobs_BT
    sums = step_metrics.local_sums(
        tw.overlap_BT,
        tw.events_BT,
        tw.weights_BT,
        mw.mult_BT,
        w.mask_BT,
        mw.train_mask_BT,
        rkl_BT,
        w.rewards,
        r.response_lengths.tolist(),
        r.stopped_by,
    )
    mis = logprob_mismatch_sums(rollout_lp_BT, upd.train_logprobs_BT, mw.train_mask_BT)
    mis_sum, mis_n = d.sum([mis["sum"], mis["n"]])
    boundary = max(cfg.min_len, batch.cap - cfg.budget_margin)
    eff_B = w.eff_len_all_B.float()
    times = d.sum([batch.seconds, w.seconds, upd.seconds])  # logged: the mean over ranks
    m = {
        "loss": upd.loss.item(),
        **step_metrics.reduce_means(sums, d),
        "eff_len_mean": float(eff_B.mean()),
        "eff_len_median": float(eff_B.median()),
        "hit_ratio": float((eff_B >= boundary).float().mean()),
        "cap": batch.cap,
        "logprob_mismatch": mis_sum / mis_n if mis_n else 0.0,
        "t_sample": times[0] / d.world,
        "t_teacher": times[1] / d.world,
        "t_update": times[2] / d.world,
        "lr": run.sched.get_last_lr()[0],
        "grad_norm": float(upd.grad_norm),
        "skipped": int(not upd.finite),
    }
    if mw.tail_BT is not None:
        m["gate_rate"] = d.sum([float(mw.tail_BT.sum())])[0] / max(1, m["tokens_generated"])
    if w.judged is not None:  # per teacher: overlap, drift rate, reward, tokens
        m.update(run.panel.metrics(w.judged, w.mask_BT, w.rewards, d))
    if mw.audit:  # what the method learns from, over the global batch
        m.update(zip(mw.audit, d.sum(list(mw.audit.values())), strict=True))
    m.update(run.method.learn(step, w.eff_len_all_B, m))  # next_cap (and prune's hit_ratio)
    return m


def logprob_mismatch_sums(rollout_logprobs_BT, train_logprobs_BT, train_mask_BT) -> dict:
    """Sum of |log p_rollout(y_t) - log p_train(y_t)| over the trained tokens, and their count:
    the sampler's log-prob of each token against the update's forward on the same token (the
    training / inference mismatch RL frameworks monitor; float rounding when both are one
    model's weights in fp32, larger if the sampler ran on stale weights)."""
    diff_BT = (rollout_logprobs_BT - train_logprobs_BT).abs()
    return {"sum": float(diff_BT[train_mask_BT].sum()), "n": float(train_mask_BT.sum())}
