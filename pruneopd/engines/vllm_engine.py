"""vLLM engines (docs/scaling.md): the student's rollouts and the teacher's scores from an
in-process `vllm.LLM`, returned as the same `Rollout` and `TokenScores` as the lean sampler and
the Hugging Face teacher, so the trainer does not care which engine ran.

The engine lives in the training process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, one uni-process
worker): new weights go in by reference after every optimizer step (`reload_weights`), with no
serialisation. On CPU the KV cache is a fixed budget (`vllm_kv_cache_mb`); on a GPU the engine
takes `vllm_gpu_memory` of the device and sleeps (weights offloaded, cache dropped) while the
update runs. Log-probs are vLLM's raw log-probs, i.e. of the temperature-1 distribution, like
the lean sampler's.

Shapes: B = samples, A = samples in a chunk, C = chunk length, K = top-K.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from pruneopd.engines.prompt_logprobs import (
    Entries,
    entries_from_flat,
    scores_from_entries,
    scores_of_batch,
    stack_scores,
)
from pruneopd.engines.rollout import Chunk, Rollout, stop_id_list
from pruneopd.engines.scoring import TokenScores

# prompt_logprobs=-1 (every id at every position) only for vocabularies this small
FULL_VOCAB_MAX = 4096


def _vllm():
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    import vllm

    return vllm


def engine_folder(model, tok, workdir: Path, name: str) -> Path:
    """A folder vLLM can load: the model's weights with the tokenizer files beside them."""
    out = Path(workdir) / name
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def model_folder(name_or_path: str, tok, workdir: Path) -> Path:
    """A folder vLLM can load for a zoo name or local model folder, without copying weights:
    the folder itself when the tokenizer is beside the weights, else a folder of links to its
    files plus the tokenizer."""
    from pruneopd.models import resolve

    src = resolve(name_or_path).resolve()
    if (src / "tokenizer_config.json").exists() or (src / "tokenizer.json").exists():
        return src
    out = Path(workdir) / src.name
    out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        (out / f.name).symlink_to(f)
    tok.save_pretrained(out)
    return out


def build_llm(
    folder: Path,
    *,
    dtype: str,
    seed: int,
    max_model_len: int,
    device: torch.device,
    kv_cache_mb: int,
    gpu_memory: float,
    world: int = 1,
):
    """An in-process `vllm.LLM` on `folder` (CPU: eager, a fixed KV-cache budget; GPU: a memory
    fraction and sleep mode; under torchrun vLLM's external launcher, one engine per rank)."""
    vllm = _vllm()
    kw = dict(
        model=str(folder),
        dtype=dtype,
        seed=seed,
        max_model_len=max_model_len,
        max_logprobs=-1,
        enable_prefix_caching=True,
    )
    if device.type == "cpu":
        kw.update(
            enforce_eager=True,
            kv_cache_memory_bytes=kv_cache_mb * 2**20,
            distributed_executor_backend="uni",
        )
    else:
        kw.update(
            gpu_memory_utilization=gpu_memory,
            enable_sleep_mode=True,
            distributed_executor_backend="external_launcher" if world > 1 else "uni",
        )
    return vllm.LLM(**kw)


def _entries_of_sample(flat, n: int) -> Entries:
    return entries_from_flat(flat, 0, n)  # sample log-probs: index j is generated token j


