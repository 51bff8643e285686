"""The teacher behind a `vllm serve` OpenAI-compatible server (`teacher_url`), e.g. on other
GPUs or another machine: one `/v1/completions` request per batch with the token ids of prompt +
response as the prompt, `max_tokens=1` and `prompt_logprobs=K` (or -1 when the student's
candidates need the teacher's log-probs: vocabularies up to `FULL_VOCAB_MAX`). Standard library
HTTP only; the same `TokenScores` as the in-process engines.

Faults (README "When things go wrong"): every request has a deadline (`teacher_timeout`
seconds for connecting, sending, waiting and reading together); a connection error, a 5xx /
408 / 429 answer or a missed deadline is retried up to `teacher_retries` times, waiting
`teacher_backoff` seconds, then twice that, four times ... (each wait at most `MAX_WAIT`), so
one call is bounded in count and time. After the last try `TeacherUnavailable`; an answer of the
wrong shape or with non-finite log-probs is refused at once (`BadTeacherAnswer`), never retried
nor trained on. The trainer turns both into a checkpoint and a clean stop (`engines.faults`).
"""

from __future__ import annotations

import http.client
import json
import math
import socket
import threading
import time
import urllib.parse

import torch

from pruneopd.engines.faults import BadTeacherAnswer, TeacherUnavailable
from pruneopd.engines.prompt_logprobs import entries_from_dicts, scores_of_batch
from pruneopd.engines.scoring import TokenScores
from pruneopd.engines.vllm_engine import FULL_VOCAB_MAX

MAX_WAIT = 60.0  # the longest wait between two tries, seconds
_RETRY_STATUS = frozenset({408, 429})  # besides every 5xx


