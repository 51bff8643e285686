"""Model and tokenizer loading: built-in zoo names or any local Hugging Face checkpoint.

The built-in zoo models are ordinary `transformers` Llama causal LMs (rotary positions,
RMSNorm, SwiGLU) saved with `save_pretrained`; a zoo name is just a short name for a
folder. Nothing here downloads anything.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

PACKAGE_ZOO = Path(__file__).parent / "zoo_weights"
ZOO_NAMES = ("teacher", "student-same", "student-cross")


@dataclass(frozen=True)
class ModelSize:
    hidden: int
    layers: int
    heads: int

    def config(self, vocab_size: int, bos: int, eos: int, pad: int) -> LlamaConfig:
        return LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=self.hidden,
            intermediate_size=self.hidden * 8 // 3 // 32 * 32,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            num_key_value_heads=self.heads,
            max_position_embeddings=2048,
            rope_theta=10000.0,
            tie_word_embeddings=True,
            bos_token_id=bos,
            eos_token_id=eos,
            pad_token_id=pad,
        )


def zoo_dir() -> Path:
    """Where zoo models are looked up: $PRUNEOPD_ZOO if set, else the shipped weights."""
    return Path(os.environ.get("PRUNEOPD_ZOO", PACKAGE_ZOO))


def resolve(name_or_path: str) -> Path:
    """A zoo name ("teacher", "student-cross", ...) or a local folder -> folder path."""
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        return p
    z = zoo_dir() / name_or_path
    if z.is_dir():
        return z
    raise FileNotFoundError(
        f"model {name_or_path!r} is neither a local folder nor a zoo model in {zoo_dir()} "
        f"(zoo names: {', '.join(ZOO_NAMES)}; build them with `pruneopd zoo build`)"
    )


def tokenizer_path(name_or_path: str) -> Path:
    """Folder holding the tokenizer for a model: the model's own, else the zoo's shared one."""
    p = resolve(name_or_path)
    if (p / "tokenizer.json").exists() or (p / "tokenizer_config.json").exists():
        return p
    shared = p.parent / "tokenizer"
    if (shared / "tokenizer.json").exists():
        return shared
    raise FileNotFoundError(f"no tokenizer found in {p} or {shared}")


def load_model(name_or_path: str, dtype: torch.dtype = torch.float32) -> LlamaForCausalLM:
    """A model folder (or zoo name); a LoRA adapter folder (a run's `final/` with
    `lora_save=adapter`) loads as its base model with the adapters merged in."""
    path = resolve(name_or_path)
    if (path / "adapter_config.json").exists() and not (path / "config.json").exists():
        return _load_merged_adapter(path, dtype)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} has no config.json: not a Hugging Face model folder")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # keep stderr for our own one-line errors
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)


def _load_merged_adapter(path: Path, dtype: torch.dtype) -> torch.nn.Module:
    try:
        from peft import AutoPeftModelForCausalLM
    except ImportError:
        raise FileNotFoundError(
            f"{path} holds a LoRA adapter, not a whole model: pip install -e '.[lora]' (peft) "
            "to load it"
        ) from None
    with warnings.catch_warnings():  # peft asks transformers' deprecated checkpointing flag
        warnings.simplefilter("ignore", FutureWarning)
        model = AutoPeftModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    return model.merge_and_unload()


def load_model_shell(name_or_path: str) -> torch.nn.Module:
    """The model's architecture and config on the `meta` device, with no weights: what the
    trainer keeps of a teacher whose weights live in a vLLM engine or server."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(resolve(name_or_path)))
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def load_tokenizer(name_or_path: str):
    from pruneopd.tokenizer import load_tokenizer as _load

    return _load(tokenizer_path(name_or_path))


def set_threads() -> None:
    """Use every core for intra-op parallelism, unless OMP_NUM_THREADS says otherwise."""
    n = int(os.environ.get("OMP_NUM_THREADS", 0)) or os.cpu_count() or 1
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


_noted: list[bool] = []


def note_busy_cores() -> None:
    """Once per process, when OMP_NUM_THREADS is not set: print `busy_cores_note` on stderr if
    other processes keep cores busy. Called where the heavy work starts, after every input
    check (so a bad-input error stays the only line)."""
    if _noted or os.environ.get("OMP_NUM_THREADS") or not hasattr(os, "getloadavg"):
        return
    _noted.append(True)
    note = busy_cores_note(torch.get_num_threads(), os.cpu_count() or 1, os.getloadavg()[0])
    if note:
        print(note, file=sys.stderr)


def busy_cores_note(threads: int, cores: int, load: float) -> str | None:
    """A one-line note when `threads` intra-op threads exceed the cores that the 1-minute load
    average leaves free (a core counts as busy from a load of 0.75 on), else None.

    Every parallel operator waits for all its threads; one that needs a core another process
    holds waits for a time slice each time (benchmarks/oversubscription.py, 2 cores, one busy
    process: sampling at 2 threads 2.2x to 28x slower than at 1). Example: 2 threads,
    2 cores, load 1.0 -> a note suggesting OMP_NUM_THREADS=1; load 0.3 -> None.
    """
    free = max(1, cores - math.floor(load + 0.25))
    if threads <= free:
        return None
    return (
        f"pruneopd: note: load average {load:.1f} on {cores} cores leaves about {free} free, "
        f"and {threads} intra-op threads make every operator wait for a busy core; "
        f"OMP_NUM_THREADS={free} uses only the free ones (docs/benchmarks.md section 7)"
    )


@functools.cache
def _cache_name(forward_cls: type) -> str:
    params = inspect.signature(forward_cls.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def cache_kwarg(module: torch.nn.Module) -> str:
    """The keyword a Hugging Face model's forward takes its KV cache by: `cache` in the
    transformers releases that deprecate `past_key_values` (5.2x), `past_key_values` before."""
    return _cache_name(type(module))
