"""Batched sampling from a Hugging Face causal LM with a KV cache, optionally in chunks.

Prompts of different lengths are left-padded, with an attention mask and explicit position ids,
so a sample does not depend on what else is in the batch. Every step runs one forward over the
samples that are still active: a sample that emits EOS, or that `on_chunk` prunes, is dropped from
the batch and from the KV cache at once.

Shapes: B = samples, A = samples currently active, P = padded prompt length, N = max_new_tokens,
V = vocabulary, C = chunk length, K = student top-k, T = longest response.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import DynamicCache

from pruneopd.engines import decode, fused
from pruneopd.engines.records import (  # noqa: F401  (Chunk, Rollout, ...: this module's interface)
    Chunk,
    Rollout,
    left_pad,
    make_chunk,
    pad_right,
    repeat_prompts,
    stop_id_list,
)
from pruneopd.engines.token_pick import (  # noqa: F401  (also this module's interface)
    pick_tokens,
    sample_uniforms,
    top_p_filter,
)
from pruneopd.errors import say
from pruneopd.models import cache_kwarg

_CAP, _EOS, _PRUNED = 0, 1, 2
_STOP_NAMES = {_CAP: "cap", _EOS: "eos", _PRUNED: "pruned"}
BLOCK = 32  # tokens per call into the extension when sampling on the fused engine, unchunked
_SAID: set[tuple] = set()  # the engine choices already said on stderr (once per process each)


def sample(
    model: torch.nn.Module,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    eos_id: int | tuple[int, ...],
    pad_id: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    chunk_size: int = 0,
    on_chunk: Callable[[Chunk], torch.Tensor | None] | None = None,
    topk: int = 0,
    uniforms_BN: torch.Tensor | None = None,
    engine: str = "auto",
) -> Rollout:
    """Sample one response per prompt (use `repeat_prompts` for several).

    A sample stops on EOS (kept in the response; `eos_id` may be several stop ids, e.g. EOS and
    a chat template's end-of-turn token: any of them ends it, as "eos"), at max_new_tokens, or when `on_chunk` returns a
    [A] bool `stop_A` marking it: then it keeps the whole chunk and is dropped at once. Samples
    that already ended (EOS, cap) keep their reason. Student log-probs and top-k ids always refer to
    the temperature-1 distribution, whatever temperature is used to sample.

    Randomness comes only from `uniforms_BN` ([B, max_new_tokens], see `sample_uniforms`), or,
    when it is None, from `generator` (one `sample_uniforms` draw per call): the same seed, model
    and prompts give the same tokens, and a sample's tokens do not depend on the other samples.

    `engine`: "fused" runs each one-token step as one call into the compiled kernel of
    `fused.FusedDecoder`; "lean" with `decode.LeanDecoder` (the model's weights, a preallocated
    KV cache, no Hugging Face forward bookkeeping); "hf" with the model's own forward. "auto"
    (default) takes the first of fused, lean, hf that supports the model (fused also needs the
    kernel to build here: `fused.available()`).
    """
    if max_new_tokens < 0 or chunk_size < 0 or topk < 0 or temperature < 0:
        raise ValueError("max_new_tokens, chunk_size, topk and temperature must be >= 0")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if on_chunk is not None and chunk_size == 0:
        raise ValueError("on_chunk needs chunk_size > 0")
    engine = pick_engine(model, engine)
    if uniforms_BN is None and temperature > 0:
        uniforms_BN = sample_uniforms(len(prompts), max_new_tokens, generator)
    if uniforms_BN is not None and tuple(uniforms_BN.shape) != (len(prompts), max_new_tokens):
        raise ValueError(
            f"uniforms_BN has shape {tuple(uniforms_BN.shape)}, "
            f"expected ({len(prompts)}, {max_new_tokens})"
        )
    with torch.inference_mode():
        tokens_BN, logprobs_BN, topk_BNK, lengths_B, stop_code_B = _sample_loop(
            model,
            prompts,
            max_new_tokens,
            eos_id,
            pad_id,
            temperature,
            top_p,
            uniforms_BN,
            chunk_size,
            on_chunk,
            topk,
            engine,
        )
    # Clone outside inference mode so the results can enter autograd graphs (as constants).
    lengths = lengths_B.tolist()
    tokens = tokens_BN.tolist()
    logprobs_BN = logprobs_BN.cpu().clone()
    return Rollout(
        prompts=[list(p) for p in prompts],
        responses=[row[:n] for row, n in zip(tokens, lengths, strict=True)],
        stopped_by=[_STOP_NAMES[c] for c in stop_code_B.tolist()],
        student_logprobs=[logprobs_BN[i, :n] for i, n in enumerate(lengths)],
        student_topk_ids=(
            None
            if topk == 0
            else [topk_BNK[i, :n].long().cpu().clone() for i, n in enumerate(lengths)]
        ),
    )


def pick_engine(model, engine: str) -> str:
    """The decode engine `sample` uses for `model`: "fused", "lean" or "hf" (see `sample`)."""
    if engine not in ("auto", "fused", "lean", "hf"):
        raise ValueError(f"engine must be auto, fused, lean or hf, got {engine!r}")
    if engine == "auto":
        if fused.supported(model) and fused.available():
            return "fused"
        return "lean" if decode.supported(model) else "hf"
    if engine == "fused":
        if not fused.supported(model):
            raise ValueError(f"engine='fused' does not support this model ({type(model).__name__})")
        fused.load()  # RuntimeError with the reason when it cannot be built here
    if engine == "lean" and not decode.supported(model):
        raise ValueError(f"engine='lean' does not support this model ({type(model).__name__})")
    return engine


def say_engine(engine: str, plan: fused.Plan | None, B: int) -> None:
    """One line on stderr, the first time in this process that `sample` runs this way: the
    engine, the fused engine's groups, and why."""
    key = (engine, plan and (plan.group == B, plan.group, plan.split))
    if key in _SAID:
        return
    _SAID.add(key)
    if plan is not None:
        how = (
            f"one group of {plan.group} samples, each step split over the threads"
            if plan.split
            else f"groups of {plan.group} samples spread over the threads"
        )
        line = f"fused engine, {how}: {plan.why}"
    else:
        why = {
            "fused": "token by token (the head or the embedding is not a plain layer)",
            "lean": "the model's weights in PyTorch operators (no fused kernel for it here)",
            "hf": "the model's own forward (no lean decoder for this architecture)",
        }
        line = f"{engine} engine, {why[engine]}"
    say(f"pruneopd: sampling {B} samples on the {line}")


def _sample_loop(
    model,
    prompts,
    N,
    eos_id,
    pad_id,
    temperature,
    top_p,
    uniforms_BN,
    chunk_size,
    on_chunk,
    topk,
    engine,
):
    """The per-token loop of `sample`. Outputs are indexed by original sample id."""
    device = next(model.parameters()).device
    B = len(prompts)
    input_ids_BP, attention_mask_BP, position_ids_BP = left_pad(prompts, pad_id, device)
    stop_N = torch.tensor(stop_id_list(eos_id), dtype=torch.long, device=device)
    P = input_ids_BP.shape[1]
    tokens_BN = torch.full((B, N), pad_id, dtype=torch.long, device=device)
    logprobs_BN = torch.zeros((B, N), dtype=torch.float32, device=device)
    topk_BNK = torch.zeros((B, N, topk), dtype=torch.int32, device=device)
    lengths_B = torch.zeros(B, dtype=torch.long, device=device)
    stop_code_B = torch.full((B,), _CAP, dtype=torch.long, device=device)
    if N == 0:
        return tokens_BN, logprobs_BN, topk_BNK, lengths_B, stop_code_B

    # Active-batch state: original ids, attention mask with room for N tokens, next position.
    active_A = torch.arange(B, device=device)
    ones_BN = torch.ones((B, N), dtype=attention_mask_BP.dtype, device=device)
    attention_mask_AL = torch.cat([attention_mask_BP, ones_BN], dim=1)
    next_pos_A = attention_mask_BP.sum(-1)
    cache = DynamicCache(config=model.config)
    out = model(
        input_ids=input_ids_BP,
        attention_mask=attention_mask_BP,
        position_ids=position_ids_BP,
        **{cache_kwarg(model): cache},
        use_cache=True,
        logits_to_keep=1,
    )
    logits_AV = out.logits[:, -1]
    chunk_ids_A, chunk_start = active_A, 0
    decoders = {"fused": fused.FusedDecoder, "lean": decode.LeanDecoder}
    lean_decoder = decoders[engine](model, cache, P, N) if engine in decoders else None
    blocks = engine == "fused" and lean_decoder.can_sample_steps()
    say_engine(engine, lean_decoder.plan() if blocks else None, B)
    if blocks:
        lean_decoder.read_padding(attention_mask_BP)
        buffers = (tokens_BN, logprobs_BN, topk_BNK, lengths_B, stop_code_B)
        _sample_blocks(
            lean_decoder,
            logits_AV,
            next_pos_A,
            N,
            eos_id,
            pad_id,
            temperature,
            top_p,
            uniforms_BN,
            chunk_size,
            on_chunk,
            topk,
            buffers,
        )
        return buffers

    for t in range(N):
        logp_AV = torch.log_softmax(logits_AV.float(), dim=-1)
        u_A = uniforms_BN[active_A.to(uniforms_BN.device), t] if uniforms_BN is not None else None
        tok_A = pick_tokens(logits_AV, temperature, top_p, uniform_A=u_A)
        tokens_BN[active_A, t] = tok_A
        logprobs_BN[active_A, t] = logp_AV.gather(-1, tok_A[:, None])[:, 0]
        if topk:
            topk_BNK[active_A, t] = logp_AV.topk(topk, dim=-1).indices.int()
        lengths_B[active_A] = t + 1
        eos_A = torch.isin(tok_A, stop_N)
        stop_code_B[active_A] = torch.where(eos_A, _EOS, stop_code_B[active_A])
        last_step = t + 1 == N
        keep_A = torch.zeros_like(eos_A) if last_step else ~eos_A

        chunk_full = t + 1 - chunk_start == chunk_size
        if on_chunk is not None and (chunk_full or last_step or not keep_A.any()):
            # Leave inference mode so on_chunk gets (and makes) ordinary tensors.
            with torch.inference_mode(False):
                chunk = make_chunk(
                    chunk_ids_A,
                    chunk_start,
                    t + 1,
                    tokens_BN,
                    logprobs_BN,
                    topk_BNK if topk else None,
                    lengths_B,
                )
                stop_C = on_chunk(chunk)
            if stop_C is not None:
                stopped_ids = chunk_ids_A[stop_C.to(device=device, dtype=torch.bool)]
                pruned_A = torch.isin(active_A, stopped_ids) & keep_A
                stop_code_B[active_A[pruned_A]] = _PRUNED
                keep_A &= ~pruned_A
            chunk_ids_A, chunk_start = active_A[keep_A], t + 1
        if last_step:
            break
        if not bool(keep_A.all()):
            keep_idx_A = keep_A.nonzero()[:, 0]
            if keep_idx_A.numel() == 0:
                break
            if lean_decoder is not None:
                lean_decoder.select(keep_idx_A)
            else:
                cache.batch_select_indices(keep_idx_A)
            active_A, tok_A = active_A[keep_idx_A], tok_A[keep_idx_A]
            next_pos_A, attention_mask_AL = next_pos_A[keep_idx_A], attention_mask_AL[keep_idx_A]

        if lean_decoder is not None:
            logits_AV = lean_decoder.step(tok_A, next_pos_A, t, attention_mask_AL)
        else:
            out = model(
                input_ids=tok_A[:, None],
                attention_mask=attention_mask_AL[:, : P + t + 1],
                position_ids=next_pos_A[:, None],
                **{cache_kwarg(model): cache},
                use_cache=True,
            )
            logits_AV = out.logits[:, -1]
        next_pos_A = next_pos_A + 1
    return tokens_BN, logprobs_BN, topk_BNK, lengths_B, stop_code_B


def _sample_blocks(
    dec,
    logits_AV,
    next_pos_A,
    N,
    eos_id,
    pad_id,
    temperature,
    top_p,
    uniforms_BN,
    chunk_size,
    on_chunk,
    topk,
    buffers,
) -> None:
    """`_sample_loop` with `fused.FusedDecoder.sample_steps`: BLOCK tokens (or one chunk) per
    call into the extension instead of one, filling `buffers` in place. The same tokens,
    log-probs, top-k ids, stops and chunks as the per-token loop: samples that end inside a
    block are dropped at its end (the extension stops picking for them at their EOS), and the
    blocks are the chunks when `on_chunk` is given, as in the per-token loop."""
    tokens_BN, logprobs_BN, topk_BNK, lengths_B, stop_code_B = buffers
    block = chunk_size if on_chunk is not None else BLOCK
    active_A = torch.arange(len(next_pos_A), device=next_pos_A.device)
    t = 0
    while t < N:
        n = min(block, N - t)
        u_An = None if uniforms_BN is None else uniforms_BN[active_A, t : t + n]
        tok_An, logp_An, topk_Ank, len_A, logits_AV = dec.sample_steps(
            logits_AV,
            u_An,
            next_pos_A,
            t,
            n,
            temperature=temperature,
            top_p=top_p,
            topk=topk,
            eos_id=eos_id,
            decode_last=t + n < N,
        )
        valid_An = torch.arange(n) < len_A[:, None]
        tokens_BN[active_A, t : t + n] = torch.where(valid_An, tok_An, pad_id)
        logprobs_BN[active_A, t : t + n] = torch.where(valid_An, logp_An, 0.0)
        if topk:
            topk_BNK[active_A, t : t + n] = topk_Ank * valid_An[..., None]
        lengths_B[active_A] = t + len_A
        last_A = tok_An.gather(1, (len_A - 1)[:, None])[:, 0]
        eos_A = torch.isin(last_A, torch.tensor(stop_id_list(eos_id), device=last_A.device))
        stop_code_B[active_A[eos_A]] = _EOS
        last = t + n == N
        keep_A = torch.zeros_like(eos_A) if last else ~eos_A
        if on_chunk is not None:
            with torch.inference_mode(False):
                chunk = make_chunk(
                    active_A,
                    t,
                    t + int(len_A.max()),
                    tokens_BN,
                    logprobs_BN,
                    topk_BNK if topk else None,
                    lengths_B,
                )
                stop_C = on_chunk(chunk)
            if stop_C is not None:
                pruned_A = stop_C.to(device=keep_A.device, dtype=torch.bool) & keep_A
                stop_code_B[active_A[pruned_A]] = _PRUNED
                keep_A &= ~pruned_A
        if last:
            break
        if not bool(keep_A.all()):
            keep_idx_A = keep_A.nonzero()[:, 0]
            if keep_idx_A.numel() == 0:
                break
            dec.select(keep_idx_A)
            active_A, next_pos_A = active_A[keep_idx_A], next_pos_A[keep_idx_A]
            logits_AV = logits_AV[keep_idx_A]
        next_pos_A = next_pos_A + n
        t += n
