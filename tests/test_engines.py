"""The engine seams without vLLM: the prompt-log-prob conversion (golden values by hand), the
engine keys' validation, and the one-line errors before any training (engine not installed,
an unreachable teacher_url, a loss the engine cannot serve). tests/test_vllm.py runs the
engines themselves where vllm is installed."""

from __future__ import annotations

import http.server
import importlib.util
import json
import socket
import threading
from types import SimpleNamespace

import pytest
import torch

from pruneopd.config import ConfigError, load_config
from pruneopd.engines.prompt_logprobs import (
    entries_from_dicts,
    entries_from_flat,
    scores_from_entries,
    scores_of_batch,
    stack_scores,
)
from tests.test_config_cli import assert_one_line_error, run_cli

HAS_VLLM = importlib.util.find_spec("vllm") is not None


def flat(rows):
    """A stand-in for vLLM's FlatLogprobs: rows[j] = [(id, logprob, rank), ...] or None."""
    f = SimpleNamespace(start_indices=[], end_indices=[], token_ids=[], logprobs=[], ranks=[])
    for row in rows:
        f.start_indices.append(len(f.token_ids))
        for i, lp, r in row or []:
            f.token_ids.append(i)
            f.logprobs.append(lp)
            f.ranks.append(r)
        f.end_indices.append(len(f.token_ids))
    return f


# a 2-token prompt [7, 8] and response [3, 1] over a vocabulary of 4; index j predicts token j
ROWS = [
    None,
    [(8, -0.5, 1), (2, -1.5, 2)],  # predicts prompt token 8: not a response position
    [(1, -0.2, 1), (0, -2.0, 2), (3, -3.0, 3)],  # response position 0: token 3 is rank 3
    [(1, -0.1, 1), (2, -2.5, 2)],  # response position 1: token 1 is the top-1
]


def test_scores_from_flat_entries_by_hand():
    e = entries_from_flat(flat(ROWS), prompt_len=2, n=2)
    assert e.pos_E.tolist() == [0, 0, 0, 1, 1]
    tok_T, ids_TK, lps_TK, cand = scores_from_entries(
        e, torch.tensor([3, 1]), k=2, candidates_TK=None, vocab=4
    )
    assert tok_T.tolist() == pytest.approx([-3.0, -0.1])  # the sampled token's own entry
    assert ids_TK.tolist() == [[1, 0], [1, 2]]  # ranks 1..k, in rank order
    assert torch.allclose(lps_TK, torch.tensor([[-0.2, -2.0], [-0.1, -2.5]]))
    assert cand is None


def test_server_dicts_give_the_same_entries():
    dicts = [None] + [
        {str(i): {"logprob": lp, "rank": r, "decoded_token": "x"} for i, lp, r in row}
        for row in ROWS[1:]
    ]
    a = entries_from_flat(flat(ROWS), 2, 2)
    b = entries_from_dicts(dicts, 2, 2)
    for x, y in zip(
        (a.pos_E, a.id_E, a.lp_E, a.rank_E), (b.pos_E, b.id_E, b.lp_E, b.rank_E), strict=True
    ):
        assert torch.equal(x, y)


def test_candidates_need_the_whole_distribution():
    e = entries_from_flat(flat(ROWS), 2, 2)
    with pytest.raises(ValueError, match="position 0.*prompt_logprobs=-1"):
        scores_from_entries(
            e, torch.tensor([3, 1]), k=2, candidates_TK=torch.tensor([[1, 2], [1, 2]]), vocab=4
        )
    full = [
        None,
        None,
        [(0, -2.0, 2), (1, -0.2, 1), (2, -4.0, 4), (3, -3.0, 3)],
        [(0, -3.0, 3), (1, -0.1, 1), (2, -2.5, 2), (3, -5.0, 4)],
    ]
    e = entries_from_flat(flat(full), 2, 2)
    *_, cand = scores_from_entries(
        e, torch.tensor([3, 1]), k=2, candidates_TK=torch.tensor([[2, 3], [3, 0]]), vocab=4
    )
    assert torch.equal(cand, torch.tensor([[-4.0, -3.0], [-5.0, -3.0]]))


def test_missing_sampled_token_or_short_top_k_is_an_error():
    e = entries_from_flat(flat(ROWS), 2, 2)
    with pytest.raises(ValueError, match="sampled token at response position 1"):
        scores_from_entries(e, torch.tensor([3, 0]), k=2, candidates_TK=None, vocab=4)
    with pytest.raises(ValueError, match="fewer than top-3 .* position 1"):
        scores_from_entries(e, torch.tensor([3, 1]), k=3, candidates_TK=None, vocab=4)


