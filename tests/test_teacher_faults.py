"""Faults of the teacher server and of the in-process engines, on the fast zoo (issue 33).

A stand-in `vllm serve` on 127.0.0.1 (test_engines' stand-in, answering `/v1/completions` with
the fast zoo teacher's prompt log-probs as vLLM's server writes them) can be told to answer
503, drop a connection, cut an answer short, stall past the client's timeout, die, or answer
with the wrong shape or non-finite log-probs. Retried faults leave the run's metrics exactly as
without them; a dead server ends in a checkpoint of the last good step and exit status 3, and
the run resumed once the server is back ends bit-identical to an uninterrupted one; a bad
answer is refused (exit status 4); an in-process engine raising while sampling or scoring ends
the same way (exit status 5); under torchrun both ranks stop when one rank's scoring fails.
Timeouts here are 0.5 s and waits 0.05 s; the file takes about 20 s on 2 cores."""

from __future__ import annotations

import http.server
import json
import re
import threading
import time

import pytest
import torch
from safetensors.torch import load_file

import pruneopd.engines.choose as choose_mod
from pruneopd.cli import _default_config
from pruneopd.config import load_config
from pruneopd.engines.local import RemoteTeacher, VLLMRollouts
from pruneopd.models import load_model
from pruneopd.training.checkpoint import list_checkpoints
from pruneopd.training.train import TrainingStopped, train
from tests.test_config_cli import run_cli
from tests.test_engines import _Refusing

STEPS = 5
TIMEOUT = 0.5
ARGS = dict(
    student="student-cross",
    teacher="teacher",
    task="regs",
    difficulty=2,
    seed=0,
    max_steps=STEPS,
    prompts_per_step=2,
    responses_per_prompt=2,
    max_len=40,
    init_len=24,
    min_len=8,
    budget_step=8,
    budget_margin=8,
    patience=2,
    lr=1e-2,
    eval_problems=4,
    eval_every=2,
    log_samples=1,
    tensorboard=False,
    progress=False,
    save_every=0,
    keep_checkpoints=2,
    loss="sampled_rkl",
    teacher_engine="vllm",
    teacher_timeout=TIMEOUT,
    teacher_retries=3,
    teacher_backoff=0.05,
)


def cfg_for(out, url, **kw):
    """What `pruneopd train key=value ...` runs: the default preset + ARGS + these."""
    args = {**ARGS, "out": out, "teacher_url": url, **kw}
    return load_config(_default_config(), [f"{k}={v}" for k, v in args.items()])


# ---- the stand-in server ------------------------------------------------------------------


