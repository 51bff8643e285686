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


def test_reliability_horizon_by_hand():
    kw = dict(bucket=1, drop=0.05, min_len=1, max_len=8)
    c = [4, 4, 4, 4]
    # shares 1.0, 0.75, 1.0, 0.5: head (position 0) 1.0; from 1 on 0.75 < 0.95 -> 1
    assert reliability_horizon([4, 3, 4, 2], c, **kw) == 1
    # shares 1.0, 1.0, 1.0, 0.75: from 1 on 0.917, from 2 on 0.875: every suffix below -> 1
    assert reliability_horizon([4, 4, 4, 3], c, **kw) == 1
    # min_len 2: head (0, 1) 1.0; from 2 on 0.875 < 0.95 -> 2
    assert reliability_horizon([4, 4, 4, 3], c, **{**kw, "min_len": 2}) == 2
    # drop 0.3: no suffix is 0.3 under the head (the lowest, the last bucket, is 0.75) -> L_max
    assert reliability_horizon([4, 4, 4, 3], c, **{**kw, "drop": 0.3}) == 8
    # the same share all along, however low: no horizon
    assert reliability_horizon([2, 2, 2, 2], c, **kw) == 8
    # a suffix of fewer than 4 x bucket tokens says nothing: only the last bucket is low
    assert reliability_horizon([4, 4, 4, 0], [4, 4, 4, 3], **{**kw, "min_len": 3}) == 8
    # too few head tokens: no horizon
    assert reliability_horizon([3, 0, 0, 0], [3, 4, 4, 4], **kw) == 8
    # the docstring's example
    kw32 = dict(bucket=32, drop=0.05, max_len=128)
    a, n = [128, 125.44, 115.2, 115.2], [128] * 4
    assert reliability_horizon(a, n, min_len=32, **kw32) == 32
    assert reliability_horizon(a, n, min_len=64, **kw32) == 64


def _cfg(**kw) -> TrainConfig:
    base = dict(
        method="auto",
        max_len=8,
        min_len=4,
        auto_bucket=2,
        auto_drop=0.2,
        auto_probe_every=2,
        auto_w_drop=0.5,
        w_base=1.0,
    )
    return TrainConfig(**{**base, **kw})


def test_auto_method_weighs_and_learns_the_horizon():
    m = build_method(_cfg())
    assert isinstance(m, AutoOPD) and [m.cap(s) for s in range(4)] == [8, 8, 8, 8]
    assert m.state_dict() == {"horizon": None} and m.final_cap() == 8  # not measured yet
    mask_BT = torch.ones(2, 8, dtype=torch.bool)
    agree_BT = torch.tensor([[1, 1, 1, 0, 0, 0, 1, 1], [1, 1, 1, 1, 0, 0, 1, 1]]).bool()
    tw = SimpleNamespace(agree_BT=agree_BT)
    mw = m.weigh(tw, mask_BT, [0.0, 0.0], torch.zeros(2, 8))
    assert mw.train_mask_BT.all()  # before the first probe the horizon is L_max
    # w_t = clip(1 - 0.5 * C_t, 0, 1); m_t = (w_t + 1) / 2: row 0 disagrees at 3, 4, 5
    assert mw.mult_BT[0].tolist() == [1, 1, 1, 0.75, 0.5, 0.5, 0.5, 0.5]
    assert mw.mult_BT[1].tolist() == [1, 1, 1, 1, 0.75, 0.5, 0.5, 0.5]
    # buckets of 2: shares 1, 0.75, 0, 1; head (before min_len 4) 7/8; from 4 on 0.5 < 0.675
    metrics = dict(mw.audit)
    out = m.learn(0, None, metrics)
    assert out == {"top1_agreement": 11 / 16, "probe_horizon": 4, "horizon": 4, "next_cap": 4}
    assert metrics == {}  # the per-bucket sums are consumed, not logged
    assert [m.cap(s) for s in range(1, 5)] == [4, 8, 4, 8]  # steps 2 and 4 probe
    mw = m.weigh(tw, mask_BT, [0.0, 0.0], torch.zeros(2, 8))
    assert mw.train_mask_BT.tolist() == [[True] * 4 + [False] * 4] * 2
    assert (mw.mult_BT[:, 4:] == 0).all()
    # a step that is not a probe keeps the horizon whatever its agreement says
    all_agree = SimpleNamespace(agree_BT=torch.ones(2, 8, dtype=torch.bool))
    assert (
        m.learn(1, None, dict(m.weigh(all_agree, mask_BT, [0, 0], torch.zeros(2, 8)).audit))[
            "horizon"
        ]
        == 4
    )
    assert (
        m.learn(2, None, dict(m.weigh(all_agree, mask_BT, [0, 0], torch.zeros(2, 8)).audit))[
            "horizon"
        ]
        == 8
    )
    assert m.state_dict() == {"horizon": 8} and m.final_cap() == 8
    # R only grows: a later probe that finds the decay again does not lower it
    out = m.learn(4, None, dict(m.weigh(tw, mask_BT, [0, 0], torch.zeros(2, 8)).audit))
    assert out["probe_horizon"] == 4 and out["horizon"] == 8 and m.cap(5) == 8


