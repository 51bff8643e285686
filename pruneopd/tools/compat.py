"""How compatible a student is with a teacher on the student's own samples.

This measures the quantities the drift monitor thresholds: per-token top-K overlap
between the two models' next-token distributions, for several K, and top-1 agreement.
The numbers justify the presets' K and tau (see README, "Model zoo").
"""

from __future__ import annotations

import torch

from pruneopd.engines.rollout import sample
from pruneopd.engines.scoring import score_responses
from pruneopd.method.drift import topk_overlap_from_ids
from pruneopd.tokenizer import prompt_ids

KS = (1, 4, 8, 16)
TAUS = (0.5, 0.6, 0.7, 0.8, 0.9)


@torch.inference_mode()
def overlap_stats(
    student, teacher, tok, task, problems, *, ks=KS, max_new_tokens=512, seed=0
) -> dict:
    """Sample one T=1 response per problem from the student, score it with the teacher.

    Returns, for each K: mean and quartiles of the per-token overlap, the share of tokens
    below each tau in TAUS (the drift-event rate tau would give), and a 10-bin histogram;
    plus top-1 agreement (= overlap at K=1) and the number of tokens measured.
    """
    kmax = max(ks)
    prompts = [prompt_ids(tok, p) for p in problems]
    gen = torch.Generator().manual_seed(seed)
    r = sample(
        student,
        prompts,
        max_new_tokens=max_new_tokens,
        eos_id=tok.eos_token_id,
        pad_id=tok.pad_token_id,
        temperature=1.0,
        generator=gen,
        topk=kmax,
    )
    scores = score_responses(teacher, prompts, r.responses, k=kmax, pad_id=tok.pad_token_id)
    mask_BT = r.response_mask_BT
    student_ids_BTK = r.student_topk_ids_BTK()
    out: dict = {"tokens": int(mask_BT.sum()), "mean_length": float(mask_BT.sum(1).float().mean())}
    for k in ks:
        o_N = topk_overlap_from_ids(student_ids_BTK[..., :k], scores.topk_ids_BTK[..., :k])[mask_BT]
        q = torch.quantile(o_N.double(), torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
        out[f"k{k}"] = {
            "mean": float(o_N.mean()),
            "quartiles": [round(float(x), 4) for x in q],
            "share_below": {str(t): float((o_N < t).float().mean()) for t in TAUS},
            "histogram": torch.histc(o_N.float(), bins=10, min=0, max=1).int().tolist(),
        }
    out["top1_agreement"] = out["k1"]["mean"] if 1 in ks else None
    # which style each sample is written in, and how often the teacher's top-1 agrees there
    top1_BT = student_ids_BTK[..., 0] == scores.topk_ids_BTK[..., 0]
    styles = [task.style_of(tok.decode(resp, skip_special_tokens=True)) for resp in r.responses]
    out["by_style"] = {}
    for style in sorted(set(styles)):
        rows_B = torch.tensor([s == style for s in styles])
        m_BT = mask_BT & rows_B[:, None]
        out["by_style"][style] = {
            "samples": int(rows_B.sum()),
            "tokens": int(m_BT.sum()),
            "top1_agreement": float(top1_BT[m_BT].float().mean()) if m_BT.any() else None,
        }
    return out


@torch.inference_mode()
def style_fidelity(teacher, tok, task, problems) -> dict:
    """Can the teacher supervise each trace style? Teacher-forced on the reference trace of
    every problem in each style: the share of response tokens (EOS included) where its top-1
    prediction is the reference token, and the share of traces it gets entirely right.

    A teacher that is poor in a student's style teaches that student wrong tokens on-policy,
    whatever the drift monitor says (docs/benchmarks.md).
    """
    prompts = [prompt_ids(tok, p) for p in problems]
    out = {}
    for style in task.styles:
        refs = [
            tok(task.render(p, style), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            for p in problems
        ]
        s = score_responses(teacher, prompts, refs, k=1, pad_id=tok.pad_token_id)
        mask_BT = (
            torch.arange(s.topk_ids_BTK.shape[1]) < torch.tensor([len(r) for r in refs])[:, None]
        )
        ref_BT = torch.nn.utils.rnn.pad_sequence([torch.tensor(r) for r in refs], batch_first=True)
        hit_BT = (s.topk_ids_BTK[..., 0] == ref_BT) | ~mask_BT
        out[style] = {
            "token_top1": float(hit_BT[mask_BT].float().mean()),
            "traces_right": float(hit_BT.all(dim=1).float().mean()),
        }
    return out
