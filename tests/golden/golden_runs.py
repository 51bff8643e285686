"""The golden runs: every method on both zoo suites (the shipped zoo weights), fast settings,
3 steps, fixed seed. `record()` writes what a run logged (every metric but wall-clock times)
and a checksum of the final weights; tests/test_golden.py runs the same and compares bit for bit.

Recorded before the package moved into layers (issue 28, at 4091d1a) with

    python tests/golden/golden_runs.py --write

and issue 31's methods added to it (every earlier case kept as it was) with

    python tests/golden/golden_runs.py --write --only short/iw-opd-cross,short/window-cross,\
        long/iw-opd-cross,long/window-cross,short/iw-opd-cross-sampled_rkl

and the reliability horizon (issue 31.2; recorded again when it left out each response's last
bucket) with

    python tests/golden/golden_runs.py --write --only short/auto-cross,long/auto-cross

and `auto`'s sixth design (auto_curriculum, the default from 2026-12-05 night; the cases
above keep the fifth with auto_curriculum=false) with

    python tests/golden/golden_runs.py --write --only short/auto-curriculum-cross,long/auto-curriculum-cross

Floats are compared exactly, so the record holds only on the CPU it was made on: the file
keeps that CPU's model name and ISA flags, and the test skips (saying so) on another one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RECORD = HERE / "golden.json"

# (name, preset, extra overrides): both suites, every method (their cross-pair presets), the
# same pair for prune, and every loss on full OPD of the short suite
_COMMON = [
    "max_steps=3",
    "prompts_per_step=2",
    "responses_per_prompt=2",
    "eval_problems=4",
    "eval_every=0",
    "save_every=0",
    "log_samples=2",
    "tensorboard=false",
    "progress=false",
    "seed=0",
]
_METHODS = ["full", "prefix", "prefix-sched", "prefix-adaptive", "prune", "prune-online", "hybrid"]
_ADAPTIVE = ["prefix_window=2", "prefix_kl_threshold=10"]  # P moves within 3 steps
_WINDOW = ["window_probe_every=2"]  # step 1 probes to L_max and moves H
# steps 0-1 measure, step 2 trains their verdict (no horizon on 3 steps): the fifth design
# (full OPD) as recorded, and the sixth (the default since: the adaptive prefix from L_min)
_AUTO = ["auto_probe_steps=2", "auto_curriculum=false"]
_CURRICULUM = ["auto_probe_steps=2", "auto_curriculum=true"]
_FIELD = ["iw-opd", "window", "auto"]  # issue 31's methods, added later (--write --only)


def cases() -> list[tuple[str, str, list[str]]]:
    out = []
    for suite, folder in (("short", "pruneopd/configs"), ("long", "pruneopd/configs/long")):
        for m in _METHODS:
            extra = _ADAPTIVE if m == "prefix-adaptive" else []
            out.append((f"{suite}/{m}-cross", f"{folder}/{m}-cross.yaml", extra))
        out.append((f"{suite}/prune-same", f"{folder}/prune-same.yaml", []))
    for loss in ("sampled_rkl", "full_rkl", "forward_kl", "jsd"):
        out.append(
            (f"short/full-cross-{loss}", "pruneopd/configs/full-cross.yaml", [f"loss={loss}"])
        )
    for suite, folder in (("short", "pruneopd/configs"), ("long", "pruneopd/configs/long")):
        for m in _FIELD:
            extra = {"window": _WINDOW, "auto": _AUTO}.get(m, [])
            out.append((f"{suite}/{m}-cross", f"{folder}/{m}-cross.yaml", extra))
    for suite, folder in (("short", "pruneopd/configs"), ("long", "pruneopd/configs/long")):
        out.append((f"{suite}/auto-curriculum-cross", f"{folder}/auto-cross.yaml", _CURRICULUM))
    out.append(  # the paper's sampled-token objective
        (
            "short/iw-opd-cross-sampled_rkl",
            "pruneopd/configs/iw-opd-cross.yaml",
            ["loss=sampled_rkl"],
        )
    )
    return out


def cpu_id() -> str:
    """This CPU's model name and ISA flags: bit-exact floats hold only on the same ones."""
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
        model = next((x.split(":", 1)[1].strip() for x in info if x.startswith("model name")), "")
        flags = next((x.split(":", 1)[1].split() for x in info if x.startswith("flags")), [])
    except OSError:
        model, flags = platform.processor(), []
    isa = sorted(f for f in flags if f.startswith(("avx", "fma", "sse", "amx", "f16c")))
    return model + " | " + " ".join(isa)


def weights_sha256(folder: Path) -> str:
    from safetensors.torch import load_file

    sd = load_file(str(folder / "model.safetensors"))
    h = hashlib.sha256()
    for k in sorted(sd):
        h.update(k.encode())
        h.update(sd[k].contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _clean(row: dict) -> dict:
    """A metrics row without wall-clock or CPU times (they differ run to run)."""
    return {k: v for k, v in row.items() if not (k.startswith("t_") or "seconds" in k)}


def run_case(preset: str, extra: list[str], out: Path) -> dict:
    """Run one golden case in this process (one intra-op thread) and return its record."""
    from pruneopd.config import load_config
    from pruneopd.training.train import train

    cfg = load_config(ROOT / preset, [*_COMMON, *extra, f"out={out}", "overwrite=true"])
    torch.set_num_threads(1)
    summary = train(cfg)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return {
        "metrics": [_clean(r) for r in rows],
        "accuracy_before": summary["accuracy_before"],
        "accuracy_after": summary["accuracy_after"],
        "final_cap": summary["final_cap"],
        "tokens": [summary[k] for k in ("tokens_generated", "tokens_scored", "tokens_trained")],
        "weights_sha256": weights_sha256(out / "final"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--write", action="store_true", help=f"(re)write {RECORD.relative_to(ROOT)}")
    ap.add_argument("--only", default="", help="comma-separated case names")
    ap.add_argument("--tmp", default="/tmp/pruneopd-golden")
    args = ap.parse_args()
    import pruneopd.training.train as train_mod

    train_mod.set_threads = lambda: None  # one thread, as the test runs it
    os_env_zoo = "PRUNEOPD_ZOO"
    import os

    os.environ.pop(os_env_zoo, None)  # the shipped zoo weights
    record = {"cpu": cpu_id(), "torch": torch.__version__, "cases": {}}
    only = set(filter(None, args.only.split(",")))
    if only and args.write:  # add or renew these cases; every other one stays as recorded
        old = json.loads(RECORD.read_text())
        if (old["cpu"], old["torch"]) != (record["cpu"], record["torch"]):
            sys.exit(f"{RECORD.name} was recorded on another CPU or torch: rewrite it whole")
        record["cases"] = old["cases"]
    for name, preset, extra in cases():
        if only and name not in only:
            continue
        print(name, file=sys.stderr, flush=True)
        record["cases"][name] = run_case(preset, extra, Path(args.tmp) / name)
    text = json.dumps(record, indent=1)
    if args.write:
        RECORD.write_text(text + "\n")
        print(f"wrote {RECORD}", file=sys.stderr)
    else:
        print(text)


if __name__ == "__main__":
    main()
