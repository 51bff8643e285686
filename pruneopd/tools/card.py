"""`pruneopd card`: measure any teacher/student pair and recommend its monitor and budget.

The zoo presets were chosen from the card of two pairs (`testbed.choose_monitor`: the same
pair's cap must grow, the cross pair's sink). A user has one pair, but a verifiable task: the
card samples one temperature-1 response per held-out problem from the student, scores it with
the teacher, checks it, and asks of every monitor setting (K, tau, w_drop of
`testbed.monitor_sweep`) the question the monitor is for: does a sample's reliability run out
when the sample goes wrong, and stay when it does not? The recommended setting is the one whose
running out best separates the wrong samples from the right ones (`separation_sweep`,
`choose_by_separation`); the budget follows from the lengths and the reliable lengths under it
(`recommend_budget`). Everything is written to OUT (card.json, card.yaml to pass as --config,
the two curve plots).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from pruneopd.method.drift import (
    reliability_weights,
    teacher_top_p_accept_events,
    topk_overlap_from_ids,
)
from pruneopd.tools.testbed import (
    SWEEP_KS,
    SWEEP_TAUS,
    SWEEP_W_DROPS,
    PairSamples,
    sweep_settings,
)

STEP = 32  # budgets are rounded to the default budget_step
DEPARTURE_P = 0.9  # the teacher's nucleus a sampled token must fall in to count as its own


def separation_sweep(
    s_BTK: torch.Tensor,
    t_BTK: torch.Tensor,
    mask_BT: torch.Tensor,
    correct_B: torch.Tensor,
    ks=SWEEP_KS,
    taus=SWEEP_TAUS,
    w_drops=SWEEP_W_DROPS,
) -> list[dict]:
    """For every monitor setting: the share of wrong samples whose reliability runs out before
    their end (`caught`), the share of right ones that do (`false_alarm`), their difference
    (`separation`, Youden's J: 1 = runs out exactly on the wrong samples, 0 = no better than
    chance), the event rate and the median / 10th-percentile reliable length."""
    wrong_B, right_B = ~correct_B, correct_B
    len_B = mask_BT.sum(-1)
    rows = []
    for k, tau, w, rate, eff_B in sweep_settings(s_BTK, t_BTK, mask_BT, ks, taus, w_drops):
        out_B = eff_B < len_B
        caught = float(out_B[wrong_B].double().mean()) if wrong_B.any() else 0.0
        alarm = float(out_B[right_B].double().mean()) if right_B.any() else 0.0
        q = torch.quantile(eff_B.double(), torch.tensor([0.1, 0.5], dtype=torch.float64))
        rows.append(
            {
                "k": k,
                "tau": tau,
                "w_drop": w,
                "event_rate": round(rate, 5),
                "caught": round(caught, 4),
                "false_alarm": round(alarm, 4),
                "separation": round(caught - alarm, 4),
                "eff_len_p10": float(q[0]),
                "eff_len_median": float(q[1]),
            }
        )
    return rows


def choose_by_separation(rows: list[dict], n_right: int, n_wrong: int) -> dict:
    """The setting to recommend, and why (`reason`).

    With right and wrong samples: the largest separation; ties go to the fewer false alarms,
    then the larger K, the smaller w_drop, the smaller tau. A best separation <= 0 means no
    setting runs out on wrong samples more than on right ones: then the least sensitive one
    (the fewest false alarms, i.e. Prune-OPD close to full OPD). With only right or only wrong
    samples correctness cannot calibrate the monitor: the setting whose 10th-percentile
    reliable length is longest among those with any events (the monitor that prunes least
    while still measuring), and the reason says so."""
    tie = lambda r: (r["false_alarm"], -r["k"], r["w_drop"], r["tau"])  # noqa: E731
    if n_right and n_wrong:
        best = min(rows, key=lambda r: (-r["separation"], *tie(r)))
        if best["separation"] > 0:
            reason = (
                f"runs out in {best['caught']:.0%} of the {n_wrong} wrong samples and "
                f"{best['false_alarm']:.0%} of the {n_right} right ones (best of {len(rows)})"
            )
            return {**best, "reason": reason}
        best = min(rows, key=lambda r: (*tie(r)[:1], -r["eff_len_p10"], *tie(r)[1:]))
        reason = "no setting runs out on wrong samples more than on right ones: the least sensitive"
        return {**best, "reason": reason}
    some = [r for r in rows if r["event_rate"] > 0] or rows
    best = min(some, key=lambda r: (-r["eff_len_p10"], *tie(r)[1:]))
    which = "right" if n_right else "wrong"
    reason = (
        f"every sample is {which}: correctness cannot calibrate the monitor; the setting that "
        "keeps the most reliable length while still measuring"
    )
    return {**best, "reason": reason}


def _round_up(x: float, step: int = STEP) -> int:
    return int(-(-x // step) * step)


def recommend_budget(lengths: list[int], cut_rate: float, eff_lengths: list[int], max_len: int):
    """L_max, L_init, L_min from the sampled lengths and the reliable lengths under the chosen
    monitor: L_max covers 1.25x the 95th-percentile length (at most the cap the card sampled
    with, which a cut rate over 5% says to raise), L_init the median reliable length, L_min
    its 10th percentile, each rounded to 32 tokens and L_min <= L_init <= L_max."""
    q = lambda xs, p: float(torch.quantile(torch.tensor(xs, dtype=torch.float64), p))  # noqa: E731
    l_max = min(max_len, max(2 * STEP, _round_up(1.25 * q(lengths, 0.95))))
    if cut_rate > 0.05:
        l_max = max_len
    l_min = max(STEP, int(q(eff_lengths, 0.1) // STEP) * STEP)
    l_min = min(l_min, l_max)
    l_init = min(l_max, max(l_min, _round_up(q(eff_lengths, 0.5))))
    return {"max_len": l_max, "init_len": l_init, "min_len": l_min}


def recommend(ps: PairSamples, max_len: int) -> dict:
    """The monitor (`drift_k`, `tau`, `w_drop`) and budget a pair's samples call for."""
    correct_B = torch.tensor(ps.correct, dtype=torch.bool)
    rows = separation_sweep(ps.s_BTK, ps.t_BTK, ps.mask_BT, correct_B)
    n_right = int(correct_B.sum())
    pick = choose_by_separation(rows, n_right, len(ps.correct) - n_right)
    overlap_BT = topk_overlap_from_ids(ps.s_BTK[..., : pick["k"]], ps.t_BTK[..., : pick["k"]])
    events_BT = (overlap_BT < pick["tau"]) & ps.mask_BT
    _, _, eff_B = reliability_weights(events_BT, ps.mask_BT, pick["w_drop"], 0.0)
    budget = recommend_budget(ps.lengths, sum(ps.cut) / len(ps.cut), eff_B.tolist(), max_len)
    keys = {"drift_k": pick["k"], "tau": pick["tau"], "w_drop": pick["w_drop"], **budget}
    return {"keys": keys, "monitor": pick, "sweep": rows}


