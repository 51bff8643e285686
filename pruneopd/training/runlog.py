"""The run directory: resolved config, versions, metrics JSONL, TensorBoard, samples,
optional Weights & Biases, and the rules for starting, resuming or overwriting a run."""

from __future__ import annotations

import json
import math
import platform
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from pruneopd.config import ConfigError, TrainConfig
from pruneopd.training.checkpoint import latest_checkpoint


def versions() -> dict:
    import torch
    import transformers

    from pruneopd import __version__

    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                timeout=5,
                cwd=Path(__file__).parent,
            ).stdout.strip()
            or None
        )
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


# files a run writes into its directory (removed by overwrite=true, nothing else is touched)
RUN_FILES = (
    "metrics.jsonl",
    "samples.jsonl",
    "summary.json",
    "tb",
    "checkpoints",
    "final",
    "wandb",
    "wandb_id.txt",
)
# config keys that may change when a run is resumed (they do not change its trajectory)
RESUMABLE_CHANGES = {
    "resume",
    "overwrite",
    "max_steps",
    "eval_every",
    "save_every",
    "progress",
    "parallel",
    "keep_checkpoints",
    "tensorboard",
    "wandb",
    "wandb_project",
    "out",
    "eval_cache",
    "rollout_engine",
    "teacher_engine",
    "teacher_url",
    "teacher_timeout",
    "teacher_retries",
    "teacher_backoff",
    "vllm_kv_cache_mb",
    "vllm_gpu_memory",
    "lora_save",
}


def prepare_run_dir(cfg: TrainConfig, dry_run: bool = False) -> Path | None:
    """Decide, before any compute, where the run starts: a checkpoint to resume or None.

    A run directory that already holds a run is never written over silently: it takes
    `resume=auto` (continue) or `overwrite=true` (delete the old run's files). `dry_run`
    checks the same rules and deletes nothing.
    """
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"config key 'out' = {cfg.out!r}: exists and is not a directory")
    if cfg.resume and cfg.resume != "auto":
        ckpt = Path(cfg.resume)
        if not (ckpt / "trainer.pt").is_file():
            raise ConfigError(
                f"config key 'resume' = {cfg.resume!r}: not a complete checkpoint "
                "folder (expected trainer.pt and student/ inside)"
            )
        return ckpt
    existing = [f for f in RUN_FILES if (out / f).exists()]
    if cfg.resume == "auto":
        ckpt = latest_checkpoint(out)
        if ckpt is not None:
            return ckpt
        # nothing to resume: the old files belong to a run stopped before its first
        # checkpoint, which restarts from step 0 and writes them again
        if not dry_run:
            _remove(out, existing)
        return None
    if existing and not cfg.overwrite:
        raise ConfigError(
            f"run directory {out} already holds a run ({', '.join(existing)}); continue it "
            "with resume=auto, start over with overwrite=true, or choose another out="
        )
    if cfg.overwrite and not dry_run:
        _remove(out, existing)
    return None


def _remove(out: Path, names: list[str]) -> None:
    for f in names:
        shutil.rmtree(out / f) if (out / f).is_dir() else (out / f).unlink()


def check_resumable(cfg: TrainConfig, saved: dict, ckpt: Path) -> None:
    """The checkpoint's config must match the current one wherever the trajectory depends on it."""
    now = asdict(cfg)
    for key, old in saved.items():
        if key in RESUMABLE_CHANGES or key not in now or now[key] == old:
            continue
        raise ConfigError(
            f"resume from {ckpt}: config key '{key}' = {now[key]!r} differs from the "
            f"checkpoint's {old!r}; resume with the same config or start a new run"
        )


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class RunLog:
    """Appends one JSON line per step to metrics.jsonl (and samples.jsonl) and mirrors the
    scalars to TensorBoard and, when asked, Weights & Biases.

    `resume` (byte offsets from `offsets()`, saved in a checkpoint) cuts both files back to
    that checkpoint, and TensorBoard hides events after `step`, so a resumed run's records
    read as if it had never stopped.
    """

    def __init__(
        self,
        out: Path,
        tensorboard: bool = True,
        resume: dict | None = None,
        step: int = 0,
        wandb_project: str | None = None,
        config: dict | None = None,
    ):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.metrics_f = self._open("metrics.jsonl", resume)
        self.samples_f = self._open("samples.jsonl", resume)
        self.eval_samples_f = self._open("eval_samples.jsonl", resume)
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.out / "tb"), purge_step=step + 1 if resume else None)
        self.wandb = _start_wandb(wandb_project, self.out, config, resume is not None)

    def _open(self, name: str, resume: dict | None):
        path = self.out / name
        if resume is None:
            return open(path, "w")
        if not path.exists():
            return open(path, "w")
        f = open(path, "r+")
        keep = min(resume.get(name, 0), path.stat().st_size)
        f.truncate(keep)
        f.seek(keep)
        return f

    def offsets(self) -> dict:
        return {
            "metrics.jsonl": self.metrics_f.tell(),
            "samples.jsonl": self.samples_f.tell(),
            "eval_samples.jsonl": self.eval_samples_f.tell(),
        }

    def log(self, step: int, metrics: dict) -> None:
        row = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        self.metrics_f.write(json.dumps(row) + "\n")
        self.metrics_f.flush()
        scalars = {
            k: v
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        }
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)

    def samples(self, step: int, rows: list[dict]) -> None:
        for r in rows:
            self.samples_f.write(json.dumps({"step": step, **r}) + "\n")
        self.samples_f.flush()

    def eval_samples(self, step: int, rows: list[dict]) -> None:
        """Greedy responses of one evaluation (`evaluate(keep=...)`), one line each."""
        for r in rows:
            self.eval_samples_f.write(json.dumps({"step": step, **r}) + "\n")
        self.eval_samples_f.flush()

    def close(self) -> None:
        self.metrics_f.close()
        self.samples_f.close()
        self.eval_samples_f.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def _start_wandb(project: str | None, out: Path, config: dict | None, resume: bool):
    """A Weights & Biases run, or None (with one line on stderr) when it cannot start."""
    if project is None:
        return None
    try:
        import wandb
    except ImportError:
        print(
            "pruneopd: wandb=true but wandb is not installed (pip install 'pruneopd[wandb]'); "
            "logging to metrics.jsonl and TensorBoard only",
            file=sys.stderr,
        )
        return None
    id_file = out / "wandb_id.txt"
    run_id = (
        id_file.read_text().strip() if resume and id_file.exists() else wandb.util.generate_id()
    )
    try:
        run = wandb.init(project=project, dir=str(out), config=config, id=run_id, resume="allow")
    except Exception as e:  # offline, no login, ...: the run goes on without it
        print(
            f"pruneopd: Weights & Biases did not start ({type(e).__name__}: {e}); "
            "logging to metrics.jsonl and TensorBoard only",
            file=sys.stderr,
        )
        return None
    id_file.write_text(run_id)
    return run


class NullLog:
    """The log of ranks other than 0 under torchrun: they compute every metric, write none."""

    def log(self, step, metrics):
        pass

    def samples(self, step, rows):
        pass

    def eval_samples(self, step, rows):
        pass

    def offsets(self):
        return {}

    def close(self):
        pass
