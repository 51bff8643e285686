"""`token_losses` and `response_hidden` against a plain full-forward reference.

The reference runs each row unpadded through `model(input_ids).logits`, shifts by one,
takes the `[B, T, V]` logits at the response positions and applies the pure functions of
`pruneopd.method.losses`. Values and gradients w.r.t. every student parameter must agree.
"""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_llama
from transformers import LlamaForCausalLM

from pruneopd.method import losses
from pruneopd.training.objective import response_hidden, token_losses

V, PAD, K = 40, 0, 16
PROMPTS = [[5, 6, 7], [8], [9, 10, 11, 12, 13]]
RESPONSES = [[14, 15, 16, 17], [18, 19, 20, 21, 22, 23], [24, 25]]
LOSSES = ("sampled_rkl", "topk_rkl", "full_rkl", "forward_kl", "jsd")
JSD_BETA = 0.3


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: the machine is shared, and tiny ops are faster single-threaded."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_pair_model(seed: int) -> LlamaForCausalLM:
    return tiny_llama(V, seed, max_positions=64).train()


@pytest.fixture(scope="module")
def pair():
    return tiny_pair_model(0), tiny_pair_model(1).eval().requires_grad_(False)


def batch():
    """Right-padded prompt + response, prompt lengths, response tokens and mask."""
    lens = [len(p) + len(r) for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    L, T = max(lens), max(len(r) for r in RESPONSES)
    input_ids_BL = torch.full((len(PROMPTS), L), PAD, dtype=torch.long)
    tokens_BT = torch.full((len(PROMPTS), T), PAD, dtype=torch.long)
    mask_BT = torch.zeros((len(PROMPTS), T), dtype=torch.bool)
    for b, (p, r) in enumerate(zip(PROMPTS, RESPONSES, strict=True)):
        input_ids_BL[b, : len(p) + len(r)] = torch.tensor(p + r)
        tokens_BT[b, : len(r)] = torch.tensor(r)
        mask_BT[b, : len(r)] = True
    prompt_lens_B = torch.tensor([len(p) for p in PROMPTS])
    return input_ids_BL, prompt_lens_B, tokens_BT, mask_BT


def reference_logits(model) -> torch.Tensor:
    """`[B, T, V]` logits predicting each response token, one unpadded forward per row."""
    T = max(len(r) for r in RESPONSES)
    rows = []
    for p, r in zip(PROMPTS, RESPONSES, strict=True):
        logits_LV = model(input_ids=torch.tensor([p + r])).logits[0]
        pred_TV = logits_LV[len(p) - 1 : len(p) + len(r) - 1]  # shift: position i predicts i+1
        rows.append(torch.cat([pred_TV, pred_TV.new_zeros(T - len(r), V)]))
    return torch.stack(rows)


def reference_losses(loss, s_BTV, q_BTV, tokens_BT, cand_BTK):
    s_lp, q_lp = s_BTV.log_softmax(-1), q_BTV.log_softmax(-1)
    if loss == "sampled_rkl":
        tok = tokens_BT[..., None]
        return losses.sampled_rkl(s_lp.gather(-1, tok)[..., 0], q_lp.gather(-1, tok)[..., 0])
    if loss == "topk_rkl":
        return losses.topk_rkl_from_candidates(s_lp.gather(-1, cand_BTK), q_lp.gather(-1, cand_BTK))
    if loss == "full_rkl":
        return losses.full_rkl(s_BTV, q_BTV)
    if loss == "forward_kl":
        return losses.forward_kl(s_BTV, q_BTV)
    return losses.jsd(s_BTV, q_BTV, beta=JSD_BETA)


def run_token_losses(loss, student, teacher, cand_BTK, q_BTV, chunk):
    input_ids_BL, prompt_lens_B, tokens_BT, mask_BT = batch()
    q_lp = q_BTV.log_softmax(-1)
    return token_losses(
        loss,
        student,
        teacher,
        input_ids_BL,
        prompt_lens_B,
        tokens_BT,
        mask_BT,
        candidate_ids_BTK=cand_BTK,
        teacher_candidate_logprobs_BTK=q_lp.gather(-1, cand_BTK),
        teacher_token_logprobs_BT=q_lp.gather(-1, tokens_BT[..., None])[..., 0],
        jsd_beta=JSD_BETA,
        chunk=chunk,
    )


def grads(model, scalar):
    model.zero_grad(set_to_none=True)
    scalar.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_reference_logits_are_what_the_batched_forward_gives(pair):
    """Sanity of the reference itself: right padding does not change response logits."""
    student, _ = pair
    input_ids_BL, prompt_lens_B, _, mask_BT = batch()
    with torch.no_grad():
        full_BLV = student(input_ids=input_ids_BL).logits
        ref_BTV = reference_logits(student)
    T = mask_BT.shape[1]
    idx_BT = (prompt_lens_B[:, None] - 1 + torch.arange(T)).clamp(max=full_BLV.shape[1] - 1)
    batched_BTV = full_BLV.gather(1, idx_BT[..., None].expand(-1, -1, V))
    torch.testing.assert_close(batched_BTV[mask_BT], ref_BTV[mask_BT], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("loss", LOSSES)
def test_token_losses_match_full_forward_reference(pair, loss):
    student, teacher = pair
    _, _, tokens_BT, mask_BT = batch()
    with torch.no_grad():
        q_BTV = reference_logits(teacher)
        cand_BTK = reference_logits(student).topk(K, dim=-1).indices
    torch.manual_seed(123)
    token_w_BT = torch.rand(mask_BT.shape) + 0.5  # distinct per-token weights for the gradients

    s_BTV = reference_logits(student)
    ref_BT = reference_losses(loss, s_BTV, q_BTV, tokens_BT, cand_BTK)
    ref_lp_BT = s_BTV.log_softmax(-1).gather(-1, tokens_BT[..., None])[..., 0].detach()
    ref_grads = grads(student, (ref_BT * token_w_BT)[mask_BT].sum())

    for chunk in (4096, 3):
        loss_BT, lp_BT = run_token_losses(loss, student, teacher, cand_BTK, q_BTV, chunk)
        assert loss_BT.shape == mask_BT.shape and loss_BT.dtype == torch.float32
        assert not lp_BT.requires_grad
        torch.testing.assert_close(loss_BT[mask_BT], ref_BT[mask_BT].detach(), atol=1e-5, rtol=1e-4)
        assert (loss_BT[~mask_BT] == 0).all() and (lp_BT[~mask_BT] == 0).all()
        torch.testing.assert_close(lp_BT[mask_BT], ref_lp_BT[mask_BT], atol=1e-5, rtol=1e-5)
        got = grads(student, (loss_BT * token_w_BT)[mask_BT].sum())
        assert got.keys() == ref_grads.keys()
        for name, g in ref_grads.items():
            torch.testing.assert_close(got[name], g, atol=1e-5, rtol=1e-4, msg=f"{loss} {name}")
    # the reference gradient is not trivially zero anywhere
    assert all(g.abs().sum() > 0 for g in ref_grads.values())


@pytest.mark.parametrize("loss", LOSSES)
def test_chunk_3_equals_chunk_4096(pair, loss):
    student, teacher = pair
    with torch.no_grad():
        q_BTV = reference_logits(teacher)
        cand_BTK = reference_logits(student).topk(K, dim=-1).indices
    out = {}
    for chunk in (3, 4096):
        loss_BT, lp_BT = run_token_losses(loss, student, teacher, cand_BTK, q_BTV, chunk)
        out[chunk] = (loss_BT.detach(), lp_BT, grads(student, loss_BT.sum()))
    torch.testing.assert_close(out[3][0], out[4096][0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out[3][1], out[4096][1], atol=1e-6, rtol=1e-5)
    for name, g in out[4096][2].items():
        torch.testing.assert_close(out[3][2][name], g, atol=1e-6, rtol=1e-5, msg=name)


def test_teacher_gets_no_gradient(pair):
    student, teacher = pair
    with torch.no_grad():
        q_BTV = reference_logits(teacher)
        cand_BTK = reference_logits(student).topk(K, dim=-1).indices
    loss_BT, _ = run_token_losses("full_rkl", student, teacher, cand_BTK, q_BTV, 4)
    loss_BT.sum().backward()
    assert all(p.grad is None for p in teacher.parameters())


def test_response_hidden_picks_the_predicting_positions(pair):
    student, _ = pair
    input_ids_BL, prompt_lens_B, _, mask_BT = batch()
    T = mask_BT.shape[1]
    with torch.no_grad():
        got_BTH = response_hidden(student, input_ids_BL, prompt_lens_B, T)
        out = student(input_ids=input_ids_BL, output_hidden_states=True)
        last_BLH = out.hidden_states[-1]  # final hidden states (after the last norm)
    assert got_BTH.shape == (len(PROMPTS), T, 32)
    for b, (p, r) in enumerate(zip(PROMPTS, RESPONSES, strict=True)):
        for t in range(len(r)):
            # response token t sits at len(p) + t and is predicted from len(p) + t - 1
            torch.testing.assert_close(got_BTH[b, t], last_BLH[b, len(p) + t - 1])
    # the head applied to them gives the reference logits (hidden states really are final)
    with torch.no_grad():
        logits_BTV = student.lm_head(got_BTH)
        ref_BTV = reference_logits(student)
    torch.testing.assert_close(logits_BTV[mask_BT], ref_BTV[mask_BT], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("loss", ["full_rkl", "forward_kl", "jsd"])
def test_teacher_hidden_from_scoring_equals_a_second_teacher_forward(pair, loss):
    """The full-vocabulary losses reuse the scorer's teacher hidden states (one teacher forward
    per step instead of two) and get the same losses and gradients."""
    from pruneopd.engines.scoring import score_responses

    student, teacher = pair
    input_ids_BL, prompt_lens_B, tokens_BT, mask_BT = batch()
    scores = score_responses(teacher, PROMPTS, RESPONSES, k=4, pad_id=PAD)
    assert scores.hidden_NH.shape == (int(mask_BT.sum()), teacher.config.hidden_size)
    out = []
    for hidden in (None, scores.hidden_NH):
        loss_BT, _ = token_losses(
            loss,
            student,
            teacher,
            input_ids_BL,
            prompt_lens_B,
            tokens_BT,
            mask_BT,
            teacher_hidden_NH=hidden,
            jsd_beta=JSD_BETA,
        )
        out.append((loss_BT.detach(), grads(student, loss_BT.sum())))
    torch.testing.assert_close(out[1][0], out[0][0], atol=1e-6, rtol=1e-5)
    for name, g in out[0][1].items():
        torch.testing.assert_close(out[1][1][name], g, atol=1e-6, rtol=1e-5, msg=name)
    with pytest.raises(ValueError, match="rows for"):
        token_losses(
            loss,
            student,
            teacher,
            input_ids_BL,
            prompt_lens_B,
            tokens_BT,
            mask_BT,
            teacher_hidden_NH=scores.hidden_NH[1:],
        )
