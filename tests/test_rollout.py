import pytest
import torch
from tiny import tiny_llama
from transformers import LlamaForCausalLM

from pruneopd.engines.decode import LeanDecoder
from pruneopd.engines.rollout import Chunk, pick_tokens, repeat_prompts, sample, sample_uniforms

V, EOS, PAD = 50, 2, 0
PROMPTS = [[5, 6, 7], [8], [9, 10, 11, 12, 13], [14, 15]]


def tiny_model(seed: int = 0, eos_bias: float | None = None) -> LlamaForCausalLM:
    """Tiny random Llama. eos_bias adds a bias to the EOS logit through an lm_head with bias."""
    model = tiny_llama(V, seed)
    if eos_bias is not None:
        head = torch.nn.Linear(32, V, bias=True)
        with torch.no_grad():
            head.weight.copy_(model.lm_head.weight)
            head.bias.zero_()
            head.bias[EOS] = eos_bias
        model.lm_head = head
    return model


@pytest.fixture(scope="module")
def model():
    return tiny_model(eos_bias=-100.0)  # EOS never sampled: every sample runs to the cap


def greedy_reference(model, prompt, max_new_tokens):
    """Plain loop: full forward without cache at every step, argmax."""
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(max_new_tokens):
            tok = int(model(input_ids=torch.tensor([seq])).logits[0, -1].argmax())
            seq.append(tok)
            if tok == EOS:
                break
    return seq[len(prompt) :]


def gen(seed):
    return torch.Generator().manual_seed(seed)


def test_same_seed_same_samples(model):
    prompts = repeat_prompts(PROMPTS, 2)
    a = sample(model, prompts, max_new_tokens=8, eos_id=EOS, pad_id=PAD, generator=gen(1))
    b = sample(model, prompts, max_new_tokens=8, eos_id=EOS, pad_id=PAD, generator=gen(1))
    c = sample(model, prompts, max_new_tokens=8, eos_id=EOS, pad_id=PAD, generator=gen(2))
    assert a.responses == b.responses
    assert a.responses != c.responses
    assert prompts[:2] == [PROMPTS[0], PROMPTS[0]]


def test_greedy_matches_uncached_reference_and_cap():
    model = tiny_model(eos_bias=0.2)  # greedy: samples stop on EOS at 5, 1, 1 tokens, or the cap
    r = sample(model, PROMPTS, max_new_tokens=7, eos_id=EOS, pad_id=PAD, temperature=0.0)
    assert r.stopped_by == ["eos", "eos", "eos", "cap"] and len(r.responses[0]) == 5
    assert r.responses == [greedy_reference(model, p, 7) for p in PROMPTS]
    for resp, why in zip(r.responses, r.stopped_by, strict=True):
        assert len(resp) <= 7
        assert why == ("eos" if resp[-1] == EOS else "cap")
        assert why == "eos" or len(resp) == 7


def test_max_new_tokens_respected(model):
    r = sample(model, PROMPTS, max_new_tokens=5, eos_id=EOS, pad_id=PAD, generator=gen(0))
    assert r.response_lengths.tolist() == [5] * 4 and r.stopped_by == ["cap"] * 4
    empty = sample(model, PROMPTS, max_new_tokens=0, eos_id=EOS, pad_id=PAD)
    assert empty.responses == [[]] * 4 and empty.response_mask_BT.shape == (4, 0)


@pytest.mark.parametrize("engine", ["hf", "lean"])
def test_eos_stops_sample_and_drops_it_from_the_batch(engine, monkeypatch):
    model = tiny_model(eos_bias=100.0)
    r = sample(model, PROMPTS, max_new_tokens=6, eos_id=EOS, pad_id=PAD, generator=gen(0))
    assert r.responses == [[EOS]] * 4 and r.stopped_by == ["eos"] * 4

    model = tiny_model(eos_bias=3.0)  # EOS likely but not certain: samples end at various steps
    batch_sizes = []
    model.register_forward_pre_hook(
        lambda mod, args, kwargs: batch_sizes.append(kwargs["input_ids"].shape[0]),
        with_kwargs=True,
    )
    real_step = LeanDecoder.step

    def counted_step(self, tok_A, *args):
        batch_sizes.append(tok_A.shape[0])
        return real_step(self, tok_A, *args)

    monkeypatch.setattr(LeanDecoder, "step", counted_step)
    prompts = repeat_prompts(PROMPTS, 4)
    r = sample(
        model, prompts, max_new_tokens=20, eos_id=EOS, pad_id=PAD, generator=gen(0), engine=engine
    )
    lengths = r.response_lengths
    for resp, why in zip(r.responses, r.stopped_by, strict=True):
        assert EOS not in resp[:-1]
        assert (why == "eos") == (resp[-1] == EOS)
    assert len(set(lengths.tolist())) > 2
    # One forward per step, over the samples still running at that step.
    expected = [len(prompts)] + [int((lengths > t).sum()) for t in range(1, int(lengths.max()))]
    assert batch_sizes == expected


