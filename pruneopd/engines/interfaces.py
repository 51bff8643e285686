"""The two things an OPD step asks of its engines, each a small typed interface: the student's
`Sampler` and the `Teacher` that scores. The step calls only these; the built-in engines
(`local.LocalSampler`, `local.LocalTeacher`) and the vLLM ones (`choose.build`) sit behind them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from pruneopd.engines.records import Chunk, Rollout
from pruneopd.engines.scoring import IncrementalScorer, TokenScores


@dataclass(frozen=True)
class SamplingSettings:
    """How the student samples (config keys: temperature, top_p, topk, chunk_size)."""

    eos_id: int | tuple[int, ...]  # EOS, and a chat template's end-of-turn token (stop_ids)
    pad_id: int
    temperature: float = 1.0
    top_p: float = 1.0
    topk: int = 16  # the student's top-K ids kept at every token (the monitor's and the loss's)
    chunk_size: int = 16  # tokens between `on_chunk` calls (online pruning)

    @classmethod
    def from_config(cls, cfg, tok) -> SamplingSettings:
        from pruneopd.tokenizer import stop_ids

        return cls(
            stop_ids(tok), tok.pad_token_id, cfg.temperature, cfg.top_p, cfg.topk, cfg.chunk_size
        )


class Sampler(Protocol):
    """The student's rollouts."""

    def draws(self, batch_size: int, cap: int, gen: torch.Generator) -> torch.Tensor:
        """The step's random draws for the global batch (one row per sample), from `gen`."""
        ...

    def sample(
        self,
        prompts: list[list[int]],
        cap: int,
        draws: torch.Tensor,
        *,
        on_chunk: Callable[[Chunk], torch.Tensor | None] | None = None,
    ) -> Rollout:
        """Responses to `prompts` (with `draws`: this process's rows), up to `cap` tokens; with
        `on_chunk`, called every `chunk_size` tokens, a sample stops where it returns True."""
        ...

    def before_update(self) -> None:
        """The update starts (a GPU engine frees its memory)."""
        ...

    def push_weights(self, model: torch.nn.Module) -> None:
        """The weights the next rollouts come from (the student after the update)."""
        ...


class Teacher(Protocol):
    """The teacher's scores of the student's responses."""

    model: torch.nn.Module | None  # its weights in this process, or None (a vLLM engine/server)

    def score(
        self,
        prompts: list[list[int]],
        responses: list[list[int]],
        *,
        k: int,
        candidate_ids_BTK: torch.Tensor | None = None,
    ) -> TokenScores:
        """Whole-response scores: the teacher's top-k at every response token, its log-prob of
        the sampled token and (where given) of the student's candidate ids."""
        ...

    def incremental(
        self, prompts: list[list[int]], *, k: int, max_new_tokens: int
    ) -> IncrementalScorer:
        """A scorer of chunks as they are sampled, on the teacher's KV cache (online pruning)."""
        ...
