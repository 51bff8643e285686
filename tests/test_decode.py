"""The lean decode step equals the Hugging Face forward (Llama with grouped-query heads, Qwen3
with q/k norms), with left padding and samples dropped mid-way; `sample` gives the same
tokens through either engine."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_llama
from transformers import DynamicCache, Qwen3Config, Qwen3ForCausalLM

from pruneopd.engines.decode import LeanDecoder, supported
from pruneopd.engines.rollout import left_pad, sample
from pruneopd.models import cache_kwarg

V, PAD, EOS = 50, 0, 2
PROMPTS = [[5, 6, 7], [8], [9, 10, 11, 12, 13], [14, 15]]


def tiny_qwen3(seed: int = 0):
    torch.manual_seed(seed)
    cfg = Qwen3Config(
        vocab_size=V,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=128,
    )
    return Qwen3ForCausalLM(cfg).eval()


MODELS = {"llama": lambda: tiny_llama(V), "qwen3": tiny_qwen3}


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_lean_step_equals_hf_forward(arch):
    model = MODELS[arch]()
    assert supported(model)
    check_step_equals_hf(model, LeanDecoder)


@torch.inference_mode()
def check_step_equals_hf(model, decoder_cls) -> None:
    """decoder_cls(model, cache, P, N).step gives the HF forward's logits for 6 tokens over
    left-padded prompts, with samples 0 and 2 dropped at the fourth (also tests/test_fused.py)."""
    N = 6
    ids_BP, mask_BP, pos_BP = left_pad(PROMPTS, PAD)
    P = ids_BP.shape[1]
    hf_cache, our_cache = DynamicCache(config=model.config), DynamicCache(config=model.config)
    out = model(
        input_ids=ids_BP,
        attention_mask=mask_BP,
        position_ids=pos_BP,
        use_cache=True,
        **{cache_kwarg(model): hf_cache},
    )
    model(
        input_ids=ids_BP,
        attention_mask=mask_BP,
        position_ids=pos_BP,
        use_cache=True,
        **{cache_kwarg(model): our_cache},
    )
    dec = decoder_cls(model, our_cache, P, N)
    mask_AL = torch.cat([mask_BP, torch.ones(len(PROMPTS), N, dtype=mask_BP.dtype)], dim=1)
    pos_A = mask_BP.sum(-1)
    tok_A = out.logits[:, -1].argmax(-1)
    for t in range(N):
        if t == 3:  # drop samples 0 and 2 from both
            keep = torch.tensor([1, 3])
            hf_cache.batch_select_indices(keep)
            dec.select(keep)
            tok_A, pos_A, mask_AL = tok_A[keep], pos_A[keep], mask_AL[keep]
        hf = model(
            input_ids=tok_A[:, None],
            attention_mask=mask_AL[:, : P + t + 1],
            position_ids=pos_A[:, None],
            use_cache=True,
            **{cache_kwarg(model): hf_cache},
        )
        hf_AV = hf.logits[:, -1]
        ours_AV = dec.step(tok_A, pos_A, t, mask_AL)
        torch.testing.assert_close(ours_AV, hf_AV, rtol=1e-5, atol=1e-5)
        tok_A, pos_A = hf_AV.argmax(-1), pos_A + 1


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_sample_is_the_same_through_either_engine(arch):
    check_engines_agree(MODELS[arch](), "hf", "lean", max_new_tokens=12)


def check_engines_agree(model, engine_a: str, engine_b: str, max_new_tokens: int) -> list[str]:
    """`sample` through engine_a and engine_b: the same tokens and stops, log-probs within
    1e-5 and the same top-k ids, greedy, at temperatures 1 and 0.7 and with top_p 0.8 (also
    tests/test_fused.py); the stop reasons of the temperature-0.7 samples."""
    prompts = [p for p in PROMPTS for _ in range(3)]
    kw = dict(max_new_tokens=max_new_tokens, eos_id=EOS, pad_id=PAD, topk=4)
    for temperature, top_p in ((0.0, 1.0), (1.0, 1.0), (1.0, 0.8), (0.7, 1.0)):
        a, b = (
            sample(
                model,
                prompts,
                temperature=temperature,
                top_p=top_p,
                engine=engine,
                generator=torch.Generator().manual_seed(1),
                **kw,
            )
            for engine in (engine_a, engine_b)
        )
        assert a.responses == b.responses and a.stopped_by == b.stopped_by
        for x, y in zip(a.student_logprobs, b.student_logprobs, strict=True):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)
        assert all(
            torch.equal(x, y) for x, y in zip(a.student_topk_ids, b.student_topk_ids, strict=True)
        )
    return a.stopped_by


def test_unsupported_models_fall_back():
    model = tiny_llama(V)
    model.config.hidden_act = "gelu"
    assert not supported(model)
    with pytest.raises(ValueError, match="engine='lean' does not support"):
        sample(model, PROMPTS, max_new_tokens=2, eos_id=EOS, pad_id=PAD, engine="lean")
    r = sample(model, PROMPTS, max_new_tokens=2, eos_id=EOS, pad_id=PAD, temperature=0.0)
    assert len(r.responses) == len(PROMPTS)


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_lean_chunks_equal_hf_forward(arch):
    """forward_chunk: C tokens per sample at a time into the preallocated cache give the
    final hidden states of one Hugging Face forward over prompt + tokens (left padding,
    grouped-query heads, qk-norm for Qwen3), chunk after chunk, with a sample dropped."""
    check_chunks_equal_hf(MODELS[arch](), LeanDecoder)


def prefill(model, prompts):
    """(DynamicCache after a Hugging Face forward over the left-padded prompts, P, mask)."""
    ids, mask, pos = left_pad(prompts, 0)
    dec = model.get_decoder()
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        dec(
            input_ids=ids,
            attention_mask=mask,
            position_ids=pos,
            use_cache=True,
            **{cache_kwarg(dec): cache},
        )
    return cache, ids.shape[1], mask


def check_chunks_equal_hf(model, decoder_cls, prompts=None):
    """decoder_cls(model, ...).forward_chunk over chunks of 4, 3 and 2 tokens (a sample dropped
    after the first) against one Hugging Face forward per sample over prompt + tokens."""
    prompts = prompts or [[5, 6, 7], [8], [9, 10, 11, 12, 13]]
    g = torch.Generator().manual_seed(0)
    tokens_BN = torch.randint(3, V, (len(prompts), 9), generator=g)
    cache, P, mask = prefill(model, prompts)
    dec = model.get_decoder()
    lean = decoder_cls(model, cache, P, 9)
    lean.read_padding(mask)
    next_pos = mask.sum(-1)
    keep = torch.arange(len(prompts))
    for t, C in ((0, 4), (4, 3), (7, 2)):
        if t == 4:  # sample 1 finished: drop it
            keep = torch.tensor([i for i in range(len(prompts)) if i != 1])
            lean.select(keep)
            next_pos = next_pos[keep]
        got = lean.forward_chunk(tokens_BN[keep, t : t + C], next_pos, t)
        next_pos = next_pos + C
        for row, b in enumerate(keep.tolist()):
            seq = torch.tensor([prompts[b] + tokens_BN[b, : t + C].tolist()])
            with torch.no_grad():
                want = dec(input_ids=seq).last_hidden_state[0, -C:]
            torch.testing.assert_close(got[row], want, atol=1e-5, rtol=0)
