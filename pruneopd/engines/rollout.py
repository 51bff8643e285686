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
from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import pad_sequence
from transformers import DynamicCache

from pruneopd.engines import decode, fused
from pruneopd.models import cache_kwarg

_CAP, _EOS, _PRUNED = 0, 1, 2
_STOP_NAMES = {_CAP: "cap", _EOS: "eos", _PRUNED: "pruned"}
BLOCK = 32  # tokens per call into the extension when sampling on the fused engine, unchunked


@dataclass
class Chunk:
    """Up to `chunk_size` freshly sampled tokens, handed to `on_chunk` while sampling goes on.

    sample_ids_A: [A] long, ids (into the original batch) of the samples active at chunk start.
    start: response position of the chunk's first token.
    tokens_AC: [A, C] long, sampled tokens (pad_id where mask_AC is False).
    mask_AC: [A, C] bool, False after a sample's EOS inside the chunk.
    student_logprobs_AC: [A, C] float32, log-prob of each token at temperature 1 (0 where masked).
    student_topk_ids_ACK: [A, C, K] long, student's top-k ids at temperature 1, or None if topk=0.
    """

    sample_ids_A: torch.Tensor
    start: int
    tokens_AC: torch.Tensor
    mask_AC: torch.Tensor
    student_logprobs_AC: torch.Tensor
    student_topk_ids_ACK: torch.Tensor | None


