"""Which engine samples and which scores (docs/scaling.md): the checks that run before any
training (installed, reachable, able to serve the loss) and the engines' construction.

`rollout_engine=lean` and `teacher_engine=hf` are the built-in engines (`local`); `vllm`
builds the in-process engines of `vllm_engine`, and `teacher_url` the client of
`teacher_server`, each behind the `Sampler` / `Teacher` interface.
"""

from __future__ import annotations

import torch

from pruneopd.config import ConfigError, TrainConfig
from pruneopd.engines.interfaces import Sampler, SamplingSettings, Teacher
from pruneopd.engines.local import LocalSampler, LocalTeacher, RemoteTeacher, VLLMRollouts


def needs_local_vllm(cfg: TrainConfig) -> bool:
    return cfg.rollout_engine == "vllm" or (cfg.teacher_engine == "vllm" and not cfg.teacher_url)


def check(cfg: TrainConfig, *, world: int, device: torch.device, vocab: int) -> None:
    """Raise ConfigError (one line, before any training) when the configured engines cannot run."""
    from pruneopd.engines.vllm_engine import FULL_VOCAB_MAX, v2_runner

    if needs_local_vllm(cfg):
        key = "rollout_engine" if cfg.rollout_engine == "vllm" else "teacher_engine"
        try:
            from pruneopd.engines.vllm_engine import _vllm

            _vllm()
        except Exception as e:  # not installed, or its compiled parts do not load
            raise ConfigError(
                f"config key '{key}' = 'vllm': vLLM is not installed or does not import "
                f"({' '.join(str(e).split())[:120]}); pip install -e '.[vllm]' (docs/scaling.md)"
            ) from None
        if world > 1 and device.type == "cpu":
            raise ConfigError(
                f"config key '{key}' = 'vllm': under torchrun the engines need "
                "one GPU per process; on CPU run one process"
            )
    if cfg.teacher_url:
        from pruneopd.engines.teacher_server import ServerError, check_logprobs, served_model

        try:
            served_model(cfg.teacher_url)
        except ServerError as e:
            raise ConfigError(
                f"config key 'teacher_url' = {cfg.teacher_url!r}: no vLLM server answers ({e}); "
                "start one with `vllm serve TEACHER --max-logprobs -1` (docs/scaling.md)"
            ) from None
        n = -1 if cfg.loss == "topk_rkl" and vocab <= FULL_VOCAB_MAX else cfg.topk
        try:
            check_logprobs(cfg.teacher_url, n)
        except ServerError as e:
            raise ConfigError(
                f"config key 'teacher_url' = {cfg.teacher_url!r}: the server refuses "
                f"prompt_logprobs={n} ({e}); start it with "
                + (
                    "--max-logprobs -1 (topk_rkl needs every id's log-prob)"
                    if n == -1
                    else f"--max-logprobs {cfg.topk} or more"
                )
            ) from None
    big = cfg.teacher_engine == "vllm" and cfg.loss == "topk_rkl" and vocab > FULL_VOCAB_MAX
    if big and (cfg.teacher_url or not (v2_runner() and device.type == "cuda")):
        how = (
            "a server returns only top-K lists"
            if cfg.teacher_url
            else "the in-process engine can also use vLLM's V2 runner on a GPU "
            "(VLLM_USE_V2_MODEL_RUNNER=1: prompt_logprob_token_ids)"
        )
        raise ConfigError(
            f"config key 'loss' = 'topk_rkl' with teacher_engine=vllm: the teacher's log-probs at "
            f"the student's candidates need prompt_logprobs=-1, allowed for vocabularies up to "
            f"{FULL_VOCAB_MAX} tokens (this pair has {vocab}); {how}; or use loss=sampled_rkl or "
            "teacher_engine=hf"
        )


def engine_settings(cfg: TrainConfig, *, device: torch.device, world: int, max_model_len: int):
    """What the vLLM engines are built with (`build_sampler`, `build_teacher`)."""
    return dict(
        dtype=cfg.dtype,
        seed=cfg.seed,
        max_model_len=max_model_len,
        device=device,
        kv_cache_mb=cfg.vllm_kv_cache_mb,
        gpu_memory=cfg.vllm_gpu_memory,
        world=world,
    )


def build(
    cfg: TrainConfig, student, teacher, tok, *, device: torch.device, world: int, max_model_len: int
) -> tuple[Sampler, Teacher]:
    """The run's `Sampler` and `Teacher`: the built-in ones (`rollout_engine=lean`: the fused,
    lean or HF decode engine `rollout.pick_engine` picks; `teacher_engine=hf`: the teacher's
    forward in this process), or vLLM in process, or the server at `teacher_url`."""
    kw = engine_settings(cfg, device=device, world=world, max_model_len=max_model_len)
    return build_sampler(cfg, student, tok, **kw), build_teacher(cfg, teacher, tok, **kw)


def build_sampler(cfg: TrainConfig, student, tok, **kw) -> Sampler:
    """The run's `Sampler` (`kw`: `engine_settings`)."""
    settings = SamplingSettings.from_config(cfg, tok)
    if cfg.rollout_engine == "vllm":
        from pruneopd.engines import vllm_engine

        return VLLMRollouts(vllm_engine.VLLMSampler(student, tok, **kw), settings)
    return LocalSampler(student, settings)


def build_teacher(cfg: TrainConfig, teacher, tok, **kw) -> Teacher:
    """The run's `Teacher` (`cfg.teacher` with `cfg.teacher_engine` / `cfg.teacher_url`; `kw`:
    `engine_settings`)."""
    # a remote teacher's candidate log-probs cost a full-vocabulary answer: only for topk_rkl
    candidates = cfg.loss == "topk_rkl"
    if cfg.teacher_url:
        from pruneopd.engines.teacher_server import ServerTeacher

        server = ServerTeacher(
            cfg.teacher_url,
            vocab=teacher.config.vocab_size,
            timeout=cfg.teacher_timeout,
            retries=cfg.teacher_retries,
            backoff=cfg.teacher_backoff,
        )
        return RemoteTeacher(server, candidates=candidates)
    if cfg.teacher_engine == "vllm":
        from pruneopd.engines import vllm_engine

        engine = vllm_engine.VLLMTeacher(cfg.teacher, tok, **kw)
        return RemoteTeacher(engine, candidates=candidates)
    return LocalTeacher(teacher, tok.pad_token_id)


_DECODERS = {
    "fused": "fused (compiled CPU kernel)",
    "lean": "lean (KV-cache decode in PyTorch)",
    "hf": "hf (transformers forward per token)",
}


def describe(cfg: TrainConfig, sampler: Sampler) -> str:
    """The start-up line naming the engines `build` made, e.g. "pruneopd: sampling: fused
    (compiled CPU kernel); scoring: hf forward (teacher in this process)"."""
    if isinstance(sampler, LocalSampler):
        from pruneopd.engines.rollout import pick_engine

        sampling = _DECODERS[pick_engine(sampler.model, sampler.engine)]
    else:
        sampling = "vllm (in-process engine)"
    if cfg.teacher_url:
        scoring = f"vllm server at {cfg.teacher_url}"
    elif cfg.teacher_engine == "vllm":
        scoring = "vllm (in-process engine)"
    else:
        scoring = "hf forward (teacher in this process)"
    return f"pruneopd: sampling: {sampling}; scoring: {scoring}"
