import pytest
import torch
from tiny import tiny_llama
from transformers import LlamaForCausalLM

from pruneopd.engines import fused
from pruneopd.engines.rollout import Chunk, repeat_prompts, sample
from pruneopd.engines.scoring import IncrementalScorer, score_responses

V, EOS, PAD, K = 50, 2, 0, 6
PROMPTS = [[5, 6, 7], [8], [9, 10, 11, 12, 13], [14, 15]]


def tiny_model(seed: int) -> LlamaForCausalLM:
    return tiny_llama(V, seed)


@pytest.fixture(scope="module")
def student():
    model = tiny_model(0)
    head = torch.nn.Linear(32, V, bias=True)  # same weights plus a bias making EOS frequent
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[EOS] = 2.5
    model.lm_head = head
    return model


@pytest.fixture(scope="module")
def teacher():
    return tiny_model(1)


def reference_logp(teacher, prompts, responses):
    """[N, V] teacher log-probs at every response token (full forward per sample, no padding)."""
    rows = []
    with torch.no_grad():
        for p, r in zip(prompts, responses, strict=True):
            logits = teacher(input_ids=torch.tensor([p + r])).logits[0].float()
            rows.append(torch.log_softmax(logits, -1)[len(p) - 1 : len(p) + len(r) - 1])
    return torch.cat(rows)


def test_score_responses_matches_full_log_softmax(student, teacher):
    rollout = sample(
        student,
        repeat_prompts(PROMPTS, 2),
        max_new_tokens=9,
        eos_id=EOS,
        pad_id=PAD,
        generator=torch.Generator().manual_seed(0),
        topk=4,
    )
    assert len(set(rollout.response_lengths.tolist())) > 1
    scores = score_responses(
        teacher,
        rollout.prompts,
        rollout.responses,
        k=K,
        pad_id=PAD,
        candidate_ids=rollout.student_topk_ids,
        position_chunk=5,
    )
    mask_BT = rollout.response_mask_BT
    assert scores.token_logprobs_BT.shape == mask_BT.shape
    assert scores.topk_ids_BTK.shape == (*mask_BT.shape, K)
    logp_NV = reference_logp(teacher, rollout.prompts, rollout.responses)
    tokens_N = rollout.response_tokens_BT(PAD)[mask_BT]
    close = dict(atol=1e-5, rtol=0)
    torch.testing.assert_close(
        scores.token_logprobs_BT[mask_BT], logp_NV.gather(-1, tokens_N[:, None])[:, 0], **close
    )
    torch.testing.assert_close(scores.topk_logprobs_BTK[mask_BT], logp_NV.topk(K).values, **close)
    torch.testing.assert_close(
        logp_NV.gather(-1, scores.topk_ids_BTK[mask_BT]), logp_NV.topk(K).values, **close
    )
    cand_NK = rollout.student_topk_ids_BTK()[mask_BT]
    torch.testing.assert_close(
        scores.candidate_logprobs_BTK[mask_BT], logp_NV.gather(-1, cand_NK), **close
    )
    assert (scores.token_logprobs_BT[~mask_BT] == 0).all()
    assert (scores.candidate_logprobs_BTK[~mask_BT] == 0).all()


@pytest.mark.parametrize("engine", ["hf", "lean", "fused"])
@pytest.mark.parametrize("prune", [False, True])
def test_incremental_chunks_equal_whole_response_scoring(student, teacher, prune, engine):
    if engine == "fused" and not fused.available():
        pytest.skip("the fused kernel cannot be built here")
    prompts = repeat_prompts(PROMPTS, 2)
    B, N = len(prompts), 10
    scorer = IncrementalScorer(
        teacher, prompts, k=K, pad_id=PAD, position_chunk=4, max_new_tokens=N, engine=engine
    )
    assert scorer.engine == engine and (scorer.lean is not None) == (engine != "hf")
    token_lp_BN = torch.zeros(B, N)
    topk_lp_BNK = torch.zeros(B, N, K)
    cand_lp_BNK = torch.zeros(B, N, 4)
    chunk_sizes = []

    def on_chunk(c: Chunk):
        s = scorer.score_chunk(c.sample_ids_A, c.tokens_AC, c.mask_AC, c.student_topk_ids_ACK)
        end = c.start + c.tokens_AC.shape[1]
        chunk_sizes.append(c.tokens_AC.shape)
        token_lp_BN[c.sample_ids_A, c.start : end] = s.token_logprobs_BT
        topk_lp_BNK[c.sample_ids_A, c.start : end] = s.topk_logprobs_BTK
        cand_lp_BNK[c.sample_ids_A, c.start : end] = s.candidate_logprobs_BTK
        if prune and c.start == 3:
            return c.sample_ids_A % 3 == 0
        return None

    rollout = sample(
        student,
        prompts,
        max_new_tokens=N,
        eos_id=EOS,
        pad_id=PAD,
        chunk_size=3,
        on_chunk=on_chunk,
        topk=4,
        generator=torch.Generator().manual_seed(1),  # a seed where sample 0 outlives chunk 1
    )
    assert ("pruned" in rollout.stopped_by) == prune and "eos" in rollout.stopped_by
    assert len({shape[0] for shape in chunk_sizes}) > 1  # samples left the batch along the way
    full = score_responses(
        teacher,
        rollout.prompts,
        rollout.responses,
        k=K,
        pad_id=PAD,
        candidate_ids=rollout.student_topk_ids_BTK(),
    )
    T = full.token_logprobs_BT.shape[1]
    close = dict(atol=1e-5, rtol=0)
    torch.testing.assert_close(token_lp_BN[:, :T], full.token_logprobs_BT, **close)
    torch.testing.assert_close(topk_lp_BNK[:, :T], full.topk_logprobs_BTK, **close)
    torch.testing.assert_close(cand_lp_BNK[:, :T], full.candidate_logprobs_BTK, **close)
    assert (token_lp_BN[:, T:] == 0).all()


def test_incremental_scorer_rejects_reordered_ids(teacher):
    scorer = IncrementalScorer(teacher, PROMPTS, k=K, pad_id=PAD)
    tokens_AC, mask_AC = torch.tensor([[3], [4]]), torch.ones(2, 1, dtype=torch.bool)
    scorer.score_chunk(torch.tensor([0, 2]), tokens_AC, mask_AC)
    with pytest.raises(ValueError):
        scorer.score_chunk(torch.tensor([2, 0]), tokens_AC, mask_AC)
    with pytest.raises(ValueError):
        scorer.score_chunk(torch.tensor([0, 1]), tokens_AC, mask_AC)
