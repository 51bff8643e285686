"""IW-OPD and the probe-audited window: their rules on golden values worked by hand (and IW-OPD
against a plain loop), the config checks, and short runs on the fast zoo: iw-opd with gamma 0
trains exactly like full OPD, the window probes on schedule and trains only its window, and a
window run stopped and resumed ends as one never stopped."""

from __future__ import annotations

import pytest
import torch
from tiny import final_weights, metric_rows, short_run_config

from pruneopd.config import ConfigError, TrainConfig
from pruneopd.method import build_method
from pruneopd.method.iw_opd import IWOPD, iw_opd_weights
from pruneopd.method.window import ProbedWindow, WindowOPD, tail_signal, window_mask
from pruneopd.training.train import train

# ---- IW-OPD's weights -------------------------------------------------------------------


def test_iw_opd_weights_by_hand():
    logratio_BT = torch.tensor(
        [[-1.0, 2.0, 0.0, -1.0], [0.5, -0.5, 7.0, 7.0], [0.0, 0.0, 0.0, 0.0]]
    )
    mask_BT = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]]).bool()
    w_BT = iw_opd_weights(logratio_BT, mask_BT, gamma=0.5)
    # row 0: d [1, 2, 0, 1], D 4, D_<t [0, 1, 3, 3] -> 1 + 0.5 * (1 - [0, .25, .75, .75])
    assert w_BT[0].tolist() == [1.5, 1.375, 1.125, 1.125]
    # row 1: padding neither counts in D nor gets a weight: d [.5, .5], D 1, D_<t [0, .5]
    assert w_BT[1].tolist() == [1.5, 1.25, 0.0, 0.0]
    # row 2: no discrepancy at all (D = 0 < eps): every valid token gets 1 + gamma
    assert w_BT[2].tolist() == [1.5, 1.5, 1.5, 0.0]
    assert torch.equal(iw_opd_weights(logratio_BT, mask_BT, gamma=0.0), mask_BT.float())


def test_iw_opd_weights_match_a_plain_loop():
    g = torch.Generator().manual_seed(0)
    logratio_BT = torch.randn(5, 9, generator=g)
    mask_BT = torch.arange(9) < torch.tensor([9, 4, 1, 0, 7])[:, None]
    gamma, eps = 0.7, 1e-8
    want = torch.zeros(5, 9, dtype=torch.float64)
    for b in range(5):
        d = [abs(float(x)) for x, m in zip(logratio_BT[b], mask_BT[b], strict=True) if m]
        total = max(sum(d), eps)
        for t in range(len(d)):
            want[b, t] = 1 + gamma * (1 - sum(d[:t]) / total)
    got = iw_opd_weights(logratio_BT, mask_BT, gamma, eps)
    assert torch.allclose(got.double(), want, atol=1e-6)
    # the weights never increase along a sample and stay in [1, 1 + gamma]
    valid = got[mask_BT]
    assert valid.min() >= 1 - 1e-6 and valid.max() <= 1 + gamma + 1e-6
    assert (got[0, 1:] <= got[0, :-1]).all()


def test_iw_opd_method_weighs_every_valid_token():
    cfg = TrainConfig(method="iw-opd", iw_gamma=0.5)
    m = build_method(cfg)
    assert isinstance(m, IWOPD) and m.cap(0) == m.cap(99) == cfg.max_len
    mask_BT = torch.tensor([[1, 1, 1, 1]]).bool()
    mw = m.weigh(None, mask_BT, [0.0], torch.tensor([[-1.0, 2.0, 0.0, -1.0]]))
    assert mw.mult_BT.tolist() == [[1.5, 1.375, 1.125, 1.125]]
    assert torch.equal(mw.train_mask_BT, mask_BT) and m.state_dict() is None


# ---- the probed window --------------------------------------------------------------------


def test_tail_signal_and_window_mask_by_hand():
    logratio_BT = torch.tensor([[1.0, -1.0, 2.0, 0.0], [0.5, -0.5, 3.0, 9.0]])
    mask_BT = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]).bool()
    # row 0: head |1| + |-1| = 2, tail 2; row 1: head 1, tail 3 (the 9 is padding)
    assert tail_signal(logratio_BT, mask_BT, 2) == {"tail": 5.0, "total": 8.0}
    assert tail_signal(logratio_BT, mask_BT, 4) == {"tail": 0.0, "total": 8.0}
    assert window_mask(mask_BT, 3).tolist() == [
        [True, True, True, False],
        [True, True, True, False],
    ]


def test_probed_window_rule_by_hand():
    w = ProbedWindow(64, 32, 192, 32, probe_every=3, tail_share=0.2)
    assert [w.is_probe(s) for s in range(7)] == [False, False, True, False, False, True, False]
    assert [w.cap(s) for s in range(3)] == [64, 64, 192]  # a probe samples to L_max
    assert w.update(5.0, 8.0) == {"share": 0.625, "length": 64, "next_length": 96}  # grows
    assert w.update(1.0, 10.0)["next_length"] == 64  # share 0.1: shrinks
    assert w.update(2.0, 10.0)["next_length"] == 32  # share 0.2 is not above 0.2: shrinks
    assert w.update(0.0, 0.0) == {"share": 0.0, "length": 32, "next_length": 32}  # the floor
    w.load_state_dict({"length": 176})
    assert w.update(1.0, 1.0)["next_length"] == 192 and w.update(1.0, 1.0)["next_length"] == 192
    assert w.state_dict() == {"length": 192}
    with pytest.raises(ValueError, match="length must be in"):
        w.load_state_dict({"length": 16})
    never = ProbedWindow(64, 32, 192, 32, probe_every=0, tail_share=0.2)
    assert not any(never.is_probe(s) for s in range(50)) and never.cap(49) == 64


