"""The test bed card's statistics: golden values by hand, and a card of the fast long zoo."""

from __future__ import annotations

import json

import pytest
import torch

from pruneopd.tools.testbed import (
    length_stats,
    pair_card,
    position_curves,
    reference_lengths,
    reliability_run_out,
    write_card,
)


def test_length_stats_by_hand():
    s = length_stats([10, 20, 30, 40, 100])
    assert s["median"] == 30 and s["mean"] == 40 and (s["min"], s["max"]) == (10, 100)
    assert s["quartiles"] == [20, 30, 40]
    assert s["bin_width"] == 10 and sum(s["histogram"]) == 5
    assert s["histogram"][0] == 1 and s["histogram"][9] == 1  # 10 in the first bin, 100 last
    assert length_stats([7])["quartiles"] == [7, 7, 7]
    with pytest.raises(ValueError):
        length_stats([])


def test_position_curves_by_hand():
    values_BT = torch.tensor([[1.0, 0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 9.0, 9.0, 9.0]])
    mask_BT = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]).bool()
    c = position_curves(values_BT, mask_BT, bin_size=2)
    # bins [0,2): 1,0,0,0 -> 0.25; [2,4): 1,1 -> 1.0; [4,5): 0 -> 0.0 (masked 9s ignored)
    assert c == {"start": [0, 2, 4], "mean": [0.25, 1.0, 0.0], "tokens": [4, 2, 1]}
    empty = position_curves(values_BT, torch.zeros_like(mask_BT), bin_size=2)
    assert empty == {"start": [], "mean": [], "tokens": []}
    with pytest.raises(ValueError):
        position_curves(values_BT, mask_BT, bin_size=0)


def test_reliability_run_out_by_hand():
    # w_drop 0.5: two events exhaust a sample
    events_BT = torch.tensor([[1, 0, 1, 0, 0], [1, 0, 0, 0, 0], [0, 1, 1, 0, 0]]).bool()
    mask_BT = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0], [1, 1, 1, 0, 0]]).bool()
    r = reliability_run_out(events_BT, mask_BT, w_drop=0.5)
    # sample 0: w hits 0 at position 2 (eff 2 of 5); 1: never (eff 4 of 4); 2: at 2 but that is
    # its last token (eff 2 of 3, so it did run out before its end)
    assert r["effective_lengths"] == [2, 4, 2]
    assert r["share_run_out"] == pytest.approx(2 / 3)
    assert r["median_position"] == 2.0
    assert r["median_reliable_share"] == pytest.approx(2 / 3)
    none = reliability_run_out(torch.zeros_like(events_BT), mask_BT, w_drop=0.5)
    assert none["share_run_out"] == 0 and none["median_position"] is None


def test_monitor_sweep_by_hand():
    from pruneopd.tools.testbed import monitor_sweep

    # two samples, top-2 lists; sample 0 disagrees at top-1 on tokens 1 and 2
    s_BTK = torch.tensor([[[1, 2], [3, 4], [5, 6], [7, 8]], [[1, 2], [3, 4], [5, 6], [7, 8]]])
    t_BTK = torch.tensor([[[1, 2], [4, 3], [9, 6], [7, 8]], [[1, 2], [3, 4], [5, 6], [7, 8]]])
    mask_BT = torch.ones(2, 4, dtype=torch.bool)
    rows = monitor_sweep(s_BTK, t_BTK, mask_BT, ks=(1, 2, 4), taus=(1.0,), w_drops=(0.5,))
    assert [r["k"] for r in rows] == [1, 2]  # K = 4 is more than the lists hold
    k1, k2 = rows
    # K=1: events at tokens 1, 2 of sample 0 -> w hits 0 at token 2: l = 2 of 4; sample 1: 4
    assert k1["event_rate"] == 2 / 8 and k1["share_run_out"] == 0.5
    assert k1["eff_len_median"] == 3.0 and k1["eff_len_p90"] == pytest.approx(3.8)
    # K=2: overlaps of sample 0 are 1, 1, 0.5, 1 -> one event (tau 1.0): never runs out
    assert k2["event_rate"] == 1 / 8 and k2["share_run_out"] == 0.0


