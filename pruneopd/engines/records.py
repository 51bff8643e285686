"""What a sampler returns: the student's responses (`Rollout`) and, while sampling in chunks,
each chunk (`Chunk`, what `on_chunk` sees); the prompts' repetition and left padding.

Shapes: B = samples, A = samples in a chunk, P = padded prompt length, C = chunk length,
K = student top-k, T = longest response.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import pad_sequence


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
        return pad_right([torch.tensor(r, dtype=torch.long) for r in self.responses], pad_id)

    def student_logprobs_BT(self) -> torch.Tensor:
        """[B, T] float32, zero on padding."""
        return pad_right(self.student_logprobs, 0.0)

    def student_topk_ids_BTK(self) -> torch.Tensor | None:
        """[B, T, K] long, zero on padding; None if sampled with topk=0."""
        return None if self.student_topk_ids is None else pad_right(self.student_topk_ids, 0)

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
        input_ids_BL = pad_right(seqs, pad_id)
        prompt_lens_B = torch.tensor([len(p) for p in self.prompts], dtype=torch.long)
        total_lens_B = prompt_lens_B + self.response_lengths
        pos_L = torch.arange(input_ids_BL.shape[1])
        attention_mask_BL = (pos_L < total_lens_B[:, None]).long()
        response_mask_BL = (pos_L >= prompt_lens_B[:, None]) & (pos_L < total_lens_B[:, None])
        return input_ids_BL, attention_mask_BL, response_mask_BL


def repeat_prompts(prompts: list[list[int]], n: int) -> list[list[int]]:
    """Each prompt n times in a row: [a, b], n=2 -> [a, a, b, b]."""
    return [list(p) for p in prompts for _ in range(n)]


def stop_id_list(eos_id) -> list[int]:
    """The ids a sample stops at, from `sample`'s `eos_id`: one id, or a sequence of them
    (EOS and a chat template's end-of-turn token: `tokenizer.stop_ids`)."""
    if isinstance(eos_id, (list, tuple)):
        return [int(i) for i in eos_id]
    return [int(eos_id)]


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


def make_chunk(ids_A, start, end, tokens_BN, logprobs_BN, topk_BNK, lengths_B) -> Chunk:
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


def pad_right(seqs: list[torch.Tensor], value: float) -> torch.Tensor:
    """Stack [T_i, ...] tensors into [B, T, ...], padding dim 0 on the right with value."""
    return pad_sequence(seqs, batch_first=True, padding_value=value)