class ServerError(TeacherUnavailable):
    """The teacher server could not be reached or refused a request (`reason`: what happened,
    without the address)."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason or message


class _Retryable(ServerError):
    """A fault another try may cure: no connection, a dropped one, a 5xx answer, a timeout."""

    def __init__(self, url: str, reason: str):
        super().__init__(f"{url}: {reason}", reason)


class _NotJSON(BadTeacherAnswer):
    def __init__(self, url: str, text: str):
        self.reason = f"something that is not JSON: {text!r}"
        super().__init__(f"{url} answered with {self.reason}")


def _one_line(text: str, n: int = 300) -> str:
    return " ".join(text.split())[:n]


def _request(url: str, body: dict | None = None, timeout: float = 600.0) -> object:
    """One GET (body None) or POST of JSON, answered within `timeout` seconds in all, connection
    included (a watchdog shuts the socket at the deadline, so a server that trickles bytes
    cannot hold it longer). Returns the decoded JSON answer; raises `_Retryable`, `ServerError`
    (any other HTTP error) or `BadTeacherAnswer` (an answer that is not JSON)."""
    parts = urllib.parse.urlsplit(url)
    conn_cls = (
        http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    )
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    data = None if body is None else json.dumps(body).encode()
    deadline = time.monotonic() + timeout
    expired = threading.Event()
    conn = conn_cls(parts.hostname or "", parts.port, timeout=timeout)
    watchdog = None
    try:
        conn.connect()
        sock = conn.sock

        def shut() -> None:
            expired.set()
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        watchdog = threading.Timer(max(deadline - time.monotonic(), 0.0), shut)
        watchdog.daemon = True
        watchdog.start()
        headers = {"Content-Type": "application/json"}
        conn.request("GET" if data is None else "POST", path, body=data, headers=headers)
        resp = conn.getresponse()
        chunks = []
        while chunk := resp.read1(1 << 16):
            chunks.append(chunk)
        if resp.length:  # the connection closed before the announced length
            raise http.client.IncompleteRead(b"".join(chunks), resp.length)
        raw = b"".join(chunks)
    except (OSError, http.client.HTTPException) as e:
        if expired.is_set() or isinstance(e, TimeoutError):
            raise _Retryable(url, f"no answer within {timeout:g} s") from None
        reason = getattr(e, "strerror", None) or _one_line(str(e)) or type(e).__name__
        raise _Retryable(url, f"{type(e).__name__}: {reason}") from None
    finally:
        if watchdog is not None:
            watchdog.cancel()
        conn.close()
    if expired.is_set():
        raise _Retryable(url, f"no answer within {timeout:g} s")
    if resp.status >= 400:
        detail = _one_line(raw.decode(errors="replace"))
        reason = f"HTTP {resp.status} {detail}"
        if resp.status >= 500 or resp.status in _RETRY_STATUS:
            raise _Retryable(url, reason)
        raise ServerError(f"{url}: {reason}", reason)
    try:
        return json.loads(raw)
    except ValueError:
        raise _NotJSON(url, _one_line(raw.decode(errors="replace"), 120)) from None


def _model_id(base: str, res: object) -> str:
    models = res.get("data") if isinstance(res, dict) else None
    if not models or not isinstance(models, list) or not isinstance(models[0], dict):
        raise ServerError(f"{base}/v1/models lists no model")
    return str(models[0].get("id"))


def served_model(base_url: str, timeout: float = 5.0) -> str:
    """The id of the model the server at `base_url` serves (its /v1/models); raises ServerError
    when nothing answers there (one try: the check before training)."""
    base = base_url.rstrip("/")
    try:
        return _model_id(base, _request(base + "/v1/models", timeout=timeout))
    except BadTeacherAnswer as e:
        raise ServerError(str(e)) from None


def check_logprobs(base_url: str, n: int, timeout: float = 30.0) -> None:
    """Ask the server for `prompt_logprobs=n` over a two-token sequence; raises ServerError when
    it refuses (a server started without `--max-logprobs -1` refuses n = -1)."""
    model = served_model(base_url)
    body = {"model": model, "prompt": [[1, 2]], "max_tokens": 1, "prompt_logprobs": n}
    try:
        _request(base_url.rstrip("/") + "/v1/completions", body, timeout=timeout)
    except BadTeacherAnswer as e:
        raise ServerError(str(e)) from None


class ServerTeacher:
    """The client: `score` as the in-process engines, each request under the deadline and
    retries above (`timeout` seconds, `retries`, `backoff` seconds: config keys
    teacher_timeout, teacher_retries, teacher_backoff)."""

    def __init__(
        self,
        base_url: str,
        vocab: int,
        *,
        timeout: float = 600.0,
        retries: int = 5,
        backoff: float = 2.0,
    ):
        self.base = base_url.rstrip("/")
        self.vocab = vocab
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.retried = 0  # tries that failed and were retried, over this client's life
        self.model = _model_id(self.base, self._call("/v1/models", None, "the model list request"))

    def _call(self, path: str, body: dict | None, what: str) -> object:
        """`_request` with the retries: at most retries + 1 tries, each within `timeout`."""
        t0, last = time.monotonic(), None
        for attempt in range(self.retries + 1):
            if attempt:
                self.retried += 1
                time.sleep(min(self.backoff * 2 ** (attempt - 1), MAX_WAIT))
            try:
                return _request(self.base + path, body, self.timeout)
            except _Retryable as e:
                last = e
            except ServerError as e:  # refused outright: another try gets the same answer
                raise ServerError(
                    f"teacher server {self.base} refused {what} ({e.reason})", e.reason
                ) from None
            except _NotJSON as e:
                raise BadTeacherAnswer(
                    f"teacher server {self.base} answered {what} with {e.reason}; refused, "
                    "nothing trained on it"
                ) from None
        tries = self.retries + 1
        raise TeacherUnavailable(
            f"teacher server {self.base} did not answer {what} after {tries} "
            f"{'try' if tries == 1 else 'tries'} in {time.monotonic() - t0:.1f} s "
            f"(last: {last.reason})"
        )

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
        res = self._call("/v1/completions", body, "the scoring request")
        try:
            entries = self._entries(res, prompts, responses)
            return scores_of_batch(
                entries, responses, k=k, candidate_ids_BTK=candidate_ids_BTK, vocab=self.vocab
            )
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
            text = _one_line(str(e), 160) or type(e).__name__
            raise BadTeacherAnswer(
                f"teacher server {self.base} answered the scoring request with the wrong shape "
                f"({text}); refused, nothing trained on it"
            ) from None

    def _entries(self, res, prompts, responses) -> list:
        """Every sequence's entries from the answer, after checking its shape (one choice per
        sequence, one row per token, ids in the vocabulary) and that every log-prob is finite."""
        choices = res["choices"]
        if not isinstance(choices, list) or len(choices) != len(prompts):
            n = len(choices) if isinstance(choices, list) else "no list of"
            raise ValueError(f"{n} answers to {len(prompts)} sequences")
        choices = sorted(choices, key=lambda c: c["index"])
        if [c["index"] for c in choices] != list(range(len(prompts))):
            raise ValueError("the answers' indices are not 0..B-1")
        entries = []
        for b, (p, r, c) in enumerate(zip(prompts, responses, choices, strict=True)):
            rows = c["prompt_logprobs"]
            if len(rows) != len(p) + len(r):
                raise ValueError(
                    f"{len(rows)} log-prob rows for sequence {b} of {len(p) + len(r)} tokens"
                )
            e = entries_from_dicts(rows, len(p), len(r))
            if bool(((e.id_E < 0) | (e.id_E >= self.vocab)).any()):
                raise ValueError(
                    f"token ids outside the vocabulary of {self.vocab} in sequence {b}"
                )
            bad = ~torch.isfinite(e.lp_E)
            if bool(bad.any()):
                i = int(bad.nonzero()[0, 0])
                raise BadTeacherAnswer(
                    f"teacher server {self.base} answered the scoring request with non-finite "
                    f"log-probs ({_fmt(float(e.lp_E[i]))} at sequence {b}, response position "
                    f"{int(e.pos_E[i])}); refused, nothing trained on it"
                )
            entries.append(e)
        return entries


def _fmt(x: float) -> str:
    return "NaN" if math.isnan(x) else str(x)
