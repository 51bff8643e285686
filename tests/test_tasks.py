"""Built-in tasks: seeded generation, disjoint splits, checker, partial credit, lengths.

Every test runs for every task in `TASKS` and, where a trace is rendered, every style.
"""

from __future__ import annotations

import re
import statistics

import pytest

from pruneopd.tasks import TASKS, in_test_split
from pruneopd.tokenizer import build_tokenizer

TASK_STYLES = [(t.name, s) for t in TASKS.values() for s in t.styles]
ids = [f"{t}-{s}" for t, s in TASK_STYLES]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()  # ~2 s: once per module


def some_problems(task, n=20, seed=3):
    """A mix of difficulties: the smallest (as many as exist), a small one and the default."""
    out = task.problems("test", 5, seed=seed, difficulty=1)  # `add` has 8 at difficulty 1
    for d in (3, None):
        out.extend(task.problems("test", n, seed=seed, difficulty=d))
    return out


def as_tuples(problems):
    return [(p.prompt, p.answer, p.steps) for p in problems]


# ---- generation -----------------------------------------------------------------------


@pytest.mark.parametrize("name", list(TASKS))
@pytest.mark.parametrize("split", ["train", "test"])
def test_generation_is_deterministic(name, split):
    task = TASKS[name]
    a = task.problems(split, 50, seed=7)
    b = task.problems(split, 50, seed=7)
    assert as_tuples(a) == as_tuples(b)
    assert [task.render(p, s) for p in a for s in task.styles] == [
        task.render(p, s) for p in b for s in task.styles
    ]
    # a different seed, or a different difficulty, gives different problems
    other_seed = {p.prompt for p in task.problems(split, 50, seed=8)}
    assert other_seed != {p.prompt for p in a}
    assert len(other_seed & {p.prompt for p in a}) < 5
    other = task.default_difficulty + 1 if task.default_difficulty < task.max_difficulty else 1
    other_diff = task.problems(split, 50, seed=7, difficulty=other)
    assert [p.prompt for p in other_diff] != [p.prompt for p in a]


@pytest.mark.parametrize("name", list(TASKS))
def test_difficulty_is_number_of_steps(name):
    task = TASKS[name]
    for d in (1, 2, task.default_difficulty, task.max_difficulty):
        lo, hi = task.steps_range(d)
        assert lo <= hi and (lo == hi == d or task.name == "loop")
        for p in task.problems("train", 5, seed=0, difficulty=d):
            assert lo <= len(p.steps) <= hi
            if name == "add":  # each column's last digit, then the final carry
                assert p.answer == "".join(v[-1] for v in p.steps) + p.steps[-1][0]
            else:  # the final state is the answer
                assert p.answer == p.steps[-1]
    lo, hi = task.steps_range(task.default_difficulty)
    for p in task.problems("train", 5, seed=0):  # None = the task's default
        assert lo <= len(p.steps) <= hi


@pytest.mark.parametrize("name", list(TASKS))
def test_train_and_test_splits_are_disjoint(name):
    task = TASKS[name]
    train = [p.prompt for p in task.problems("train", 2000, seed=0)]
    test = [p.prompt for p in task.problems("test", 300, seed=0)]
    test_other_seed = [p.prompt for p in task.problems("test", 300, seed=1)]
    assert len(set(train)) == len(train)  # no duplicates within a split
    assert len(set(test)) == len(test)
    assert not set(train) & set(test)
    assert not set(train) & set(test_other_seed)
    assert not any(in_test_split(x) for x in train)
    assert all(in_test_split(x) for x in test)


@pytest.mark.parametrize("name", list(TASKS))
def test_bad_arguments_raise(name):
    task = TASKS[name]
    with pytest.raises(ValueError, match="split"):
        task.problems("valid", 1)
    with pytest.raises(ValueError, match="difficulty"):
        task.problems("train", 1, difficulty=0)
    p = task.problems("train", 1)[0]
    with pytest.raises(ValueError, match="style"):
        task.render(p, "no-such-style")


# ---- checker ----------------------------------------------------------------------------


def bump(ch: str) -> str:
    """A different character of the same kind: digit -> next digit, letter -> next letter."""
    if ch.isdigit():
        return str((int(ch) + 1) % 10)
    assert ch.isalpha(), ch
    return "a" if ch == "z" else chr(ord(ch) + 1)


@pytest.mark.parametrize(("name", "style"), TASK_STYLES, ids=ids)
def test_checker_accepts_reference(name, style):
    task = TASKS[name]
    for p in some_problems(task):
        text = task.render(p, style)
        assert task.extract_answer(text) == p.answer
        assert task.check(p, text)
        assert task.check(p, text + "\n")  # trailing whitespace is allowed


