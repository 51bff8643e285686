"""Held-out evaluation: greedy accuracy, sampled avg@n, partial credit, length, cut rate."""

from __future__ import annotations

import hashlib
import json
import os
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from pruneopd.engines.interfaces import Teacher
from pruneopd.engines.local import LocalTeacher
from pruneopd.engines.rollout import sample
from pruneopd.method.drift import ran_out_B
from pruneopd.method.weighing import DriftSettings, weigh_tokens
from pruneopd.tasks import Problem, Task
from pruneopd.tokenizer import decode_response, prompt_ids, stop_ids


def reference_cap(task: Task, tok, problems: list[Problem], slack: float = 1.5) -> int | None:
    """A generation cap no reference trace of any style comes near (longest x slack);
    None for tasks without reference traces (data files)."""
    if not task.styles:
        return None
    longest = max(
        len(tok(task.render(p, s), add_special_tokens=False)["input_ids"])
        for p in problems
        for s in task.styles
    )
    return int(longest * slack) + 8


@dataclass(frozen=True)
class DriftCheck:
    """What `evaluate` needs to tell which greedy responses drift: the teacher (a `Teacher`,
    or a model in this process), the top-K its scores keep and the run's monitor settings
    (docs/method.md). A response drifted when its reliability weight reached 0."""

    teacher: Teacher | torch.nn.Module
    k: int  # top-K the student's and the teacher's lists keep
    drift: DriftSettings

    def settings(self) -> dict:
        """Everything but the teacher (its weights are the pair's), for `eval_key`."""
        d = self.drift
        return {
            "k": self.k,
            "drift_k": d.k,
            "metric": d.metric,
            "tau": d.tau,
            "w_drop": d.w_drop,
            "w_base": d.w_base,
        }


def drifted_responses(drift: DriftCheck, prompts, rollout, pad_id: int) -> list[bool]:
    """Per response: did its reliability weight reach 0 (the monitor over the teacher's
    scores of it)?"""
    mask_BT = rollout.response_mask_BT
    if mask_BT.shape[1] == 0:
        return [False] * len(prompts)
    tokens_BT = rollout.response_tokens_BT(pad_id)
    cand_BTK = rollout.student_topk_ids_BTK()
    teacher = drift.teacher
    if isinstance(teacher, torch.nn.Module):
        teacher = LocalTeacher(teacher, pad_id)
    s = teacher.score(prompts, rollout.responses, k=drift.k)
    tw = weigh_tokens(
        drift.drift, cand_BTK, s.topk_ids_BTK, s.topk_logprobs_BTK, tokens_BT, mask_BT
    )
    return ran_out_B(tw.weights_BT, mask_BT).tolist()


