import pytest
import torch

from pruneopd.method.budget import ResponseBudget


def _budget(**overrides):
    args = dict(
        init_len=100, min_len=50, max_len=200, step=20, margin=10, hit_ratio=0.5, patience=2
    )
    args.update(overrides)
    return ResponseBudget(**args)


def test_grow_on_hits():
    b = _budget()
    out = b.update([95, 10])  # boundary 90: one hit of two -> h = 0.5 >= 0.5
    assert out["boundary"] == 90
    assert out["hit_ratio"] == 0.5
    assert out["length"] == 100 and out["next_length"] == 120
    assert b.length == 120 and b.misses == 0


def test_hit_ratio_uses_boundary():
    b = _budget()
    out = b.update(torch.tensor([89, 90, 91, 0]))  # 90 and 91 reach b = 90; 89 does not
    assert out["hit_ratio"] == 0.5 and out["num_hits"] == 2 and out["num_samples"] == 4
    b = _budget()
    out = b.update([89, 89, 89, 90])
    assert out["hit_ratio"] == 0.25
    assert out["next_length"] == 100 and out["misses"] == 1


def test_shrink_after_patience():
    b = _budget()
    out = b.update([0, 0])
    assert out["next_length"] == 100 and out["misses"] == 1
    out = b.update([0, 0])
    assert out["length"] == 100 and out["next_length"] == 80 and out["misses"] == 0
    out = b.update([0, 0])
    assert out["next_length"] == 80 and out["misses"] == 1


def test_hit_resets_misses():
    b = _budget(max_len=100)  # already at the max: a hit changes nothing but the counter
    b.update([0])
    out = b.update([100])
    assert out["misses"] == 0 and out["next_length"] == 100
    out = b.update([0])
    assert out["misses"] == 1 and out["next_length"] == 100


def test_clamp_at_min_and_boundary_floor():
    b = _budget(init_len=60, patience=1)
    out = b.update([0])
    assert out["next_length"] == 50  # 60 - 20 clamped to min_len
    out = b.update([0])
    assert out["boundary"] == 50  # max(50, 50 - 10)
    assert out["next_length"] == 50


def test_clamp_at_max():
    b = _budget(init_len=190)
    assert b.update([190])["next_length"] == 200
    out = b.update([190])  # boundary 190
    assert out["boundary"] == 190 and out["next_length"] == 200


def test_empty_batch_is_a_miss():
    b = _budget(patience=1)
    out = b.update([])
    assert out["hit_ratio"] == 0.0 and out["next_length"] == 80


def test_zero_threshold_always_grows():
    b = _budget(hit_ratio=0.0)
    assert b.update([0])["next_length"] == 120


@pytest.mark.parametrize(
    "overrides,field",
    [
        ({"min_len": 0, "init_len": 10}, "min_len"),
        ({"max_len": 40}, "max_len"),
        ({"init_len": 300}, "init_len"),
        ({"init_len": 20}, "init_len"),
        ({"step": -1}, "step"),
        ({"margin": -5}, "margin"),
        ({"hit_ratio": 1.5}, "hit_ratio"),
        ({"patience": 0}, "patience"),
    ],
)
def test_validation(overrides, field):
    with pytest.raises(ValueError, match=field):
        _budget(**overrides)


def test_state_dict_roundtrip():
    b = _budget()
    b.update([200])
    b.update([0])
    state = b.state_dict()
    assert state == {"length": 120, "misses": 1}
    c = _budget()
    c.load_state_dict(state)
    assert c.length == 120 and c.misses == 1
    assert c.update([0])["next_length"] == 100  # patience reached with the restored counter
    with pytest.raises(ValueError, match="length"):
        c.load_state_dict({"length": 999, "misses": 0})
