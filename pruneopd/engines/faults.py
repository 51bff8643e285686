"""An engine that fails mid-run: what the trainer turns into a checkpoint of the last good step
and a clean stop (one line on stderr, an exit status of the fault's own), not a traceback.

Exit statuses (`pruneopd train`; 1 is a non-finite loss, 2 bad input, 128 + N a signal):

- 3 `TeacherUnavailable`: the teacher server (`teacher_url`) did not answer after its retries
  (connection errors, 5xx answers, timeouts), or refused a request mid-run. Start it again and
  resume.
- 4 `BadTeacherAnswer`: the teacher server answered with the wrong shape or non-finite
  log-probs; refused, nothing trained on it. Check what the server serves before resuming.
- 5 `EngineCrashed`: an in-process engine (vLLM sampling or scoring) raised.
"""

from __future__ import annotations


class EngineFailure(RuntimeError):
    """An engine failed mid-run; `exit_code` is the status `pruneopd train` ends with."""

    exit_code = 5
    remedy = "continue with the same command and resume=auto"


class TeacherUnavailable(EngineFailure):
    exit_code = 3
    remedy = "once the server answers again, continue with the same command and resume=auto"


class BadTeacherAnswer(EngineFailure):
    exit_code = 4
    remedy = (
        "check that the server serves the teacher (vllm serve TEACHER --max-logprobs -1), "
        "then continue with the same command and resume=auto"
    )


class EngineCrashed(EngineFailure):
    exit_code = 5
    remedy = "continue with the same command and resume=auto (PRUNEOPD_DEBUG=1 shows the traceback)"


def crashed(what: str, e: BaseException) -> EngineCrashed:
    """The one-line `EngineCrashed` for engine error `e` raised while doing `what`."""
    text = " ".join(str(e).split())[:300] or "no message"
    return EngineCrashed(f"{what} failed: {type(e).__name__}: {text}")
