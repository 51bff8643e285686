"""The trainer's note when the student stops ending its responses (training/ending_watch.py)."""

from __future__ import annotations

from pruneopd.training.ending_watch import EndingWatch


def notes(rates, caps, **kw) -> list[int]:
    w = EndingWatch(**kw)
    out = [
        step
        for step, (r, c) in enumerate(zip(rates, caps, strict=True), 1)
        if w.update(step, r, 400.0, c)
    ]
    return out


def test_the_docstrings_example_and_once_only():
    assert notes([0.9, 0.4, 0, 0, 0], [448] * 5) == [5]
    assert notes([0.9, 0, 0, 0, 0, 0, 0, 0], [448] * 8) == [4]  # said once


def test_silent_when_the_samples_never_ended_or_end_again():
    assert notes([0, 0, 0, 0, 0], [448] * 5) == []  # never ended: the cap is below the lengths
    assert notes([0.9, 0, 0, 0.1, 0, 0], [448] * 6) == []  # a sample ended again: the run restarts


def test_silent_when_the_cap_shrank_below_the_responses():
    # Prune-OPD's cap sinking to L_min stops every sample without the student changing
    assert notes([0.9, 0.6, 0, 0, 0], [256, 256, 128, 128, 128]) == []
    assert notes([0.9, 0, 0, 0], [256, 288, 320, 352]) == [4]  # a cap that grew: the student


def test_the_note_names_the_step_and_what_to_look_at():
    w = EndingWatch(patience=1)
    assert w.update(1, 1.0, 190.0, 448) is None
    note = w.update(2, 0.0, 448.0, 448)
    assert note.startswith("pruneopd: note: step 2: the student has stopped ending its responses")
    assert "mean length 448 under a cap of 448" in note and "\n" not in note