@dataclass
class Rollout:
    """Sampled responses. All tensors live on the CPU and are ordinary (non-inference) tensors.

    responses[i] holds the response token ids of prompts[i] (EOS included when it stopped on EOS).
    stopped_by[i] is "eos", "cap" (hit max_new_tokens) or "pruned" (stopped by on_chunk).
    student_logprobs[i]: [T_i] float32; student_topk_ids[i]: [T_i, K] long (None if topk=0).
    """

    prompts: list[list[int]]
    responses: list[list[int]]
    stopped_by: list[str]
    student_logprobs: list[torch.Tensor]
    student_topk_ids: list[torch.Tensor] | None = None

    @property
    def response_lengths(self) -> torch.Tensor:
        """[B] long."""
        return torch.tensor([len(r) for r in self.responses], dtype=torch.long)

    @property
    def response_mask_BT(self) -> torch.Tensor:
        """[B, T] bool, True on response tokens."""
        lengths_B = self.response_lengths
        T = int(lengths_B.max()) if len(lengths_B) else 0
        return torch.arange(T) < lengths_B[:, None]

    def response_tokens_BT(self, pad_id: int) -> torch.Tensor:
        """[B, T] long, responses right-padded with pad_id."""
        return _pad_right([torch.tensor(r, dtype=torch.long) for r in self.responses], pad_id)

    def student_logprobs_BT(self) -> torch.Tensor:
        """[B, T] float32, zero on padding."""
        return _pad_right(self.student_logprobs, 0.0)

    def student_topk_ids_BTK(self) -> torch.Tensor | None:
        """[B, T, K] long, zero on padding; None if sampled with topk=0."""
        return None if self.student_topk_ids is None else _pad_right(self.student_topk_ids, 0)

    def to_padded(self, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Prompt + response per row, right-padded, for a full-sequence forward.

        Returns input_ids_BL (long), attention_mask_BL (long, 1 on real tokens) and
        response_mask_BL (bool, True on response tokens). Example, pad_id=0:
        prompts [[5, 6], [7]], responses [[8], [9, 2]] ->
        input_ids [[5, 6, 8], [7, 9, 2]], attention_mask [[1, 1, 1], [1, 1, 1]],
        response_mask [[F, F, T], [F, T, T]].
        """
        seqs = [
            torch.tensor(p + r, dtype=torch.long)
            for p, r in zip(self.prompts, self.responses, strict=True)
        ]
        input_ids_BL = _pad_right(seqs, pad_id)
        prompt_lens_B = torch.tensor([len(p) for p in self.prompts], dtype=torch.long)
        total_lens_B = prompt_lens_B + self.response_lengths
        pos_L = torch.arange(input_ids_BL.shape[1])
        attention_mask_BL = (pos_L < total_lens_B[:, None]).long()
        response_mask_BL = (pos_L >= prompt_lens_B[:, None]) & (pos_L < total_lens_B[:, None])
        return input_ids_BL, attention_mask_BL, response_mask_BL


def repeat_prompts(prompts: list[list[int]], n: int) -> list[list[int]]:
    """Each prompt n times in a row: [a, b], n=2 -> [a, a, b, b]."""
    return [list(p) for p in prompts for _ in range(n)]


def left_pad(
    prompts: list[list[int]], pad_id: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-pad prompts. Returns input_ids_BP, attention_mask_BP (long) and position_ids_BP.

    Position ids count real tokens only (0 at each prompt's first token; pads get 0).
    """
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    P = max(len(p) for p in prompts)
    input_ids_BP = torch.tensor([[pad_id] * (P - len(p)) + list(p) for p in prompts], device=device)
    attention_mask_BP = torch.tensor(
        [[0] * (P - len(p)) + [1] * len(p) for p in prompts], device=device
    )
    position_ids_BP = (attention_mask_BP.cumsum(-1) - 1).clamp(min=0)
    return input_ids_BP, attention_mask_BP, position_ids_BP


def top_p_filter(probs_AV: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero the probabilities outside the nucleus: the smallest set of most likely tokens whose
    mass reaches top_p (the most likely token is always kept). Not renormalised."""
    sorted_AV, order_AV = probs_AV.sort(-1, descending=True)
    mass_before_AV = sorted_AV.cumsum(-1) - sorted_AV
    sorted_AV = sorted_AV.masked_fill(mass_before_AV >= top_p, 0.0)
    return torch.zeros_like(probs_AV).scatter_(-1, order_AV, sorted_AV)


def pick_tokens(
    logits_AV: torch.Tensor,
    temperature: float,
    top_p: float,
    generator: torch.Generator | None = None,
    uniform_A: torch.Tensor | None = None,
) -> torch.Tensor:
    """[A] next tokens: argmax if temperature == 0, else a draw from softmax(logits / temperature)
    restricted to the top_p nucleus.

    The draw is by inverse CDF: sample a takes the first token whose cumulative probability
    exceeds uniform_A[a] (in [0, 1)) times the nucleus mass. Without `uniform_A` the uniforms
    come from `generator`. Example: probs [0.2, 0.5, 0.3], u = 0.6 -> cumulative [0.2, 0.7, 1.0]
    -> token 1.
    """
    if temperature == 0:
        return logits_AV.argmax(-1)
    probs_AV = torch.softmax(logits_AV.float() / temperature, dim=-1)
    if top_p < 1.0:
        probs_AV = top_p_filter(probs_AV, top_p)
    if uniform_A is None:
        uniform_A = torch.rand(
            probs_AV.shape[0], generator=generator, device=_rng_device(generator)
        )
    cdf_AV = probs_AV.cumsum(-1)
    target_A1 = uniform_A.to(cdf_AV.device, torch.float32)[:, None] * cdf_AV[:, -1:]
    tok_A = torch.searchsorted(cdf_AV, target_A1, right=True)[:, 0]
    return tok_A.clamp_(max=probs_AV.shape[-1] - 1)


def _rng_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def sample_uniforms(n_samples: int, n_tokens: int, generator: torch.Generator | None):
    """[n_samples, n_tokens] uniforms in [0, 1): the randomness of one sampling call.

    Sample i's token t uses entry [i, t], so a sample's tokens depend only on its own row, not on
    the rest of the batch. Drawing the rows of a global batch once and giving each process its
    slice makes a multi-process rollout equal to the one-process one.
    """
    return torch.rand((n_samples, n_tokens), generator=generator, device=_rng_device(generator))


def sample(
    model: torch.nn.Module,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    eos_id: int,
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

    A sample stops on EOS (kept in the response), at max_new_tokens, or when `on_chunk` returns a
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
    if engine == "fused" and lean_decoder.can_sample_steps():
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
        eos_A = tok_A == eos_id
        stop_code_B[active_A] = torch.where(eos_A, _EOS, stop_code_B[active_A])
        last_step = t + 1 == N
        keep_A = torch.zeros_like(eos_A) if last_step else ~eos_A

        chunk_full = t + 1 - chunk_start == chunk_size
        if on_chunk is not None and (chunk_full or last_step or not keep_A.any()):
            # Leave inference mode so on_chunk gets (and makes) ordinary tensors.
            with torch.inference_mode(False):
                chunk = _make_chunk(
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
        eos_A = tok_An.gather(1, (len_A - 1)[:, None])[:, 0] == eos_id
        stop_code_B[active_A[eos_A]] = _EOS
        last = t + n == N
        keep_A = torch.zeros_like(eos_A) if last else ~eos_A
        if on_chunk is not None:
            with torch.inference_mode(False):
                chunk = _make_chunk(
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


def _make_chunk(ids_A, start, end, tokens_BN, logprobs_BN, topk_BNK, lengths_B) -> Chunk:
    """Copy response positions [start, end) of the samples ids_A out of the output buffers.

    Called outside inference mode: advanced indexing and clone() give ordinary tensors.
    """
    mask_AC = torch.arange(start, end, device=ids_A.device) < lengths_B[ids_A, None]
    topk_ACK = None if topk_BNK is None else topk_BNK[ids_A, start:end].long()
    return Chunk(
        sample_ids_A=ids_A.clone(),
        start=start,
        tokens_AC=tokens_BN[ids_A, start:end],
        mask_AC=mask_AC,
        student_logprobs_AC=logprobs_BN[ids_A, start:end],
        student_topk_ids_ACK=topk_ACK,
    )


def _pad_right(seqs: list[torch.Tensor], value: float) -> torch.Tensor:
    """Stack [T_i, ...] tensors into [B, T, ...], padding dim 0 on the right with value."""
    return pad_sequence(seqs, batch_first=True, padding_value=value)
