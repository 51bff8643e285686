"""Fine-tune a Hugging Face chat model on reference responses: the real pair's warm-ups.

`tune(model, data, out, ...)` trains every weight on `{"prompt", "response"}` JSONL rows,
each the chat template's user turn + the assistant's reference answer (loss on the answer and
its end-of-turn tokens only), with `pruneopd.tools.sft.train_sft` (AdamW, warm-up + cosine).
Every `eval_every` steps it scores greedy accuracy on a dev file with the trainer's own
`evaluate`, logs to OUT.log.jsonl and checkpoints to OUT.ckpt/ (weights, optimizer, the batch
stream's position); Ctrl-C or SIGTERM finishes the step under way and checkpoints it too. So a
run that is stopped resumes where it was and ends as an uninterrupted one would. It stops early once dev accuracy reaches `target` (if set). The
finished model is OUT (save_pretrained + tokenizer) with `pruneopd-tune.json` written last.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path

import torch

TUNE_MARKER = "pruneopd-tune.json"


def conversation_ids(tok, prompt: str, response: str) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids) of one exchange under the tokenizer's chat template: the
    answer ids are what the template appends after the generation prompt (the response and
    the template's end-of-turn tokens)."""
    user = [{"role": "user", "content": prompt}]
    head = tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    whole = tok.apply_chat_template(
        user + [{"role": "assistant", "content": response}], tokenize=False
    )
    if not whole.startswith(head):  # a template that rewrites earlier turns: plain suffix
        whole = head + response + (tok.eos_token or "")
    ids_head = tok(head, add_special_tokens=False)["input_ids"]
    ids_tail = tok(whole[len(head) :], add_special_tokens=False)["input_ids"]
    return ids_head, ids_tail


class ChatBatches:
    """Endless (input_ids_BL, labels_BL) batches of JSONL exchanges, drawn in a seeded random
    order (an epoch at a time); right-padded, labels -100 on prompt and padding."""

    def __init__(self, rows: list[dict], tok, batch_size: int, seed: int):
        self.examples = [conversation_ids(tok, r["prompt"], r["response"]) for r in rows]
        self.pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.batch_size, self.seed = batch_size, seed
        self.epoch, self.pos = 0, 0
        self._order()

    def _order(self) -> None:
        self.order = list(range(len(self.examples)))
        random.Random(f"tune/{self.seed}/{self.epoch}").shuffle(self.order)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]
        self._order()

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        picked = []
        while len(picked) < self.batch_size:
            if self.pos == len(self.order):
                self.epoch, self.pos = self.epoch + 1, 0
                self._order()
            picked.append(self.examples[self.order[self.pos]])
            self.pos += 1
        L = max(len(h) + len(t) for h, t in picked)
        input_ids_BL = torch.full((len(picked), L), self.pad, dtype=torch.long)
        labels_BL = torch.full((len(picked), L), -100, dtype=torch.long)
        for b, (h, t) in enumerate(picked):
            n = len(h) + len(t)
            input_ids_BL[b, :n] = torch.tensor(h + t)
            labels_BL[b, len(h) : n] = torch.tensor(t)
        return input_ids_BL, labels_BL


def read_rows(path: str | Path) -> list[dict]:
    rows = []
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        r = json.loads(line)
        if not isinstance(r.get("prompt"), str) or not isinstance(r.get("response"), str):
            raise ValueError(f"{path} line {i}: needs text fields 'prompt' and 'response'")
        rows.append(r)
    return rows


def tune(
    model_dir: str | Path,
    data: str | Path,
    dev: str | Path,
    out: str | Path,
    *,
    steps: int,
    lr: float = 1e-4,
    batch_size: int = 8,
    warmup: int = 10,
    eval_every: int = 25,
    eval_n: int = 32,
    target: float = 0.0,
    seed: int = 0,
    log=print,
) -> dict:
    """Fine-tune `model_dir` on `data` into `out` (see the module docstring); returns the
    record written to OUT/pruneopd-tune.json. A finished OUT is kept as it is."""
    from pruneopd.models import load_model, load_tokenizer
    from pruneopd.tasks.data import DataTask
    from pruneopd.tokenizer import ensure_padding
    from pruneopd.tools.sft import train_sft
    from pruneopd.training.checkpoint import GracefulStop
    from pruneopd.training.evaluate import evaluate
    from pruneopd.training.train import TrainingStopped

    out = Path(out)
    if (out / TUNE_MARKER).exists():
        record = json.loads((out / TUNE_MARKER).read_text())
        log(f"{out} is already tuned ({record['steps']} steps); nothing to do")
        return record
    ckpt, log_path = Path(f"{out}.ckpt"), Path(f"{out}.log.jsonl")
    torch.manual_seed(seed)
    tok = load_tokenizer(str(model_dir))
    ensure_padding(tok)
    resume = None
    if (ckpt / "state.pt").exists():
        model = load_model(str(ckpt))
        resume = torch.load(ckpt / "state.pt", weights_only=False)
        log(f"resuming from {ckpt} at step {resume['step']}")
    else:
        model = load_model(str(model_dir))
        log_path.unlink(missing_ok=True)
    batches = ChatBatches(read_rows(data), tok, batch_size, seed)
    dev_task = DataTask(dev, tok)
    problems = dev_task.train[:eval_n]
    started, history = time.time(), []
    last: dict = {}  # the latest evaluation: {"step", "res"}

    def write_log(entry: dict) -> None:
        history.append(entry)
        with open(log_path, "a") as f:
            f.write(json.dumps(entry) + "\n")

    def on_step(step: int, loss: float) -> None:
        if step % 5 == 0:
            write_log({"step": step, "loss": round(loss, 4), "seconds": time.time() - started})
            log(f"step {step}/{steps} loss {loss:.4f}")

    def on_eval(step: int) -> bool:
        res = evaluate(model, tok, dev_task, problems, max_new_tokens=400)
        last.update(step=step, res=res)
        write_log(
            {"step": step, "dev_accuracy": res["accuracy"], "mean_length": res["mean_length"]}
        )
        log(
            f"step {step}: dev accuracy {res['accuracy']:.3f}, mean length {res['mean_length']:.0f}"
        )
        return bool(target) and res["accuracy"] >= target

    def on_checkpoint(step: int, state: dict) -> None:
        tmp = Path(f"{ckpt}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        torch.save(state, tmp / "state.pt")
        shutil.rmtree(ckpt, ignore_errors=True)
        tmp.rename(ckpt)

    with GracefulStop() as stop:
        taken = train_sft(
            model,
            batches,
            steps=steps,
            lr=lr,
            warmup=warmup,
            eval_every=eval_every,
            on_eval=on_eval,
            on_step=on_step,
            on_checkpoint=on_checkpoint,
            resume=resume,
            stop=stop,
        )
    if stop.requested and taken < steps:
        raise TrainingStopped(
            f"{stop.signal_name}: the fine-tune stopped after step {taken} of {steps}, saved in "
            f"{ckpt}; the same command continues it",
            exit_code=stop.exit_code,
        )
    if last.get("step") == taken:  # ended right after an evaluation (the target reached)
        final = last["res"]
    else:
        final = evaluate(model, tok, dev_task, problems, max_new_tokens=400)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    record = {
        "from": str(model_dir),
        "data": str(data),
        "steps": taken,
        "lr": lr,
        "batch_size": batch_size,
        "dev_accuracy": final["accuracy"],
        "dev_problems": len(problems),
        "seconds_this_process": round(time.time() - started, 1),
    }
    (out / TUNE_MARKER).write_text(json.dumps(record, indent=2))
    shutil.rmtree(ckpt, ignore_errors=True)
    return record
