"""The teacher behind a `vllm serve` OpenAI-compatible server (`teacher_url`), e.g. on other
GPUs or another machine: one `/v1/completions` request per batch with the token ids of prompt +
response as the prompt, `max_tokens=1` and `prompt_logprobs=K` (or -1 when the student's
candidates need the teacher's log-probs: vocabularies up to `FULL_VOCAB_MAX`). Standard library
HTTP only; the same `TokenScores` as the in-process engines."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from pruneopd.engines.prompt_logprobs import entries_from_dicts, scores_of_batch
from pruneopd.engines.scoring import TokenScores
from pruneopd.engines.vllm_engine import FULL_VOCAB_MAX


class ServerError(RuntimeError):
    """The teacher server could not be reached or refused a request."""


def _request(url: str, body: dict | None = None, timeout: float = 600.0) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as e:
        detail = e.read().decode(errors="replace")[:300]
        raise ServerError(f"{url}: HTTP {e.code} {' '.join(detail.split())}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise ServerError(f"{url}: {reason}") from None


def served_model(base_url: str, timeout: float = 5.0) -> str:
    """The id of the model the server at `base_url` serves (its /v1/models); raises ServerError
    when nothing answers there."""
    res = _request(base_url.rstrip("/") + "/v1/models", timeout=timeout)
    models = res.get("data") or []
    if not models:
        raise ServerError(f"{base_url}/v1/models lists no model")
    return models[0]["id"]


def check_logprobs(base_url: str, n: int, timeout: float = 30.0) -> None:
    """Ask the server for `prompt_logprobs=n` over a two-token sequence; raises ServerError when
    it refuses (a server started without `--max-logprobs -1` refuses n = -1)."""
    model = served_model(base_url)
    body = {"model": model, "prompt": [[1, 2]], "max_tokens": 1, "prompt_logprobs": n}
    _request(base_url.rstrip("/") + "/v1/completions", body, timeout=timeout)


class ServerTeacher:
    def __init__(self, base_url: str, vocab: int):
        self.base = base_url.rstrip("/")
        self.model = served_model(self.base)
        self.vocab = vocab

    def score(self, prompts, responses, *, k: int, candidate_ids_BTK=None) -> TokenScores:
        if candidate_ids_BTK is not None and self.vocab > FULL_VOCAB_MAX:
            raise ServerError(
                f"the teacher's log-probs at the student's candidates need prompt_logprobs=-1, "
                f"limited to vocabularies of {FULL_VOCAB_MAX} tokens (this one has {self.vocab})"
            )
        seqs = [p + r for p, r in zip(prompts, responses, strict=True)]
        body = {
            "model": self.model,
            "prompt": seqs,
            "max_tokens": 1,
            "temperature": 1.0,
            "prompt_logprobs": -1 if candidate_ids_BTK is not None else k,
        }
        res = _request(self.base + "/v1/completions", body)
        choices = sorted(res["choices"], key=lambda c: c["index"])
        if len(choices) != len(seqs):
            raise ServerError(f"{self.base}: {len(choices)} answers to {len(seqs)} sequences")
        entries = [
            entries_from_dicts(c["prompt_logprobs"], len(p), len(r))
            for p, r, c in zip(prompts, responses, choices, strict=True)
        ]
        return scores_of_batch(
            entries, responses, k=k, candidate_ids_BTK=candidate_ids_BTK, vocab=self.vocab
        )