def test_left_padding_invariance(model):
    alone = sample(model, [[8]], max_new_tokens=6, eos_id=EOS, pad_id=PAD, temperature=0.0)
    batch = sample(model, PROMPTS, max_new_tokens=6, eos_id=EOS, pad_id=PAD, temperature=0.0)
    assert batch.responses[1] == alone.responses[0]
    torch.testing.assert_close(batch.student_logprobs[1], alone.student_logprobs[0])


def test_pick_tokens_inverse_cdf_golden():
    # probs [0.2, 0.5, 0.3] -> cumulative [0.2, 0.7, 1.0]; u picks the first cumulative > u.
    logits_AV = torch.tensor([[0.2, 0.5, 0.3]]).log().expand(5, 3)
    u_A = torch.tensor([0.0, 0.19, 0.2, 0.69, 0.999])
    assert pick_tokens(logits_AV, 1.0, 1.0, uniform_A=u_A).tolist() == [0, 0, 1, 1, 2]
    # top_p 0.6 keeps {1, 2} (0.5 + 0.3 >= 0.6): mass 0.8, u * 0.8 against [0, 0.5, 0.8]
    assert pick_tokens(logits_AV, 1.0, 0.6, uniform_A=u_A).tolist() == [1, 1, 1, 2, 2]


def test_pick_tokens_frequencies_follow_the_distribution():
    probs = torch.tensor([0.1, 0.6, 0.3])
    logits_AV = probs.log().expand(20000, 3)
    toks = pick_tokens(logits_AV, 1.0, 1.0, generator=gen(0))
    freq = torch.bincount(toks, minlength=3).float() / len(toks)
    torch.testing.assert_close(freq, probs, atol=0.015, rtol=0)