class _Teacher(_Refusing):
    """GET /v1/models as test_engines' stand-in; POST /v1/completions scores with the fast zoo
    teacher, unless `server.faults` says what to do with this POST (counted from 1; POST 1 is
    the check before training, POST 1 + s scores step s when nothing is retried)."""

    def do_GET(self):
        if self.server.dead:
            self.close_connection = True
            return
        super().do_GET()

    def do_POST(self):
        srv = self.server
        with srv.lock:
            srv.posts += 1
            fault = "die" if srv.dead else srv.faults.get(srv.posts)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if fault == "503":
            return self._send(503, {"error": {"message": "Service Unavailable"}})
        if fault == "400":
            return self._send(400, {"error": {"message": "maximum context length is 64 tokens"}})
        if fault == "drop":  # the connection closes without an answer
            self.close_connection = True
            return
        if fault == "stall":  # no answer until the client has given up
            time.sleep(3 * TIMEOUT)
            self.close_connection = True
            return
        if fault == "die":  # the server goes away (refuses connections from now on)
            self.close_connection = True
            with srv.lock:
                if not srv.dead:
                    srv.dead = True
                    srv.stopper = threading.Thread(target=srv.stop, daemon=True)
                    srv.stopper.start()
            return
        answer = {"choices": [self._choice(i, s, body) for i, s in enumerate(body["prompt"])]}
        if fault == "nan":
            next(iter(answer["choices"][1]["prompt_logprobs"][-1].values()))["logprob"] = float(
                "nan"
            )
        if fault == "-inf":
            next(iter(answer["choices"][0]["prompt_logprobs"][-2].values()))["logprob"] = -float(
                "inf"
            )
        if fault == "short":
            answer["choices"][0]["prompt_logprobs"].pop()
        if fault == "missing":
            del answer["choices"][1]
        data = json.dumps(answer).encode()
        if fault == "junk":
            data = b"<html>502 Bad Gateway</html>"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if fault == "cut":  # half the announced answer, then the connection closes
            self.wfile.write(data[: len(data) // 2])
            self.close_connection = True
            return
        self.wfile.write(data)

    def _choice(self, index: int, seq: list[int], body: dict) -> dict:
        """vLLM's `prompt_logprobs` of `seq`: None, then for every position j >= 1 the top-n
        ids (every id for n = -1) and the token at j, with log-probs and ranks."""
        n = body["prompt_logprobs"]
        with torch.no_grad():
            logits = self.server.teacher(torch.tensor([seq])).logits[0].float()
        logp = torch.log_softmax(logits, dim=-1)
        order = logp.argsort(dim=-1, descending=True, stable=True)
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(1, logp.shape[1] + 1).expand_as(order))
        rows = [None]
        for j in range(1, len(seq)):
            ids = order[j - 1].tolist() if n == -1 else order[j - 1, :n].tolist()
            ids = ids + ([seq[j]] if seq[j] not in ids else [])
            lp, rk = logp[j - 1].tolist(), rank[j - 1].tolist()
            rows.append(
                {str(i): {"logprob": lp[i], "rank": rk[i], "decoded_token": ""} for i in ids}
            )
        return {"index": index, "text": "", "prompt_logprobs": rows}


class StandIn(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, teacher, port: int = 0, faults: dict | None = None):
        super().__init__(("127.0.0.1", port), _Teacher)
        self.teacher, self.faults, self.posts = teacher, dict(faults or {}), 0
        self.dead, self.stopper = False, None
        self.lock = threading.Lock()
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def stop(self):
        self.shutdown()
        self.server_close()


@pytest.fixture(scope="module")
def teacher_model(fast_zoo):
    return load_model(str(fast_zoo / "teacher"), torch.float32).eval()


@pytest.fixture
def serve(teacher_model):
    """Start stand-ins (`serve(faults=..., port=...)`); all stopped after the test."""
    started = []

    def start(faults=None, port=0):
        s = StandIn(teacher_model, port, faults)
        started.append(s)
        return s

    yield start
    for s in started:
        if s.thread.is_alive():
            s.stop()


# ---- what a run leaves ----------------------------------------------------------------------


def metrics(out) -> list[dict]:
    """metrics.jsonl without timings (keys t_..., anything with 'seconds')."""
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [
        {k: v for k, v in json.loads(x).items() if not k.startswith("t_") and "seconds" not in k}
        for x in lines
    ]


def trained_steps(out) -> int:
    return sum(1 for r in metrics(out) if "loss" in r)


def weights(out):
    return load_file(out / "final" / "model.safetensors")


def assert_same_run(a, b):
    assert metrics(a) == metrics(b)
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert (a / "samples.jsonl").read_text() == (b / "samples.jsonl").read_text()


def assert_one_line_stop(code, err, status, *needles):
    assert code == status, err
    config, err = err.split("\n", 1)  # the start-up line saying which config applied
    assert config.startswith("pruneopd: config: the zoo's prune-same preset")
    # the sampler's groups (issue 30: said once per process when sampling starts)
    err = "".join(
        x
        for x in err.splitlines(keepends=True)
        if not re.match(r"pruneopd: sampling \d+ samples ", x)
    )
    start, err = err.split("\n", 1)  # the start-up line naming the engines, then the stop
    assert start.startswith("pruneopd: sampling: ") and "; scoring: vllm server at " in start
    assert err.endswith("\n") and err.count("\n") == 1, f"expected one line, got:\n{err}"
    assert err.startswith("pruneopd: ") and "Traceback" not in err
    for n in needles:
        assert n in err, err


@pytest.fixture(scope="module")
def reference(tmp_path_factory, fast_zoo, teacher_model):
    """The run through a stand-in without faults that every other run is compared with (as
    the `zoo` fixture sets runs up: fast zoo names, one thread)."""
    import pruneopd.training.train as train_mod

    out = tmp_path_factory.mktemp("ref") / "run"
    n = torch.get_num_threads()
    srv = StandIn(teacher_model)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRUNEOPD_ZOO", str(fast_zoo))
        mp.setattr(train_mod, "set_threads", lambda: None)
        torch.set_num_threads(1)
        try:
            train(cfg_for(out, srv.url))
        finally:
            srv.stop()
            torch.set_num_threads(n)
    assert trained_steps(out) == STEPS
    return out


# ---- (a) retried faults -----------------------------------------------------------------------


def test_retried_faults_leave_the_run_unchanged(zoo, reference, serve, tmp_path):
    # step 1: two 503s; step 2: a dropped connection; step 3: a stall past the timeout;
    # step 4: an answer cut short
    faults = {2: "503", 3: "503", 5: "drop", 7: "stall", 9: "cut"}
    srv = serve(faults)
    t0 = time.monotonic()
    train(cfg_for(tmp_path / "run", srv.url))
    assert srv.posts == 1 + STEPS + len(faults)  # every fault cost one retry, no more
    assert time.monotonic() - t0 < 60
    assert_same_run(reference, tmp_path / "run")  # metrics (but timings), weights, samples


# ---- (b) a dead server --------------------------------------------------------------------------


def test_dead_server_stops_cleanly_and_resume_is_exact(
    zoo, reference, serve, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # no load-average note beside the one line
    out = tmp_path / "run"
    srv = serve({4: "die"})  # the server dies while step 3 is scored
    args = [f"{k}={v}" for k, v in {**ARGS, "out": out, "teacher_url": srv.url}.items()]
    t0 = time.monotonic()
    code, _, err = run_cli(["train", *args], capsys)
    assert time.monotonic() - t0 < 30  # 4 tries, 3 waits: bounded
    assert_one_line_stop(
        code,
        err,
        3,
        f"teacher server {srv.url} did not answer the scoring request after 4 tries",
        "step 3 of 5 stopped: ",
        "step-00000002",
        "resume=auto",
    )
    assert [p.name for p in list_checkpoints(out)] == ["step-00000002"]
    assert trained_steps(out) == 2  # nothing of the failed step was logged
    assert not (out / "final").exists()
    # the server comes back on the same address; the run continues where it stopped
    srv.stopper.join(10)
    back = serve(port=int(srv.url.rsplit(":", 1)[1]))
    train(cfg_for(out, back.url, resume="auto"))
    assert_same_run(reference, out)


# ---- (c) bad answers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "status", "needle"),
    [
        ("nan", 4, "non-finite log-probs (NaN at sequence 1, response position"),
        ("-inf", 4, "non-finite log-probs (-inf at sequence 0, response position"),
        ("short", 4, "wrong shape ("),
        ("missing", 4, "wrong shape (3 answers to 4 sequences)"),
        ("junk", 4, "not JSON: '<html>502 Bad Gateway</html>'"),
        ("400", 3, "refused the scoring request (HTTP 400 "),  # a refusal is not retried either
    ],
)
def test_bad_answers_are_refused(zoo, serve, tmp_path, capsys, monkeypatch, fault, status, needle):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # no load-average note beside the one line
    out = tmp_path / "run"
    srv = serve({3: fault})  # step 2's answer
    args = [f"{k}={v}" for k, v in {**ARGS, "out": out, "teacher_url": srv.url}.items()]
    code, _, err = run_cli(["train", *args], capsys)
    assert_one_line_stop(
        code, err, status, f"teacher server {srv.url}", needle, "step 2 of 5 stopped: "
    )
    assert srv.posts == 3  # refused at once, not retried
    assert [p.name for p in list_checkpoints(out)] == ["step-00000001"]
    assert trained_steps(out) == 1  # nothing trained on the bad answer


# ---- in-process engines -------------------------------------------------------------------------


class _Raising:
    """A stand-in in-process engine: does what `inner` does, but raises on call `fail_at`."""

    def __init__(self, inner, method: str, fail_at: int):
        self.inner, self.method, self.fail_at, self.calls = inner, method, fail_at, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def _maybe_fail(self):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("CUDA error: an illegal memory access was encountered\n(details)")

    def score(self, *a, **kw):
        self._maybe_fail()
        return self.inner.score(*a, **kw)

    def sample(self, prompts, *, max_new_tokens, seeds, **kw):
        self._maybe_fail()
        local = self.inner
        gen = torch.Generator().manual_seed(seeds[0])
        return local.sample(prompts, max_new_tokens, local.draws(len(prompts), max_new_tokens, gen))

    def sleep(self):
        pass

    def wake(self):
        pass

    def push_weights(self, model):
        self.inner.push_weights(model)


@pytest.mark.parametrize("where", ["sample", "score"])
def test_an_engine_error_is_a_checkpoint_and_a_clean_stop(zoo, tmp_path, monkeypatch, where):
    """The vLLM adapters over an engine that raises at step 3: checkpoint of step 2, exit status
    5, one line; resumed, the run ends as one whose engine never failed."""
    real_build, fail_at = choose_mod.build, {"at": 3}

    def build(cfg, *a, **kw):
        sampler, teacher = real_build(cfg, *a, **kw)
        if where == "sample":
            engine = _Raising(sampler, "sample", fail_at["at"])
            return VLLMRollouts(engine, sampler.settings), teacher
        return sampler, RemoteTeacher(_Raising(teacher, "score", fail_at["at"]), candidates=True)

    monkeypatch.setattr(choose_mod, "build", build)
    kw = dict(teacher_engine="hf")  # the built-in engines, behind the vLLM adapters
    ref = tmp_path / "ref"
    fail_at["at"] = 0  # never
    train(cfg_for(ref, "", **kw))
    out = tmp_path / "run"
    fail_at["at"] = 3
    with pytest.raises(TrainingStopped) as e:
        train(cfg_for(out, "", **kw))
    msg = str(e.value)
    assert e.value.exit_code == 5 and "\n" not in msg
    what = "sampling (_Raising.sample)" if where == "sample" else "teacher scoring (_Raising.score)"
    assert msg.startswith(f"step 3 of 5 stopped: {what} failed: RuntimeError: ")
    assert "RuntimeError: CUDA error: an illegal memory access was encountered (details)" in msg
    assert "step 3 of 5 stopped: " in msg and "step-00000002" in msg and "resume=auto" in msg
    assert [p.name for p in list_checkpoints(out)] == ["step-00000002"]
    fail_at["at"] = 0
    train(cfg_for(out, "", resume="auto", **kw))
    assert_same_run(ref, out)


def test_every_rank_stops_when_one_engine_fails():
    """Under torchrun a rank whose engine failed must not leave the others waiting in a
    collective: they raise the same kind of failure, naming it (a stand-in for two ranks)."""
    from types import SimpleNamespace

    from pruneopd.engines.faults import EngineFailure, TeacherUnavailable
    from pruneopd.training.step import on_every_rank

    failed = TeacherUnavailable("teacher server http://h:1 did not answer")
    other = SimpleNamespace(
        world=2,
        any=lambda flag: True,
        gather_objects=lambda mine: [None, (type(failed), str(failed))],
    )
    with pytest.raises(
        TeacherUnavailable, match="another process stopped: teacher server http://h:1"
    ):
        on_every_rank(other, lambda: "scores")
    me = SimpleNamespace(world=2, any=lambda flag: flag, gather_objects=lambda mine: [mine, None])

    def fail():
        raise failed

    with pytest.raises(TeacherUnavailable) as e:
        on_every_rank(me, fail)
    assert e.value is failed and e.value.exit_code == 3
    fine = SimpleNamespace(world=2, any=lambda flag: flag, gather_objects=None)
    assert on_every_rank(fine, lambda: "scores") == "scores"
    assert issubclass(TeacherUnavailable, EngineFailure)


def test_two_processes_stop_together_when_one_gets_a_bad_answer(fast_zoo, serve, tmp_path):
    """torchrun, 2 processes scoring through one stand-in: step 2's first answer is NaN, so one
    rank's scoring fails while the other's succeeds; both stop at once (no rank left waiting in
    a collective), with the step-1 checkpoint."""
    import os
    import subprocess
    import sys

    srv = serve({5: "nan"})  # POSTs 1-2: each rank's check; 3-4: step 1; 5-6: step 2
    out = tmp_path / "run"
    args = [f"{k}={v}" for k, v in {**ARGS, "out": out, "teacher_url": srv.url}.items()]
    env = {**os.environ, "PRUNEOPD_ZOO": str(fast_zoo), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd += ["--master_port", str(29500 + (os.getpid() + 500) % 1000), "-m", "pruneopd"]
    r = subprocess.run([*cmd, "train", *args], env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode != 0
    lines = [x for x in r.stderr.splitlines() if x.startswith("pruneopd: step 2 of 5 stopped: ")]
    assert len(lines) == 2, r.stderr[-4000:]
    assert sum("another process stopped: teacher server" in x for x in lines) == 1, lines
    assert all("non-finite log-probs (NaN" in x and "step-00000001" in x for x in lines), lines
    assert [p.name for p in list_checkpoints(out)] == ["step-00000001"]
    assert trained_steps(out) == 1
