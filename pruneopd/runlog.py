"""The run directory: resolved config, versions, metrics JSONL, TensorBoard, samples."""

from __future__ import annotations

import json
import math
import platform
import subprocess
from pathlib import Path


def versions() -> dict:
    import torch
    import transformers

    from . import __version__

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).parent,
        ).stdout.strip() or None  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "pruneopd": __version__,
        "git_commit": commit,
        "machine": f"{platform.machine()} {platform.system()}",
    }


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class RunLog:
    """Appends one JSON line per step to metrics.jsonl and mirrors scalars to TensorBoard."""

    def __init__(self, out: Path, tensorboard: bool = True):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.metrics_f = open(self.out / "metrics.jsonl", "a")
        self.samples_f = open(self.out / "samples.jsonl", "a")
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.out / "tb"))

    def log(self, step: int, metrics: dict) -> None:
        row = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        self.metrics_f.write(json.dumps(row) + "\n")
        self.metrics_f.flush()
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    self.tb.add_scalar(k, v, step)

    def samples(self, step: int, rows: list[dict]) -> None:
        for r in rows:
            self.samples_f.write(json.dumps({"step": step, **r}) + "\n")
        self.samples_f.flush()

    def close(self) -> None:
        self.metrics_f.close()
        self.samples_f.close()
        if self.tb is not None:
            self.tb.close()
