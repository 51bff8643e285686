"""What is distilled: the teacher/student pair (checked to share a vocabulary), the device
and dtype they run in, and where the prompts come from (a built-in task or a data file).
Everything here runs before any compute, so bad input fails fast."""

from __future__ import annotations

import os

import torch

from pruneopd.config import ConfigError, TrainConfig
from pruneopd.models import load_model, load_model_shell, load_tokenizer
from pruneopd.tasks import get_task
from pruneopd.teacher_entries import teacher_entries
from pruneopd.tokenizer import ensure_padding


class PairError(ValueError):
    """Teacher and student cannot be distilled together (e.g. different vocabularies)."""


def load_tokenizers(cfg: TrainConfig):
    """The student's tokenizer, after checking the teacher's maps every token to the same id.
    One without a pad token pads with its EOS (else unk) token: `tok.padding_note` is then
    the start-up line saying so (`ensure_padding`), else None."""
    tok = load_tokenizer(cfg.student)
    for e in teacher_entries(cfg):
        t_tok = load_tokenizer(e.model)
        if tok.get_vocab() != t_tok.get_vocab():
            who = f"teacher {e.model!r}" if not cfg.teachers else f"teacher {e.name!r} ({e.model})"
            raise PairError(
                f"{who} and student {cfg.student!r} have different vocabularies "
                f"({len(t_tok)} vs {len(tok)} tokens or a different token-to-id mapping)"
            )
    try:
        tok.padding_note = ensure_padding(tok)
    except ValueError as e:
        raise PairError(f"student {cfg.student!r}: {e}") from None
    return tok


def load_task(cfg: TrainConfig, tok):
    """The prompts' source: a data file (`data=`) or a built-in task."""
    if not cfg.data:
        return get_task(cfg.task)
    from pruneopd.tasks.data import DataTask, read_records

    holdout = 0
    if not cfg.eval_data:
        holdout = max(1, min(cfg.eval_problems, len(read_records(cfg.data)[0]) // 4))
    return DataTask(
        cfg.data,
        tok,
        cfg.prompt_field,
        cfg.answer_field,
        cfg.chat_template,
        eval_path=cfg.eval_data or None,
        eval_holdout=holdout,
        route=(cfg.teacher_field, tuple(e.name for e in teacher_entries(cfg)))
        if cfg.teachers and cfg.teacher_routing == "field"
        else None,
    )


def train_device(cfg: TrainConfig) -> torch.device:
    """The device of `cfg.device`; a CUDA device that is not there is a config error."""
    name = cfg.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"config key 'device' = {cfg.device!r}: no CUDA device is available")
    if name == "cuda" and "LOCAL_RANK" in os.environ:  # under torchrun: one GPU per process
        name = f"cuda:{os.environ['LOCAL_RANK']}"
    return torch.device(name)


def _checkpoint_activations(student) -> None:
    enable = getattr(student, "activation_checkpointing_enable", None)  # transformers >= 5.x
    (enable or student.gradient_checkpointing_enable)()
    student.config.use_cache = False


def load_student(path: str, cfg: TrainConfig, device: torch.device):
    student = load_model(path, getattr(torch, cfg.dtype)).to(device)
    if cfg.gradient_checkpointing:
        _checkpoint_activations(student)
    return student


def activation_bytes(config, samples: int, seq_len: int) -> int:
    """About what the student's backward keeps of its forward without gradient checkpointing:
    per token and decoder layer six hidden-size and four intermediate-size float32 vectors
    (norm inputs, q/k/v/attention outputs, the MLP's gate, up, product). On the SmolLM2 student
    (15 layers, 576 / 1536) at 16 samples x 356 tokens this is 3.3 GB, what the peak RSS grew
    by over the weights and optimiser state (benchmarks/real_memory.py)."""
    hidden = config.hidden_size
    inter = getattr(config, "intermediate_size", None) or 4 * hidden
    per_token = config.num_hidden_layers * (6 * hidden + 4 * inter) * 4
    return samples * seq_len * per_token


def checkpointing_note(cfg: TrainConfig, student, samples: int, seq_len: int) -> str | None:
    """Turn gradient checkpointing on when `activation_bytes` of a step (this process's
    `samples` of at most `seq_len` tokens) exceeds `activation_memory_gb` (0: never by itself);
    returns the start-up line that says so, else None."""
    if cfg.gradient_checkpointing or cfg.activation_memory_gb <= 0:
        return None
    need = activation_bytes(student.config, samples, seq_len)
    if need <= cfg.activation_memory_gb * 1e9:
        return None
    _checkpoint_activations(student)
    return (
        f"pruneopd: note: gradient checkpointing on: the student's activations for {samples} "
        f"samples x {seq_len} tokens would take ~{need / 1e9:.1f} GB > activation_memory_gb="
        f"{cfg.activation_memory_gb:g} (activation_memory_gb=0 keeps it off)"
    )


def load_pair(cfg: TrainConfig, tok, device: torch.device):
    """Student (trainable) and teacher (frozen, eval mode) on `device` (`train_device`), for the
    tokenizer `tok` they share (`load_tokenizers`); with `teachers`, a list of teachers in
    their order."""
    student = load_student(cfg.student, cfg, device)
    teachers = []
    for e in teacher_entries(cfg):
        if e.engine == "vllm":  # its weights live in the vLLM engine or server
            teacher = load_model_shell(e.model)
        else:
            teacher = load_model(e.model, getattr(torch, cfg.dtype)).to(device)
        vs, vt = student.config.vocab_size, teacher.config.vocab_size
        if vs != vt:
            who = "teacher" if not cfg.teachers else f"teacher {e.name!r}"
            raise PairError(f"student vocab_size {vs} != {who} vocab_size {vt}")
        teachers.append(teacher.eval().requires_grad_(False))
    if cfg.topk > student.config.vocab_size:
        raise PairError(
            f"config key 'topk' = {cfg.topk}: larger than the vocabulary "
            f"({student.config.vocab_size})"
        )
    return student, (teachers if cfg.teachers else teachers[0])


def check_context(cfg: TrainConfig, models: dict, prompt_len: int, eval_cap: int) -> None:
    """Longest prompt + longest response must fit every model's context window."""
    need = prompt_len + max(cfg.max_len, eval_cap)
    for name, model in models.items():
        window = getattr(model.config, "max_position_embeddings", None)
        if window is not None and need > window:
            raise ConfigError(
                f"prompts of task '{cfg.task}' are up to {prompt_len} tokens; with responses "
                f"of up to {max(cfg.max_len, eval_cap)} tokens that exceeds the {name}'s "
                f"context window ({window} positions): lower difficulty or max_len"
            )
