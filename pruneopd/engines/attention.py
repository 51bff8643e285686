"""Causal self-attention for the whole-sequence forwards: the teacher's scoring and the
student's loss forward (`csrc/causal_attention.cpp`, built with the fused decode kernel).

Both forwards run over right-padded prompt + response rows with no attention mask, so every
layer's attention is plain causal softmax(Q K^T / sqrt(D)) V. PyTorch's CPU flash kernel splits
the keys into blocks of 512 and at a few hundred to a few thousand tokens computes nearly the
whole T x T score matrix though half of it is masked (docs/benchmarks.md 6d: is_causal=True
took as long as no mask); the kernel here scores each block of 64 queries only against the keys
it can see, forward and backward.

`causal_attention_BHTD` is the autograd function. `whole_sequence(model)` is a context manager
under which a Hugging Face model's attention layers use it (via transformers'
`AttentionInterface`): it applies when a layer gets no mask, queries and keys have the same
length and the tensors are float32 on the CPU without dropout; anything else (padding masks,
decoding with a cache, GPUs, bf16) goes to the model's usual SDPA path, as does everything when
the extension cannot be built (`available()`) and the student's forward when it is trained with
gradient checkpointing (its layers are re-run in backward, outside the context manager).

Shapes: B batch, Hq / Hkv query / key-value heads, T tokens, D head dim.
"""

from __future__ import annotations

import contextlib
import os

import torch

from pruneopd.engines import fused

NAME = "pruneopd_causal"  # the attn_implementation name registered with transformers
_REGISTERED = False


def available() -> bool:
    """True when the compiled kernel loads and finds the BLAS it calls.
    `PRUNEOPD_ATTENTION=0` switches it off (the HF SDPA path is used then)."""
    if os.environ.get("PRUNEOPD_ATTENTION", "1") == "0" or not fused.available():
        return False
    return bool(fused.load().causal_attention_has_blas())


class _CausalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q_BHTD, k_BGTD, v_BGTD, scale):
        ext = fused.load()
        q, k, v = q_BHTD.contiguous(), k_BGTD.contiguous(), v_BGTD.contiguous()
        out_BHTD, lse_BHT = ext.causal_attention_fwd(q, k, v, float(scale))
        ctx.save_for_backward(q, k, v, out_BHTD, lse_BHT)
        ctx.scale = float(scale)
        return out_BHTD

    @staticmethod
    def backward(ctx, grad_BHTD):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = fused.load().causal_attention_bwd(
            q, k, v, out, lse, grad_BHTD.contiguous(), ctx.scale
        )
        return dq, dk, dv, None


def causal_attention_BHTD(q_BHTD, k_BGTD, v_BGTD, scale: float) -> torch.Tensor:
    """softmax(Q K^T * scale with a causal mask) V -> `[B, Hq, T, D]`, differentiable.

    q: `[B, Hq, T, D]`; k, v: `[B, Hkv, T, D]` with Hq a multiple of Hkv (query head h reads
    kv head h // (Hq / Hkv)); float32 on the CPU. Equals
    `F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True)`
    up to float rounding (tests/test_attention.py).
    """
    return _CausalAttention.apply(q_BHTD, k_BGTD, v_BGTD, scale)


def _applies(query, key, attention_mask, dropout, kwargs) -> bool:
    return (
        attention_mask is None
        and query.shape[2] == key.shape[2]
        and query.dtype == torch.float32
        and query.device.type == "cpu"
        and not dropout
        and kwargs.get("sliding_window") is None
        and kwargs.get("softcap") is None
        and not kwargs.get("output_attentions", False)
    )


def _hf_attention(
    module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs
):
    """transformers' attention-function signature: `[B, H, T, D]` in, `[B, T, H, D]` out."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if not (causal and _applies(query, key, attention_mask, dropout, kwargs)):
        return sdpa_attention_forward(
            module,
            query,
            key,
            value,
            attention_mask,
            dropout=dropout,
            scaling=scaling,
            is_causal=is_causal,
            **kwargs,
        )
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    out_BHTD = causal_attention_BHTD(query, key, value, scale)
    return out_BHTD.transpose(1, 2).contiguous(), None


def _register() -> None:
    global _REGISTERED
    if _REGISTERED:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, _hf_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)  # masks exactly as for SDPA
    _REGISTERED = True


def supported(model) -> bool:
    """True when `model`'s layers would take the kernel: an HF model whose attention is SDPA
    (the default), with float32 weights on the CPU, and the kernel available here."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) not in ("sdpa", NAME):
        return False
    p = next(model.parameters(), None)
    if p is None or p.dtype != torch.float32 or p.device.type != "cpu":
        return False
    return available()


@contextlib.contextmanager
def whole_sequence(model):
    """Within this block `model`'s (and its sub-configs') attention uses the causal kernel
    where it applies; outside it the model is unchanged. A no-op when `supported` is False, and
    for a gradient-checkpointed model with gradients on."""
    # with HF gradient checkpointing the layers are re-run in backward, after this block: they
    # would recompute with SDPA, so checkpointed training forwards keep SDPA throughout
    flag = "is_activation_checkpointing"  # transformers >= 5.x; is_gradient_checkpointing before
    if not hasattr(model, flag):
        flag = "is_gradient_checkpointing"
    recomputes = getattr(model, flag, False) and torch.is_grad_enabled()
    if recomputes or not supported(model):
        yield
        return
    _register()
    configs = [m.config for m in model.modules() if hasattr(m, "config")]
    configs = list({id(c): c for c in configs}.values())
    saved = [c._attn_implementation for c in configs]
    try:
        for c in configs:
            c._attn_implementation = NAME
        yield
    finally:
        for c, s in zip(configs, saved, strict=True):
            c._attn_implementation = s
