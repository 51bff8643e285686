"""Training checkpoints: everything a run needs to continue exactly where it stopped.

A checkpoint is a folder `RUN/checkpoints/step-00000040/` holding
- `student/`: the student's weights (`save_pretrained`, safetensors) and config;
- `trainer.pt`: optimizer and scheduler state, RNG states (python, numpy, torch and the
  sampling generator), budget state, the next prompt index, evaluation history, running
  totals and the byte length of `metrics.jsonl` / `samples.jsonl` at that step.

It is written into a temporary folder and renamed into place, so a folder named `step-*`
is always complete: a crash or SIGKILL mid-write leaves only a `.tmp-*` folder, which the
next save or resume removes. The newest `keep` checkpoints are kept.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import sys
import threading
from pathlib import Path

import numpy as np
import torch

CKPT_DIR = "checkpoints"
TRAINER_FILE = "trainer.pt"


def rng_state(generator: torch.Generator) -> dict:
    """Every random stream the trainer draws from, as plain lists and tensors."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "generator": generator.get_state(),
    }


def set_rng_state(state: dict, generator: torch.Generator) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npy = state["numpy"]
    np.random.set_state((npy[0], np.array(npy[1], dtype=np.uint32), *npy[2:]))
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])


def _step_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CKPT_DIR / f"step-{step:08d}"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / CKPT_DIR
    if not root.is_dir():
        return []
    done = [p for p in root.glob("step-*") if (p / TRAINER_FILE).is_file()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def _remove_partial(root: Path) -> None:
    for p in root.glob(".tmp-*"):
        shutil.rmtree(p, ignore_errors=True)


def save_checkpoint(run_dir: str | Path, step: int, student, state: dict, keep: int) -> Path:
    """Atomically write checkpoint `step` (weights + `state`) and keep the newest `keep`."""
    root = Path(run_dir) / CKPT_DIR
    root.mkdir(parents=True, exist_ok=True)
    _remove_partial(root)
    final = _step_dir(run_dir, step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    student.save_pretrained(tmp / "student", safe_serialization=True)
    torch.save({"step": step, **state}, tmp / TRAINER_FILE)
    for f in (tmp / "student").iterdir():  # data on disk before the rename makes it visible
        _fsync(f)
    _fsync(tmp / TRAINER_FILE)
    if final.exists():  # the same step saved again (e.g. a signal right after a save)
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def load_trainer_state(ckpt: str | Path) -> dict:
    """The trainer state of a checkpoint folder (weights are loaded from `ckpt/student`)."""
    ckpt = Path(ckpt)
    path = ckpt / TRAINER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{ckpt} is not a complete checkpoint (no {TRAINER_FILE})")
    _remove_partial(ckpt.parent)
    return torch.load(path, weights_only=True)


class GracefulStop:
    """While active, SIGINT (Ctrl-C) and SIGTERM only set `requested`: the trainer finishes
    the step, writes a checkpoint and stops. A second signal stops at once (the newest
    checkpoint on disk stays valid, as every checkpoint is written atomically)."""

    def __init__(self):
        self.requested = False
        self.signal_name = ""
        self.exit_code = 0
        self._old: dict = {}

    def _handle(self, signum, frame):
        if self.requested:  # second signal: give up the step
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        self.exit_code = 128 + signum
        print(
            f"\npruneopd: {self.signal_name} received: finishing this step and saving a "
            "checkpoint (send it again to stop at once)",
            file=sys.stderr,
        )

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()
        return False