def test_scores_of_batch_slices_each_sequence_candidates():
    # two sequences over the full distribution of ROWS' shape; the second has one response
    # token, so only row 0 of its candidates is read and its scores are padded with zeros
    full = [
        None,
        None,
        [(0, -2.0, 2), (1, -0.2, 1), (2, -4.0, 4), (3, -3.0, 3)],
        [(0, -3.0, 3), (1, -0.1, 1), (2, -2.5, 2), (3, -5.0, 4)],
    ]
    e1 = entries_from_flat(flat(full), 2, 2)
    e2 = entries_from_flat(flat(full[:3]), 2, 1)
    cand_BTK = torch.tensor([[[2, 3], [3, 0]], [[0, 1], [2, 2]]])
    s = scores_of_batch([e1, e2], [[3, 1], [0]], k=1, candidate_ids_BTK=cand_BTK, vocab=4)
    assert torch.allclose(s.token_logprobs_BT, torch.tensor([[-3.0, -0.1], [-2.0, 0.0]]))
    assert s.topk_ids_BTK[:, :, 0].tolist() == [[1, 1], [1, 0]]
    want = torch.tensor([[[-4.0, -3.0], [-5.0, -3.0]], [[-2.0, -0.2], [0.0, 0.0]]])
    assert torch.allclose(s.candidate_logprobs_BTK, want)
    plain = scores_of_batch([e1, e2], [[3, 1], [0]], k=1, candidate_ids_BTK=None, vocab=4)
    assert plain.candidate_logprobs_BTK is None


def test_stack_pads_with_zeros():
    a = (torch.tensor([-1.0, -2.0]), torch.tensor([[1], [2]]), torch.tensor([[-0.5], [-0.7]]), None)
    b = (torch.tensor([-3.0]), torch.tensor([[3]]), torch.tensor([[-0.9]]), None)
    s = stack_scores([a, b], k=1)
    assert s.token_logprobs_BT.tolist() == [[-1.0, -2.0], [-3.0, 0.0]]
    assert s.topk_ids_BTK[:, :, 0].tolist() == [[1, 2], [3, 0]]
    assert s.candidate_logprobs_BTK is None


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["rollout_engine=sglang"], "'rollout_engine' = 'sglang'"),
        (["teacher_engine=trt"], "'teacher_engine' = 'trt'"),
        (["teacher_url=http://127.0.0.1:9"], "needs teacher_engine=vllm"),
        (["teacher_engine=vllm", "teacher_url=127.0.0.1:9"], "must be http://HOST:PORT"),
        (["teacher_engine=vllm", "loss=jsd"], "full-vocabulary losses"),
        (["teacher_engine=vllm", "loss=full_rkl"], "full-vocabulary losses"),
        (["teacher_engine=vllm", "online_pruning=true"], "online pruning scores chunks"),
        (["vllm_gpu_memory=1.5"], "'vllm_gpu_memory'"),
    ],
)
def test_engine_keys_are_validated(overrides, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        load_config(None, overrides)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_teacher_url_is_a_one_line_error_before_training(tmp_path, capsys):
    url = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    code, _, err = run_cli(
        [
            "train",
            "student=student-same",
            "teacher=teacher",
            "max_steps=1",
            "teacher_engine=vllm",
            f"teacher_url={url}",
            f"out={tmp_path / 'r'}",
            "progress=false",
        ],
        capsys,
    )
    assert_one_line_error(code, err, "'teacher_url'", url, "no vLLM server answers")
    assert not (tmp_path / "r" / "metrics.jsonl").exists()  # nothing trained


@pytest.mark.skipif(HAS_VLLM, reason="vllm is installed here")
@pytest.mark.parametrize("key", ["rollout_engine", "teacher_engine"])
def test_engine_not_installed_is_a_one_line_error(tmp_path, capsys, key):
    code, _, err = run_cli(
        [
            "train",
            "student=student-same",
            "teacher=teacher",
            "max_steps=1",
            f"{key}=vllm",
            "loss=sampled_rkl",
            f"out={tmp_path / 'r'}",
            "progress=false",
        ],
        capsys,
    )
    assert_one_line_error(code, err, f"'{key}' = 'vllm'", "pip install -e '.[vllm]'")
    assert not (tmp_path / "r" / "metrics.jsonl").exists()


class _Refusing(http.server.BaseHTTPRequestHandler):
    """A stand-in for a vLLM server started without --max-logprobs -1."""

    def do_GET(self):
        self._send(200, {"data": [{"id": "teacher"}]})

    def do_POST(self):
        self._send(
            400,
            {
                "error": {
                    "message": "Requested prompt logprobs of -1, which is greater than max allowed: 20"
                }
            },
        )

    def _send(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_a_server_that_refuses_the_logprobs_is_a_one_line_error(tmp_path, capsys):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        code, _, err = run_cli(
            [
                "train",
                "student=student-same",
                "teacher=teacher",
                "max_steps=1",
                "teacher_engine=vllm",
                f"teacher_url={url}",
                "loss=topk_rkl",
                f"out={tmp_path / 'r'}",
                "progress=false",
            ],
            capsys,
        )
    finally:
        srv.shutdown()
    assert_one_line_error(code, err, "refuses prompt_logprobs=-1", "--max-logprobs -1", "HTTP 400")
    assert not (tmp_path / "r" / "metrics.jsonl").exists()
