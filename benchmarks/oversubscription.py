"""Sampling speed when another process holds a core: threads and OpenMP's wait policy.

With as many intra-op threads as cores, every parallel region needs all of them running. When
another process holds a core, one of our threads waits for a time slice at every region.
This measures three ways to run beside a busy process, against the idle machine: the
default (2 threads, OpenMP's default wait policy: spin, then sleep), `OMP_WAIT_POLICY=PASSIVE`
(waiting threads sleep at once) and one thread.

Each configuration runs in a fresh process (the policy is read when the OpenMP runtime
loads): sample 32 samples (8 `loop` prompts x 4) x --new-tokens tokens from the long zoo's
cross student, one warm-up call, the median of --repeats timed calls. "busy" starts a
neighbour process first that multiplies 512 x 512 matrices on one thread until the
configuration is done.

    python benchmarks/oversubscription.py [--new-tokens 64] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NEIGHBOUR = (
    "import torch\ntorch.set_num_threads(1)\na = torch.randn(512, 512)\nwhile True:\n    a @ a\n"
)
CONFIGS = [  # (name, threads, wait policy or None = OpenMP's default, neighbour)
    ("idle, 2 threads, default policy", 2, None, False),
    ("idle, 2 threads, PASSIVE", 2, "PASSIVE", False),
    ("busy, 2 threads, default policy", 2, None, True),
    ("busy, 2 threads, PASSIVE", 2, "PASSIVE", True),
    ("busy, 1 thread", 1, None, True),
]


def child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    os.environ["PRUNEOPD_ZOO"] = str(ROOT / "pruneopd" / "zoo_weights" / "long")
    from pruneopd.engines import rollout
    from pruneopd.models import load_model, load_tokenizer
    from pruneopd.tasks import get_task
    from pruneopd.tokenizer import prompt_ids

    tok = load_tokenizer("student-cross")
    model = load_model("student-cross").eval()
    problems = get_task("loop").problems("train", 8, seed=0)
    prompts = rollout.repeat_prompts([prompt_ids(tok, p) for p in problems], 4)

    def run():
        rollout.sample(
            model,
            prompts,
            max_new_tokens=args.new_tokens,
            eos_id=-1,
            pad_id=tok.pad_token_id,
            generator=torch.Generator().manual_seed(0),
            topk=16,
        )

    run()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    print(json.dumps({"median_s": statistics.median(times), "times": times}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    rows = []
    for name, threads, policy, busy in CONFIGS:
        env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
        if policy:
            env["OMP_WAIT_POLICY"] = policy
        cmd = [
            sys.executable,
            __file__,
            "--child",
            "--threads",
            str(threads),
            "--new-tokens",
            str(args.new_tokens),
            "--repeats",
            str(args.repeats),
        ]
        neighbour = subprocess.Popen([sys.executable, "-c", NEIGHBOUR]) if busy else None
        try:
            if neighbour:
                time.sleep(2)
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        finally:
            if neighbour:
                neighbour.kill()
                neighbour.wait()
        res = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(
            {"config": name, "threads": threads, "policy": policy or "default", "busy": busy, **res}
        )
        print(f"{name:34s} {res['median_s']:7.2f} s", flush=True)
    base = rows[0]["median_s"]
    print(f"PASSIVE on an idle machine: {rows[1]['median_s'] / base:.3f}x the default's time")
    print(
        f"beside a busy process, against 1 thread: 2 threads {rows[2]['median_s'] / rows[4]['median_s']:.2f}x "
        f"the time, 2 threads PASSIVE {rows[3]['median_s'] / rows[4]['median_s']:.2f}x"
    )
    if args.json:
        meta = {"new_tokens": args.new_tokens, "repeats": args.repeats, "samples": 32}
        Path(args.json).write_text(json.dumps({**meta, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
