"""Canary for the long-horizon suite: how fast does a model learn `loop` (session 5 note).

Trains one model by SFT on `loop` traces with one difficulty per batch drawn from
[MIN_D, MAX_D], evaluating greedy accuracy on held-out problems at the task's default
difficulty (7-14 rounds) every EVAL steps. Nothing is saved.

    python experiments/long_canary.py HIDDEN LAYERS STEPS LR MIN_D MAX_D EVAL
"""

import sys
import time

from pruneopd.models import ModelSize, load_tokenizer, set_threads
from pruneopd.tasks import TASKS
from pruneopd.tools.sft import TraceMix, sft_batches, train_sft
from pruneopd.tools.zoo import _new_model
from pruneopd.training.evaluate import evaluate

hidden, layers, steps, lr, lo, hi, every = sys.argv[1:8]
set_threads()
tok = load_tokenizer("teacher")
task = TASKS["loop"]
model = _new_model(ModelSize(int(hidden), int(layers), int(hidden) // 32), tok, 0)
mix = TraceMix(("loop",), {"terse": 1.0}, int(lo), int(hi), per_batch_difficulty=True)
test = task.problems("test", 32, seed=0)
t0 = time.time()


def on_eval(step):
    res = evaluate(model, tok, task, test)
    print(
        f"step {step} {time.time() - t0:.0f}s acc {res['accuracy']:.3f} "
        f"pc {res['partial_credit']:.3f} len {res['mean_length']:.0f}",
        flush=True,
    )
    model.train()
    return res["accuracy"] >= 0.97


def on_step(step, loss):
    if step % 25 == 0:
        print(f"step {step} {time.time() - t0:.0f}s loss {loss:.4f}", flush=True)


train_sft(
    model,
    sft_batches({"loop": task}, mix, tok, 32, 0),
    steps=int(steps),
    lr=float(lr),
    eval_every=int(every),
    on_eval=on_eval,
    on_step=on_step,
)