@torch.inference_mode()
def evaluate(
    model,
    tok,
    task: Task,
    problems: list[Problem],
    *,
    samples: int = 0,
    max_new_tokens: int | None = None,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = False,
    drift: DriftCheck | None = None,
    keep: int = 0,
) -> dict:
    """Score `model` on `problems`.

    Returns a dict with `accuracy` (greedy), `partial_credit` (share of leading steps
    right, greedy), `mean_length` (response tokens), `cut_rate` (share of greedy responses
    stopped by the cap), and, when `samples > 0`, `avg_at_n` (mean accuracy of `samples`
    temperature-1 samples per problem). With `drift`, also `drifted_rate` (share of greedy
    responses whose reliability ran out under the teacher's scores), `n_drifted`, and the
    accuracy on those problems and on the rest (`accuracy_drifted`, `accuracy_reliable`, None
    when there are none). With `keep > 0`, `responses`: the greedy responses to the first
    `keep` problems (index, prompt text with special tokens, response text, correct).
    `batch_size` problems are sampled together (greedy; `rollout.sample` picks the engine
    and its groups for the batch, see `fused.plan_sampling`).
    """
    was_training = model.training
    model.eval()
    cap = max_new_tokens or reference_cap(task, tok, problems) or 512
    prompts = [prompt_ids(tok, p) for p in problems]
    stops = stop_ids(tok)  # EOS and the chat template's end-of-turn token
    gen = torch.Generator().manual_seed(seed)
    correct, credit, lengths, cut, sampled_ok, drifted = [], [], [], [], [], []
    kept = []
    bar = tqdm(total=len(problems), desc=f"eval {task.name}", disable=not progress, leave=False)
    for i in range(0, len(problems), batch_size):
        chunk_p, chunk_ids = problems[i : i + batch_size], prompts[i : i + batch_size]
        r = sample(
            model,
            chunk_ids,
            max_new_tokens=cap,
            eos_id=stops,
            pad_id=tok.pad_token_id,
            temperature=0.0,
            topk=drift.k if drift else 0,
        )
        if drift is not None:
            drifted += drifted_responses(drift, chunk_ids, r, tok.pad_token_id)
        for p, resp, why in zip(chunk_p, r.responses, r.stopped_by, strict=True):
            text = decode_response(tok, resp)
            correct.append(task.check(p, text))
            if len(kept) < keep:
                kept.append(
                    {
                        "index": len(kept),
                        "prompt": tok.decode(prompts[len(kept)], skip_special_tokens=False),
                        "response": text,
                        "correct": bool(correct[-1]),
                        "stopped_by": why,
                    }
                )
            credit.append(task.partial_credit(p, text))
            lengths.append(len(resp))
            cut.append(why == "cap")
        if samples > 0:
            rep = [ids for ids in chunk_ids for _ in range(samples)]
            rs = sample(
                model,
                rep,
                max_new_tokens=cap,
                eos_id=stops,
                pad_id=tok.pad_token_id,
                temperature=1.0,
                generator=gen,
            )
            for j, resp in enumerate(rs.responses):
                sampled_ok.append(task.check(chunk_p[j // samples], decode_response(tok, resp)))
        bar.update(len(chunk_p))
    bar.close()
    model.train(was_training)
    out = {
        "task": getattr(task, "eval_name", task.name),
        "n": len(problems),
        "accuracy": sum(correct) / len(correct),
        "partial_credit": sum(credit) / len(credit),
        "mean_length": statistics.fmean(lengths),
        "cut_rate": sum(cut) / len(cut),
        "max_new_tokens": cap,
    }
    if keep > 0:
        out["responses"] = kept
    if samples > 0:
        out["avg_at_n"] = sum(sampled_ok) / len(sampled_ok)
        out["samples"] = samples
    if drift is not None:
        out.update(_split_by_drift(correct, drifted))
    return out


def _split_by_drift(correct: list[bool], drifted: list[bool]) -> dict:
    n_d = sum(drifted)
    ok_d = sum(c for c, d in zip(correct, drifted, strict=True) if d)
    ok_r = sum(correct) - ok_d
    n_r = len(correct) - n_d
    return {
        "n_drifted": n_d,
        "drifted_rate": n_d / len(correct),
        "accuracy_drifted": ok_d / n_d if n_d else None,
        "accuracy_reliable": ok_r / n_r if n_r else None,
    }


def combine(results: list[dict]) -> dict:
    """One result from `evaluate` results on disjoint shards of the problems (means weighted by
    each shard's `n`; empty shards, given as None, are skipped)."""
    parts = [r for r in results if r is not None]
    n = sum(r["n"] for r in parts)
    out = {**parts[0], "n": n}
    for key in ("accuracy", "partial_credit", "mean_length", "cut_rate", "avg_at_n"):
        if key in out:
            out[key] = sum(r[key] * r["n"] for r in parts) / n
    if "n_drifted" in out:  # the split by drift, re-counted over the shards
        n_d = sum(r["n_drifted"] for r in parts)
        ok_d = sum((r["accuracy_drifted"] or 0) * r["n_drifted"] for r in parts)
        ok_r = sum((r["accuracy_reliable"] or 0) * (r["n"] - r["n_drifted"]) for r in parts)
        out.update(
            {
                "n_drifted": n_d,
                "drifted_rate": n_d / n,
                "accuracy_drifted": ok_d / n_d if n_d else None,
                "accuracy_reliable": ok_r / (n - n_d) if n - n_d else None,
            }
        )
    return out


def eval_key(model, tok, task: Task, problems: list[Problem], **settings) -> str:
    """A hash of everything `evaluate` depends on: the model's weights (every tensor's name,
    dtype, shape and bytes), the tokenizer's vocabulary, the task, the problems' prompts and
    answers and steps, and the keyword settings (cap, samples, seed)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    h.update(json.dumps(sorted(tok.get_vocab().items())).encode())
    h.update(task.name.encode())
    for p in problems:
        h.update(json.dumps([p.prompt, p.answer, list(p.steps), p.data], default=str).encode())
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()


def cached(folder: str | Path, key: str, compute) -> tuple[dict, bool]:
    """`compute()`'s result kept in `folder/<key>.json`: (result, True) when it was there
    already, else computed, written atomically and returned with False."""
    path = Path(folder) / f"{key}.json"
    if path.exists():
        return json.loads(path.read_text()), True
    res = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(res))
    tmp.replace(path)
    return res, False
