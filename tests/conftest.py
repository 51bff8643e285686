"""Shared fixtures: a fast zoo (tiny random-ish models, built once per test session)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def fast_zoo(tmp_path_factory):
    """Folder with tokenizer/, teacher/, student-same/, student-cross/ from `zoo build --fast`,
    and the long suite's fast zoo in long/ (`zoo build --fast --suite long`)."""
    from pruneopd.tools.zoo import FAST, FAST_LONG, build_zoo

    out = tmp_path_factory.mktemp("zoo")
    torch.set_num_threads(1)  # tiny models: one thread is fastest
    build_zoo(out, FAST, seed=0, log=lambda s: None)
    build_zoo(out / "long", FAST_LONG, seed=0, log=lambda s: None)
    return out


@pytest.fixture
def use_fast_zoo(fast_zoo, monkeypatch):
    """Make zoo names ("teacher", "student-cross", ...) resolve to the fast zoo."""
    monkeypatch.setenv("PRUNEOPD_ZOO", str(fast_zoo))
    return fast_zoo


@pytest.fixture
def zoo(use_fast_zoo, monkeypatch):
    """Fast zoo names resolve; one intra-op thread (train() would otherwise take every core)."""
    import pruneopd.training.train as train_mod

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setattr(train_mod, "set_threads", lambda: None)
    yield use_fast_zoo
    torch.set_num_threads(n)
