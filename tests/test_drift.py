import pytest
import torch

from pruneopd.method.drift import (
    drift_events,
    ran_out_B,
    reliability_weights,
    teacher_top_p_accept_events,
    topk_overlap,
    topk_overlap_from_ids,
)

# ---------------------------------------------------------------- overlap


def test_topk_overlap_hand_computed():
    student = torch.tensor([[[6.0, 5.0, 4.0, 3.0, 2.0, 1.0]] * 3])  # top-3 {0, 1, 2}
    teacher = torch.tensor(
        [
            [
                [6.0, 5.0, 4.0, 3.0, 2.0, 1.0],  # {0, 1, 2} -> 3/3
                [6.0, 1.0, 5.0, 2.0, 4.0, 3.0],  # {0, 2, 4} -> 2/3
                [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],  # {3, 4, 5} -> 0/3
            ]
        ]
    )
    overlap = topk_overlap(student, teacher, k=3)
    assert overlap.shape == (1, 3)
    torch.testing.assert_close(overlap, torch.tensor([[1.0, 2 / 3, 0.0]]))


def test_topk_overlap_from_ids_ignores_order():
    s = torch.tensor([[[0, 1, 2, 3], [5, 6, 7, 8]]])
    t = torch.tensor([[[3, 9, 0, 1], [8, 7, 6, 5]]])
    torch.testing.assert_close(topk_overlap_from_ids(s, t), torch.tensor([[0.75, 1.0]]))


def test_topk_overlap_from_ids_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        topk_overlap_from_ids(torch.zeros(1, 2, 3, dtype=torch.long), torch.zeros(1, 2, 4))


# ---------------------------------------------------------------- events


def test_drift_events_threshold_and_mask():
    overlap = torch.tensor([[0.5, 0.7, 0.9], [0.1, 0.2, 0.3]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    events = drift_events(overlap, mask, tau=0.7)
    assert events.dtype == torch.bool
    # strict "<": 0.7 is not an event; the masked 0.3 is not an event
    assert events.tolist() == [[True, False, False], [True, True, False]]


def _top_p_inputs():
    # teacher top-4 ids [7, 3, 9, 1] with log-probs summing to 0.5; renormalised
    # probabilities are [0.1, 0.5, 0.1, 0.3], i.e. sorted: 3 (0.5), 1 (0.3), 7/9 (0.1 each)
    ids = torch.tensor([7, 3, 9, 1]).expand(1, 5, 4)
    logprobs = torch.tensor([0.05, 0.25, 0.05, 0.15]).log().expand(1, 5, 4)
    sampled = torch.tensor([[3, 1, 7, 42, 9]])
    return sampled, ids, logprobs


def test_teacher_top_p_nucleus():
    sampled, ids, logprobs = _top_p_inputs()
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    # top_p 0.7: cumulative 0.5 < 0.7, then 0.8 >= 0.7 -> nucleus {3, 1}
    events = teacher_top_p_accept_events(sampled, ids, logprobs, mask, top_p=0.7)
    assert events.tolist() == [[False, False, True, True, False]]
    # top_p 0.45: 0.5 >= 0.45 already -> nucleus {3}
    events = teacher_top_p_accept_events(sampled, ids, logprobs, torch.ones(1, 5), top_p=0.45)
    assert events.tolist() == [[False, True, True, True, True]]
    # top_p 0: the top-1 is still accepted
    events = teacher_top_p_accept_events(sampled, ids, logprobs, torch.ones(1, 5), top_p=0.0)
    assert events.tolist() == [[False, True, True, True, True]]
    # top_p 1: the whole top-K is accepted, only the id outside it drifts
    events = teacher_top_p_accept_events(sampled, ids, logprobs, torch.ones(1, 5), top_p=1.0)
    assert events.tolist() == [[False, False, False, True, False]]


# ---------------------------------------------------------------- weights


def test_reliability_weights_hand_computed():
    events = torch.tensor([[0, 1, 0, 1, 1]], dtype=torch.bool)
    w, m, eff = reliability_weights(events, torch.ones(1, 5), w_drop=0.25, w_base=0.5)
    # C = [0, 1, 1, 2, 3]
    torch.testing.assert_close(w, torch.tensor([[1.0, 0.75, 0.75, 0.5, 0.25]]))
    torch.testing.assert_close(m, torch.tensor([[1.5, 1.25, 1.25, 1.0, 0.75]]))
    assert eff.dtype == torch.long and eff.tolist() == [5]

    w, m, eff = reliability_weights(events, torch.ones(1, 5), w_drop=0.5, w_base=0.0)
    torch.testing.assert_close(w, torch.tensor([[1.0, 0.5, 0.5, 0.0, 0.0]]))
    torch.testing.assert_close(m, w)
    assert eff.tolist() == [3]


def test_reliability_weights_masked():
    events = torch.tensor([[0, 1, 0, 1, 1], [0, 1, 0, 0, 0]], dtype=torch.bool)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 1, 1, 0]])  # second row has a hole
    w, m, eff = reliability_weights(events, mask, w_drop=0.25, w_base=0.5)
    # row 0: C = [0, 1, 1, -, -]; row 1: the event in the hole is ignored, C = 0
    torch.testing.assert_close(
        w, torch.tensor([[1.0, 0.75, 0.75, 0.0, 0.0], [1.0, 0.0, 1.0, 1.0, 0.0]])
    )
    torch.testing.assert_close(
        m, torch.tensor([[1.5, 1.25, 1.25, 0.0, 0.0], [1.5, 0.0, 1.5, 1.5, 0.0]])
    )
    assert eff.tolist() == [3, 3]


