"""From a rollout and the teacher's scores to per-token losses with gradients.

The student is run once over prompt + response (right-padded, so no attention mask is
needed with a causal model) and only the hidden states at response positions are kept.
Log-probabilities are taken from those hidden states in chunks of tokens under
activation checkpointing, so neither model's `[tokens, V]` logits exist in full at once.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from pruneopd.engines import attention
from pruneopd.method import losses


def response_hidden(model, input_ids_BL: torch.Tensor, prompt_lens_B: torch.Tensor, T: int):
    """Final hidden states that predict each response token: `[B, T, H]`.

    Response token t of row b sits at index `prompt_lens_B[b] + t` and is predicted from
    index `prompt_lens_B[b] + t - 1`. Rows are right-padded; with causal attention the
    padding after a row's last token cannot affect it, so no attention mask is passed, and the
    layers use the causal kernel of `attention.whole_sequence` where it is available.
    """
    with attention.whole_sequence(model):
        hidden_BLH = model.get_decoder()(input_ids=input_ids_BL, use_cache=False).last_hidden_state
    L = hidden_BLH.shape[1]
    src_BT = (prompt_lens_B[:, None] - 1 + torch.arange(T, device=input_ids_BL.device)).clamp(
        max=L - 1
    )
    return hidden_BLH.gather(1, src_BT[..., None].expand(-1, -1, hidden_BLH.shape[-1]))


LOSS_CHUNK_BYTES = 128 * 2**20  # one [chunk, V] float32 tensor of the loss at most
MAX_LOSS_CHUNK = 4096


def loss_chunk_for(vocab_size: int) -> int:
    """The default `loss_chunk`: the largest power of two <= 4096 whose `[chunk, V]` float32
    logits take at most 128 MiB (V = 49,152: 512; the zoo's small vocabularies: 4096). The
    loss holds a few such tensors at once (logits, their softmax, the gradient; the teacher's
    too for the full-vocabulary losses), so this bounds the loss's share of a step's memory
    to well under a gigabyte whatever the tokens per step."""
    chunk = MAX_LOSS_CHUNK
    while chunk > 1 and chunk * vocab_size * 4 > LOSS_CHUNK_BYTES:
        chunk //= 2
    return chunk


def _logprobs_at_chunk(hidden_nH, head_VH, ids_nK):
    logits_nV = (hidden_nH @ head_VH.T).float()
    return logits_nV.gather(-1, ids_nK) - logits_nV.logsumexp(-1, keepdim=True)


def logprobs_at(hidden_NH, head_VH, ids_NK, chunk: int) -> torch.Tensor:
    """`log softmax(hidden @ head.T)[ids]` -> `[N, K]`, computed `chunk` tokens at a time."""
    out = [
        checkpoint(
            _logprobs_at_chunk,
            hidden_NH[i : i + chunk],
            head_VH,
            ids_NK[i : i + chunk],
            use_reentrant=False,
        )
        for i in range(0, hidden_NH.shape[0], chunk)
    ]
    return torch.cat(out) if out else hidden_NH.new_zeros((0, ids_NK.shape[1]))


class StudentLoss(torch.nn.Module):
    """The student's side of `token_losses` as one module forward.

    Data-parallel wrappers (DDP, FSDP2's `fully_shard`) hook a module's forward; everything that
    touches the student's weights (decoder, head, chunked log-probs and the loss) runs inside
    this forward, so a wrapped `StudentLoss` trains exactly like the bare one.
    """

    def __init__(self, student):
        super().__init__()
        self.student = student

    def forward(
        self,
        loss,
        input_ids_BL,
        prompt_lens_B,
        tokens_BT,
        mask_BT,
        candidate_ids_BTK,
        teacher_candidate_logprobs_BTK,
        teacher_token_logprobs_BT,
        teacher_hidden_NH,
        teacher_head_VH,
        jsd_beta,
        chunk,
        tail_BT=None,
        advantage_BT=None,
    ):
        T = tokens_BT.shape[1]
        hidden_NH = response_hidden(self.student, input_ids_BL, prompt_lens_B, T)[mask_BT]
        head_VH = self.student.get_output_embeddings().weight
        tokens_N1 = tokens_BT[mask_BT][:, None]
        loss_BT = torch.zeros(mask_BT.shape, dtype=torch.float32, device=mask_BT.device)
        if loss == "topk_rkl":
            ids_NK1 = torch.cat([candidate_ids_BTK[mask_BT], tokens_N1], dim=1)
            lp_NK1 = logprobs_at(hidden_NH, head_VH, ids_NK1, chunk)
            s_NK, token_lp_N = lp_NK1[:, :-1], lp_NK1[:, -1]
            q_NK = teacher_candidate_logprobs_BTK[mask_BT]
            loss_N = losses.topk_rkl_from_candidates(s_NK[None], q_NK[None])[0]
        else:
            token_lp_N = logprobs_at(hidden_NH, head_VH, tokens_N1, chunk)[:, 0]
            if loss == "sampled_rkl":
                q_N = teacher_token_logprobs_BT[mask_BT]
                loss_N = losses.sampled_rkl(token_lp_N[None], q_N[None])[0]
            else:
                fn = {
                    "full_rkl": losses.full_rkl,
                    "forward_kl": losses.forward_kl,
                    "jsd": losses.jsd,
                }[loss]
                kw = {"beta": jsd_beta} if loss == "jsd" else {}
                loss_N = losses.chunked_token_loss(
                    fn, hidden_NH, head_VH, teacher_hidden_NH, teacher_head_VH, chunk, **kw
                )
        if tail_BT is not None:  # hybrid: policy gradient -sg(A) log pi(y_t) on the tail
            tail_N, adv_N = tail_BT[mask_BT], advantage_BT[mask_BT].detach()
            loss_N = torch.where(tail_N, -adv_N * token_lp_N, loss_N)
        loss_BT = loss_BT.masked_scatter(mask_BT, loss_N.float()) if loss_N.numel() else loss_BT
        lp_BT = torch.zeros(mask_BT.shape, device=mask_BT.device).masked_scatter(
            mask_BT, token_lp_N.detach().float()
        )
        return loss_BT, lp_BT


def token_losses(
    loss: str,
    student,
    teacher,
    input_ids_BL: torch.Tensor,
    prompt_lens_B: torch.Tensor,
    tokens_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    *,
    candidate_ids_BTK: torch.Tensor | None = None,
    teacher_candidate_logprobs_BTK: torch.Tensor | None = None,
    teacher_token_logprobs_BT: torch.Tensor | None = None,
    teacher_hidden_NH: torch.Tensor | None = None,
    jsd_beta: float = 0.5,
    chunk: int = 4096,
    tail_BT: torch.Tensor | None = None,
    advantage_BT: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token loss `[B, T]` (0 on invalid positions) and the student's detached
    log-prob of each sampled token `[B, T]`.

    `student` is a Hugging Face causal LM or a (possibly DDP/FSDP-wrapped) `StudentLoss`.
    `sampled_rkl` needs `teacher_token_logprobs_BT`; `topk_rkl` needs the candidate ids
    (the student's top-K at sampling time) and the teacher's log-probs at them; the
    full-vocabulary losses take the teacher's hidden states at the valid positions from
    `teacher_hidden_NH` (`TokenScores.hidden_NH`: no second teacher forward) or, without it,
    run the teacher here on the same sequences; its head is applied in chunks.
    `tail_BT` / `advantage_BT` (method hybrid) replace the loss on tail tokens by the
    policy-gradient loss `-sg(A) * log pi(y_t)`.
    """
    t_hidden_NH = t_head_VH = None
    if loss not in ("topk_rkl", "sampled_rkl"):
        t_hidden_NH = teacher_hidden_NH
        with torch.no_grad():
            if t_hidden_NH is None:
                T = tokens_BT.shape[1]
                t_hidden_NH = response_hidden(teacher, input_ids_BL, prompt_lens_B, T)[mask_BT]
        t_head_VH = teacher.get_output_embeddings().weight.detach()
        if t_hidden_NH.shape[0] != int(mask_BT.sum()):
            raise ValueError(
                f"teacher_hidden_NH has {t_hidden_NH.shape[0]} rows for "
                f"{int(mask_BT.sum())} valid tokens"
            )
    if hasattr(student, "get_decoder"):  # a bare model
        student = StudentLoss(student)
    return student(
        loss,
        input_ids_BL,
        prompt_lens_B,
        tokens_BT,
        mask_BT,
        candidate_ids_BTK,
        teacher_candidate_logprobs_BTK,
        teacher_token_logprobs_BT,
        t_hidden_NH,
        t_head_VH,
        jsd_beta,
        chunk,
        tail_BT,
        advantage_BT,
    )
