"""The hybrid gate and the adaptive prefix schedule: golden values by hand, the gate's switch
point, the schedule on a synthetic KL sequence, and two-step runs of each on the fast zoo."""

from __future__ import annotations

import json

import pytest
import torch
from tiny import tiny_run_config

from pruneopd.config import ConfigError, TrainConfig
from pruneopd.method import build_method
from pruneopd.method.budget import AdaptivePrefix
from pruneopd.method.hybrid import group_advantages, tail_mask
from pruneopd.method.weighing import TokenWeights
from pruneopd.training.train import train


def test_group_advantages_by_hand():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    none = group_advantages(r, 4, "none")
    assert torch.allclose(none, torch.tensor([0.75, -0.25, -0.25, -0.25, 0.5, 0.5, -0.5, -0.5]))
    std = group_advantages(r, 4, "std", eps=0.0)
    # group 1: mean 0.25, population std sqrt(0.1875) = 0.4330; group 2: mean 0.5, std 0.5
    assert torch.allclose(std[:4], torch.tensor([0.75, -0.25, -0.25, -0.25]) / 0.1875**0.5)
    assert torch.allclose(std[4:], torch.tensor([1.0, 1.0, -1.0, -1.0]))
    assert torch.equal(group_advantages(torch.ones(6), 3), torch.zeros(6))  # all equal
    assert torch.equal(
        group_advantages(torch.tensor([1.0, 0.0]), 1), torch.zeros(2)
    )  # groups of one
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages(torch.ones(6), 4)
    with pytest.raises(ValueError, match="gate_norm"):
        group_advantages(torch.ones(4), 4, "rank")


def test_gate_switches_at_the_first_token_with_weight_at_or_below_the_floor():
    w_BT = torch.tensor([[1.0, 0.8, 0.6, 0.4, 0.2], [1.0, 1.0, 0.5, 0.5, 0.0]])
    mask_BT = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]).bool()
    assert tail_mask(w_BT, mask_BT, 0.5).tolist() == [
        [False, False, False, True, True],
        [False, False, True, True, False],  # the padding position is never in the tail
    ]
    assert not tail_mask(w_BT, mask_BT, 0.0).any()
    cfg = TrainConfig(
        method="hybrid", gate_coef=2.0, gate_floor=0.5, w_base=0.5, responses_per_prompt=2
    )
    none_BT = torch.zeros_like(mask_BT)
    tw = TokenWeights(w_BT, none_BT, w_BT, w_BT + 0.5, mask_BT.sum(-1))
    mw = build_method(cfg).weigh(tw, mask_BT, [1.0, 0.0], torch.zeros(mask_BT.shape))
    assert mw.mult_BT[0].tolist() == pytest.approx([1.5, 1.3, 1.1, 2.0, 2.0])
    assert torch.equal(mw.train_mask_BT, mask_BT)
    assert torch.equal(mw.tail_BT, tail_mask(w_BT, mask_BT, 0.5))
    assert mw.adv_BT[:, 0].tolist() == pytest.approx([1.0, -1.0], abs=1e-5)  # (r - 0.5) / 0.5


def test_adaptive_prefix_on_a_synthetic_kl_sequence():
    p = AdaptivePrefix(init_len=64, max_len=160, step=32, window=4, kl_threshold=0.1, flat=0.1)
    # falling fast: (m1 - m2) / m1 = (0.9 - 0.7) / 0.9 = 0.22 > 0.1 -> hold
    assert [p.update(k)["next_length"] for k in (1.0, 0.8, 0.7, 0.7)] == [64, 64, 64, 64]
    # window (0.8, 0.7, 0.7, 0.69): m1 0.75, m2 0.695, drop 0.073 <= 0.1 -> flattened: grow
    assert p.update(0.69) == {"length": 64, "next_length": 96, "grew": True}
    assert p.kls == []  # the record restarts at the new length
    # low KL: mean <= 0.1 grows even while still falling fast
    assert [p.update(k)["next_length"] for k in (0.2, 0.1, 0.05, 0.02)] == [96, 96, 96, 128]
    for k in (0.01, 0.01, 0.01, 0.01):
        p.update(k)
    assert p.length == 160
    for k in (0.01, 0.01, 0.01, 0.01):  # capped at max_len
        assert not p.update(k)["grew"]
    q = AdaptivePrefix(64, 160, 32, 4, 0.1, 0.1)
    q.load_state_dict(p.state_dict())
    assert (q.length, q.kls) == (p.length, p.kls)
    cfg = TrainConfig(
        method="prefix", prefix_schedule="adaptive", prefix_len=64, prefix_len_end=160
    )
    method = build_method(cfg)
    method.load_state_dict(p.state_dict())
    assert method.cap(7) == 160
    assert method.learn(7, torch.tensor([1]), {"rkl": 0.01}) == {"next_cap": 160}


