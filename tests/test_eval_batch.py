"""`eval_batch`: the held-out problems sampled in batches of any size (0 = all at once) give
the same greedy responses and scores, and a negative value is refused before any compute."""

from __future__ import annotations

import pytest
import torch

from pruneopd.config import ConfigError, TrainConfig, validate
from pruneopd.models import PACKAGE_ZOO, load_model, load_tokenizer
from pruneopd.tasks import TASKS
from pruneopd.training.evaluate import evaluate


def test_eval_batch_sizes_agree():
    folder = PACKAGE_ZOO / "student-cross"
    if not (folder / "config.json").exists():
        pytest.skip("no shipped zoo")
    torch.set_num_threads(1)
    tok, model = load_tokenizer(str(folder)), load_model(str(folder))
    task = TASKS["regs"]
    problems = task.problems("test", 10, seed=0)
    runs = [
        evaluate(model, tok, task, problems, batch_size=b, max_new_tokens=48, keep=10)
        for b in (3, len(problems))
    ]
    assert runs[0] == runs[1]
    assert len(runs[0]["responses"]) == 10


def test_negative_eval_batch_is_refused():
    with pytest.raises(ConfigError, match="eval_batch"):
        validate(TrainConfig(eval_batch=-1))