def first_departure(
    tokens_BT: torch.Tensor,
    teacher_ids_BTK: torch.Tensor,
    teacher_logprobs_BTK: torch.Tensor,
    mask_BT: torch.Tensor,
    top_p: float = DEPARTURE_P,
) -> dict:
    """Where each sample first leaves what the teacher would write: the first token outside
    the teacher's top-p nucleus (within its top-K, `drift.teacher_top_p_accept_events`).
    Past it the teacher scores a prefix it would not have written, so its per-token signal
    there is guidance from off its own track (docs/benchmarks.md 12).

    Returns {"positions": [first departure per sample, its length when it never leaves],
    "median": median of them, "never": share of samples that never leave, "share_after":
    share of all response tokens after a departure (the departing token itself excluded)}.
    Example: lengths 4 and 3, departures at 1 and never -> positions [1, 3], share_after 2/7.
    """
    events_BT = teacher_top_p_accept_events(
        tokens_BT, teacher_ids_BTK, teacher_logprobs_BTK, mask_BT, top_p
    )
    lengths_B = mask_BT.sum(dim=-1)
    left_B = events_BT.any(dim=-1)
    first_B = torch.where(left_B, events_BT.float().argmax(dim=-1), lengths_B)
    after = (lengths_B - first_B - 1).clamp(min=0)[left_B].sum()
    total = max(1, int(lengths_B.sum()))
    return {
        "top_p": top_p,
        "positions": first_B.tolist(),
        "median": float(first_B.float().median()) if len(first_B) else 0.0,
        "never": float((~left_B).float().mean()) if len(first_B) else 1.0,
        "share_after": float(after) / total,
    }


def auto_horizon(ps: PairSamples, cfg) -> int:
    """Where method `auto` would put this pair's horizon from these samples (its rule,
    `method.auto.reliability_horizon`, over the card's top-1 agreement by position with the
    config's auto_bucket, auto_drop, min_len and max_len): max_len when the agreement holds."""
    from pruneopd.method.auto import configured_horizon, measured_agreement

    agree_BT = (ps.s_BTK[..., 0] == ps.t_BTK[..., 0]) & ps.mask_BT
    agrees, counts = measured_agreement(agree_BT, ps.mask_BT, cfg)
    return configured_horizon(agrees, counts, cfg)