def test_reliability_weights_all_drift_and_no_drift():
    events = torch.tensor([[1, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.bool)
    w, m, eff = reliability_weights(events, torch.ones(2, 4), w_drop=0.5, w_base=0.5)
    torch.testing.assert_close(w, torch.tensor([[0.5, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]))
    torch.testing.assert_close(m, torch.tensor([[1.0, 0.5, 0.5, 0.5], [1.5, 1.5, 1.5, 1.5]]))
    assert eff.tolist() == [1, 4]


def test_reliability_weights_released_delta_reaches_zero_exactly():
    # delta = 0.01: the 100th event gives w = 1 - 0.01 * 100 = 0, so l = 99 tokens
    events = torch.ones(1, 120, dtype=torch.bool)
    w, _, eff = reliability_weights(events, torch.ones(1, 120), w_drop=0.01, w_base=0.5)
    assert eff.tolist() == [99]
    assert w[0, 98].item() == pytest.approx(0.01) and w[0, 99].item() == 0.0


def test_teacher_top_p_exact_boundary():
    # dyadic probabilities are exact in float32: sorted 0.5, 0.25, 0.125, 0.125
    ids = torch.tensor([[[4, 5, 6, 7]]]).expand(1, 2, 4)
    logprobs = torch.tensor([0.5, 0.25, 0.125, 0.125]).log().expand(1, 2, 4)
    sampled = torch.tensor([[4, 5]])
    # cumulative mass 0.5 already reaches top_p = 0.5, so the nucleus is {4} and 5 drifts
    events = teacher_top_p_accept_events(sampled, ids, logprobs, torch.ones(1, 2), top_p=0.5)
    assert events.tolist() == [[False, True]]
    events = teacher_top_p_accept_events(sampled, ids, logprobs, torch.ones(1, 2), top_p=0.75)
    assert events.tolist() == [[False, False]]


def test_ran_out_hand_computed():
    # sample 0 reaches w = 0 at its last token; sample 1's zeros sit outside its mask;
    # sample 2 hits 0 inside a hole-free mask after a partial drop
    weights_BT = torch.tensor([[1.0, 0.5, 0.0], [1.0, 0.0, 0.0], [0.5, 1e-9, 0.0]])
    mask_BT = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0]], dtype=torch.bool)
    assert ran_out_B(weights_BT, mask_BT).tolist() == [True, False, True]


def test_ran_out_matches_effective_length():
    g = torch.Generator().manual_seed(0)
    events_BT = torch.rand(6, 20, generator=g) < 0.3
    mask_BT = torch.rand(6, 20, generator=g) < 0.8
    weights_BT, _, eff_B = reliability_weights(events_BT, mask_BT, 0.25, 0.0)
    assert ran_out_B(weights_BT, mask_BT).tolist() == (eff_B < mask_BT.sum(-1)).tolist()
