"""Compatibility statistics: the style of each sample and the per-style agreement."""

from __future__ import annotations

import random

import pytest

from pruneopd.models import load_model, load_tokenizer
from pruneopd.tasks import TASKS
from pruneopd.tools.compat import overlap_stats


@pytest.mark.parametrize("task_name", sorted(TASKS))
def test_style_of_reads_the_style_a_reference_is_written_in(task_name):
    task = TASKS[task_name]
    problem = task._make(random.Random(0), 4)
    assert task.style_of(task.render(problem, "terse")) == "terse"
    assert task.style_of(task.render(problem, "verbose")) == "verbose"
    assert task.style_of(" so state ; #12") == "other"
    # a response that starts terse and switches to verbose counts as verbose
    mixed = task.render(problem, "terse") + task.render(problem, "verbose")
    assert task.style_of(mixed) == "verbose"


def test_overlap_stats_splits_samples_and_tokens_by_style(use_fast_zoo):
    tok = load_tokenizer("teacher")
    task = TASKS["regs"]
    problems = task.problems("test", 6, seed=0, difficulty=2)
    stats = overlap_stats(
        load_model("student-cross"), load_model("teacher"), tok, task, problems, max_new_tokens=48
    )
    by_style = stats["by_style"]
    assert set(by_style) <= {"terse", "verbose", "other"}
    assert sum(s["samples"] for s in by_style.values()) == len(problems)
    assert sum(s["tokens"] for s in by_style.values()) == stats["tokens"]
    agreed = sum(s["top1_agreement"] * s["tokens"] for s in by_style.values() if s["tokens"])
    assert agreed / stats["tokens"] == pytest.approx(stats["top1_agreement"], abs=1e-6)
