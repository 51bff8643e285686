"""The config's teachers as typed entries: `teachers:` (several, each with a name), or the one
`teacher:` of a plain run; and the checks of the `teachers` keys (one line each, before
anything loads). README, "Several teachers".

    teachers:
      - {name: regs, model: zoo/experts/expert-regs}
      - {name: add, model: zoo/experts/expert-add, engine: hf}
    teacher_routing: field      # or mixture, with teacher_weights: [0.5, 0.5]
    teacher_field: task
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pruneopd.errors import ConfigError

if TYPE_CHECKING:
    from pruneopd.config import TrainConfig

ROUTINGS = ("field", "mixture")
ENTRY_KEYS = ("name", "model", "engine", "teacher_url")
# the losses that need only the teacher's scores (TokenScores), not its whole distribution
PANEL_LOSSES = ("sampled_rkl", "topk_rkl")


@dataclass(frozen=True)
class TeacherEntry:
    """One teacher: its name (what a prompt's teacher_field says), model (zoo name or folder),
    engine (hf | vllm) and the vLLM server that scores for it (teacher_url, or "")."""

    name: str
    model: str
    engine: str = "hf"
    teacher_url: str = ""


def teacher_entries(cfg: TrainConfig) -> list[TeacherEntry]:
    """The run's teachers: the `teachers` list, or the one `teacher` (named "teacher")."""
    if not cfg.teachers:
        return [TeacherEntry("teacher", cfg.teacher, cfg.teacher_engine, cfg.teacher_url)]
    out = []
    for e in cfg.teachers:
        url = str(e.get("teacher_url") or "")
        engine = e.get("engine") or ("vllm" if url else "hf")
        out.append(TeacherEntry(str(e["name"]), str(e["model"]), engine, url))
    return out


def mixture_weights(cfg: TrainConfig) -> list[float]:
    """teacher_weights normalised to sum 1 (equal weights when not given)."""
    w = [float(x) for x in cfg.teacher_weights] or [1.0] * len(cfg.teachers)
    return [x / sum(w) for x in w]


def _bad(what: str) -> ConfigError:
    return ConfigError(f"config key 'teachers': {what}")


def validate_teachers(c: TrainConfig) -> None:
    """The `teachers` keys: entries well formed, names unique, no `teacher` beside them, a
    known routing rule, one mixture weight per teacher, a loss the scores alone can serve."""
    if not c.teachers:
        if c.teacher_weights:
            raise ConfigError("config key 'teacher_weights' is set, but no 'teachers' are")
        return
    if c.teacher != "teacher":
        raise ConfigError(
            f"config keys 'teacher' ({c.teacher!r}) and 'teachers' cannot be combined: list "
            "every teacher in 'teachers'"
        )
    if c.teacher_url or c.teacher_engine != "hf":
        raise ConfigError(
            "config keys 'teacher_engine' / 'teacher_url' cannot be combined with 'teachers': "
            "give each teacher its own engine / teacher_url"
        )
    seen: set[str] = set()
    for i, e in enumerate(c.teachers, start=1):
        if not isinstance(e, dict):
            raise _bad(f"entry {i} must be a mapping {{name, model, ...}}, got {e!r}")
        unknown = [k for k in e if k not in ENTRY_KEYS]
        if unknown:
            raise _bad(f"entry {i}: unknown key {unknown[0]!r} (keys: {', '.join(ENTRY_KEYS)})")
        for k in ("name", "model"):
            if not isinstance(e.get(k), str) or not e[k].strip():
                raise _bad(f"entry {i}: '{k}' must be a non-empty string, got {e.get(k)!r}")
        if e["name"] in seen:
            raise _bad(f"two teachers are named {e['name']!r}; names must be unique")
        seen.add(e["name"])
        engine, url = e.get("engine", ""), e.get("teacher_url", "")
        if engine not in ("", "hf", "vllm"):
            raise _bad(f"entry {i} ({e['name']}): engine {engine!r} must be hf or vllm")
        if url and (engine == "hf" or not str(url).startswith(("http://", "https://"))):
            raise _bad(
                f"entry {i} ({e['name']}): teacher_url {url!r} must be http://HOST:PORT of a "
                "vLLM server (engine vllm)"
            )
    if c.teacher_routing not in ROUTINGS:
        raise ConfigError(
            f"config key 'teacher_routing' = {c.teacher_routing!r}: must be one of "
            f"{', '.join(ROUTINGS)}"
        )
    if not c.teacher_field.strip():
        raise ConfigError("config key 'teacher_field' = '': must name a field")
    if c.teacher_weights:
        if c.teacher_routing != "mixture":
            raise ConfigError(
                "config key 'teacher_weights' is for teacher_routing=mixture "
                f"(teacher_routing = {c.teacher_routing!r})"
            )
        if len(c.teacher_weights) != len(c.teachers):
            raise ConfigError(
                f"config key 'teacher_weights' = {c.teacher_weights!r}: {len(c.teacher_weights)} "
                f"weights for {len(c.teachers)} teachers"
            )
        ok = all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in c.teacher_weights)
        if not ok or min(c.teacher_weights) < 0 or sum(c.teacher_weights) <= 0:
            raise ConfigError(
                f"config key 'teacher_weights' = {c.teacher_weights!r}: numbers >= 0, not all 0"
            )
    if c.loss not in PANEL_LOSSES:
        raise ConfigError(
            f"config key 'loss' = {c.loss!r}: with several teachers use topk_rkl or sampled_rkl "
            "(the full-vocabulary losses take one teacher's whole distribution)"
        )
    if c.online_pruning:
        raise ConfigError(
            "config key 'online_pruning' = True: online pruning scores chunks with one "
            "teacher's KV cache; it is not available with 'teachers'"
        )
