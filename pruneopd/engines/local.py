"""The built-in engines in the trainer's process: the student's KV-cache sampler (fused C++
kernel, lean PyTorch decoder or the Hugging Face forward: `rollout.pick_engine`) and the
teacher's forward (`scoring`)."""

from __future__ import annotations

import torch

from pruneopd.engines.faults import EngineFailure, crashed
from pruneopd.engines.interfaces import SamplingSettings
from pruneopd.engines.rollout import Rollout, sample, sample_uniforms
from pruneopd.engines.scoring import IncrementalScorer, TokenScores, score_responses


class LocalSampler:
    """`rollout.sample` on the student model it was last given (`push_weights`): the sampler
    reads the weights through the model it is handed, so a model whose projections are not
    plain `nn.Linear` (an adapter-wrapped student) is sampled through its own forward."""

    def __init__(self, model: torch.nn.Module, settings: SamplingSettings, engine: str = "auto"):
        self.model, self.settings, self.engine = model, settings, engine

    def draws(self, batch_size: int, cap: int, gen: torch.Generator) -> torch.Tensor:
        return sample_uniforms(batch_size, cap, gen)  # the inverse-CDF uniforms [B, cap]

    def sample(self, prompts, cap: int, draws: torch.Tensor, *, on_chunk=None) -> Rollout:
        s = self.settings
        return sample(
            self.model,
            prompts,
            max_new_tokens=cap,
            eos_id=s.eos_id,
            pad_id=s.pad_id,
            temperature=s.temperature,
            top_p=s.top_p,
            uniforms_BN=draws,
            topk=s.topk,
            chunk_size=s.chunk_size if on_chunk else 0,
            on_chunk=on_chunk,
            engine=self.engine,
        )

    def before_update(self) -> None:
        pass

    def push_weights(self, model: torch.nn.Module) -> None:
        self.model = model


class LocalTeacher:
    """The teacher's forward in this process (`scoring.score_responses`, chunked scoring on its
    KV cache for online pruning)."""

    def __init__(self, model: torch.nn.Module, pad_id: int):
        self.model, self.pad_id = model, pad_id

    def score(self, prompts, responses, *, k: int, candidate_ids_BTK=None) -> TokenScores:
        return score_responses(
            self.model, prompts, responses, k=k, candidate_ids=candidate_ids_BTK, pad_id=self.pad_id
        )

    def incremental(self, prompts, *, k: int, max_new_tokens: int) -> IncrementalScorer:
        return IncrementalScorer(
            self.model, prompts, k=k, pad_id=self.pad_id, max_new_tokens=max_new_tokens
        )


class VLLMRollouts:
    """The `Sampler` over an in-process vLLM engine (`vllm_engine.VLLMSampler`): its draws are
    one seed per sample; the student's new weights are pushed after every update."""

    def __init__(self, engine, settings: SamplingSettings):
        self.engine, self.settings = engine, settings

    def draws(self, batch_size: int, cap: int, gen: torch.Generator) -> torch.Tensor:
        return torch.randint(0, 2**31 - 1, (batch_size,), generator=gen)

    def sample(self, prompts, cap: int, draws: torch.Tensor, *, on_chunk=None) -> Rollout:
        s = self.settings
        try:
            return self.engine.sample(
                prompts,
                max_new_tokens=cap,
                eos_id=s.eos_id,
                pad_id=s.pad_id,
                seeds=draws.tolist(),
                temperature=s.temperature,
                top_p=s.top_p,
                topk=s.topk,
                chunk_size=s.chunk_size if on_chunk else 0,
                on_chunk=on_chunk,
            )
        except EngineFailure:
            raise
        except Exception as e:  # the engine's error: a checkpoint and a clean stop (faults.py)
            raise crashed(f"sampling ({type(self.engine).__name__}.sample)", e) from e

    def before_update(self) -> None:
        self.engine.sleep()

    def push_weights(self, model: torch.nn.Module) -> None:
        self.engine.wake()
        self.engine.push_weights(model)


class RemoteTeacher:
    """The `Teacher` over a vLLM engine in process or a `vllm serve` server: top-K lists only,
    the candidates' log-probs when the loss needs them (`candidates`), no chunked scoring."""

    model = None

    def __init__(self, engine, *, candidates: bool):
        self.engine, self.candidates = engine, candidates

    def score(self, prompts, responses, *, k: int, candidate_ids_BTK=None) -> TokenScores:
        cand = candidate_ids_BTK if self.candidates else None
        try:
            return self.engine.score(prompts, responses, k=k, candidate_ids_BTK=cand)
        except EngineFailure:  # the server client's own faults, with their own messages
            raise
        except Exception as e:  # the engine's error: a checkpoint and a clean stop (faults.py)
            raise crashed(f"teacher scoring ({type(self.engine).__name__}.score)", e) from e

    def incremental(self, prompts, *, k: int, max_new_tokens: int) -> IncrementalScorer:
        raise NotImplementedError("online pruning scores chunks with a teacher in this process")