def test_config_checks():
    with pytest.raises(ConfigError, match="prefix_schedule"):
        TrainConfig(prefix_schedule="cosine")
    with pytest.raises(ConfigError, match="prefix_len_end"):
        TrainConfig(method="prefix", prefix_schedule="linear")
    with pytest.raises(ConfigError, match="gate_norm"):
        TrainConfig(method="hybrid", gate_norm="rank")


def _rows(out):
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r]


def _tiny(tmp_path, name, **kw):
    return tiny_run_config(tmp_path, name, **{"max_steps": 2, **kw})


def test_hybrid_runs_two_steps_with_a_tail_at_full_length(zoo, tmp_path):
    # tau 1.0 and w_drop 0.5: nearly every token is an event, so the tail starts early
    s = train(_tiny(tmp_path, "hybrid", method="hybrid", tau=1.0, w_drop=0.5, drift_k=4))
    rows = _rows(tmp_path / "hybrid")
    assert len(rows) == 2 and all(r["cap"] == 48 for r in rows)  # samples run to L_max
    assert all(0 < r["gate_rate"] <= 1 for r in rows)
    assert s["final_cap"] is None and s["tokens_trained"] > 0


def test_hybrid_with_zero_gate_coef_and_no_tail_trains_like_prune_without_budget(zoo, tmp_path):
    # w_drop 0: no token is ever in the tail, so hybrid is Prune-OPD's weighting at L_max
    a = train(_tiny(tmp_path, "h", method="hybrid", w_drop=0.0))
    b = train(_tiny(tmp_path, "p", method="prune", w_drop=0.0, init_len=48, min_len=48))
    la = [r["loss"] for r in _rows(tmp_path / "h")]
    lb = [r["loss"] for r in _rows(tmp_path / "p")]
    assert la == pytest.approx(lb, rel=1e-5) and a["tokens_trained"] == b["tokens_trained"]


def test_adaptive_prefix_runs_two_steps(zoo, tmp_path):
    train(
        _tiny(
            tmp_path,
            "pa",
            method="prefix",
            prefix_schedule="adaptive",
            prefix_len=16,
            prefix_window=2,
            prefix_flat=10.0,
            prefix_step=8,
        )
    )
    rows = _rows(tmp_path / "pa")
    # prefix_flat 10: "flattened" holds at once, so P grows after the second step
    assert [r["cap"] for r in rows] == [16, 16] and rows[-1]["next_cap"] == 24


def test_tail_tokens_get_the_policy_gradient_loss(zoo):
    from pruneopd.engines.rollout import sample
    from pruneopd.engines.scoring import score_responses
    from pruneopd.models import load_model, load_tokenizer
    from pruneopd.tasks import get_task
    from pruneopd.tokenizer import encode_prompt
    from pruneopd.training.objective import token_losses

    tok, student, teacher = (
        load_tokenizer("teacher"),
        load_model("student-cross"),
        load_model("teacher"),
    )
    problems = get_task("regs").problems("train", 3, seed=0, difficulty=2)
    prompts = [encode_prompt(tok, p.prompt) for p in problems]
    r = sample(
        student,
        prompts,
        max_new_tokens=12,
        eos_id=tok.eos_token_id,
        pad_id=tok.pad_token_id,
        generator=torch.Generator().manual_seed(0),
        topk=4,
    )
    cand_BTK = r.student_topk_ids_BTK()
    scores = score_responses(
        teacher, prompts, r.responses, k=4, candidate_ids=cand_BTK, pad_id=tok.pad_token_id
    )
    mask_BT = r.response_mask_BT
    tail_BT = mask_BT.clone()
    tail_BT[:, :3] = False  # the first three tokens keep the distillation loss
    adv_BT = torch.tensor([2.0, -1.0, 0.0])[:, None].expand_as(mask_BT)
    args = (
        "topk_rkl",
        student,
        teacher,
        r.to_padded(tok.pad_token_id)[0],
        torch.tensor([len(p) for p in prompts]),
        r.response_tokens_BT(tok.pad_token_id),
        mask_BT,
    )
    kw = dict(
        candidate_ids_BTK=cand_BTK,
        teacher_candidate_logprobs_BTK=scores.candidate_logprobs_BTK,
        teacher_token_logprobs_BT=scores.token_logprobs_BT,
    )
    plain_BT, lp_BT = token_losses(*args, **kw)
    hybrid_BT, _ = token_losses(*args, **kw, tail_BT=tail_BT, advantage_BT=adv_BT)
    assert torch.allclose(hybrid_BT[tail_BT], (-adv_BT * lp_BT)[tail_BT])
    assert torch.equal(hybrid_BT[~tail_BT], plain_BT[~tail_BT])
    hybrid_BT[1].sum().backward()  # A = -1 on the tail: the gradient pushes log pi(y_t) down
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