@pytest.mark.parametrize(("name", "style"), TASK_STYLES, ids=ids)
def test_checker_rejects_corrupted_answers(name, style):
    task = TASKS[name]
    for p in some_problems(task):
        text = task.render(p, style)
        assert text.endswith("#" + p.answer)
        head = text[: -len(p.answer)]
        bad = []
        for i, ch in enumerate(p.answer):  # one digit / letter of the final answer changed
            bad.append(head + p.answer[:i] + bump(ch) + p.answer[i + 1 :])
        bad.append(head[:-1] + p.answer)  # '#' marker dropped
        bad.append(text[: len(text) // 2])  # trace truncated
        bad.append(text[: text.rindex("#")])  # truncated just before the answer
        bad.append(text[:-1])  # last character of the answer cut
        bad.append(text + " and then 7")  # garbage after the answer
        bad.append(text + "x")
        bad.append(text + "5")
        bad.append(text + " #" + bump(p.answer[0]) + p.answer[1:])  # a second, wrong answer
        bad.append("")
        bad.append("#")
        for b in bad:
            assert not task.check(p, b), (p.answer, b)


# ---- partial credit ---------------------------------------------------------------------


def step_spans(body: str, style: str) -> list[tuple[int, int]]:
    """Character spans of each written step of a trace body (the text before ' #answer').

    terse steps start with ' <label>:' and end where the next step or round marker
    (' | n', loop) starts; verbose ones end every step with ';'.
    """
    if style == "terse":
        starts = [m.start() for m in re.finditer(r" [A-Za-z]:", body)]
        cuts = sorted(starts[1:] + [m.start() for m in re.finditer(r" \| ", body)] + [len(body)])
        return [(a, next(c for c in cuts if c > a)) for a in starts]
    return [m.span() for m in re.finditer(r"[^;]+;", body)]


def corrupt_step(task, problem, style: str, j: int) -> str:
    """The reference trace with the value written by step j edited (its last digit bumped).

    In every style the last digit of a step is part of that step's value: the last
    register (regs) or the column sum (add).
    """
    text = task.render(problem, style)
    cut = text.rindex(" #")
    body, tail = text[:cut], text[cut:]
    spans = step_spans(body, style)
    assert len(spans) == len(problem.steps)
    start, end = spans[j]
    k = max(i for i in range(start, end) if body[i].isdigit())
    return body[:k] + bump(body[k]) + body[k + 1 :] + tail


@pytest.mark.parametrize(("name", "style"), TASK_STYLES, ids=ids)
def test_partial_credit_reference_is_one(name, style):
    task = TASKS[name]
    for p in some_problems(task):
        assert task.parse_steps(task.render(p, style)) == list(p.steps)
        assert task.partial_credit(p, task.render(p, style)) == 1.0
    assert task.partial_credit(p, "") == 0.0


@pytest.mark.parametrize(("name", "style"), TASK_STYLES, ids=ids)
def test_partial_credit_counts_steps_before_first_error(name, style):
    task = TASKS[name]
    for p in task.problems("test", 5, seed=11) + task.problems("test", 3, seed=11, difficulty=2):
        n = len(p.steps)
        for j in range(n):
            text = corrupt_step(task, p, style, j)
            got = task.parse_steps(text)
            assert len(got) == n and got[j] != p.steps[j]  # the edit hit step j's value only
            assert got[:j] == list(p.steps[:j]) and got[j + 1 :] == list(p.steps[j + 1 :])
            assert task.partial_credit(p, text) == pytest.approx(j / n)


@pytest.mark.parametrize("name", list(TASKS))
def test_partial_credit_of_truncated_trace(name):
    task = TASKS[name]
    for style in task.styles:
        for p in task.problems("test", 5, seed=2):
            text = task.render(p, style)
            body = text[: text.rindex(" #")]
            spans = step_spans(body, style)
            for j in (0, len(spans) // 2, len(spans) - 1):
                prefix = body[: spans[j][1]]  # steps 0..j written, nothing after
                assert task.partial_credit(p, prefix) == pytest.approx((j + 1) / len(p.steps))
                assert not task.check(p, prefix)


# ---- styles -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(TASKS))
def test_styles_reach_same_answer_and_steps(name):
    task = TASKS[name]
    assert len(task.styles) >= 2
    for p in some_problems(task):
        texts = [task.render(p, s) for s in task.styles]
        assert len(set(texts)) == len(texts)  # styles really differ
        for t in texts:
            assert task.extract_answer(t) == p.answer
            assert task.parse_steps(t) == list(p.steps)


# ---- difficulty and answer space -----------------------------------------------------


def median_tokens(tok, task, style, difficulty=None, n=64):
    problems = task.problems("test", n, seed=0, difficulty=difficulty)
    return statistics.median(
        len(tok(task.render(p, style), add_special_tokens=False)["input_ids"]) for p in problems
    )


@pytest.mark.parametrize(("name", "style"), TASK_STYLES, ids=ids)
def test_default_difficulty_is_long_horizon(tok, name, style):
    assert median_tokens(tok, TASKS[name], style) >= 150


@pytest.mark.parametrize("name", list(TASKS))
def test_difficulty_knob_reaches_long_responses(tok, name):
    task = TASKS[name]
    lengths = {s: median_tokens(tok, task, s, difficulty=task.max_difficulty) for s in task.styles}
    assert max(lengths.values()) >= 500, lengths
    # and length grows with difficulty in every style (loop's default is its maximum)
    for s in task.styles:
        assert lengths[s] > median_tokens(tok, task, s, difficulty=task.max_difficulty // 2)


@pytest.mark.parametrize("name", list(TASKS))
def test_answer_space_is_large(name):
    """Guessing cannot score: hundreds of problems have at least 50 distinct answers."""
    task = TASKS[name]
    answers = [p.answer for p in task.problems("train", 400, seed=0)]
    assert len(set(answers)) >= 50
    most_common = max(answers.count(a) for a in set(answers))
    assert most_common / len(answers) < 0.05


def test_asking_for_more_problems_than_exist_is_an_error():
    # `add` at difficulty 1 has 100 prompts in all, about 1/8 of them in the test split
    with pytest.raises(ValueError, match="only about .* distinct test problems at difficulty 1"):
        TASKS["add"].problems("test", 50, seed=0, difficulty=1)