class VLLMSampler:
    """The student's rollouts from vLLM: `sample` has the lean sampler's contract (EOS kept,
    stop reasons, temperature-1 log-probs and top-K ids, `on_chunk` stops) with per-sample
    seeds instead of uniforms; `push_weights` after every optimizer step."""

    def __init__(
        self,
        student,
        tok,
        *,
        dtype: str,
        seed: int,
        max_model_len: int,
        device: torch.device,
        kv_cache_mb: int,
        gpu_memory: float,
        world: int = 1,
    ):
        self.workdir = Path(tempfile.mkdtemp(prefix="pruneopd-vllm-"))
        folder = engine_folder(student, tok, self.workdir, "student")
        self.llm = build_llm(
            folder,
            dtype=dtype,
            seed=seed,
            max_model_len=max_model_len,
            device=device,
            kv_cache_mb=kv_cache_mb,
            gpu_memory=gpu_memory,
            world=world,
        )
        self.vocab = student.config.vocab_size
        self.on_gpu = device.type == "cuda"
        shutil.rmtree(self.workdir, ignore_errors=True)  # the engine holds the weights now

    def push_weights(self, model) -> None:
        """Load `model`'s current (full) weights into the engine and drop cached prefixes."""
        state = {k: v.detach() for k, v in model.state_dict().items()}
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(state.items())})
        self.llm.reset_prefix_cache()

    def sleep(self) -> None:
        """Free the device for the update (GPU only: weights offloaded, KV cache dropped)."""
        if self.on_gpu:
            self.llm.sleep(level=1)

    def wake(self) -> None:
        if self.on_gpu:
            self.llm.wake_up()

    def _params(self, n: int, seed: int, *, temperature, top_p, topk, eos_id):
        vllm = _vllm()
        return vllm.SamplingParams(
            n=1,
            temperature=temperature,
            top_p=top_p,
            max_tokens=n,
            seed=seed,
            logprobs=max(topk, 0),
            stop_token_ids=stop_id_list(eos_id),
            ignore_eos=False,
            detokenize=False,
            flat_logprobs=True,
            skip_special_tokens=False,
        )

    def sample(
        self,
        prompts: list[list[int]],
        *,
        max_new_tokens: int,
        eos_id: int,
        pad_id: int,
        seeds: list[int],
        temperature: float = 1.0,
        top_p: float = 1.0,
        topk: int = 0,
        chunk_size: int = 0,
        on_chunk=None,
    ) -> Rollout:
        """One response per prompt. Without `on_chunk`, one `generate` over the batch; with it,
        `chunk_size` tokens at a time, each live sample continued from prompt + its tokens so far
        (prefix caching keeps that cheap) and stopped at once when `on_chunk` marks it."""
        if on_chunk is not None and chunk_size < 1:
            raise ValueError("on_chunk needs chunk_size > 0")
        if len(seeds) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        B, N = len(prompts), max_new_tokens
        k = max(topk, 1)
        tokens = [[] for _ in range(B)]
        logprobs = [[] for _ in range(B)]
        topks = [[] for _ in range(B)]
        stopped: list[str | None] = [None] * B if N > 0 else ["cap"] * B
        live = list(range(B)) if N > 0 else []
        piece = 0
        while live:
            start = len(tokens[live[0]])  # live samples advance together, a chunk at a time
            n = N - start if on_chunk is None else min(chunk_size, N - start)
            reqs = [{"prompt_token_ids": prompts[i] + tokens[i]} for i in live]
            params = [
                self._params(
                    n,
                    (seeds[i] + 1_000_003 * piece) % 2**31,
                    temperature=temperature,
                    top_p=top_p,
                    topk=k,
                    eos_id=eos_id,
                )
                for i in live
            ]
            outs = self.llm.generate(reqs, params, use_tqdm=False)
            for i, o in zip(live, outs, strict=True):
                c = o.outputs[0]
                ids = list(c.token_ids)
                lp_T, top_TK, _, _ = scores_from_entries(
                    _entries_of_sample(c.logprobs, len(ids)),
                    torch.tensor(ids, dtype=torch.long),
                    k=k,
                    candidates_TK=None,
                    vocab=self.vocab,
                )
                tokens[i] += ids
                logprobs[i].append(lp_T)
                topks[i].append(top_TK)
                if ids and ids[-1] in stop_id_list(eos_id):
                    stopped[i] = "eos"
                elif len(tokens[i]) >= N:
                    stopped[i] = "cap"
            if on_chunk is not None:
                stop_A = on_chunk(self._chunk(live, start, tokens, logprobs, topks, pad_id, topk))
                if stop_A is not None:
                    for i, s in zip(live, stop_A.tolist(), strict=True):
                        if s and stopped[i] is None:
                            stopped[i] = "pruned"
            live = [i for i in live if stopped[i] is None]
            piece += 1
        return Rollout(
            prompts=[list(p) for p in prompts],
            responses=tokens,
            stopped_by=stopped,
            student_logprobs=[torch.cat(x) if x else torch.zeros(0) for x in logprobs],
            student_topk_ids=None
            if topk == 0
            else [
                torch.cat(x)[:, :topk] if x else torch.zeros(0, topk, dtype=torch.long)
                for x in topks
            ],
        )

    @staticmethod
    def _chunk(live, start, tokens, logprobs, topks, pad_id, topk) -> Chunk:
        """The chunk just sampled for the samples `live` (the lean sampler's `Chunk`)."""
        lens = [len(tokens[i]) - start for i in live]
        C = max(lens)
        A = len(live)
        tokens_AC = torch.full((A, C), pad_id, dtype=torch.long)
        lp_AC = torch.zeros(A, C)
        top_ACK = torch.zeros(A, C, max(topk, 1), dtype=torch.long)
        for a, i in enumerate(live):
            n = lens[a]
            tokens_AC[a, :n] = torch.tensor(tokens[i][start:], dtype=torch.long)
            lp_AC[a, :n] = logprobs[i][-1]
            top_ACK[a, :n] = topks[i][-1]
        mask_AC = torch.arange(C) < torch.tensor(lens)[:, None]
        return Chunk(
            torch.tensor(live),
            start,
            tokens_AC,
            mask_AC,
            lp_AC,
            top_ACK[..., :topk] if topk else None,
        )


