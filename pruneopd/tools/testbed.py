"""The test bed's card: does a suite have the properties of the regime Prune-OPD is about?

docs/testbed.md shows these numbers for the long suite. Pure functions compute them from a
pair's per-token statistics (`length_stats`, `position_curves`, `reliability_run_out`);
`pair_card` samples a student's own responses, scores them with the teacher and applies
them; `write_card` does it for both pairs of a zoo (and for trained students) and draws the
plots.

What the regime needs (method.md, "Where the paper's saving comes from"): responses much
longer than L_min; a cross pair whose reliability runs out early in most samples; a same
pair whose samples mostly stay reliable to their end.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch

from pruneopd.engines.rollout import sample
from pruneopd.engines.scoring import score_responses
from pruneopd.method.drift import reliability_weights, topk_overlap_from_ids
from pruneopd.method.weighing import DriftSettings, weigh_tokens
from pruneopd.tokenizer import prompt_ids, stop_ids
from pruneopd.tools.bench_results import position_curves  # noqa: F401  (also this module's)


def length_stats(lengths: list[int]) -> dict:
    """Median, mean, quartiles, min, max and a 10-bin histogram of response lengths."""
    if not lengths:
        raise ValueError("length_stats: no lengths")
    q = (
        statistics.quantiles(lengths, n=4, method="inclusive")
        if len(lengths) > 1
        else [lengths[0]] * 3
    )
    lo, hi = min(lengths), max(lengths)
    width = max(1, -(-(hi - lo + 1) // 10))
    hist = [0] * 10
    for n in lengths:
        hist[min(9, (n - lo) // width)] += 1
    return {
        "n": len(lengths),
        "median": float(statistics.median(lengths)),
        "mean": float(statistics.fmean(lengths)),
        "quartiles": [float(x) for x in q],
        "min": lo,
        "max": hi,
        "histogram": hist,
        "bin_width": width,
    }


def reliability_run_out(events_BT: torch.Tensor, mask_BT: torch.Tensor, w_drop: float) -> dict:
    """Where each sample's reliability weight reaches 0 (method.md: w_t = clip(1 - w_drop C_t)).

    Returns the share of samples whose weight reaches 0 before their last token
    (`share_run_out`), the median position where it does among those (`median_position`,
    None if none does), the median share of a sample's tokens that stay reliable
    (`median_reliable_share`) and every sample's effective reliable length.
    """
    _, _, eff_B = reliability_weights(events_BT, mask_BT, w_drop, 0.0)
    len_B = mask_BT.sum(-1)
    ran_out_B = eff_B < len_B
    pos = eff_B[ran_out_B].double()
    return {
        "share_run_out": float(ran_out_B.double().mean()),
        "median_position": float(pos.median()) if len(pos) else None,
        "median_reliable_share": float((eff_B.double() / len_B.clamp(min=1)).median()),
        "effective_lengths": eff_B.tolist(),
    }


SWEEP_KS = (1, 2, 4, 8, 16)
SWEEP_TAUS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
SWEEP_W_DROPS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2)


def sweep_settings(s_BTK, t_BTK, mask_BT, ks=SWEEP_KS, taus=SWEEP_TAUS, w_drops=SWEEP_W_DROPS):
    """Every monitor setting (K, tau, w_drop) applied to these samples: yields
    (k, tau, w_drop, event_rate, effective_len_B)."""
    for k in ks:
        if k > s_BTK.shape[-1]:
            continue
        overlap_BT = topk_overlap_from_ids(s_BTK[..., :k], t_BTK[..., :k])
        for tau in taus:
            events_BT = (overlap_BT < tau) & mask_BT
            rate = float(events_BT[mask_BT].double().mean())
            for w in w_drops:
                _, _, eff_B = reliability_weights(events_BT, mask_BT, w, 0.0)
                yield k, tau, w, rate, eff_B


def monitor_sweep(
    s_BTK: torch.Tensor,
    t_BTK: torch.Tensor,
    mask_BT: torch.Tensor,
    ks=SWEEP_KS,
    taus=SWEEP_TAUS,
    w_drops=SWEEP_W_DROPS,
) -> list[dict]:
    """What each monitor setting (K, tau, w_drop) would do on these samples: the event rate,
    the share of samples whose reliability runs out before their end, and the median and 90th
    percentile of the effective reliable lengths l_i. The 90th percentile is where the
    released budget rule (h_min 0.1) holds the cap: about a tenth of the samples must still be
    reliable at the cap for it to grow."""
    rows = []
    for k, tau, w, rate, eff_B in sweep_settings(s_BTK, t_BTK, mask_BT, ks, taus, w_drops):
        q = torch.quantile(eff_B.double(), torch.tensor([0.5, 0.9], dtype=torch.float64))
        rows.append(
            {
                "k": k,
                "tau": tau,
                "w_drop": w,
                "event_rate": round(rate, 5),
                "share_run_out": float((eff_B < mask_BT.sum(-1)).double().mean()),
                "eff_len_median": float(q[0]),
                "eff_len_p90": float(q[1]),
            }
        )
    return rows


def choose_monitor(
    same_rows: list[dict], cross_rows: list[dict], grow_at: float, sink_below: float
) -> dict:
    """The monitor setting (K, tau, w_drop) for a suite's presets, from the two pairs'
    `monitor_sweep` rows on the same problems (never from accuracy).

    The released budget grows the cap while a tenth of the samples stay reliable to the cap
    minus the margin: it reaches L_max when the 90th-percentile reliable length is at least
    `grow_at` (= L_max - margin), and sinks to L_min when it is below `sink_below` (= L_min,
    the boundary there). A setting qualifies when the same pair's cap grows; among those,
    the ones that sink the cross pair's cap are preferred, and of them the one that takes
    least from the same pair (the smallest share of its samples that run out); if none sinks
    it, the smallest cross 90th percentile. Ties go to the larger K, then the smaller w_drop,
    then the smaller tau. Returns the setting, both pairs' rows, and how many qualified;
    raises ValueError when none does."""
    key = lambda r: (r["k"], r["tau"], r["w_drop"])  # noqa: E731
    cross = {key(r): r for r in cross_rows}
    ok = [r for r in same_rows if r["eff_len_p90"] >= grow_at and key(r) in cross]
    if not ok:
        best = max(same_rows, key=lambda r: r["eff_len_p90"], default=None)
        got = "no rows" if best is None else f"the best is {best['eff_len_p90']:.0f} at {key(best)}"
        raise ValueError(
            f"no monitor setting lets the same pair's cap grow to {grow_at:.0f} "
            f"(p90 reliable length; {got})"
        )
    sinks = [r for r in ok if cross[key(r)]["eff_len_p90"] < sink_below]
    tie = lambda r: (-r["k"], r["w_drop"], r["tau"])  # noqa: E731
    if sinks:
        pick = min(sinks, key=lambda r: (r["share_run_out"], *tie(r)))
    else:
        pick = min(ok, key=lambda r: (cross[key(r)]["eff_len_p90"], *tie(r)))
    return {
        "k": pick["k"],
        "tau": pick["tau"],
        "w_drop": pick["w_drop"],
        "grow_at": grow_at,
        "sink_below": sink_below,
        "qualified": len(ok),
        "sinking": len(sinks),
        "same": pick,
        "cross": cross[key(pick)],
    }


@dataclass
class PairSamples:
    """One T=1 response per problem from the student, scored by the teacher (`sample_pair`)."""

    s_BTK: torch.Tensor  # the student's top-K ids at each response token
    t_BTK: torch.Tensor  # the teacher's
    t_logprobs_BTK: torch.Tensor  # the teacher's log-probs of its top-K
    tokens_BT: torch.Tensor
    mask_BT: torch.Tensor
    lengths: list[int]
    cut: list[bool]  # stopped by the cap
    correct: list[bool]  # the task's check of each response


@torch.inference_mode()
def sample_pair(
    student, teacher, tok, task, problems, *, k: int, max_new_tokens: int, seed: int = 0
) -> PairSamples:
    """Sample one temperature-1 response per problem from the student (stopping at EOS and
    the chat template's end of turn) and score it with the teacher, keeping top-`k` lists."""
    prompts = [prompt_ids(tok, p) for p in problems]
    gen = torch.Generator().manual_seed(seed)
    r = sample(
        student,
        prompts,
        max_new_tokens=max_new_tokens,
        eos_id=stop_ids(tok),
        pad_id=tok.pad_token_id,
        temperature=1.0,
        generator=gen,
        topk=k,
    )
    scores = score_responses(teacher, prompts, r.responses, k=k, pad_id=tok.pad_token_id)
    texts = [tok.decode(x, skip_special_tokens=True) for x in r.responses]
    return PairSamples(
        s_BTK=r.student_topk_ids_BTK(),
        t_BTK=scores.topk_ids_BTK,
        t_logprobs_BTK=scores.topk_logprobs_BTK,
        tokens_BT=r.response_tokens_BT(tok.pad_token_id),
        mask_BT=r.response_mask_BT,
        lengths=[len(x) for x in r.responses],
        cut=[why == "cap" for why in r.stopped_by],
        correct=[task.check(p, t) for p, t in zip(problems, texts, strict=True)],
    )


def card_of(ps: PairSamples, *, k: int, tau: float, w_drop: float, bin_size: int = 32) -> dict:
    """A pair's card from its samples: lengths, per-position top-1 agreement and top-K
    overlap curves, the drift-event rate and where reliability runs out with the monitor
    (K, tau, w_drop), and `monitor_sweep` of the other settings on the same samples."""
    mask_BT = ps.mask_BT
    sweep = monitor_sweep(ps.s_BTK, ps.t_BTK, mask_BT)
    s_BTK, t_BTK = ps.s_BTK[..., :k], ps.t_BTK[..., :k]
    top1_BT = (s_BTK[..., 0] == t_BTK[..., 0]).double()
    overlap_BT = topk_overlap_from_ids(s_BTK, t_BTK).double()
    drift = DriftSettings("topk_overlap", k, tau, w_drop, 0.0)  # the run's monitor
    tw = weigh_tokens(drift, s_BTK, t_BTK, ps.t_logprobs_BTK, ps.tokens_BT, mask_BT)
    events_BT = tw.events_BT
    n = len(ps.lengths)
    return {
        "k": k,
        "tau": tau,
        "w_drop": w_drop,
        "samples": n,
        "accuracy_sampled": sum(ps.correct) / n,
        "lengths": length_stats(ps.lengths),
        "cut_rate": sum(ps.cut) / n,
        "top1_agreement": float(top1_BT[mask_BT].mean()),
        "overlap_mean": float(overlap_BT[mask_BT].mean()),
        "event_rate": float(events_BT[mask_BT].double().mean()),
        "top1_curve": position_curves(top1_BT, mask_BT, bin_size),
        "overlap_curve": position_curves(overlap_BT, mask_BT, bin_size),
        "reliability": reliability_run_out(events_BT, mask_BT, w_drop),
        "sweep": sweep,
    }


def pair_card(
    student,
    teacher,
    tok,
    task,
    problems,
    *,
    k: int,
    tau: float,
    w_drop: float,
    max_new_tokens: int,
    bin_size: int = 32,
    seed: int = 0,
) -> dict:
    """`card_of` the student's own responses to `problems`, scored by the teacher."""
    kmax = max(k, *SWEEP_KS)
    ps = sample_pair(
        student, teacher, tok, task, problems, k=kmax, max_new_tokens=max_new_tokens, seed=seed
    )
    return card_of(ps, k=k, tau=tau, w_drop=w_drop, bin_size=bin_size)


def reference_lengths(tok, task, problems, style: str = "terse") -> dict:
    """Length statistics of the reference traces (EOS included), e.g. the teacher's."""
    ids = [tok(task.render(p, style), add_special_tokens=False)["input_ids"] for p in problems]
    return length_stats([len(x) + 1 for x in ids])


def plot_curves(cards: dict[str, dict], path: Path, key: str, ylabel: str) -> None:
    """One line per card (label -> pair_card result): `key` curve against position."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, card in cards.items():
        curve = card[key]
        ax.plot(curve["start"], curve["mean"], label=label, marker=".")
    ax.set_xlabel("response position (tokens)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_card(cards: dict[str, dict], extra: dict, out: Path) -> dict:
    """`out/testbed.json` (every card without per-sample lists) and the two curve plots."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plot_curves(cards, out / "top1_by_position.png", "top1_curve", "top-1 agreement")
    plot_curves(cards, out / "overlap_by_position.png", "overlap_curve", "top-K overlap")
    data = {**extra, "cards": cards}
    (out / "testbed.json").write_text(json.dumps(data, indent=1))
    return data


def zoo_card(
    zoo: Path,
    suite: str,
    out: Path,
    n: int = 256,
    trained: dict | None = None,
    seed: int = 0,
    log=None,
) -> dict:
    """The card of a zoo's two pairs with the suite's Prune-OPD preset monitor (K, tau,
    w_drop and the cap L_max from `configs[/long]/prune-cross.yaml`), plus trained students
    (`trained`: label -> model folder, e.g. a bench run's `final/`), written to `out`."""
    from pruneopd.config import load_config
    from pruneopd.models import load_model, load_tokenizer
    from pruneopd.tasks import get_task
    from pruneopd.tools.bench_results import SUITE_CONFIGS

    cfg = load_config(SUITE_CONFIGS[suite] / "prune-cross.yaml", [])
    zoo = Path(zoo)
    tok = load_tokenizer(str(zoo / "teacher"))
    teacher = load_model(str(zoo / "teacher"))
    task = get_task(cfg.task)
    problems = task.problems("test", n, seed=seed, difficulty=cfg.difficulty or None)
    students = {"same": zoo / "student-same", "cross": zoo / "student-cross", **(trained or {})}
    cards = {}
    for label, folder in students.items():
        cards[label] = pair_card(
            load_model(str(folder)),
            teacher,
            tok,
            task,
            problems,
            k=cfg.monitor_k,
            tau=cfg.tau,
            w_drop=cfg.w_drop,
            max_new_tokens=cfg.max_len,
            seed=seed,
        )
        if log:
            c = cards[label]
            log(
                f"{label}: median length {c['lengths']['median']:.0f}, top-1 agreement "
                f"{c['top1_agreement']:.3f}, event rate {c['event_rate']:.3f}, run out "
                f"{c['reliability']['share_run_out']:.2f}"
            )
    extra = {
        "suite": suite,
        "zoo": str(zoo),
        "problems": n,
        "seed": seed,
        "monitor": {"k": cfg.monitor_k, "tau": cfg.tau, "w_drop": cfg.w_drop},
        "budget": {"max_len": cfg.max_len, "min_len": cfg.min_len, "init_len": cfg.init_len},
        "reference": reference_lengths(tok, task, problems),
        "students": {k: str(v) for k, v in students.items()},
    }
    try:  # what the presets' monitor should be, from the untrained pairs' samples
        extra["chosen_monitor"] = choose_monitor(
            cards["same"]["sweep"],
            cards["cross"]["sweep"],
            cfg.max_len - cfg.budget_margin,
            cfg.min_len,
        )
    except ValueError as e:
        extra["chosen_monitor"] = {"error": str(e)}
    if log:
        c = extra["chosen_monitor"]
        log(
            c.get("error")
            or f"chosen monitor: K {c['k']}, tau {c['tau']}, w_drop {c['w_drop']}"
            f" (same p90 {c['same']['eff_len_p90']:.0f}, cross p90 {c['cross']['eff_len_p90']:.0f})"
        )
    return write_card(cards, extra, out)
