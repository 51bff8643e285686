"""Checkpoints and resume on the fast zoo: a run killed part-way (SIGKILL, SIGTERM, a
non-finite loss) and resumed ends with the same weights and per-step metrics as a run that
was never stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import pruneopd.training.step as step_mod
import pruneopd.training.train as train_mod
from pruneopd.cli import _default_config
from pruneopd.config import ConfigError, TrainConfig, load_config
from pruneopd.training.checkpoint import list_checkpoints
from pruneopd.training.train import TrainingStopped, train

TIMING = {"t_sample", "t_teacher", "t_update", "train_seconds"}
STEPS = 40
ARGS = dict(
    student="student-cross",
    teacher="teacher",
    task="regs",
    difficulty=2,
    seed=0,
    max_steps=STEPS,
    prompts_per_step=2,
    responses_per_prompt=2,
    max_len=40,
    init_len=24,
    min_len=8,
    budget_step=8,
    budget_margin=8,
    patience=2,
    lr=1e-2,
    eval_problems=4,
    eval_every=7,
    log_samples=1,
    tensorboard=False,
    progress=False,
    save_every=1,
    keep_checkpoints=2,
)


def cfg_for(out, **kw) -> TrainConfig:
    """What `pruneopd train key=value ...` runs (the default preset + these overrides)."""
    return load_config(_default_config(), cli_args(out, **kw))


def rows(out) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k not in TIMING} for x in lines]


def weights(out):
    return load_file(out / "final" / "model.safetensors")


def assert_same_run(a, b):
    ra, rb = rows(a), rows(b)
    assert len(ra) == len(rb)
    for x, y in zip(ra, rb, strict=True):
        assert x == y
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    sa = (a / "samples.jsonl").read_text()
    assert sa == (b / "samples.jsonl").read_text()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, fast_zoo):
    """The uninterrupted run every resumed run is compared with."""
    out = tmp_path_factory.mktemp("ref") / "run"
    old, n = os.environ.get("PRUNEOPD_ZOO"), torch.get_num_threads()
    os.environ["PRUNEOPD_ZOO"] = str(fast_zoo)
    torch.set_num_threads(1)
    real = train_mod.set_threads
    train_mod.set_threads = lambda: None
    try:
        train(cfg_for(out))
    finally:
        train_mod.set_threads = real
        torch.set_num_threads(n)
        if old is None:
            os.environ.pop("PRUNEOPD_ZOO")
        else:
            os.environ["PRUNEOPD_ZOO"] = old
    return out


def cli_args(out, **kw) -> list[str]:
    return [f"{k}={v}" for k, v in {**ARGS, "out": out, **kw}.items()]


def start_cli(zoo, out, **kw):
    env = {**os.environ, "PRUNEOPD_ZOO": str(zoo), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pruneopd.cli", "train", *cli_args(out, **kw)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(proc, out, step: int, timeout: float = 120.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        done = list_checkpoints(out)
        if done and int(done[-1].name.split("-")[1]) >= step:
            return
        if proc.poll() is not None:
            pytest.fail(f"run ended before checkpoint {step}: {proc.stderr.read()[-2000:]}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"no checkpoint {step} after {timeout} s")


def test_sigkill_then_resume_is_exact(zoo, reference, tmp_path):
    out = tmp_path / "run"
    proc = start_cli(zoo, out)
    wait_for_checkpoint(proc, out, 5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stopped_at = int(list_checkpoints(out)[-1].name.split("-")[1])
    assert stopped_at < STEPS, "the run finished before it was killed: nothing was tested"
    assert len(list_checkpoints(out)) <= ARGS["keep_checkpoints"]
    train(cfg_for(out, resume="auto"))
    assert_same_run(reference, out)


def test_sigterm_writes_a_checkpoint_and_says_how_to_resume(zoo, reference, tmp_path):
    out = tmp_path / "run"
    proc = start_cli(zoo, out, save_every=0)  # checkpoints only on the signal (and at the end)
    t0 = time.time()
    while not (out / "metrics.jsonl").exists() or len(rows(out)) < 4:
        assert time.time() - t0 < 120 and proc.poll() is None, "run did not start"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("pruneopd: stopped by SIGTERM after step") and "resume=auto" in last
    assert "Traceback" not in err
    (ckpt,) = list_checkpoints(out)
    assert int(ckpt.name.split("-")[1]) == sum(1 for r in rows(out) if "loss" in r)
    train(cfg_for(out, save_every=0, resume="auto"))
    assert_same_run(reference, out)


def nan_loss_at(call: int, monkeypatch):
    """Make the loss NaN at the `call`-th step; returns the real loss function."""
    real, calls = step_mod.masked_token_mean, []

    def loss_fn(*a, **k):
        calls.append(1)
        loss = real(*a, **k)
        return loss * float("nan") if len(calls) == call else loss

    monkeypatch.setattr(step_mod, "masked_token_mean", loss_fn)
    return real


def test_nonfinite_loss_stops_at_the_last_good_step(zoo, reference, tmp_path, monkeypatch):
    real = nan_loss_at(3, monkeypatch)
    out = tmp_path / "run"
    with pytest.raises(TrainingStopped, match=r"non-finite loss at step 3 .*step-00000002"):
        train(cfg_for(out, save_every=0))
    assert [p.name for p in list_checkpoints(out)] == ["step-00000002"]
    assert sum(1 for r in rows(out) if "loss" in r) == 2  # nothing of the bad step is logged
    monkeypatch.setattr(step_mod, "masked_token_mean", real)
    train(cfg_for(out, save_every=0, resume="auto"))
    assert_same_run(reference, out)


def test_nonfinite_loss_can_skip_the_batch(zoo, tmp_path, monkeypatch):
    nan_loss_at(2, monkeypatch)
    s = train(cfg_for(tmp_path / "run", max_steps=3, on_nonfinite="skip"))
    assert s["skipped_steps"] == 1
    steps = [r for r in rows(tmp_path / "run") if "loss" in r]
    assert [r["skipped"] for r in steps] == [0, 1, 0]
    w = weights(tmp_path / "run")
    assert all(torch.isfinite(t).all() for t in w.values())


def test_a_run_directory_is_never_overwritten_silently(zoo, tmp_path):
    out = tmp_path / "run"
    first = train(cfg_for(out, max_steps=2))
    with pytest.raises(ConfigError, match=r"already holds a run .*resume=auto.*overwrite=true"):
        train(cfg_for(out, max_steps=2))
    # resuming a finished run trains nothing more and gives the same result
    again = train(cfg_for(out, max_steps=2, resume="auto"))
    assert again["accuracy_after"] == first["accuracy_after"]
    assert sum(1 for r in rows(out) if "loss" in r) == 2
    # a changed hyper-parameter cannot be resumed into the same run
    with pytest.raises(ConfigError, match=r"'lr' = 0.5 differs from the checkpoint's 0.01"):
        train(cfg_for(out, max_steps=2, resume="auto", lr=0.5))
    # overwrite starts over
    train(cfg_for(out, max_steps=1, overwrite=True))
    assert sum(1 for r in rows(out) if "loss" in r) == 1


def test_resume_can_extend_a_finished_run(zoo, reference, tmp_path):
    out = tmp_path / "run"
    train(cfg_for(out, max_steps=STEPS // 2))
    train(cfg_for(out, resume="auto"))  # same run, more steps
    ra = [r for r in rows(reference) if "loss" in r]
    rb = [r for r in rows(out) if "loss" in r]
    assert ra == rb
    wa, wb = weights(reference), weights(out)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_wandb_is_optional(zoo, tmp_path, capsys, monkeypatch):
    """Without the optional package the run goes on (one line says so); with it, offline."""
    try:
        import wandb  # noqa: F401
    except ImportError:
        train(cfg_for(tmp_path / "run", max_steps=1, wandb=True))
        err = capsys.readouterr().err
        assert "wandb is not installed" in err and (tmp_path / "run" / "summary.json").exists()
    else:
        monkeypatch.setenv("WANDB_MODE", "offline")
        train(cfg_for(tmp_path / "run", max_steps=1, wandb=True))
        assert (tmp_path / "run" / "wandb").is_dir()
