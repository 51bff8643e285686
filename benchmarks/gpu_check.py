"""The GPU check (docs/scaling.md, run by `benchmarks/gpu_check.sh`): on the machine it runs on,
with random-weight Qwen3-architecture pairs made on the spot (no downloads),

1. rollout tokens/s: the lean sampler against the in-process vLLM engine, the same prompts
   and lengths (every sample runs to the cap);
2. teacher scoring tokens/s: one HF forward against vLLM `prompt_logprobs=K`, over the same
   prompt + response sequences, with the largest log-prob difference between the two;
3. one Prune-OPD step end to end through `pruneopd train` (rollout_engine=vllm,
   teacher_engine=vllm, loss=sampled_rkl, which any vocabulary size serves), its seconds and
   `logprob_mismatch`;

printed as one table (and --json). Sizes: `tiny` (a few M parameters) and `0.5b` (Qwen3-0.6B's
shape with a 0.5B-class layer stack). On a GPU: `--device cuda --sizes tiny,0.5b` (the default
in gpu_check.sh); on CPU the `tiny` size runs in a couple of minutes, which is how this script
is tested (tests/test_vllm.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SIZES = {  # (hidden, layers, heads, kv heads, intermediate, vocab), student / teacher
    "tiny": ((128, 2, 4, 2, 384, 320), (256, 4, 4, 2, 768, 320)),
    "0.5b": ((896, 24, 14, 2, 4864, 151936), (1024, 28, 16, 8, 3072, 151936)),
}


def qwen3(hidden, layers, heads, kv, inter, vocab, seed):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen3Config(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        intermediate_size=inter,
        vocab_size=vocab,
        head_dim=128 if hidden >= 896 else hidden // heads,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return Qwen3ForCausalLM(cfg).eval()


def make_pair(size: str, root: Path, dtype: torch.dtype) -> tuple[Path, Path]:
    """Student and teacher folders (weights + the zoo's tokenizer beside them)."""
    from pruneopd.models import load_tokenizer

    tok = load_tokenizer("long/student-same")
    folders = []
    for name, shape, seed in (("student", SIZES[size][0], 0), ("teacher", SIZES[size][1], 1)):
        f = root / size / name
        qwen3(*shape, seed=seed).to(dtype).save_pretrained(f)
        tok.save_pretrained(f)
        folders.append(f)
    return folders[0], folders[1]


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def check_size(size: str, args, root: Path) -> list[dict]:
    from pruneopd.engines.rollout import sample
    from pruneopd.engines.scoring import score_responses
    from pruneopd.engines.vllm_engine import VLLMSampler, VLLMTeacher
    from pruneopd.models import load_model, load_tokenizer

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    s_dir, t_dir = make_pair(size, root, dtype)
    tok = load_tokenizer(str(s_dir))
    student = load_model(str(s_dir), dtype).to(device).eval()
    teacher = load_model(str(t_dir), dtype).to(device).eval()
    g = torch.Generator().manual_seed(0)
    prompts = [
        torch.randint(3, 320, (args.prompt_tokens,), generator=g).tolist()
        for _ in range(args.samples)
    ]
    N, K = args.new_tokens, 16
    never = -1  # an EOS the lean sampler never emits: every sample runs to N
    rows = []
    sample(student, prompts[:2], max_new_tokens=8, eos_id=never, pad_id=0, topk=K)  # warm-up
    lean, t_lean = timed(
        lambda: sample(
            student, prompts, max_new_tokens=N, eos_id=never, pad_id=0, topk=K, generator=g
        ),
        device,
    )
    engine = dict(
        dtype=args.dtype,
        seed=0,
        max_model_len=args.prompt_tokens + N + 8,
        device=device,
        kv_cache_mb=args.kv_cache_mb,
        gpu_memory=args.gpu_memory,
    )
    vs = VLLMSampler(student, tok, **engine)
    # EOS id 2 can be drawn by random weights; the tokens/s counts what was sampled
    _, _ = timed(
        lambda: vs.sample(prompts[:2], max_new_tokens=8, eos_id=2, pad_id=0, seeds=[0, 1], topk=K),
        device,
    )
    out, t_vllm = timed(
        lambda: vs.sample(
            prompts, max_new_tokens=N, eos_id=2, pad_id=0, seeds=list(range(len(prompts))), topk=K
        ),
        device,
    )
    n_lean = sum(len(r) for r in lean.responses)
    n_vllm = sum(len(r) for r in out.responses)
    rows.append(
        {
            "size": size,
            "what": "rollout tokens/s",
            "hf_or_lean": n_lean / t_lean,
            "vllm": n_vllm / t_vllm,
            "note": f"{len(prompts)} x {N} tokens",
        }
    )
    vs = None  # free the student's engine before the teacher's
    vt = VLLMTeacher(str(t_dir), tok, **engine)
    responses = lean.responses
    ref, t_hf = timed(lambda: score_responses(teacher, prompts, responses, k=K, pad_id=0), device)
    vt.score(prompts[:2], [r[:8] for r in responses[:2]], k=K)  # warm-up
    got, t_v = timed(lambda: vt.score(prompts, responses, k=K), device)
    n = sum(len(r) for r in responses)
    diff = float((got.token_logprobs_BT - ref.token_logprobs_BT.cpu()).abs().max())
    rows.append(
        {
            "size": size,
            "what": "teacher scoring tokens/s",
            "hf_or_lean": n / t_hf,
            "vllm": n / t_v,
            "note": f"max |log-prob diff| {diff:.1e}",
        }
    )
    vt = None
    step = one_step(s_dir, t_dir, args, root / size / "run")
    rows.append(
        {
            "size": size,
            "what": "Prune-OPD step (s), vLLM engines",
            "hf_or_lean": None,
            "vllm": step["seconds"],
            "note": f"logprob_mismatch {step['logprob_mismatch']:.1e}",
        }
    )
    return rows


def one_step(s_dir: Path, t_dir: Path, args, out: Path) -> dict:
    """`pruneopd train` for one step with both engines, in its own process."""
    cmd = [
        sys.executable,
        "-m",
        "pruneopd.cli",
        "train",
        f"student={s_dir}",
        f"teacher={t_dir}",
        "task=loop",
        "method=prune",
        "loss=sampled_rkl",
        "rollout_engine=vllm",
        "teacher_engine=vllm",
        "max_steps=1",
        "prompts_per_step=4",
        "responses_per_prompt=4",
        f"max_len={args.new_tokens}",
        "min_len=16",
        f"init_len={args.new_tokens}",
        "eval_problems=2",
        "eval_every=0",
        "progress=false",
        "tensorboard=false",
        f"device={args.device}",
        f"dtype={args.dtype}",
        f"out={out}",
        "overwrite=true",
        f"vllm_kv_cache_mb={args.kv_cache_mb}",
        f"vllm_gpu_memory={args.gpu_memory}",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"gpu_check: the training step failed:\n{res.stderr[-3000:]}")
    step = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    m = next(r for r in step if "loss" in r)
    return {
        "seconds": m["t_sample"] + m["t_teacher"] + m["t_update"],
        "logprob_mismatch": m["logprob_mismatch"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, help="default: bfloat16 on cuda, float32 on cpu")
    p.add_argument("--sizes", default="tiny,0.5b")
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=1024)
    p.add_argument("--kv-cache-mb", type=int, default=512, help="vLLM's KV cache on CPU")
    p.add_argument("--gpu-memory", type=float, default=0.3, help="vLLM's share of the GPU")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    rows = []
    with tempfile.TemporaryDirectory(prefix="pruneopd-gpu-check-") as root:
        for size in args.sizes.split(","):
            if size not in SIZES:
                raise SystemExit(f"gpu_check: unknown size {size!r} (known: {', '.join(SIZES)})")
            rows += check_size(size, args, Path(root))
    print(f"| size | what | HF / lean | vLLM | note |  ({args.device}, {args.dtype})")
    print("| --- | --- | ---: | ---: | --- |")
    for r in rows:
        hf = "-" if r["hf_or_lean"] is None else f"{r['hf_or_lean']:.0f}"
        print(f"| {r['size']} | {r['what']} | {hf} | {r['vllm']:.2f} | {r['note']} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": args.device, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
