"""Method `auto` (the probed reliability horizon): its pure functions on values worked by hand,
the method's weights and learning on a hand-made batch, the config checks, and runs on the fast
zoo: probes on schedule, nothing trained past the horizon, a compatible horizon trains exactly
like full OPD, and a run stopped and resumed ends as one never stopped."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from tiny import final_weights, metric_rows, short_run_config

from pruneopd.config import ConfigError, TrainConfig
from pruneopd.method import auto as auto_mod
from pruneopd.method import build_method
from pruneopd.method.auto import AutoOPD, agreement_by_bucket, reliability_horizon
from pruneopd.training.train import train


def test_agreement_by_bucket_by_hand():
    agree_BT = torch.tensor([[1, 0, 1, 1, 1], [1, 1, 0, 0, 1]]).bool()
    mask_BT = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]).bool()
    # buckets of 2 up to max_len 6: positions {0,1}, {2,3}, {4,5}; row 0's position 4 invalid
    agrees, counts = agreement_by_bucket(agree_BT & mask_BT, mask_BT, 2, 6)
    assert agrees == [3.0, 2.0, 1.0] and counts == [4.0, 4.0, 1.0]
    # positions past max_len count in the last bucket
    agrees, counts = agreement_by_bucket(agree_BT & mask_BT, mask_BT, 2, 4)
    assert agrees == [3.0, 3.0] and counts == [4.0, 5.0]
    # skip_end 2: row 0 (4 tokens) keeps positions 0-1, row 1 (5 tokens) keeps 0-2
    agrees, counts = agreement_by_bucket(agree_BT & mask_BT, mask_BT, 2, 6, skip_end=2)
    assert agrees == [3.0, 0.0, 0.0] and counts == [4.0, 1.0, 0.0]
    # the docstring's example
    one_BT = torch.ones(1, 4, dtype=torch.bool)
    assert agreement_by_bucket(torch.tensor([[1, 0, 1, 1]]).bool(), one_BT, 2, 4, skip_end=2) == (
        [1.0, 0.0],
        [2.0, 0.0],
    )


def test_reliability_horizon_by_hand():
    kw = dict(bucket=1, drop=0.2, min_len=1, max_len=8)
    c = [8, 8, 8, 8]
    # the docstring's example: shares 1.0, 0.875, 1.0, 0.5; head 1.0; first below 0.8 at 3
    assert reliability_horizon([8, 7, 8, 4], c, **kw) == 3
    # min_len 2: head (positions 0, 1) 15/16; position 3's 0.5 < 0.7375 -> 3; min_len 4: none
    assert reliability_horizon([8, 7, 8, 4], c, **{**kw, "min_len": 2}) == 3
    assert reliability_horizon([8, 7, 8, 4], c, **{**kw, "min_len": 4}) == 8
    # drop 0.6: nothing is 0.6 under the head -> L_max
    assert reliability_horizon([8, 7, 8, 4], c, **{**kw, "drop": 0.6}) == 8
    # the same share all along, however low: no horizon
    assert reliability_horizon([2, 2, 2, 2], c, **kw) == 8
    # a bucket of fewer than 8 x bucket tokens says nothing
    assert reliability_horizon([8, 8, 0, 4], [8, 8, 7, 8], **kw) == 3
    # too few head tokens: no horizon
    assert reliability_horizon([7, 0, 0, 0], [7, 8, 8, 8], **kw) == 8
    # buckets of 32: the horizon is a bucket start, at least min_len
    kw32 = dict(bucket=32, drop=0.02, min_len=64, max_len=128)
    assert reliability_horizon([256, 256, 256, 240], [256] * 4, **kw32) == 96
    # persist 2: shares 1, 0.5, 1, 0.5, 0.5 -> the run of two starts at 3; a lone dip is none
    assert reliability_horizon([8, 4, 8, 4, 4], [8] * 5, **kw, persist=2) == 3
    assert reliability_horizon([8, 7, 8, 4], c, **kw, persist=2) == 8
    # a bucket reached by fewer than half the responses (tokens of the first) does not speak,
    # and breaks a run: 16 tokens at first, 8 at position 2 (half: speaks), 7 at 3 (does not)
    assert reliability_horizon([16, 16, 0, 0], [16, 16, 8, 7], **kw) == 2
    assert reliability_horizon([16, 16, 16, 0], [16, 16, 16, 7], **kw) == 8
    assert reliability_horizon([16, 4, 0, 0], [16, 8, 8, 7], **kw, persist=2) == 1
    assert reliability_horizon([16, 16, 0, 0, 0], [16, 16, 8, 7, 8], **kw, persist=2) == 8


def _cfg(**kw) -> TrainConfig:
    base = dict(
        method="auto",
        max_len=8,
        min_len=2,
        auto_bucket=1,
        auto_drop=0.2,
        auto_probe_steps=2,
        prefix_step=2,
        prefix_window=2,
        prefix_kl_threshold=0.5,
    )
    return TrainConfig(**{**base, **kw})


def _batch(agree_rows):
    agree_BT = torch.tensor(agree_rows).bool()
    return SimpleNamespace(agree_BT=agree_BT), torch.ones_like(agree_BT)


def test_auto_measures_then_trains_an_adaptive_prefix_up_to_the_horizon():
    m = build_method(_cfg())
    assert isinstance(m, AutoOPD) and m.cap(0) == 8 and m.final_cap() == 8
    # 8 samples per step (a bucket speaks with 8 tokens); positions 5 and 6 disagree on 6 of 8
    rows = [[1, 1, 1, 1, 1, 0, 0, 1]] * 6 + [[1] * 8] * 2
    tw, mask_BT = _batch(rows)
    mw = m.weigh(tw, mask_BT, [0.0] * 8, torch.zeros(8, 8))
    assert mw.train_mask_BT.all() and torch.equal(mw.mult_BT, mask_BT.float())  # full OPD
    metrics = {**mw.audit, "rkl": 1.0}
    assert m.learn(0, None, metrics) == {"horizon": 8, "next_cap": 8}  # step 1 still measures
    assert set(metrics) == {"rkl"}  # the per-bucket sums are consumed, not logged
    out = m.learn(1, None, {**m.weigh(tw, mask_BT, [0.0] * 8, torch.zeros(8, 8)).audit, "rkl": 1})
    # head (positions 0, 1) 1.0; positions 5 and 6 (2 in a row) 0.25 < 0.8 -> R = 5; the
    # prefix starts at 2; each response's last position (7) is left out of the measurement
    assert out["horizon"] == 5 and out["next_cap"] == 2
    assert out["top1_by_position"][5:] == [0.25, 0.25, None]
    mw = m.weigh(tw, mask_BT, [0.0] * 8, torch.zeros(8, 8))
    assert mw.audit is None and mw.train_mask_BT[0].tolist() == [True] * 2 + [False] * 6
    # the adaptive prefix: KL learnt (<= 0.5 over a window of 2) -> +2, up to R = 5
    caps = [m.learn(s, None, {"rkl": 0.1})["next_cap"] for s in range(2, 8)]
    assert caps == [2, 4, 4, 5, 5, 5] and m.final_cap() == 5


def _to_the_horizon(m):
    """Measure (R = 5, as above), then grow the prefix 2 -> 4 -> 5; returns the caps set by
    steps 2-6 (8 samples of 8 tokens, positions 5 and 6 disagreeing on 6 of 8)."""
    tw, mask_BT = _batch([[1, 1, 1, 1, 1, 0, 0, 1]] * 6 + [[1] * 8] * 2)
    for s in range(2):
        m.learn(s, None, {**m.weigh(tw, mask_BT, [0.0] * 8, torch.zeros(8, 8)).audit, "rkl": 1})
    assert m.horizon == 5
    return [m.learn(s, None, {"rkl": 0.1})["next_cap"] for s in range(2, 7)]


def test_auto_audits_the_tail_past_the_horizon():
    m = build_method(_cfg(auto_audit_every=2, auto_tail_share=0.4))
    # no audit before P reaches R (steps 3 and 5 would be): then step 7 samples to L_max
    assert _to_the_horizon(m) == [2, 4, 4, 5, 8]
    mask_BT = torch.ones(8, 8, dtype=torch.bool)
    a_BT = torch.ones(8, 8)  # |a_t| = 1 everywhere: the tail (3 of 8 positions) holds 0.375
    mw = m.weigh(None, mask_BT, [0.0] * 8, a_BT)
    assert mw.train_mask_BT.all()  # an audit trains as full OPD
    assert mw.audit == {"auto_tail_mass": 24.0, "auto_mass": 64.0}
    metrics = {**mw.audit, "rkl": 5.0}
    out = m.learn(7, None, metrics)
    assert out == {"tail_share": 0.375, "horizon": 5, "next_cap": 5}  # 0.375 <= 0.4: P holds
    assert set(metrics) == {"rkl"} and m.prefix.kls == []  # consumed; the KL record untouched
    mw = m.weigh(None, mask_BT, [0.0] * 8, a_BT)  # step 8: the prefix again
    assert mw.audit is None and mw.train_mask_BT[0].tolist() == [True] * 5 + [False] * 3
    assert m.learn(8, None, {"rkl": 0.1})["next_cap"] == 8
    a_BT[:, 5:] = 2.0  # tail 48 of 88: 0.545 > 0.4 -> P grows by prefix_step (2)
    out = m.learn(9, None, {**m.weigh(None, mask_BT, [0.0] * 8, a_BT).audit, "rkl": 1})
    assert out["tail_share"] == pytest.approx(48 / 88) and out["next_cap"] == 7
    assert m.learn(10, None, {"rkl": 0.1})["next_cap"] == 8  # step 11 audits
    a_BT[:, 7] = 10.0  # past P = 7: 80 of 152, 0.526 > 0.4
    out = m.learn(11, None, {**m.weigh(None, mask_BT, [0.0] * 8, a_BT).audit, "rkl": 1})
    # P = min(7 + 2, L_max): at L_max there is nothing left to audit; full OPD from here
    assert out["next_cap"] == 8 and m.final_cap() == 8
    assert not any(m.is_audit(s) for s in range(12, 20))
    assert m.weigh(None, mask_BT, [0.0] * 8, a_BT).audit is None


def test_auto_without_audits_stops_at_the_horizon():
    m = build_method(_cfg(auto_audit_every=0))
    assert _to_the_horizon(m) == [2, 4, 4, 5, 5]
    assert [m.learn(s, None, {"rkl": 0.1})["next_cap"] for s in range(7, 20)] == [5] * 13


def test_auto_without_a_decay_and_curriculum_stays_full_opd():
    m = build_method(_cfg(auto_probe_steps=1, auto_curriculum=False))
    tw, mask_BT = _batch([[1] * 8] * 8)
    out = m.learn(0, None, {**m.weigh(tw, mask_BT, [0] * 8, torch.zeros(8, 8)).audit, "rkl": 1})
    assert out["horizon"] == 8 and m.prefix is None
    assert [m.learn(s, None, {"rkl": 0.0})["next_cap"] for s in range(1, 4)] == [8, 8, 8]


def test_auto_curriculum_without_a_decay_grows_a_prefix_to_l_max():
    m = build_method(_cfg(auto_probe_steps=1, auto_curriculum=True, auto_audit_every=2))
    tw, mask_BT = _batch([[1] * 8] * 8)
    out = m.learn(0, None, {**m.weigh(tw, mask_BT, [0] * 8, torch.zeros(8, 8)).audit, "rkl": 1})
    # no horizon (R = L_max = 8): the adaptive prefix from L_min = 2, +2 each time the KL is
    # learnt (<= 0.5 over a window of 2), to L_max; no audit on the way (R is not below L_max)
    assert out["horizon"] == 8 and out["next_cap"] == 2
    caps = [m.learn(s, None, {"rkl": 0.1})["next_cap"] for s in range(1, 12)]
    assert caps == [2, 4, 4, 6, 6, 8, 8, 8, 8, 8, 8] and m.final_cap() == 8
    assert not any(m.is_audit(s) for s in range(12))
    again = build_method(_cfg(auto_probe_steps=1, auto_curriculum=True, auto_audit_every=2))
    again.load_state_dict(m.state_dict())
    assert again.state_dict() == m.state_dict() and again.cap(12) == 8


def test_auto_state_round_trips():
    m = build_method(_cfg())
    tw, mask_BT = _batch([[1, 1, 1, 1, 1, 0, 0, 1]] * 8)
    for s in range(2):
        m.learn(s, None, {**m.weigh(tw, mask_BT, [0] * 8, torch.zeros(8, 8)).audit, "rkl": 1})
    m.learn(2, None, {"rkl": 0.1})
    again = build_method(_cfg())
    again.load_state_dict(m.state_dict())
    assert again.state_dict() == m.state_dict() and again.cap(0) == m.cap(0)
    with pytest.raises(ValueError, match="buckets saved"):
        build_method(_cfg(max_len=16)).load_state_dict(m.state_dict())
    # past the horizon: an audit grew P, and the step count places the next audit
    m = build_method(_cfg(auto_audit_every=2, auto_tail_share=0.0))
    _to_the_horizon(m)
    ones_BT = torch.ones(8, 8)
    m.learn(7, None, {**m.weigh(None, ones_BT.bool(), [0] * 8, ones_BT).audit, "rkl": 1})
    assert m.cap(8) == 7 and m.cap(9) == 8
    again = build_method(_cfg(auto_audit_every=2, auto_tail_share=0.0))
    again.load_state_dict(m.state_dict())
    assert again.state_dict() == m.state_dict() and again.past == 2 and again.steps == 8
    assert [again.cap(s) for s in (8, 9)] == [7, 8]
    old_state = {k: v for k, v in m.state_dict().items() if k not in ("past", "steps")}
    with pytest.raises(ValueError, match="before the tail's audits"):
        again.load_state_dict(old_state)


@pytest.mark.parametrize(
    "kw,key",
    [
        (dict(auto_probe_steps=0), "auto_probe_steps"),
        (dict(auto_drop=1.5), "auto_drop"),
        (dict(auto_bucket=0), "auto_bucket"),
        (dict(auto_persist=0), "auto_persist"),
        (dict(auto_audit_every=-1), "auto_audit_every"),
        (dict(auto_tail_share=1.5), "auto_tail_share"),
    ],
)
def test_bad_keys_are_config_errors(kw, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        TrainConfig(**kw)


def test_auto_refuses_a_mixture_of_teachers():
    cfg = SimpleNamespace(teachers=[{"path": "a"}, {"path": "b"}], teacher_routing="mixture")
    with pytest.raises(ConfigError, match="'method' = 'auto'"):
        AutoOPD.check(cfg, world=1)


# ---- on the fast zoo ----------------------------------------------------------------------


def test_auto_measures_then_trains_up_to_the_horizon(zoo, tmp_path, monkeypatch):
    # the fast zoo's pair agrees on nearly every token: drop 0 and any bucket speaking, so the
    # first bucket past min_len that agrees less than the head is the horizon
    monkeypatch.setattr(auto_mod, "MIN_BUCKET_SAMPLES", 1)
    kw = dict(method="auto", auto_probe_steps=2, auto_bucket=2, auto_drop=0.0, auto_persist=1)
    kw["min_len"] = 16
    s = train(short_run_config(tmp_path, "a", max_steps=4, **kw))
    rows = metric_rows(tmp_path / "a")
    assert [r["cap"] for r in rows] == [48, 48, 16, 16]  # 2 measuring steps, then the prefix
    assert 16 <= rows[1]["horizon"] < 48 and "top1_by_position" in rows[1]
    assert all(r["tokens_trained"] <= 4 * 16 for r in rows[2:])
    assert not any(k.startswith("auto_") for r in rows for k in r)
    assert s["final_cap"] == 16


def test_auto_without_a_horizon_trains_exactly_like_full(zoo, tmp_path):
    train(short_run_config(tmp_path, "full", method="full"))
    kw = dict(method="auto", auto_probe_steps=1, auto_drop=1.0, auto_curriculum=False)
    train(short_run_config(tmp_path, "auto", **kw))
    full, auto = metric_rows(tmp_path / "full"), metric_rows(tmp_path / "auto")
    assert [r["loss"] for r in auto] == [r["loss"] for r in full]
    wf, wa = final_weights(tmp_path / "full"), final_weights(tmp_path / "auto")
    assert all(torch.equal(wf[k], wa[k]) for k in wf)


def test_auto_curriculum_without_a_horizon_grows_from_l_min(zoo, tmp_path):
    # no horizon (drop 1): after the measuring step the adaptive prefix from min_len, growing
    # by prefix_step whenever the KL is under the (high) threshold, up to max_len
    kw = dict(method="auto", auto_probe_steps=1, auto_drop=1.0, auto_curriculum=True)
    kw.update(min_len=16, prefix_step=16, prefix_window=2, prefix_kl_threshold=100.0)
    s = train(short_run_config(tmp_path, "c", max_steps=7, **kw))
    rows = metric_rows(tmp_path / "c")
    assert [r["cap"] for r in rows] == [48, 16, 16, 32, 32, 48, 48]
    assert all(r["horizon"] == 48 for r in rows) and s["final_cap"] == 48
    assert all(r["tokens_trained"] <= 4 * r["cap"] for r in rows)


def test_auto_run_stopped_and_resumed_is_exact(zoo, tmp_path, monkeypatch):
    monkeypatch.setattr(auto_mod, "MIN_BUCKET_SAMPLES", 1)
    kw = dict(method="auto", auto_probe_steps=2, auto_bucket=2, auto_drop=0.0, auto_persist=1)
    kw["min_len"] = 16
    kw.update(prefix_step=8, prefix_window=2, prefix_kl_threshold=100.0)
    train(short_run_config(tmp_path, "ref", max_steps=5, **kw))
    train(short_run_config(tmp_path, "two", max_steps=3, **kw))  # stops inside the prefix
    train(short_run_config(tmp_path, "two", max_steps=5, resume="auto", **kw))
    ref, two = metric_rows(tmp_path / "ref"), metric_rows(tmp_path / "two")
    caps = [r["cap"] for r in ref]
    assert caps[:4] == [48, 48, 16, 16] and caps[4] > 16  # the prefix grew after the stop
    assert ref == two
    wa, wb = final_weights(tmp_path / "ref"), final_weights(tmp_path / "two")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_auto_run_with_audits_stopped_and_resumed_is_exact(zoo, tmp_path, monkeypatch):
    # the horizon, then audits every 2nd step that always grow P (tail share 0): a run stopped
    # between audits and resumed ends as one never stopped
    monkeypatch.setattr(auto_mod, "MIN_BUCKET_SAMPLES", 1)
    kw = dict(method="auto", auto_probe_steps=2, auto_bucket=2, auto_drop=0.0, auto_persist=1)
    kw.update(min_len=16, prefix_step=8, prefix_window=2, prefix_kl_threshold=100.0)
    kw.update(auto_audit_every=2, auto_tail_share=0.0)
    train(short_run_config(tmp_path, "ref", max_steps=12, **kw))
    train(short_run_config(tmp_path, "two", max_steps=10, **kw))  # stops after an audit
    train(short_run_config(tmp_path, "two", max_steps=12, resume="auto", **kw))
    ref, two = metric_rows(tmp_path / "ref"), metric_rows(tmp_path / "two")
    audits = [r["step"] for r in ref if "tail_share" in r]
    assert audits == [10, 12] and all(ref[s - 1]["cap"] == 48 for s in audits)
    assert ref[10]["cap"] == ref[8]["cap"] + 8  # the first audit grew P
    assert ref == two
    wa, wb = final_weights(tmp_path / "ref"), final_weights(tmp_path / "two")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_auto_iw_gamma_weights_the_trained_tokens_as_iw_opd():
    from pruneopd.method.iw_opd import iw_opd_weights

    m = build_method(_cfg(auto_probe_steps=1, auto_iw_gamma=0.5))
    tw, mask_BT = _batch([[1] * 8] * 8)
    a_BT = torch.tensor([[-1.0, 2.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0]] * 8)
    mw = m.weigh(tw, mask_BT, [0.0] * 8, a_BT)  # measuring: every token, IW-OPD's weights
    assert mw.mult_BT[0, :4].tolist() == [1.5, 1.375, 1.125, 1.125]  # worked in iw_opd.py
    m.learn(0, None, {**mw.audit, "rkl": 1.0})  # no horizon: the prefix from L_min = 2
    mw = m.weigh(tw, mask_BT, [0.0] * 8, a_BT)
    # over the trained prefix only: d [1, 2], D 3, D_<t [0, 1] -> [1.5, 1 + 0.5 * 2 / 3]
    assert mw.mult_BT[0].tolist() == pytest.approx([1.5, 1 + 1 / 3] + [0.0] * 6)
    assert torch.equal(mw.mult_BT, iw_opd_weights(a_BT, mw.train_mask_BT, 0.5))
    off = build_method(_cfg(auto_probe_steps=1))
    assert torch.equal(off.weigh(tw, mask_BT, [0.0] * 8, a_BT).mult_BT, mask_BT.float())
