"""Experiment (session 11): where one full-OPD step's time goes at long horizons (pyinstrument).

One warm-up step, then one step under pyinstrument, of the benchmark's full-OPD step
(benchmarks/_common.py `opd_step`: sample, teacher scoring, drift monitor, full-vocabulary
reverse KL, backward, AdamW), 8 prompts x 4 responses x --new-tokens tokens on the long zoo's
cross pair; prints the phase times and the call tree. Needs `pip install pyinstrument`.

    python experiments/profile_opd_step.py [--new-tokens 512] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _common import NEVER_EOS, add_common_args, load_models, opd_step, setup, step_prompts  # noqa: E402


def main() -> None:
    from pyinstrument import Profiler

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(p, steps=1, batch=8, new_tokens=512)
    p.set_defaults(zoo="pruneopd/zoo_weights/long", task="loop", threads=2)
    args = p.parse_args()
    setup(args)
    student, teacher, tok = load_models(args)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4, weight_decay=0.0)
    prompts = step_prompts(args, tok, 2)
    gen = torch.Generator().manual_seed(args.seed)

    def step(ps):
        return opd_step(
            student,
            teacher,
            tok,
            opt,
            ps,
            cap=args.new_tokens,
            loss="full_rkl",
            eos_id=NEVER_EOS,
            gen=gen,
        )

    step(prompts[0])
    prof = Profiler(interval=0.001)
    prof.start()
    r = step(prompts[1])
    prof.stop()
    print(", ".join(f"{k} {v:.2f} s" for k, v in r.items() if k.startswith("t_")))
    print(prof.output_text(unicode=False, color=False))


if __name__ == "__main__":
    main()
