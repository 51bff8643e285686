"""LoRA students (`lora_r > 0`; the `[lora]` extra installs `peft`): the student's weights stay
frozen and only low-rank adapters train, W' = W + (lora_alpha / lora_r) B A on the
`lora_target_modules` projections.

What runs where:
- the update runs the adapted model (peft's LoRA layers injected into the Hugging Face model),
  and the optimizer holds the adapters only (`ParallelStudent.parameters`);
- the samplers (fused, lean, vLLM), evaluation and a merged `final/` read a *merged copy*
  (`merged_copy`): a plain Hugging Face model that shares every tensor with the student except
  the adapted projections' weights, which hold W + (alpha / r) B A and are recomputed after each
  update (`refresh`). Sampling therefore runs at full-model speed with the adapters in, and the
  merged copy costs the adapted projections' weights once more in memory (q/k/v/o of the
  real pair's student: 13.3M of its 81.4M weights, docs/benchmarks.md section 11);
- checkpoints hold the adapters (peft's adapter folder) and the optimizer's state over them;
  the frozen weights are the `student` the config names, loaded again on resume.
"""

from __future__ import annotations

import copy
import itertools
import warnings
from pathlib import Path

import torch

from pruneopd.config import ConfigError, TrainConfig


def require_peft(cfg: TrainConfig) -> None:
    """ConfigError (one line) when LoRA is asked for and peft does not import."""
    try:
        import peft  # noqa: F401
    except ImportError as e:
        raise ConfigError(
            f"config key 'lora_r' = {cfg.lora_r}: LoRA students need the peft package "
            f"({e}); pip install -e '.[lora]'"
        ) from None


def adaptable_names(model) -> list[str]:
    """Dotted names of the student's linear layers that can carry adapters (the output head,
    often tied to the input embedding, cannot)."""
    head = model.get_output_embeddings()
    return [
        name
        for name, mod in model.named_modules()
        if isinstance(mod, torch.nn.Linear) and mod is not head
    ]


def check_targets(cfg: TrainConfig, model) -> None:
    """Every entry of `lora_target_modules` must name (or end a dotted name of) one of the
    student's linear layers; else one line naming the missing ones and what exists."""
    names = adaptable_names(model)
    targets = cfg.lora_target_modules
    if targets == ["all-linear"]:
        return
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        kinds = sorted({n.rsplit(".", 1)[-1] for n in names})
        raise ConfigError(
            f"config key 'lora_target_modules' = {','.join(targets)}: "
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not a linear layer "
            f"of the student {cfg.student!r}; its linear layers: {', '.join(kinds) or 'none'}"
        )


def adapt(model, cfg: TrainConfig):
    """`model` (a Hugging Face causal LM) with LoRA layers on the target modules, as a peft
    model: the original weights frozen, the adapters trainable (B starts at zero, so the
    adapted model starts equal to the student)."""
    from peft import LoraConfig, get_peft_model

    check_targets(cfg, model)
    targets = cfg.lora_target_modules
    config = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules="all-linear" if targets == ["all-linear"] else list(targets),
        bias="none",
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():  # peft asks transformers' deprecated checkpointing flag
        warnings.simplefilter("ignore", FutureWarning)
        return get_peft_model(model, config)


def is_adapted(model) -> bool:
    """True for a peft model (what `adapt` returns)."""
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def lora_layers(model):
    """(dotted name, peft LoRA layer) of every adapted module of the inner model."""
    from peft.tuners.lora import LoraLayer

    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]


def merged_copy(model) -> torch.nn.Module:
    """A plain Hugging Face model computing what the adapted `model` (the inner model of a peft
    model: `get_base_model()`) computes: every parameter and buffer shared with it, the LoRA
    layers replaced by their original linear layers, each with its own weight W + (alpha / r) B A
    (refreshed by `refresh`). The engines that read `q_proj.weight` directly sample it exactly."""
    shared = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    view = copy.deepcopy(model, shared)  # new modules over the same tensors
    for name, layer in lora_layers(view):
        parent, _, child = name.rpartition(".")
        plain = layer.get_base_layer()
        plain.weight = torch.nn.Parameter(plain.weight.detach().clone(), requires_grad=False)
        setattr(view.get_submodule(parent), child, plain)
    view.train(False)
    refresh(view, model)
    return view


@torch.no_grad()
def refresh(view: torch.nn.Module, model) -> None:
    """Recompute the merged copy's adapted weights from `model`'s adapters, in place (the
    engines hold references to these tensors): W + (alpha / r) B A, as peft's merge adds it."""
    for name, layer in lora_layers(model):
        delta = layer.get_delta_weight(layer.active_adapters[0])
        view.get_submodule(name).weight.copy_(layer.get_base_layer().weight + delta)


def load_adapters(peft_model, folder: Path) -> None:
    """The adapters a checkpoint saved (`folder`: its `student/`) into `peft_model`."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = Path(folder) / "adapter_model.safetensors"
    if not path.is_file():
        raise ConfigError(
            f"resume from {Path(folder).parent}: {folder} holds no LoRA adapters "
            "(a run without lora_r saved it); resume it with lora_r=0"
        )
    saved = load_file(path)
    result = set_peft_model_state_dict(peft_model, saved)
    expected = sum(1 for n, _ in peft_model.named_parameters() if "lora_" in n)
    if result.unexpected_keys or len(saved) != expected:
        raise ConfigError(
            f"resume from {Path(folder).parent}: its adapters ({len(saved)} tensors) do not fit "
            f"this student's ({expected}); resume with the same lora_target_modules"
        )


def save_final(cfg: TrainConfig, ps, folder: Path) -> None:
    """`final/`: the merged copy as a plain model (`lora_save=merged`, or no LoRA), or peft's
    adapter folder (`lora_save=adapter`: load it with `peft.AutoPeftModelForCausalLM`)."""
    if ps.adapter is not None and cfg.lora_save == "adapter":
        ps.adapter.save_pretrained(folder)
    else:
        ps.model.save_pretrained(folder)