@pytest.mark.parametrize(
    "kw,key",
    [
        (dict(auto_probe_every=-1), "auto_probe_every"),
        (dict(auto_drop=1.5), "auto_drop"),
        (dict(auto_bucket=0), "auto_bucket"),
        (dict(auto_w_drop=-0.1), "auto_w_drop"),
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


def test_auto_probes_on_schedule_and_trains_up_to_the_horizon(zoo, tmp_path):
    # drop 0: the first bucket start past min_len from which on the agreement is any lower
    kw = dict(method="auto", auto_probe_every=2, auto_bucket=4, auto_drop=0.0, min_len=16)
    s = train(short_run_config(tmp_path, "a", max_steps=3, **kw))
    rows = metric_rows(tmp_path / "a")
    assert rows[0]["cap"] == rows[2]["cap"] == 48  # steps 0 and 2 probe to L_max
    horizon = rows[0]["horizon"]
    assert 16 <= horizon < 48 and rows[1]["cap"] == horizon == rows[0]["next_cap"]
    assert rows[1]["tokens_trained"] <= 4 * horizon
    assert all(0 <= r["top1_agreement"] <= 1 for r in rows)
    assert not any(k.startswith("auto_") for r in rows for k in r)
    assert s["final_cap"] == rows[-1]["horizon"]


def test_auto_with_a_reliable_teacher_trains_exactly_like_full(zoo, tmp_path):
    # drop 1 and no weight lost: the horizon stays L_max, every multiplier is 1
    train(short_run_config(tmp_path, "full", method="full"))
    train(short_run_config(tmp_path, "auto", method="auto", auto_drop=1.0, auto_w_drop=0.0))
    full, auto = metric_rows(tmp_path / "full"), metric_rows(tmp_path / "auto")
    assert [r["loss"] for r in auto] == [r["loss"] for r in full]
    wf, wa = final_weights(tmp_path / "full"), final_weights(tmp_path / "auto")
    assert all(torch.equal(wf[k], wa[k]) for k in wf)


def test_auto_run_stopped_and_resumed_is_exact(zoo, tmp_path):
    kw = dict(method="auto", auto_probe_every=2, auto_bucket=4, auto_drop=0.0, min_len=16)
    train(short_run_config(tmp_path, "ref", max_steps=4, **kw))
    train(short_run_config(tmp_path, "two", max_steps=2, **kw))
    train(short_run_config(tmp_path, "two", max_steps=4, resume="auto", **kw))
    ref, two = metric_rows(tmp_path / "ref"), metric_rows(tmp_path / "two")
    assert ref[1]["cap"] < 48  # the horizon moved before the stop: the checkpoint carries it
    assert ref == two
    wa, wb = final_weights(tmp_path / "ref"), final_weights(tmp_path / "two")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