def test_a_sample_does_not_depend_on_the_rest_of_the_batch():
    model = tiny_model(eos_bias=2.0)  # samples end at different steps
    prompts = repeat_prompts(PROMPTS, 3)
    u_BN = sample_uniforms(len(prompts), 12, gen(3))
    kw = dict(max_new_tokens=12, eos_id=EOS, pad_id=PAD, topk=4)
    whole = sample(model, prompts, uniforms_BN=u_BN, **kw)
    assert whole.responses == sample(model, prompts, generator=gen(3), **kw).responses
    halves = [sample(model, prompts[i::2], uniforms_BN=u_BN[i::2], **kw) for i in (0, 1)]
    for i in range(len(prompts)):
        part = halves[i % 2]
        assert part.responses[i // 2] == whole.responses[i]
        assert part.stopped_by[i // 2] == whole.stopped_by[i]
        torch.testing.assert_close(part.student_logprobs[i // 2], whole.student_logprobs[i])
    with pytest.raises(ValueError, match="uniforms_BN has shape"):
        sample(model, prompts, uniforms_BN=u_BN[:, :5], **kw)


def test_tiny_top_p_is_greedy(model):
    kw = dict(max_new_tokens=6, eos_id=EOS, pad_id=PAD)
    greedy = sample(model, PROMPTS, temperature=0.0, **kw)
    nucleus = sample(model, PROMPTS, top_p=1e-6, generator=gen(0), **kw)
    assert nucleus.responses == greedy.responses


def test_chunked_equals_unchunked_and_chunks_tile_the_responses():
    model = tiny_model(eos_bias=0.2)  # sample 0 ends on EOS inside the second chunk
    kw = dict(max_new_tokens=8, eos_id=EOS, pad_id=PAD, temperature=0.0, topk=4)
    plain = sample(model, PROMPTS, **kw)
    chunks: list[Chunk] = []
    chunked = sample(model, PROMPTS, chunk_size=3, on_chunk=chunks.append, **kw)
    assert chunked.responses == plain.responses and chunked.stopped_by == plain.stopped_by
    tokens_BT, mask_BT = plain.response_tokens_BT(PAD), plain.response_mask_BT
    topk_BTK = plain.student_topk_ids_BTK()
    for c in chunks:
        assert c.start % 3 == 0 and c.tokens_AC.shape[1] <= 3
        end = c.start + c.tokens_AC.shape[1]
        assert torch.equal(c.mask_AC, mask_BT[c.sample_ids_A, c.start : end])
        assert torch.equal(c.tokens_AC, tokens_BT[c.sample_ids_A, c.start : end])
        got = torch.where(c.mask_AC[..., None], c.student_topk_ids_ACK, 0)
        assert torch.equal(got, topk_BTK[c.sample_ids_A, c.start : end])
    # Each sample's valid chunk positions cover its response exactly once.
    covered = torch.zeros_like(mask_BT, dtype=torch.long)
    for c in chunks:
        covered[c.sample_ids_A, c.start : c.start + c.tokens_AC.shape[1]] += c.mask_AC.long()
    assert torch.equal(covered, mask_BT.long())


def test_on_chunk_stop_prunes_exactly_those_samples(model):
    kw = dict(max_new_tokens=10, eos_id=EOS, pad_id=PAD, temperature=0.0, chunk_size=3)
    full = sample(model, PROMPTS, **kw, on_chunk=lambda c: None)

    def stop_1_and_3_after_second_chunk(c: Chunk):
        if c.start == 3:
            return torch.isin(c.sample_ids_A, torch.tensor([1, 3]))
        assert c.start < 3 or set(c.sample_ids_A.tolist()) == {0, 2}
        return None

    pruned = sample(model, PROMPTS, **kw, on_chunk=stop_1_and_3_after_second_chunk)
    assert pruned.stopped_by == ["cap", "pruned", "cap", "pruned"]
    for i in range(4):
        expected = full.responses[i][:6] if i in (1, 3) else full.responses[i]
        assert pruned.responses[i] == expected


def test_student_logprobs_and_topk_match_full_forward(model):
    r = sample(
        model,
        PROMPTS,
        max_new_tokens=6,
        eos_id=EOS,
        pad_id=PAD,
        generator=gen(0),
        temperature=1.5,
        topk=5,
    )
    input_ids_BL, attention_mask_BL, response_mask_BL = r.to_padded(PAD)
    with torch.no_grad():
        logits_BLV = model(input_ids=input_ids_BL, attention_mask=attention_mask_BL).logits
    logp_BLV = torch.log_softmax(logits_BLV.float(), dim=-1)
    # Token at position l is predicted at l - 1.
    logp_NV = logp_BLV[:, :-1][response_mask_BL[:, 1:]]
    tokens_N = input_ids_BL[response_mask_BL]
    ref_N = logp_NV.gather(-1, tokens_N[:, None])[:, 0]
    torch.testing.assert_close(
        r.student_logprobs_BT()[r.response_mask_BT], ref_N, atol=1e-5, rtol=0
    )
    topk_NK = r.student_topk_ids_BTK()[r.response_mask_BT]
    torch.testing.assert_close(
        logp_NV.gather(-1, topk_NK), logp_NV.topk(5).values, atol=1e-5, rtol=0
    )
    assert r.response_tokens_BT(PAD).tolist() == [resp for resp in r.responses]
    # Outputs are ordinary tensors, usable in autograd.
    w = torch.ones(1, requires_grad=True)
    (w * r.student_logprobs[0]).sum().backward()


def test_bad_arguments(model):
    with pytest.raises(ValueError):
        sample(model, [[]], max_new_tokens=2, eos_id=EOS, pad_id=PAD)
    with pytest.raises(ValueError):
        sample(model, PROMPTS, max_new_tokens=2, eos_id=EOS, pad_id=PAD, on_chunk=lambda c: None)


def test_stop_after_eos_in_the_same_chunk_keeps_eos():
    model = tiny_model(eos_bias=0.2)  # greedy: sample 0 emits EOS at its 5th token
    kw = dict(max_new_tokens=10, eos_id=EOS, pad_id=PAD, temperature=0.0, chunk_size=3)
    full = sample(model, PROMPTS, **kw)

    def stop_all_in_second_chunk(c: Chunk):
        return torch.full_like(c.mask_AC[:, 0], c.start == 3)

    stopped = sample(model, PROMPTS, **kw, on_chunk=stop_all_in_second_chunk)
    assert stopped.stopped_by == ["eos", "eos", "eos", "pruned"]
    assert stopped.responses[:3] == full.responses[:3] and len(full.responses[3]) > 6
    assert stopped.responses[3] == full.responses[3][:6]