class VLLMTeacher:
    """The teacher's scores from an in-process vLLM engine: `prompt_logprobs=K` over prompt +
    response for the top-K and the sampled token; `prompt_logprobs=-1` (the whole distribution,
    vocabularies up to FULL_VOCAB_MAX) when the student's candidates need the teacher's
    log-probs too."""

    def __init__(
        self,
        name_or_path: str,
        tok,
        *,
        dtype: str,
        seed: int,
        max_model_len: int,
        device: torch.device,
        kv_cache_mb: int,
        gpu_memory: float,
        world: int = 1,
    ):
        workdir = Path(tempfile.mkdtemp(prefix="pruneopd-vllm-"))
        folder = model_folder(name_or_path, tok, workdir)
        self.llm = build_llm(
            folder,
            dtype=dtype,
            seed=seed,
            max_model_len=max_model_len,
            device=device,
            kv_cache_mb=kv_cache_mb,
            gpu_memory=gpu_memory,
            world=world,
        )
        shutil.rmtree(workdir, ignore_errors=True)
        self.vocab = self.llm.llm_engine.model_config.get_vocab_size()

    def score(self, prompts, responses, *, k: int, candidate_ids_BTK=None) -> TokenScores:
        if candidate_ids_BTK is not None and self.vocab > FULL_VOCAB_MAX:
            if not v2_runner():
                raise ValueError(
                    f"the teacher's log-probs at the student's candidates need prompt_logprobs=-1, "
                    f"limited to vocabularies of {FULL_VOCAB_MAX} tokens (this one has "
                    f"{self.vocab}), or vLLM's V2 runner (VLLM_USE_V2_MODEL_RUNNER=1, a GPU)"
                )
            return self._score_chosen_ids(prompts, responses, k, candidate_ids_BTK)
        vllm = _vllm()
        params = vllm.SamplingParams(
            max_tokens=1,
            temperature=1.0,
            detokenize=False,
            flat_logprobs=True,
            prompt_logprobs=-1 if candidate_ids_BTK is not None else k,
        )
        reqs = [{"prompt_token_ids": p + r} for p, r in zip(prompts, responses, strict=True)]
        outs = self.llm.generate(reqs, params, use_tqdm=False)
        entries = [
            entries_from_flat(o.prompt_logprobs, len(p), len(r))
            for p, r, o in zip(prompts, responses, outs, strict=True)
        ]
        return scores_of_batch(
            entries, responses, k=k, candidate_ids_BTK=candidate_ids_BTK, vocab=self.vocab
        )

    def _score_chosen_ids(self, prompts, responses, k, candidate_ids_BTK) -> TokenScores:
        """Large vocabularies on vLLM's V2 runner (GPU): `prompt_logprob_token_ids` scores the
        student's candidates at each response position, `prompt_logprobs=K` gives the top-K.
        Not run on these CPU machines (the V2 runner needs Triton on a GPU): docs/scaling.md."""
        vllm = _vllm()
        reqs, params = [], []
        for b, (p, r) in enumerate(zip(prompts, responses, strict=True)):
            reqs.append({"prompt_token_ids": p + r})
            rows = candidate_ids_BTK[b, : len(r)].cpu().tolist()  # row i predicts response token i
            params.append(
                vllm.SamplingParams(
                    max_tokens=1,
                    temperature=1.0,
                    detokenize=False,
                    flat_logprobs=True,
                    prompt_logprobs=k,
                    prompt_logprob_token_ids=rows,
                    prompt_logprob_start=len(p) - 1,
                )
            )
        outs = self.llm.generate(reqs, params, use_tqdm=False)
        parts = []
        for p, r, o in zip(prompts, responses, outs, strict=True):
            e = entries_from_flat(o.prompt_logprobs, len(p), len(r))
            tok_T, ids_TK, lps_TK, _ = scores_from_entries(
                e, torch.tensor(r, dtype=torch.long), k=k, candidates_TK=None, vocab=self.vocab
            )
            cand_TK = torch.as_tensor(o.prompt_token_id_logprobs, dtype=torch.float32)[: len(r)]
            parts.append((tok_T, ids_TK, lps_TK, cand_TK))
        return stack_scores(parts, k)


def v2_runner() -> bool:
    """Whether vLLM runs its V2 model runner, the one that serves `prompt_logprob_token_ids`."""
    return os.environ.get("VLLM_USE_V2_MODEL_RUNNER") == "1"
