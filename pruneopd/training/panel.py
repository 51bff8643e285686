"""Several teachers (config key `teachers`; README, "Several teachers"): who scores each
sample, how their scores become the one set of scores the loss takes, and the per-teacher
metrics.

- routing `field`: each prompt names its teacher (its `teacher_field`: a built-in problem's
  task, or a data row's field). A teacher scores only its own samples; its drift monitor and
  reliability weights judge them (the monitor runs row by row, so the weights of the routed
  scores are each teacher's own).
- routing `mixture`: every teacher scores every sample; the loss's log-probs are those of the
  mixture distribution sum_i a_i q_i (`mix_logprobs`), and a token's weight is the weighted
  mean sum_i a_i w_t^(i) of the teachers' own reliability weights (a sample stays supervised
  while any weighted teacher still finds it reliable).

The budget sees the combined effective lengths, as with one teacher.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from pruneopd.config import ConfigError, TrainConfig
from pruneopd.engines import choose as engines
from pruneopd.engines.interfaces import Teacher
from pruneopd.engines.scoring import IncrementalScorer, TokenScores
from pruneopd.method.weighing import DriftSettings, TokenWeights, weigh_tokens
from pruneopd.tasks import Problem
from pruneopd.teacher_entries import TeacherEntry, mixture_weights, teacher_entries

METRICS = ("overlap", "drift_rate", "reward", "eff_len", "tokens", "samples")


def entry_config(cfg: TrainConfig, e: TeacherEntry) -> TrainConfig:
    """`cfg` as a run with `e` as its one teacher (what the one-teacher checks and engines
    take)."""
    return replace(
        cfg,
        teachers=[],
        teacher_weights=[],
        teacher=e.model,
        teacher_engine=e.engine,
        teacher_url=e.teacher_url,
    )


def teacher_name(problem: Problem) -> str:
    """The teacher a problem names: a data row's routing field (`DataTask`'s `route`), else
    its task (built-in tasks, teacher_field=task)."""
    return problem.data.get("teacher", problem.task)


def check_routes(cfg: TrainConfig, problems: list[Problem]) -> None:
    """Field routing on a built-in task: it routes by `task`, and every task in it names a
    teacher (a data file's rows are checked as it is read, with file and line)."""
    if cfg.teacher_routing != "field" or cfg.data:
        return
    if cfg.teacher_field != "task":
        raise ConfigError(
            f"config key 'teacher_field' = {cfg.teacher_field!r}: built-in tasks route by "
            "'task' (each problem's task name); other fields need data=FILE"
        )
    names = [e.name for e in teacher_entries(cfg)]
    for p in problems:
        if p.task not in names:
            raise ConfigError(
                f"config key 'teachers': task {p.task!r} of task={cfg.task} names no teacher "
                f"(teachers: {', '.join(names)}); name a teacher {p.task!r}"
            )


@dataclass
class Judged:
    """The panel's scores and weights of one batch.

    scores: what the loss takes (routed rows, or the mixture's log-probs); tw: the token
    weights the method and the budget take; views: per teacher, its own monitor's weights
    and the samples it judges (rows_B, bool), for the per-teacher metrics.
    """

    scores: TokenScores
    tw: TokenWeights
    views: list[tuple[TokenWeights, torch.Tensor]]


def routed_scores(parts: list[tuple[list[int], TokenScores]], B: int, T: int) -> TokenScores:
    """One [B, T, ...] `TokenScores` from each teacher's scores of its own rows (zeros where a
    position is not valid, as every teacher's own scores are)."""

    def gather(name: str) -> torch.Tensor | None:
        got = [(rows, getattr(s, name)) for rows, s in parts]
        if any(x is None for _, x in got):
            return None
        x0 = got[0][1]
        out = torch.zeros((B, T, *x0.shape[2:]), dtype=x0.dtype, device=x0.device)
        for rows, x in got:
            out[rows, : x.shape[1]] = x
        return out

    return TokenScores(
        token_logprobs_BT=gather("token_logprobs_BT"),
        topk_ids_BTK=gather("topk_ids_BTK"),
        topk_logprobs_BTK=gather("topk_logprobs_BTK"),
        candidate_logprobs_BTK=gather("candidate_logprobs_BTK"),
    )


def mix_logprobs(
    logprobs: list[torch.Tensor], weights: list[float], mask_BT: torch.Tensor
) -> torch.Tensor:
    """log sum_i a_i exp(lp_i): the mixture distribution's log-probs ([B, T] or [B, T, K]
    each; zeros outside `mask_BT`). A weight of 0 drops its teacher exactly: weights (1, 0)
    give the first teacher's log-probs bit for bit."""
    log_a = torch.tensor(weights, dtype=logprobs[0].dtype).log()
    stacked = torch.stack(logprobs)
    mixed = torch.logsumexp(stacked + log_a.view(-1, *[1] * (stacked.dim() - 1)), dim=0)
    valid = mask_BT.bool().view(*mask_BT.shape, *[1] * (mixed.dim() - 2))
    return torch.where(valid, mixed, torch.zeros_like(mixed))


def mix_weights(tws: list[TokenWeights], weights: list[float]) -> TokenWeights:
    """The mixture's token weights: the weighted mean of the teachers' overlaps, weights and
    multipliers; an event where any weighted teacher sees one; the effective length the
    longest of the weighted teachers' (the combined weight is > 0 while any of theirs is)."""
    used = [(a, tw) for a, tw in zip(weights, tws, strict=True) if a > 0]

    def mean(name: str) -> torch.Tensor:
        out = torch.zeros_like(getattr(tws[0], name))
        for a, tw in used:
            out = out + a * getattr(tw, name)
        return out

    events_BT = torch.stack([tw.events_BT.bool() for _, tw in used]).any(0)
    eff_len_B = torch.stack([tw.eff_len_B for _, tw in used]).amax(0)
    return TokenWeights(
        mean("overlap_BT"), events_BT, mean("weights_BT"), mean("multipliers_BT"), eff_len_B
    )


class Panel:
    """The run's teachers behind one object: `judge` scores a batch and weighs its tokens
    (routing or mixture); `model` is None (the losses take the scores only)."""

    model = None

    def __init__(self, names: list[str], teachers: list[Teacher], routing: str, weights):
        self.names, self.teachers, self.routing = names, teachers, routing
        self.weights = list(weights)

    def owners(self, problems: list[Problem]) -> list[int]:
        """Index of each problem's teacher (field routing; mixture: every teacher, all 0)."""
        if self.routing == "mixture":
            return [0] * len(problems)
        return [self.names.index(teacher_name(p)) for p in problems]

    def judge(
        self,
        drift: DriftSettings,
        prompts: list[list[int]],
        responses: list[list[int]],
        owners: list[int],
        *,
        k: int,
        cand_BTK: torch.Tensor,
        tokens_BT: torch.Tensor,
        mask_BT: torch.Tensor,
    ) -> Judged:
        B, T = mask_BT.shape
        if self.routing == "mixture":
            every = [
                t.score(prompts, responses, k=k, candidate_ids_BTK=cand_BTK) for t in self.teachers
            ]
            tws = [
                weigh_tokens(
                    drift, cand_BTK, s.topk_ids_BTK, s.topk_logprobs_BTK, tokens_BT, mask_BT
                )
                for s in every
            ]
            heavy = every[max(range(len(every)), key=self.weights.__getitem__)]
            cands = [s.candidate_logprobs_BTK for s in every]
            scores = TokenScores(
                token_logprobs_BT=mix_logprobs(
                    [s.token_logprobs_BT for s in every], self.weights, mask_BT
                ),
                topk_ids_BTK=heavy.topk_ids_BTK,  # inspect shows the heaviest teacher's lists
                topk_logprobs_BTK=heavy.topk_logprobs_BTK,
                candidate_logprobs_BTK=None
                if any(c is None for c in cands)
                else mix_logprobs(cands, self.weights, mask_BT),
            )
            every_row = torch.ones(B, dtype=torch.bool)
            return Judged(scores, mix_weights(tws, self.weights), [(tw, every_row) for tw in tws])
        parts, views = [], []
        for i, teacher in enumerate(self.teachers):
            rows = [b for b in range(B) if owners[b] == i]
            if rows:
                s = teacher.score(
                    [prompts[b] for b in rows],
                    [responses[b] for b in rows],
                    k=k,
                    candidate_ids_BTK=cand_BTK[rows],
                )
                parts.append((rows, s))
            rows_B = torch.zeros(B, dtype=torch.bool)
            rows_B[rows] = True
            views.append(rows_B)
        scores = routed_scores(parts, B, T)
        tw = weigh_tokens(
            drift, cand_BTK, scores.topk_ids_BTK, scores.topk_logprobs_BTK, tokens_BT, mask_BT
        )
        return Judged(scores, tw, [(tw, rows_B) for rows_B in views])

    def score(self, prompts, responses, *, k: int, candidate_ids_BTK=None) -> TokenScores:
        raise NotImplementedError("several teachers score through Panel.judge (a sample's teacher)")

    def incremental(self, prompts, *, k: int, max_new_tokens: int) -> IncrementalScorer:
        raise NotImplementedError("online pruning scores chunks with one teacher")

    def metrics(self, judged: Judged, mask_BT: torch.Tensor, rewards: list[float], d) -> dict:
        """Per teacher, over the samples it judges in the global batch: `teacher/NAME/overlap`,
        `drift_rate` (token means), `reward`, `eff_len` (sample means), `tokens`, `samples`."""
        local = []
        for tw, rows_B in judged.views:
            valid_BT = mask_BT.bool() & rows_B.to(mask_BT.device)[:, None]
            local += [
                float(tw.overlap_BT[valid_BT].sum()),
                float(tw.events_BT[valid_BT].float().sum()),
                float(sum(r for r, mine in zip(rewards, rows_B.tolist(), strict=True) if mine)),
                float(tw.eff_len_B[rows_B.to(tw.eff_len_B.device)].sum()),
                float(valid_BT.sum()),
                float(rows_B.sum()),
            ]
        total = d.sum(local)
        out = {}
        for i, name in enumerate(self.names):
            overlap, events, reward, eff_len, tokens, samples = total[6 * i : 6 * i + 6]
            per_token = [x / tokens if tokens else 0.0 for x in (overlap, events)]
            per_sample = [x / samples if samples else 0.0 for x in (reward, eff_len)]
            values = (*per_token, *per_sample, int(tokens), int(samples))
            out.update({f"teacher/{name}/{k}": v for k, v in zip(METRICS, values, strict=True)})
        return out


def build_panel(cfg: TrainConfig, models: list, tok, **kw) -> Panel:
    """The `Panel` of `cfg.teachers` over their loaded models (`kw`: `engines.engine_settings`)."""
    entries = teacher_entries(cfg)
    teachers = [
        engines.build_teacher(entry_config(cfg, e), m, tok, **kw)
        for e, m in zip(entries, models, strict=True)
    ]
    return Panel([e.name for e in entries], teachers, cfg.teacher_routing, mixture_weights(cfg))


def add_totals(totals: dict, m: dict) -> None:
    """Accumulate a step's per-teacher metrics into the run's totals (kept in checkpoints)."""
    for key, v in m.items():
        if key.startswith("teacher/"):
            _, name, what = key.split("/", 2)
            n = m[
                f"teacher/{name}/tokens"
                if what in ("overlap", "drift_rate")
                else f"teacher/{name}/samples"
            ]
            weight = 1 if what in ("tokens", "samples") else n
            totals[key] = totals.get(key, 0.0) + v * weight


def summary_teachers(totals: dict) -> dict:
    """summary.json's `teachers`: per teacher, the run's tokens and samples and the token-
    (sample-) weighted means of its overlap and drift rate (reward and effective length)."""
    out: dict = {}
    for key, v in totals.items():
        if key.startswith("teacher/"):
            _, name, what = key.split("/", 2)
            out.setdefault(name, {})[what] = v
    for row in out.values():
        for what in ("overlap", "drift_rate", "reward", "eff_len"):
            n = row["tokens"] if what in ("overlap", "drift_rate") else row["samples"]
            row[what] = row[what] / n if n else None
        row["tokens"], row["samples"] = int(row["tokens"]), int(row["samples"])
    return out
