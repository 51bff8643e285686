"""Full-OPD step throughput: `pruneopd` vs TRL's on-policy GKD, same pair, prompts and work.

Both sides train their own fresh copy of the student against the same frozen teacher (the
built-in zoo pair by default) on the same prompts, batch, responses per prompt and response
length, with the same loss and optimizer, in one process, alternating step by step (the side
that goes first swaps every step, so load from other processes hits both alike):

- pruneopd: one step of the trainer's full OPD (pruneopd/training/step.py phases, method=full,
  loss=full_rkl): `sample` (student, KV cache, temperature 1, eos id -1 so that every response
  runs to --new-tokens), `score_responses` (teacher top-16 + candidates, as the trainer does for
  its drift monitor and metrics), drift monitor + reliability weights, `token_losses`
  ("full_rkl": exact full-vocabulary KL(p_S || p_T), chunked, from the teacher's final hidden
  states that scoring returns, so the teacher runs once per step, as in the trainer),
  token mean, backward, grad clip 1.0, AdamW step.
- TRL: `trl.experimental.gkd.GKDTrainer` with lmbda=1 (always on-policy student samples),
  beta=1 (reverse KL in TRL's generalised-JSD convention), temperature 1, top_k 0, top_p 1,
  min_new_tokens = max_new_tokens = --new-tokens (EOS cannot stop a sample early). One step is
  what the HF Trainer's inner loop does per optimizer step, called directly: collate the
  step's rows with the trainer's collator, `get_batch_samples` (token count for the loss),
  `training_step` (on-policy `generate` + student and teacher forwards + loss + backward),
  grad clip 1.0 (`max_grad_norm`), AdamW step, scheduler step, `zero_grad`. Left out: the HF
  loop's callbacks, logging, checkpointing and its dataloader's sampler, which would make the
  alternation impossible (they are a small per-step cost on top of TRL's numbers).

Same optimizer on both sides: `torch.optim.AdamW(lr=--lr, weight_decay=0)`, constant
learning rate, no warm-up. TRL's prompts are given as `input_ids` (our prompt ids exactly)
with a dummy completion of --new-tokens tokens, so the collator needs no chat template and
TRL's loss is normalised by the same token count as ours (batch x new tokens).

tokens/s = generated response tokens / step wall time (median over steps, and total tokens /
total time); ratio = ours / TRL. Needs the bench extra: `pip install -e '.[bench]'`.

Run (real measurement, ~minutes on 2 cores):
    python benchmarks/peer_trl.py --steps 10 --batch 8 --responses-per-prompt 4 \\
        --new-tokens 128 --json peer_trl.json
Smoke test:
    python benchmarks/peer_trl.py --steps 2 --batch 2 --responses-per-prompt 2 --new-tokens 16
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings

import torch
from _common import (
    NEVER_EOS,
    add_common_args,
    bench_config,
    bench_run,
    environment,
    load_models,
    opd_step,
    print_table,
    setup,
    step_prompts,
    summary,
    write_json,
)
from speed_matrix import add_suite_args, suite_main


def make_trl(student, teacher, tok, args):
    """A GKDTrainer on a copy of the student, set up for fixed-length on-policy reverse KL."""
    from datasets import Dataset
    from transformers.utils import logging as hf_logging
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    hf_logging.set_verbosity_error()
    logging.getLogger("trl").setLevel(logging.ERROR)
    n = args.new_tokens
    cfg = GKDConfig(
        output_dir=args.trl_out,
        lmbda=1.0,
        beta=1.0,
        temperature=1.0,
        max_new_tokens=n,
        per_device_train_batch_size=trl_micro_prompts(args) * args.responses_per_prompt,
        learning_rate=args.lr,
        weight_decay=0.0,
        warmup_steps=0,
        lr_scheduler_type="constant",
        max_grad_norm=1.0,
        gradient_checkpointing=False,
        bf16=False,
        fp16=False,
        use_cpu=True,
        max_length=None,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        seed=args.seed,
        dataloader_num_workers=0,
    )
    opt = torch.optim.AdamW(student.parameters(), lr=args.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    dummy = Dataset.from_list([{"input_ids": [tok.bos_token_id] + [tok.eos_token_id] * n}])
    trainer = GKDTrainer(
        model=student,
        teacher_model=teacher,
        args=cfg,
        train_dataset=dummy,
        processing_class=tok,
        optimizers=(opt, sched),
    )
    # TRL's generation kwargs have no min_new_tokens: add it so EOS cannot end a sample early.
    trainer.generation_config.min_new_tokens = n
    trainer.generation_kwargs["min_new_tokens"] = n
    # Count the tokens TRL really trains on (completion mask after generation).
    counted = []
    generate = trainer.generate_on_policy_outputs

    def counting_generate(model, inputs, generation_config):
        ids, attention, labels = generate(model, inputs, generation_config)
        counted.append(int(attention[:, inputs["prompts"].shape[1] :].sum()))
        return ids, attention, labels

    trainer.generate_on_policy_outputs = counting_generate
    return trainer, counted


def trl_rows(prompts, n, eos_id):
    """Dataset rows: prompt ids + a dummy completion of n tokens (ignored: lmbda=1)."""
    # "prompt" is unused when completion_mask is given, but the collator reads the key first.
    return [
        {"prompt": "", "input_ids": p + [eos_id] * n, "completion_mask": [0] * len(p) + [1] * n}
        for p in prompts
    ]


def trl_micro_prompts(args) -> int:
    """Prompts per TRL forward: --trl-micro-batch samples (0: the whole step at once)."""
    micro = args.trl_micro_batch or args.batch * args.responses_per_prompt
    if micro % args.responses_per_prompt or (args.batch * args.responses_per_prompt) % micro:
        raise SystemExit(
            f"peer_trl: --trl-micro-batch {micro} must be a multiple of --responses-per-prompt "
            f"and divide the step's {args.batch * args.responses_per_prompt} samples"
        )
    return micro // args.responses_per_prompt


def trl_step(trainer, counted, prompts, n, eos_id, micro: int) -> tuple[float, int]:
    """One optimizer step of TRL's HF Trainer loop, its prompts in micro-batches of `micro`
    prompts with the gradient accumulated (as a TRL user does when the step's logits do not fit
    in memory): (seconds, tokens generated)."""
    t0 = time.perf_counter()
    chunks = [prompts[i : i + micro] for i in range(0, len(prompts), micro)]
    batches = [trainer.data_collator(trl_rows(c, n, eos_id)) for c in chunks]
    samples, num_items = trainer.get_batch_samples(iter(batches), len(batches), trainer.args.device)
    trainer.current_gradient_accumulation_steps = len(batches)  # the loss is divided by it
    model = trainer.model
    before = len(counted)
    for inputs in samples:
        trainer.training_step(model, inputs, num_items)
    torch.nn.utils.clip_grad_norm_(model.parameters(), trainer.args.max_grad_norm)
    trainer.optimizer.step()
    trainer.lr_scheduler.step()
    model.zero_grad()
    return time.perf_counter() - t0, sum(counted[before:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(p, steps=10, batch=8, new_tokens=128)
    p.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate, both sides")
    p.add_argument("--trl-out", default="/tmp/pruneopd-peer-trl", help="TRL's output_dir")
    p.add_argument(
        "--trl-micro-batch",
        type=int,
        default=0,
        help="samples per TRL forward, the gradient accumulated over the step (0: the whole "
        "step; TRL's full-vocabulary logits of 32 x 256 SmolLM2 samples exceed 24 GiB)",
    )
    add_suite_args(p)
    args = p.parse_args()
    if args.suite:  # the step rows of a suite, each in its own process (speed_matrix.py)
        return suite_main(args, ["benchmarks/peer_trl.py", *sys.argv[1:]], "step")
    setup(args)
    warnings.filterwarnings("ignore")
    import trl

    ours_student, teacher, tok = load_models(args)
    trl_student, trl_teacher, _ = load_models(args)
    trainer, counted = make_trl(trl_student, trl_teacher, tok, args)
    cfg = bench_config(args, loss="full_rkl", lr=args.lr, warmup_steps=0)
    run = bench_run(
        args, cfg, ours_student, teacher, tok, args.warmup + args.steps, eos_id=NEVER_EOS
    )
    torch.manual_seed(args.seed)
    n, eos = args.new_tokens, tok.eos_token_id
    step_of = iter(range(args.warmup + args.steps))

    def ours(prompts):  # the same problems as `prompts`, step by step
        r = opd_step(run, next(step_of))
        return r["t_step"], r["tokens"]

    def theirs(prompts):
        return trl_step(trainer, counted, prompts, n, eos, trl_micro_prompts(args))

    per_step = step_prompts(args, tok, args.warmup + args.steps)
    times = {"pruneopd": [], "trl": []}
    tokens = {"pruneopd": [], "trl": []}
    for i, prompts in enumerate(per_step):
        order = [("pruneopd", ours), ("trl", theirs)]
        for name, fn in order if i % 2 == 0 else order[::-1]:
            s, k = fn(prompts)
            if i >= args.warmup:
                times[name].append(s)
                tokens[name].append(k)
        if i >= args.warmup:
            ours_s, trl_s = last_step(times, tokens), last_step(times, tokens, "trl")
            print(f"step {i + 1 - args.warmup}: pruneopd {ours_s}  trl {trl_s}")

    rows = [{"side": k, **summary(times[k], tokens[k])} for k in times]
    ratio_med = rows[0]["median_tok_s"] / rows[1]["median_tok_s"]
    ratio_tot = rows[0]["total_tok_s"] / rows[1]["total_tok_s"]
    print()
    print(
        f"full-OPD step, reverse KL, {args.batch} prompts x {args.responses_per_prompt} "
        f"responses x {n} new tokens, {args.threads} threads, trl {trl.__version__}"
    )
    print_table(
        rows,
        [
            ("side", "side", ""),
            ("repeats", "steps", "d"),
            ("tokens_per_repeat", "tokens/step", ".0f"),
            ("median_s", "median s", ".3f"),
            ("median_tok_s", "median tok/s", ".1f"),
            ("total_tok_s", "total tok/s", ".1f"),
        ],
    )
    print(f"ratio pruneopd / trl: {ratio_med:.2f}x (median), {ratio_tot:.2f}x (total)")
    write_json(
        args.json,
        {
            "benchmark": "peer_trl",
            **environment(args),
            "trl": trl.__version__,
            "trl_micro_batch": trl_micro_prompts(args) * args.responses_per_prompt,
            "results": rows,
            "ratio_median": ratio_med,
            "ratio_total": ratio_tot,
            "times": times,
            "tokens": tokens,
        },
    )


def last_step(times, tokens, name="pruneopd") -> str:
    """The latest timed step of a side."""
    return f"{times[name][-1]:.2f}s {tokens[name][-1] / times[name][-1]:.0f} tok/s"


if __name__ == "__main__":
    main()