def _row(k, tau, w, p90, run_out=0.0):
    return {"k": k, "tau": tau, "w_drop": w, "eff_len_p90": p90, "share_run_out": run_out}


def test_choose_monitor_by_hand():
    from pruneopd.tools.testbed import choose_monitor

    same = [
        _row(16, 0.7, 0.01, 800, 0.04),
        _row(8, 0.7, 0.01, 730, 0.30),
        _row(4, 0.5, 0.02, 700),
        _row(16, 0.9, 0.01, 720, 0.10),
        _row(16, 0.5, 0.01, 760, 0.10),
    ]
    cross = [
        _row(16, 0.7, 0.01, 300),
        _row(8, 0.7, 0.01, 50),
        _row(4, 0.5, 0.02, 20),
        _row(16, 0.9, 0.01, 100),
        _row(16, 0.5, 0.01, 60),
    ]
    # K4 separates best but the same pair's cap cannot grow with it; of the three that sink
    # the cross cap (p90 < 128), K16/tau .9 and K16/tau .5 take least from the same pair
    # (10% run out), and the smaller tau wins the tie
    got = choose_monitor(same, cross, grow_at=720, sink_below=128)
    assert (got["k"], got["tau"], got["w_drop"]) == (16, 0.5, 0.01)
    assert got["qualified"] == 4 and got["sinking"] == 3 and got["cross"]["eff_len_p90"] == 60
    # nothing sinks it below 40: the smallest cross p90 among those that qualify
    got = choose_monitor(same, cross, grow_at=720, sink_below=40)
    assert (got["k"], got["tau"], got["sinking"]) == (8, 0.7, 0)
    with pytest.raises(ValueError, match="grow to 900.*best is 800"):
        choose_monitor(same, cross, grow_at=900, sink_below=128)


def test_pair_card_on_the_fast_long_zoo(fast_zoo, tmp_path):
    from pruneopd.models import load_model, load_tokenizer
    from pruneopd.tasks import TASKS

    torch.set_num_threads(1)
    zoo = fast_zoo / "long"
    tok = load_tokenizer(str(zoo / "teacher"))
    teacher = load_model(str(zoo / "teacher"))
    task = TASKS["loop"]
    problems = task.problems("test", 6, seed=0, difficulty=2)
    cards = {}
    for name in ("student-same", "student-cross"):
        card = pair_card(
            load_model(str(zoo / name)),
            teacher,
            tok,
            task,
            problems,
            k=4,
            tau=0.7,
            w_drop=0.1,
            max_new_tokens=40,
            bin_size=8,
        )
        assert card["samples"] == 6 and 1 <= card["lengths"]["max"] <= 40
        assert 0 <= card["top1_agreement"] <= 1 and 0 <= card["event_rate"] <= 1
        total = round(card["lengths"]["mean"] * card["samples"])  # every response token, once
        assert sum(card["top1_curve"]["tokens"]) == sum(card["overlap_curve"]["tokens"]) == total
        assert all(e <= total for e in card["reliability"]["effective_lengths"])
        assert card["overlap_curve"]["start"][0] == 0
        assert {(r["k"], r["tau"]) for r in card["sweep"]} >= {(1, 0.5), (16, 0.7)}
        cards[name] = card
    ref = reference_lengths(tok, task, problems)
    assert ref["min"] >= 60  # one round of four operations and EOS at least
    data = write_card(cards, {"reference": ref}, tmp_path)
    assert (tmp_path / "top1_by_position.png").stat().st_size > 1000
    assert json.loads((tmp_path / "testbed.json").read_text()) == json.loads(json.dumps(data))
