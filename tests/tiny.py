"""Shared by the unit tests: a tiny random Llama (2 layers, hidden 32), and the config of a
tiny training run on the fast zoo."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def tiny_llama(vocab_size: int, seed: int = 0, max_positions: int = 256) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
    )
    return LlamaForCausalLM(config).eval()


def tiny_run_config(tmp_path, name: str = "run", **kw):
    """A one-step run on the fast zoo (regs, difficulty 2, 2 x 2 samples, L_max 48) into
    `tmp_path / name`, with `kw` on top."""
    from pruneopd.config import TrainConfig

    base = dict(
        student="student-cross",
        teacher="teacher",
        task="regs",
        difficulty=2,
        seed=0,
        max_steps=1,
        prompts_per_step=2,
        responses_per_prompt=2,
        max_len=48,
        init_len=32,
        min_len=16,
        budget_step=8,
        budget_margin=8,
        eval_problems=4,
        eval_every=0,
        log_samples=1,
        tensorboard=False,
        progress=False,
        out=str(tmp_path / name),
    )
    base.update(kw)
    return TrainConfig(**base)


def short_run_config(tmp_path, name: str, **kw):
    """`tiny_run_config` for the methods' zoo tests: 2 steps, lr 1e-2, no checkpoints."""
    return tiny_run_config(tmp_path, name, **{"max_steps": 2, "lr": 1e-2, "save_every": 0, **kw})


def metric_rows(out) -> list[dict]:
    """A run's metrics.jsonl training rows without their wall-clock times."""
    import json

    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("t_")} for r in rows if "loss" in r]


def final_weights(out) -> dict:
    """The saved student's tensors (out/final)."""
    from safetensors.torch import load_file

    return load_file(out / "final" / "model.safetensors")
