"""`pruneopd bench --reuse FILE`: take the finished runs an earlier bench recorded in its
results.json instead of running them again.

Why: the long suite's full preset is 60 runs of 10-80 minutes on 2 cores, more than one
session of one machine; a bench's `OUT/runs/` stays on the machine that ran it, but its
results.json (committed next to its report) holds every number the report needs from each
finished run. A run is reused only when it is the run this bench would start: the same
preset settings (steps, evaluation) and the same training config, key for key, except

- where the run was written (`out`, `eval_cache`) and how it was watched (`RUN_CONTROL`), and
- keys of another method's family (`auto_*` only matter to `auto`): a run recorded before
  such a key existed, or with another value of it, trained exactly as it would today, and
- a key the recorded config lacks because it was added later (`BEFORE_IT_EXISTED`), where
  this bench runs it at the value that trains as the code did before.

A key the earlier run's config lacks otherwise, or a different value, and the run is run
again. The reused record goes into the new results.json as it was, with `reused_from` naming
the file it first came from (a file that reused runs itself passes their origin on); the new
results.json's `reused_from` maps each such file to the date and versions (code commit) of
the bench that made it. A run finished in OUT (its summary.json) always wins over a reused
one.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

RUN_CONTROL = frozenset(
    {
        "out",
        "eval_cache",
        "resume",
        "overwrite",
        "progress",
        "save_every",
        "keep_checkpoints",
        "tensorboard",
        "wandb",
        "wandb_project",
    }
)
# config keys read by one method only (method/*.py): another method's run ignores them
METHOD_FAMILIES = {"auto_": "auto"}
# keys added after runs were recorded without them: the value that trains as the code did
# before the key existed. A recorded config without the key matches only that value; a key
# missing from the recorded config and from this table is a mismatch (the run runs again).
BEFORE_IT_EXISTED = {
    "auto_audit_every": 0,  # the fourth design stopped at the horizon
    "auto_curriculum": False,  # the fifth: full OPD without a horizon
    "auto_iw_gamma": 0.0,  # every trained token weight 1
}


def expected_config(config_path: Path, overrides: list[str]) -> dict:
    """The training config a bench run would have: its preset file and the bench's overrides."""
    from pruneopd.config import load_config

    return asdict(load_config(config_path, overrides))


def config_mismatch(recorded: dict, expected: dict, method: str) -> list[str]:
    """The keys on which a recorded run's config differs from the run this bench would start
    (`key: recorded -> expected`, a missing key as `(none)`); [] when it may be reused.

    Example: method "full", recorded {"lr": 1e-3}, expected {"lr": 1e-3, "auto_drop": 0.03}
    -> [] (auto_drop only matters to auto); method "auto" -> ["auto_drop: (none) -> 0.03"];
    method "auto", expected {"auto_iw_gamma": 0.0} -> [] (the weights before the key existed),
    expected {"auto_curriculum": True} -> ["auto_curriculum: (none) -> True"].
    """
    out = []
    for key, want in expected.items():
        if key in RUN_CONTROL:
            continue
        family = next((m for p, m in METHOD_FAMILIES.items() if key.startswith(p)), None)
        if family is not None and family != method:
            continue
        if key not in recorded:
            if key not in BEFORE_IT_EXISTED or BEFORE_IT_EXISTED[key] != want:
                out.append(f"{key}: (none) -> {want!r}")
        elif recorded[key] != want:
            out.append(f"{key}: {recorded[key]!r} -> {want!r}")
    return out


def load_reused(
    paths: list[str | Path], settings: dict, expected_for, log=print
) -> tuple[dict[tuple, dict], dict[str, dict], dict[str, dict]]:
    """The runs of earlier results.json files that this bench may take as finished.

    `settings`: this bench's preset (asdict of BenchPreset); `expected_for(pair, method,
    seed)`: the config dict of that run, or None when the run is not in this bench's plan.
    Returns ({(pair, method, seed): record}, {path: the file's results}, {origin path:
    {"date", "versions"}}); the first file that has a key wins. Raises ValueError (one line, naming the file) on a file that is not
    a bench's results.json or was made with other preset settings."""
    reused: dict[tuple, dict] = {}
    files: dict[str, dict] = {}
    origins: dict[str, dict] = {}
    for path in map(Path, paths):
        try:
            res = json.loads(path.read_text())
        except FileNotFoundError:
            raise ValueError(f"--reuse {path}: no such file") from None
        except (OSError, ValueError) as e:
            raise ValueError(f"--reuse {path}: not readable JSON ({e})") from None
        if not isinstance(res, dict) or not isinstance(res.get("runs"), list):
            raise ValueError(f"--reuse {path}: not a bench's results.json (no 'runs' list)")
        if res.get("settings") != settings:
            raise ValueError(
                f"--reuse {path}: made with preset settings {res.get('settings')}, this bench "
                f"runs {settings}"
            )
        files[str(path)] = res
        earlier = res.get("reused_from")
        earlier = earlier if isinstance(earlier, dict) else {}
        for rec in res["runs"]:
            key = (rec.get("pair"), rec.get("method"), rec.get("seed"))
            if key in reused:
                continue
            expected = expected_for(*key)
            if expected is None:
                continue
            diff = config_mismatch(rec.get("config") or {}, expected, key[1])
            if diff:
                pair, method, seed = key
                log(f"bench: {pair}/{method}/seed{seed} in {path} not reused ({'; '.join(diff)})")
                continue
            origin = rec.get("reused_from") or str(path)
            origins.setdefault(
                origin,
                earlier.get(origin) or {"date": res.get("date"), "versions": res.get("versions")},
            )
            reused[key] = {**rec, "reused_from": origin, "_file": str(path)}
    return reused, files, origins
