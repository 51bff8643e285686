"""Where the real pair's fine-tuned teacher goes wrong on the running-sums task: greedy
responses to the first N dev problems, and for each the first line that differs from the
reference (docs/benchmarks.md section 12).

    python experiments/real_teacher_errors.py --n 8 \\
        [--model ~/.cache/pruneopd/real/teacher-sums.ckpt] [--tokenizer ~/.cache/pruneopd/real/teacher]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

REAL = Path.home() / ".cache" / "pruneopd" / "real"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(REAL / "teacher-sums.ckpt"))
    ap.add_argument("--tokenizer", default=str(REAL / "teacher"))
    ap.add_argument("--data", default=str(REAL / "sums" / "dev.jsonl"))
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=400)
    args = ap.parse_args()
    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    tok.padding_side = "left"
    tok.pad_token = tok.pad_token or tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    rows = [json.loads(x) for x in Path(args.data).read_text().splitlines()][: args.n]
    chats = [[{"role": "user", "content": r["prompt"]}] for r in rows]
    texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
    enc = tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=args.max_new_tokens, do_sample=False)
    for r, ids in zip(rows, out, strict=True):
        got = tok.decode(ids[enc.input_ids.shape[1] :], skip_special_tokens=True).split("\n")
        want = r["response"].split("\n")
        diff = next((i for i, (a, b) in enumerate(zip(want, got, strict=False)) if a != b), None)
        if diff is None and len(got) >= len(want):
            print(f"answer {r['answer']}: right")
        elif diff is None:
            print(f"answer {r['answer']}: stops after line {len(got)}")
        else:
            print(f"answer {r['answer']}: line {diff}: want {want[diff]!r}, got {got[diff]!r}")


if __name__ == "__main__":
    main()
