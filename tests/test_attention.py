"""The causal attention kernel (pruneopd/attention.py, csrc/causal_attention.cpp) equals SDPA,
forward and backward: grouped-query heads, lengths that are not a multiple of the 64-row
block, one token, head dims 8 / 32 / 64. Under `whole_sequence` a Hugging Face model gives the
same hidden states and gradients as with SDPA, the same teacher scores and the same OPD
losses; masked or cached forwards fall back to SDPA; the model is unchanged afterwards.
Skipped where the extension cannot be built."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny import tiny_llama

from pruneopd.engines import attention, fused
from pruneopd.engines.scoring import score_responses
from pruneopd.models import cache_kwarg
from pruneopd.training.objective import token_losses

pytestmark = pytest.mark.skipif(
    not attention.available(), reason="the attention kernel cannot be built here"
)

V, PAD = 50, 0


def _sdpa_and_ours(B, Hq, Hkv, T, D, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, T, D, generator=g, requires_grad=True)
    k = torch.randn(B, Hkv, T, D, generator=g, requires_grad=True)
    v = torch.randn(B, Hkv, T, D, generator=g, requires_grad=True)
    grad = torch.randn(B, Hq, T, D, generator=g)
    scale = 0.7 * D**-0.5  # not the default, so a dropped scale shows
    out = []
    for fn in (
        lambda: F.scaled_dot_product_attention(
            q, k, v, is_causal=True, scale=scale, enable_gqa=Hq != Hkv
        ),
        lambda: attention.causal_attention_BHTD(q, k, v, scale),
    ):
        o = fn()
        o.backward(grad)
        out.append([o.detach()] + [x.grad.clone() for x in (q, k, v)])
        for x in (q, k, v):
            x.grad = None
    return out


@pytest.mark.parametrize(
    "B,Hq,Hkv,T,D",
    [(2, 4, 4, 7, 32), (3, 6, 2, 130, 32), (2, 4, 4, 64, 8), (1, 2, 1, 200, 64), (2, 2, 2, 1, 32)],
)
def test_kernel_equals_sdpa_forward_and_backward(B, Hq, Hkv, T, D):
    ref, ours = _sdpa_and_ours(B, Hq, Hkv, T, D)
    for name, a, b in zip(("out", "dq", "dk", "dv"), ours, ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)


def test_kernel_is_causal():
    """A change to the last key must not move any earlier query's output."""
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 70, 32, generator=g) for _ in range(3))
    a = attention.causal_attention_BHTD(q, k, v, 0.2)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, -1] += 5.0
    v2[:, :, -1] += 5.0
    b = attention.causal_attention_BHTD(q, k2, v2, 0.2)
    assert torch.equal(a[:, :, :-1], b[:, :, :-1])
    assert not torch.allclose(a[:, :, -1], b[:, :, -1])


def _batch():
    prompts = [[5, 6, 7], [8], [9, 10, 11, 12, 13], [14, 15]]
    responses = [[20 + (i * 7 + j) % 25 for j in range(n)] for i, n in enumerate([90, 70, 3, 80])]
    seqs = [torch.tensor(p + r) for p, r in zip(prompts, responses, strict=True)]
    ids = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=PAD)
    return prompts, responses, ids


def test_whole_sequence_matches_sdpa_hidden_and_grads():
    model = tiny_llama(V)  # grouped-query heads, head dim 8
    assert attention.supported(model)
    _, _, ids = _batch()
    outs = []
    for use in (False, True):
        model.zero_grad(set_to_none=True)
        if use:
            with attention.whole_sequence(model):
                assert model.config._attn_implementation == attention.NAME
                h = model.model(input_ids=ids, use_cache=False).last_hidden_state
        else:
            h = model.model(input_ids=ids, use_cache=False).last_hidden_state
        (h * torch.linspace(-1, 1, h.shape[-1])).sum().backward()
        grads = [p.grad.clone() for p in model.model.parameters()]  # lm_head is not used
        outs.append((h.detach(), grads))
    assert model.config._attn_implementation == "sdpa"  # restored
    torch.testing.assert_close(outs[1][0], outs[0][0], atol=1e-5, rtol=1e-4)
    for a, b in zip(outs[1][1], outs[0][1], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_masked_and_cached_forwards_fall_back_to_sdpa():
    model = tiny_llama(V).eval()
    _, _, ids = _batch()
    mask = (ids != PAD).long()
    mask[:, -3:] = 0
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).logits
        ref_cached = model(input_ids=ids[:, :5], use_cache=True)
        kw = cache_kwarg(model)
        ref_next = model(input_ids=ids[:, 5:6], **{kw: ref_cached.past_key_values}).logits
        with attention.whole_sequence(model):
            got = model(input_ids=ids, attention_mask=mask).logits
            cached = model(input_ids=ids[:, :5], use_cache=True)
            nxt = model(input_ids=ids[:, 5:6], **{kw: cached.past_key_values}).logits
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(nxt, ref_next, atol=1e-5, rtol=1e-4)


def test_scores_and_losses_equal_the_sdpa_path(monkeypatch):
    teacher, student = tiny_llama(V, seed=1).eval(), tiny_llama(V, seed=2)
    prompts, responses, ids = _batch()
    prompt_lens = torch.tensor([len(p) for p in prompts])
    runs = []
    for switch in ("0", "1"):
        monkeypatch.setenv("PRUNEOPD_ATTENTION", switch)
        assert attention.available() == (switch == "1")
        with torch.no_grad():
            sc = score_responses(teacher, prompts, responses, k=4, pad_id=PAD)
        T = max(len(r) for r in responses)
        mask_BT = torch.arange(T) < torch.tensor([len(r) for r in responses])[:, None]
        tokens = torch.stack([torch.tensor(r + [PAD] * (T - len(r))) for r in responses])
        student.zero_grad(set_to_none=True)
        loss_BT, _ = token_losses(
            "full_rkl",
            student,
            teacher,
            ids,
            prompt_lens,
            tokens,
            mask_BT,
            teacher_hidden_NH=sc.hidden_NH,
        )
        loss_BT.sum().backward()
        runs.append((sc, loss_BT.detach(), [p.grad.clone() for p in student.parameters()]))
    (sa, la, ga), (sb, lb, gb) = runs
    torch.testing.assert_close(sb.topk_logprobs_BTK, sa.topk_logprobs_BTK, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(sb.token_logprobs_BT, sa.token_logprobs_BT, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(lb, la, atol=1e-5, rtol=1e-4)
    for a, b in zip(gb, ga, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_not_supported_off_float32():
    model = tiny_llama(V).to(torch.bfloat16)
    assert not attention.supported(model)
    with attention.whole_sequence(model):
        assert model.config._attn_implementation == "sdpa"


def test_fused_flags_vectorise():
    """The build keeps -fno-trapping-math (without it exp_neg's loops stay scalar)."""
    assert "-fno-trapping-math" in fused._flags()


def test_gradient_checkpointed_training_keeps_sdpa():
    model = tiny_llama(V).train()
    enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.x
    (enable or model.gradient_checkpointing_enable)()
    with attention.whole_sequence(model):
        assert model.config._attn_implementation == "sdpa"
    with torch.no_grad(), attention.whole_sequence(model):  # no backward: the kernel is fine
        assert model.config._attn_implementation == attention.NAME