def run_card(overrides: list[str], config, n: int, out: str, log=print, origin: str = "") -> dict:
    """`pruneopd card`: load the pair and the held-out problems as `pruneopd train` would,
    sample, score, recommend, write OUT/card.json, OUT/card.yaml and the plots."""
    from pruneopd.config import load_config
    from pruneopd.models import note_busy_cores
    from pruneopd.tools.testbed import card_of, plot_curves, sample_pair
    from pruneopd.training.objective import loss_chunk_for
    from pruneopd.training.pair import load_pair, load_task, load_tokenizers, train_device

    cfg = load_config(config, overrides)
    tok = load_tokenizers(cfg)
    task = load_task(cfg, tok)
    difficulty = cfg.difficulty or task.default_difficulty
    problems = task.problems("test", n, seed=0, difficulty=difficulty)
    if not problems:
        raise ValueError("no held-out problems: pass eval_data=FILE or a larger data file")
    student, teacher = load_pair(cfg, tok, train_device(cfg))
    for line in ([origin] if origin else []) + ([tok.padding_note] if tok.padding_note else []):
        log(line)
    note_busy_cores()
    kmax = max(cfg.monitor_k, *SWEEP_KS)
    log(f"sampling {len(problems)} held-out problems from the student (T=1, cap {cfg.max_len})")
    ps = sample_pair(
        student, teacher, tok, task, problems, k=kmax, max_new_tokens=cfg.max_len, seed=cfg.seed
    )
    card = card_of(ps, k=cfg.monitor_k, tau=cfg.tau, w_drop=cfg.w_drop)
    card["departure"] = first_departure(ps.tokens_BT, ps.t_BTK, ps.t_logprobs_BTK, ps.mask_BT)
    rec = recommend(ps, cfg.max_len)
    rec["keys"]["loss_chunk"] = loss_chunk_for(student.config.vocab_size)
    horizon = auto_horizon(ps, cfg)
    rec["auto_horizon"] = horizon if horizon < cfg.max_len else None  # None: no decay
    rec["auto_curriculum"] = cfg.auto_curriculum  # what auto trains where there is none
    outp = Path(out)
    outp.mkdir(parents=True, exist_ok=True)
    plot_curves({"pair": card}, outp / "top1_by_position.png", "top1_curve", "top-1 agreement")
    plot_curves({"pair": card}, outp / "overlap_by_position.png", "overlap_curve", "overlap")
    pair = {"student": cfg.student, "teacher": cfg.teacher}
    pair.update({"data": cfg.data} if cfg.data else {"task": cfg.task})
    result = {**pair, "problems": len(problems), "card": card, "recommended": rec}
    (outp / "card.json").write_text(json.dumps(result, indent=1))
    (outp / "card.yaml").write_text(
        "# written by `pruneopd card`: the pair and the monitor and budget its card recommends\n"
        + yaml.safe_dump({**pair, "method": "prune", **rec["keys"]}, sort_keys=False)
    )
    return result


def _auto_line(horizon: int | None, curriculum: bool = True) -> str:
    if horizon is None:
        return "method auto: the top-1 agreement holds along the responses (no horizon): " + (
            "an adaptive prefix from min_len up to max_len" if curriculum else "full OPD"
        )
    return (
        f"method auto: the top-1 agreement decays from token {horizon}: an adaptive prefix up "
        "to there, and past it while full-length audits find signal in the tail (docs/method.md, "
        "'Measured horizon (auto)')"
    )


def _departure_lines(d: dict | None) -> list[str]:
    if not d:
        return []
    return [
        f"the student leaves the teacher's top-{d['top_p']:g} nucleus first at token "
        f"{d['median']:.0f} (median; {d['never']:.0%} of samples never): "
        f"{d['share_after']:.0%} of response tokens are scored on a prefix the teacher would "
        "not have written"
    ]


def summary_lines(result: dict, out: str) -> list[str]:
    """What `pruneopd card` prints."""
    c, rec = result["card"], result["recommended"]
    m = rec["monitor"]
    rel = c["reliability"]
    where = f" (median at token {rel['median_position']:.0f})" if rel["median_position"] else ""
    return [
        f"{result['problems']} held-out problems: sampled accuracy {c['accuracy_sampled']:.3f}, "
        f"median length {c['lengths']['median']:.0f}, cut by the cap {c['cut_rate']:.0%}",
        f"top-1 agreement {c['top1_agreement']:.3f}, top-{c['k']} overlap {c['overlap_mean']:.3f}; "
        f"the config's monitor (K={c['k']}, tau {c['tau']}, w_drop {c['w_drop']}): events on "
        f"{c['event_rate']:.1%} of tokens, reliability runs out in {rel['share_run_out']:.0%} "
        f"of samples{where}",
        *_departure_lines(c.get("departure")),
        f"monitor K={m['k']} tau={m['tau']} w_drop={m['w_drop']}: {m['reason']}",
        "recommended: " + " ".join(f"{k}={v}" for k, v in rec["keys"].items()),
        _auto_line(rec.get("auto_horizon"), rec.get("auto_curriculum", True)),
        f"written: {Path(out) / 'card.json'}, {Path(out) / 'card.yaml'} (pruneopd train --config "
        f"{Path(out) / 'card.yaml'})",
    ]