def test_window_method_trains_the_window_and_learns_from_the_probe():
    cfg = TrainConfig(
        method="window", max_len=8, window_len=2, window_min=1, window_step=2, window_probe_every=2
    )
    m = build_method(cfg)
    assert isinstance(m, WindowOPD) and [m.cap(s) for s in range(4)] == [2, 8, 2, 8]
    mask_BT = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]).bool()
    logratio_BT = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0], [2.0, 0.0, -2.0, 5.0, 5.0]])
    mw = m.weigh(None, mask_BT, [0.0, 0.0], logratio_BT)
    assert mw.train_mask_BT.tolist() == [[True, True, False, False, False]] * 2
    assert torch.equal(mw.mult_BT, mw.train_mask_BT.float())
    assert mw.audit == {"window_tail_mass": 5.0, "window_mass": 9.0}
    # step 0 is no probe: H holds; step 1 is: share 5/9 > 0.2, H 2 -> 4, the next cap is H
    assert m.learn(0, None, mw.audit) == {"window": 2, "next_cap": 8}
    out = m.learn(1, None, mw.audit)
    assert out == {"window": 4, "probe_tail_share": pytest.approx(5 / 9), "next_cap": 4}
    assert m.final_cap() == 4 and m.state_dict() == {"length": 4}


@pytest.mark.parametrize(
    "kw,key",
    [
        (dict(iw_gamma=-0.1), "iw_gamma"),
        (dict(iw_eps=0.0), "iw_eps"),
        (dict(window_min=0), "window_min"),
        (dict(window_step=-1), "window_step"),
        (dict(window_probe_every=-1), "window_probe_every"),
        (dict(window_tail_share=1.5), "window_tail_share"),
        (dict(method="window", window_len=600), "window_len"),
        (dict(method="window", window_len=16, window_min=32), "window_len"),
    ],
)
def test_bad_keys_are_config_errors(kw, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        TrainConfig(**kw)


# ---- on the fast zoo ----------------------------------------------------------------------


def test_iw_opd_with_gamma_zero_trains_exactly_like_full_and_weighs_otherwise(zoo, tmp_path):
    train(short_run_config(tmp_path, "full", method="full"))
    train(short_run_config(tmp_path, "iw0", method="iw-opd", iw_gamma=0.0))
    train(short_run_config(tmp_path, "iw", method="iw-opd", iw_gamma=0.5))
    full, iw0, iw = (metric_rows(tmp_path / n) for n in ("full", "iw0", "iw"))
    assert [r["loss"] for r in iw0] == [r["loss"] for r in full]
    wf, w0 = final_weights(tmp_path / "full"), final_weights(tmp_path / "iw0")
    assert all(torch.equal(wf[k], w0[k]) for k in wf)
    assert all(r["cap"] == 48 for r in iw) and iw[0]["tokens_trained"] == full[0]["tokens_trained"]
    # the same first rollout and teacher scores, other weights: another loss
    assert iw[0]["rkl"] == full[0]["rkl"] and iw[0]["loss"] != full[0]["loss"]


def test_window_probes_on_schedule_and_trains_only_its_window(zoo, tmp_path):
    kw = dict(method="window", window_len=8, window_min=8, window_step=8, window_probe_every=2)
    s = train(short_run_config(tmp_path, "w", max_steps=4, **kw))
    rows = metric_rows(tmp_path / "w")
    caps = [r["cap"] for r in rows]
    assert caps[1] == caps[3] == 48 and caps[0] == 8  # steps 1 and 3 probe to L_max
    assert caps[2] == rows[1]["window"] == rows[1]["next_cap"]  # the probe's verdict holds next
    assert rows[0]["tokens_trained"] <= 4 * 8 and rows[1]["tokens_trained"] <= 4 * 8  # H = 8
    assert rows[1]["tokens_generated"] > rows[1]["tokens_trained"]  # the tail is only audited
    assert 0 <= rows[1]["probe_tail_share"] <= 1 and "probe_tail_share" not in rows[0]
    assert 0 <= rows[1]["window_tail_mass"] <= rows[1]["window_mass"]
    assert s["final_cap"] == rows[-1]["window"]


def test_window_run_stopped_and_resumed_is_exact(zoo, tmp_path):
    kw = dict(
        method="window",
        window_len=8,
        window_min=8,
        window_step=8,
        window_probe_every=2,
        window_tail_share=0.0,  # every probe with any tail signal grows H
    )
    train(short_run_config(tmp_path, "ref", max_steps=5, **kw))
    train(short_run_config(tmp_path, "two", max_steps=3, **kw))
    train(short_run_config(tmp_path, "two", max_steps=5, resume="auto", **kw))
    ref, two = metric_rows(tmp_path / "ref"), metric_rows(tmp_path / "two")
    assert [r["cap"] for r in ref][2] > 8  # H moved before the stop: the checkpoint carries it
    assert ref == two
    wa, wb = final_weights(tmp_path / "ref"), final_weights(tmp_path / "two")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
