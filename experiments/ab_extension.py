"""Experiment (session 13): the sampler on the working tree's compiled extension against an
older build of it, in one process, alternating (6 repeats, 32 x --new-tokens tokens from the long zoo's cross
student, same draws; checks the tokens agree). --old: the .so of the older build, e.g. from
~/.cache/torch_extensions/py311_cpu/pruneopd_fused_decode_<tag>/ (build it from an older commit
with `python -m pruneopd.engines.fused`).

    python experiments/ab_extension.py --old PATH/TO/pruneopd_fused_decode_<tag>.so
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _common import NEVER_EOS, add_common_args, load_models, setup, step_prompts  # noqa: E402

from pruneopd.engines import fused  # noqa: E402
from pruneopd.engines.rollout import sample  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(p, steps=6, batch=8, new_tokens=512)
    p.set_defaults(zoo="pruneopd/zoo_weights/long", task="loop", threads=2)
    p.add_argument("--old", required=True, help="the older build's .so")
    args = p.parse_args()
    setup(args)
    new = fused.load()
    spec = importlib.util.spec_from_file_location(Path(args.old).name.split(".")[0], args.old)
    old_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old_module)
    old = old_module
    if not hasattr(old_module, "linear"):  # builds before c336942
        old = types.SimpleNamespace(
            decode_step=old_module.decode_step, linear=lambda x, w: torch.nn.functional.linear(x, w)
        )
    blocks = fused.FusedDecoder.can_sample_steps  # builds before 88f2c02 sample token by token
    fused.FusedDecoder.can_sample_steps = lambda d: hasattr(d.ext, "sample_steps") and blocks(d)
    student, _, tok = load_models(args, teacher=False)
    prompts = step_prompts(args, tok, 1)[0]

    def go(ext):
        fused._EXT = ext  # FusedDecoder takes the extension from fused.load()
        return sample(
            student,
            prompts,
            max_new_tokens=args.new_tokens,
            eos_id=NEVER_EOS,
            pad_id=tok.pad_token_id,
            temperature=1.0,
            generator=torch.Generator().manual_seed(args.seed),
            topk=16,
        )

    print("same tokens:", go(old).responses == go(new).responses)
    times = {"old": [], "new": []}
    for rep in range(args.steps):
        for name in ["old", "new"] if rep % 2 == 0 else ["new", "old"]:
            t = time.perf_counter()
            go(old if name == "old" else new)
            times[name].append(time.perf_counter() - t)
    fused._EXT = new
    med = {k: statistics.median(v) for k, v in times.items()}
    print({k: [f"{x:.3f}" for x in v] for k, v in times.items()})
    print(
        f"median old {med['old']:.3f} s new {med['new']:.3f} s old/new {med['old'] / med['new']:.2f}x"
    )


if __name__ == "__main__":
    main()
