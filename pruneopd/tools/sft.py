"""Supervised fine-tuning on task traces: how the built-in zoo's models learn to reason.

Each example is BOS + prompt + a reference trace in some style + EOS; only the response
tokens carry loss. Sequences are right-padded and run without an attention mask: with a
causal model, padding after a sequence can never influence its real tokens, and dropping
the mask lets PyTorch's SDPA use its fast causal kernel (about 2.7x faster here).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import torch

from pruneopd.tasks import Task, in_test_split
from pruneopd.tokenizer import encode_prompt


@dataclass(frozen=True)
class TraceMix:
    """Which tasks, trace styles (with weights) and difficulties a model is trained on."""

    tasks: tuple[str, ...]
    styles: dict[str, float]
    min_difficulty: int
    max_difficulty: int
    # one difficulty per batch instead of per example: a batch is padded to its longest
    # sequence, so mixing lengths within a batch costs as much as the longest every time
    per_batch_difficulty: bool = False


class SFTBatches:
    """Endless (input_ids_BL, labels_BL) batches of fresh training problems.

    Problems are drawn on the fly from the train split (anything whose prompt hashes into
    the test split is skipped), so a model never sees a test prompt. The stream is a
    function of its seed; `state_dict` / `load_state_dict` save and restore its position,
    so a resumed build sees the same batches as an uninterrupted one.
    """

    def __init__(self, tasks: dict[str, Task], mix: TraceMix, tok, batch_size: int, seed: int):
        self.tasks, self.mix, self.tok, self.batch_size = tasks, mix, tok, batch_size
        self.rng = random.Random(f"sft/{seed}")

    def state_dict(self) -> dict:
        version, internal, gauss = self.rng.getstate()
        return {"rng": [version, list(internal), gauss]}

    def load_state_dict(self, state: dict) -> None:
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        mix, tok, rng, batch_size = self.mix, self.tok, self.rng, self.batch_size
        styles, weights = list(mix.styles), list(mix.styles.values())
        seqs, n_prompt = [], []
        batch_d = None  # drawn only when asked, so the default stream stays as it was
        if mix.per_batch_difficulty:
            batch_d = rng.randint(mix.min_difficulty, mix.max_difficulty)
        while len(seqs) < batch_size:
            task = self.tasks[rng.choice(mix.tasks)]
            p = task._make(rng, batch_d or rng.randint(mix.min_difficulty, mix.max_difficulty))
            if in_test_split(p.prompt):
                continue
            prompt = encode_prompt(tok, p.prompt)
            style = rng.choices(styles, weights=weights)[0]
            resp = tok(task.render(p, style), add_special_tokens=False)["input_ids"]
            seqs.append(prompt + resp + [tok.eos_token_id])
            n_prompt.append(len(prompt))
        length = max(map(len, seqs))
        input_ids_BL = torch.full((batch_size, length), tok.pad_token_id)
        labels_BL = torch.full((batch_size, length), -100)
        for i, (s, n) in enumerate(zip(seqs, n_prompt, strict=True)):
            input_ids_BL[i, : len(s)] = torch.tensor(s)
            labels_BL[i, n : len(s)] = torch.tensor(s[n:])  # loss on the response only
        return input_ids_BL, labels_BL


def sft_batches(
    tasks: dict[str, Task], mix: TraceMix, tok, batch_size: int, seed: int
) -> SFTBatches:
    """The batch stream of `mix` (see `SFTBatches`)."""
    return SFTBatches(tasks, mix, tok, batch_size, seed)


def lr_at(step: int, steps: int, lr: float, warmup: int, final_frac: float = 0.1) -> float:
    """Linear warm-up, then cosine decay to `final_frac * lr` at `steps`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return lr * (final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * progress)))


def logit_matching_loss(
    student_logits_BLV: torch.Tensor, teacher_logits_BLV: torch.Tensor, labels_BL: torch.Tensor
) -> torch.Tensor:
    """Mean squared difference of the two models' logits, each centred over the vocabulary,
    at every position that predicts a response token (Ba & Caruana 2014, "Do deep nets
    really need to be deep?"). Unlike cross-entropy on the reference token, it fixes the
    whole ranking, the tail included: what a student distilled this way shares with its
    teacher is how it orders the alternatives, as models of one family do.

    Position t predicts token t + 1, so the mask is `labels_BL[:, 1:] != -100`.
    """
    mask_BL = labels_BL[:, 1:] != -100
    s_NV = student_logits_BLV[:, :-1][mask_BL]
    t_NV = teacher_logits_BLV[:, :-1][mask_BL]
    diff_NV = (s_NV - s_NV.mean(-1, keepdim=True)) - (t_NV - t_NV.mean(-1, keepdim=True))
    return diff_NV.pow(2).mean()


def train_sft(
    model,
    batches: SFTBatches,
    *,
    steps: int,
    lr: float,
    warmup: int = 100,
    eval_every: int = 0,
    on_eval: Callable[[int], bool] | None = None,
    on_step: Callable[[int, float], None] | None = None,
    on_checkpoint: Callable[[int, dict], None] | None = None,
    resume: dict | None = None,
    distill_from=None,
    distill_weight: float = 0.0,
    eval_from: int = 0,
    eval_below_loss: float = 0.0,
    stop=None,
) -> int:
    """Train for up to `steps` steps; `on_eval(step)` runs every `eval_every` steps and
    stops training early when it returns True (from step `eval_from` on, and once the
    running mean of the loss over the last 10 steps is below `eval_below_loss` if that is
    set). Returns the number of steps taken.

    After each evaluation that does not stop training, `on_checkpoint(step, state)` gets
    everything needed to continue (`state`: the optimizer's and the batch stream's state
    and the step); `resume=state` continues from it, with the model's weights of that step
    already loaded, and ends exactly where an uninterrupted run would.

    `distill_from` (a frozen model) adds `distill_weight` x `logit_matching_loss` against
    its logits to the cross-entropy on the reference tokens.

    `stop` (a `training.checkpoint.GracefulStop`): once it is requested (Ctrl-C, SIGTERM), the
    step under way finishes, `on_checkpoint` saves it and training returns that step (the
    caller tells a stop from the end by `stop.requested`).
    """
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    start = 0
    if resume is not None:
        opt.load_state_dict(resume["optimizer"])
        batches.load_state_dict(resume["batches"])
        start = resume["step"]
    model.train()
    recent: list[float] = []  # the last 10 losses (restarts empty on resume)
    for step in range(start, steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup)
        input_ids_BL, labels_BL = next(batches)
        out = model(input_ids=input_ids_BL, labels=labels_BL)
        loss = out.loss
        if distill_from is not None and distill_weight > 0:
            with torch.inference_mode():
                teacher_logits_BLV = distill_from(input_ids=input_ids_BL).logits
            loss = loss + distill_weight * logit_matching_loss(
                out.logits, teacher_logits_BLV.clone(), labels_BL
            )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        recent = (recent + [loss.item()])[-10:]
        if on_step is not None:
            on_step(step + 1, recent[-1])
        due = eval_every and (step + 1) % eval_every == 0 and step + 1 >= eval_from
        if eval_below_loss > 0 and sum(recent) / len(recent) >= eval_below_loss:
            due = False
        stopping = stop is not None and stop.requested
        evaluated = due and on_eval is not None
        if evaluated:
            if on_eval(step + 1):
                return step + 1
            model.train()
        if (evaluated or stopping) and on_checkpoint is not None:
            state = {"optimizer": opt.state_dict(), "batches": batches.state_dict()}
            on_checkpoint(step + 1, {**state, "step": step + 1})
        if stopping:
            return step + 1
    return steps
