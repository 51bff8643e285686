"""Online pruning (our extension): the teacher scores each chunk while the student samples,
and a sample is stopped as soon as its reliability weight reaches the floor.

`OnlinePruner` is the `on_chunk` callback of `rollout.sample`. It keeps the teacher's KV
cache (via `IncrementalScorer`), counts drift events per sample with the trainer's own
`weigh_tokens`, and assembles the chunk scores into whole-response `TokenScores`, so the
trainer needs no second teacher pass.
"""

from __future__ import annotations

import time

import torch

from pruneopd.engines.rollout import Chunk
from pruneopd.engines.scoring import IncrementalScorer, TokenScores
from pruneopd.method.weighing import DriftSettings, weigh_tokens


class OnlinePruner:
    def __init__(self, scorer: IncrementalScorer, drift: DriftSettings, floor: float):
        """`scorer`: the teacher's chunk scorer over the rollout's prompts (e.g. a `Teacher`'s
        `incremental`); `drift`: the run's monitor settings; `floor`: a sample stops once
        its reliability weight w_t is at or below it."""
        self.scorer, self.drift, self.floor = scorer, drift, floor
        self.events_B = torch.zeros(scorer.sample_ids_A.numel(), dtype=torch.float64)
        self.pieces: list[tuple[torch.Tensor, int, TokenScores, torch.Tensor]] = []
        self.seconds = 0.0

    def __call__(self, chunk: Chunk) -> torch.Tensor:
        t0 = time.perf_counter()
        ids_A = chunk.sample_ids_A
        sc = self.scorer.score_chunk(
            ids_A, chunk.tokens_AC, chunk.mask_AC, candidate_ids_ACK=chunk.student_topk_ids_ACK
        )
        tw = weigh_tokens(
            self.drift,
            chunk.student_topk_ids_ACK,
            sc.topk_ids_BTK,
            sc.topk_logprobs_BTK,
            chunk.tokens_AC,
            chunk.mask_AC,
        )
        self.events_B[ids_A] += tw.events_BT.sum(1).double()
        self.pieces.append((ids_A, chunk.start, sc, chunk.mask_AC))
        # the chunk's events continue each sample's count: w = clip(1 - w_drop * C, 0, 1)
        weight_A = (1.0 - self.drift.w_drop * self.events_B[ids_A]).clamp(0, 1)
        self.seconds += time.perf_counter() - t0
        return weight_A <= self.floor + 1e-8  # w_t reached the floor: stop this sample

    def assemble(self, B: int, T: int) -> TokenScores:
        """Whole-response scores `[B, T, ...]` from the chunks (zeros where invalid)."""
        k = self.scorer.k
        kc = next(
            (
                p[2].candidate_logprobs_BTK.shape[-1]
                for p in self.pieces
                if p[2].candidate_logprobs_BTK is not None
            ),
            0,
        )
        out = TokenScores(
            token_logprobs_BT=torch.zeros(B, T),
            topk_ids_BTK=torch.zeros(B, T, k, dtype=torch.long),
            topk_logprobs_BTK=torch.zeros(B, T, k),
            candidate_logprobs_BTK=torch.zeros(B, T, kc) if kc else None,
        )
        for ids_A, start, sc, _mask in self.pieces:
            end = min(start + sc.token_logprobs_BT.shape[1], T)
            n = end - start
            if n <= 0:
                continue
            out.token_logprobs_BT[ids_A, start:end] = sc.token_logprobs_BT[:, :n]
            out.topk_ids_BTK[ids_A, start:end] = sc.topk_ids_BTK[:, :n]
            out.topk_logprobs_BTK[ids_A, start:end] = sc.topk_logprobs_BTK[:, :n]
            if kc:
                out.candidate_logprobs_BTK[ids_A, start:end] = sc.candidate_logprobs_BTK[:, :n]
        return out
