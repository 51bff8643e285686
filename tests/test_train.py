"""The training loop on the fast zoo: method equivalences, online pruning, real updates.

Every `train()` call is tiny (1-3 steps, 2-4 prompts x 2 responses, caps of 16-48 tokens).
Tiny ops run single-threaded: on a shared 2-core machine OpenMP threads only contend.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from safetensors.torch import load_file
from tiny import tiny_run_config
from transformers import AutoModelForCausalLM

from pruneopd.config import ConfigError, TrainConfig
from pruneopd.engines.online import OnlinePruner
from pruneopd.engines.rollout import repeat_prompts, sample
from pruneopd.engines.scoring import IncrementalScorer, score_responses
from pruneopd.method import build_method
from pruneopd.method.drift import monitor, reliability_weights
from pruneopd.method.losses import full_rkl, masked_token_mean
from pruneopd.method.weighing import DriftSettings, TokenWeights
from pruneopd.models import load_model, load_tokenizer
from pruneopd.tasks import get_task
from pruneopd.tokenizer import encode_prompt
from pruneopd.training.objective import token_losses
from pruneopd.training.train import train

METRIC_KEYS = (
    "loss overlap drift_rate weight_mean eff_len_mean eff_len_median hit_ratio cap next_cap "
    "tokens_generated tokens_scored tokens_trained t_sample t_teacher t_update rkl reward "
    "mean_len eos_rate logprob_mismatch"
).split()


tiny = tiny_run_config


def step_rows(out) -> list[dict]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r]


def prompts_for(tok, n, responses=2, seed=0):
    problems = get_task("regs").problems("train", n, seed=seed, difficulty=2)
    return repeat_prompts([encode_prompt(tok, p.prompt) for p in problems], responses)


@pytest.fixture
def models(zoo):
    tok = load_tokenizer("teacher")
    teacher = load_model("teacher").eval().requires_grad_(False)
    return load_model("student-cross"), teacher, tok


# ---- prune with w_drop=0, w_base=0 is full OPD ---------------------------------------------


def fabricated_batch(seed=0, B=4, T=7, K=4, V=20):
    g = torch.Generator().manual_seed(seed)
    student_ids_BTK = torch.stack([torch.randperm(V, generator=g)[:K] for _ in range(B * T)]).view(
        B, T, K
    )
    teacher_ids_BTK = torch.stack([torch.randperm(V, generator=g)[:K] for _ in range(B * T)]).view(
        B, T, K
    )
    teacher_lp_BTK = torch.randn(B, T, K, generator=g).log_softmax(-1)
    tokens_BT = torch.randint(V, (B, T), generator=g)
    mask_BT = torch.arange(T) < torch.tensor([7, 3, 5, 1])[:, None]
    loss_BT = torch.randn(B, T, generator=g)
    return student_ids_BTK, teacher_ids_BTK, teacher_lp_BTK, tokens_BT, mask_BT, loss_BT


def multipliers_and_loss(cfg, batch):
    s_ids, t_ids, t_lp, tokens, mask, loss_BT = batch
    overlap, events = monitor(cfg.drift_metric, s_ids, t_ids, t_lp, tokens, mask, cfg.tau)
    weights, mults, eff = reliability_weights(events, mask, cfg.w_drop, cfg.w_base)
    tw = TokenWeights(overlap, events, weights, mults, eff)
    mw = build_method(cfg).weigh(tw, mask, [0.0] * mask.shape[0], torch.zeros(mask.shape))
    mult, train_mask = mw.mult_BT, mw.train_mask_BT
    return mult, train_mask, masked_token_mean(loss_BT, mult, train_mask)


@pytest.mark.parametrize("reliable_prefix_only", [False, True])
def test_prune_wdrop0_wbase0_has_full_multipliers_and_loss(reliable_prefix_only):
    batch = fabricated_batch()
    full = TrainConfig(method="full")
    prune = TrainConfig(
        method="prune", tau=0.5, w_base=0.0, w_drop=0.0, reliable_prefix_only=reliable_prefix_only
    )
    m_full, tm_full, loss_full = multipliers_and_loss(full, batch)
    m_prune, tm_prune, loss_prune = multipliers_and_loss(prune, batch)
    assert torch.equal(m_full, m_prune) and torch.equal(tm_full, tm_prune)
    assert torch.equal(loss_full, loss_prune)
    # sanity: the fabricated batch does drift, so with w_drop > 0 the multipliers do differ
    m_drift, _, loss_drift = multipliers_and_loss(
        TrainConfig(method="prune", tau=0.5, w_base=0.0, w_drop=0.5), batch
    )
    assert not torch.equal(m_drift, m_full) and loss_drift != loss_full


def test_prune_wdrop0_wbase0_trains_exactly_like_full(zoo, tmp_path):
    # init_len = max_len: step 0 uses the same cap; with patience 3 the budget cannot shrink
    # before step 3, and it cannot grow past max_len, so step 1 uses the same cap too.
    kw = dict(max_steps=2, max_len=32, init_len=32, min_len=16, patience=3, lr=1e-2)
    s_full = train(tiny(tmp_path, "full", method="full", **kw))
    s_prune = train(tiny(tmp_path, "prune", method="prune", w_drop=0.0, w_base=0.0, **kw))
    full, prune = step_rows(tmp_path / "full"), step_rows(tmp_path / "prune")
    assert len(full) == len(prune) == 2
    for a, b in zip(full, prune, strict=True):
        # (weight_mean differs: full still logs the weights of its default w_drop)
        for key in (
            "loss",
            "cap",
            "rkl",
            "overlap",
            "drift_rate",
            "multiplier_mean",
            "tokens_trained",
            "mean_len",
            "grad_norm",
        ):
            assert a[key] == b[key], key
        assert b["weight_mean"] == 1.0 and b["multiplier_mean"] == 1.0
    wf = load_file(tmp_path / "full" / "final" / "model.safetensors")
    wp = load_file(tmp_path / "prune" / "final" / "model.safetensors")
    assert wf.keys() == wp.keys()
    assert all(torch.equal(wf[k], wp[k]) for k in wf)
    assert s_full["accuracy_after"] == s_prune["accuracy_after"]


# ---- online pruning -------------------------------------------------------------------


def test_online_pruning_stops_exactly_the_samples_whose_weight_reaches_zero(models):
    student, teacher, tok = models
    prompts = prompts_for(tok, 6)
    C, N, TAU, W_DROP, K = 4, 24, 0.1, 0.1, 16  # about 44% of tokens are drift events here
    scorer = IncrementalScorer(teacher, prompts, k=K, pad_id=tok.pad_token_id)
    pruner = OnlinePruner(scorer, DriftSettings("topk_overlap", K, TAU, W_DROP, 0.0), floor=0.0)
    r = sample(
        student,
        prompts,
        max_new_tokens=N,
        eos_id=tok.eos_token_id,
        pad_id=tok.pad_token_id,
        generator=torch.Generator().manual_seed(0),
        topk=K,
        chunk_size=C,
        on_chunk=pruner,
    )
    mask_BT = r.response_mask_BT
    B, T = mask_BT.shape
    tokens_BT = r.response_tokens_BT(tok.pad_token_id)
    cand_BTK = r.student_topk_ids_BTK()
    scores = pruner.assemble(B, T)

    # assembled chunk scores == one full teacher pass over the same responses
    full = score_responses(
        teacher, prompts, r.responses, k=K, candidate_ids=cand_BTK, pad_id=tok.pad_token_id
    )
    for name in ("token_logprobs_BT", "topk_logprobs_BTK", "candidate_logprobs_BTK"):
        torch.testing.assert_close(
            getattr(scores, name), getattr(full, name), atol=1e-4, rtol=1e-4, msg=name
        )
    assert torch.equal(scores.topk_ids_BTK, full.topk_ids_BTK)

    # offline weights, exactly as the trainer computes them after sampling
    _, events_BT = monitor(
        "topk_overlap",
        cand_BTK,
        scores.topk_ids_BTK,
        scores.topk_logprobs_BTK,
        tokens_BT,
        mask_BT,
        TAU,
    )
    weights_BT, _, _ = reliability_weights(events_BT, mask_BT, W_DROP, 0.0)
    zero_BT = weights_BT <= 1e-8
    lengths = r.response_lengths.tolist()
    assert "pruned" in r.stopped_by and set(r.stopped_by) - {"pruned"}, r.stopped_by
    for i, (n, why) in enumerate(zip(lengths, r.stopped_by, strict=True)):
        if why == "pruned":
            assert n % C == 0 and n < N, (i, n)  # a pruned sample keeps its whole last chunk
            assert zero_BT[i, n - 1], f"sample {i} pruned with weight {weights_BT[i, n - 1]}"
            if n > C:
                assert not zero_BT[i, n - C - 1], f"sample {i} should have stopped a chunk earlier"
        else:
            # at every chunk boundary the sample went on past, its weight was still > 0
            for end in range(C, n, C):
                assert not zero_BT[i, end - 1], f"sample {i} ({why}) ran past weight 0 at {end}"


# ---- real updates ------------------------------------------------------------------------


def test_two_steps_change_every_student_parameter(zoo, tmp_path, capsys):
    cfg = tiny(tmp_path, max_steps=2, lr=1e-2, warmup_steps=0)
    train(cfg)
    from pruneopd.engines import fused

    decoder = "fused (compiled CPU kernel)" if fused.available() else "lean"
    err = capsys.readouterr().err  # one line names the engines
    assert f"pruneopd: sampling: {decoder}" in err, err
    assert err.count("; scoring: hf forward (teacher in this process)\n") == 1, err
    rows = [json.loads(x) for x in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    first = get_task("regs").problems("train", 1, seed=0, difficulty=2)[0].prompt
    assert rows[0]["prompt"] == "<s>" + first  # the prompt's text, special tokens shown
    before = dict(load_model("student-cross").named_parameters())
    after = dict(
        AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final").named_parameters()
    )
    assert before.keys() == after.keys()
    unchanged = [n for n in before if torch.equal(before[n], after[n])]
    assert not unchanged, f"parameters not updated: {unchanged}"


def test_logprob_mismatch_by_hand():
    from pruneopd.training.step import logprob_mismatch_sums

    rollout_BT = torch.tensor([[-1.0, -2.0], [-0.5, 0.0]])
    train_BT = torch.tensor([[-1.5, -2.0], [-0.25, -9.0]])
    mask_BT = torch.tensor([[True, True], [True, False]])
    assert logprob_mismatch_sums(rollout_BT, train_BT, mask_BT) == {"sum": 0.75, "n": 3.0}


@pytest.mark.parametrize("stale", [False, True])
def test_logprob_mismatch_sees_stale_sampling_weights(zoo, tmp_path, monkeypatch, stale):
    """3 steps at lr 1e-2: the sampler's log-probs match the update's forward (fp32 rounding)
    at every step; a sampler left on the initial weights (what a rollout engine without weight
    sync would do) shows up from the second step on."""
    from pruneopd.engines.local import LocalSampler

    if stale:  # the sampler keeps a copy of the weights it was first given
        real_init = LocalSampler.__init__

        def frozen_init(self, model, *args, **kw):
            real_init(self, copy.deepcopy(model), *args, **kw)

        monkeypatch.setattr(LocalSampler, "__init__", frozen_init)
        monkeypatch.setattr(LocalSampler, "push_weights", lambda self, model: None)
    train(tiny(tmp_path, max_steps=3, lr=1e-2, warmup_steps=0))
    mismatch = [r["logprob_mismatch"] for r in step_rows(tmp_path / "run")]
    if stale:
        assert mismatch[0] < 1e-3 < min(mismatch[1:]), mismatch
    else:
        assert max(mismatch) < 1e-3, mismatch


def mean_full_rkl(student, teacher, input_ids_BL, prompt_lens_B, mask_BT) -> float:
    """Mean KL(p_S || p_T) over response tokens from plain full-forward logits."""
    T = mask_BT.shape[1]
    idx_BT = (prompt_lens_B[:, None] - 1 + torch.arange(T)).clamp(max=input_ids_BL.shape[1] - 1)
    with torch.no_grad():
        s = student(input_ids=input_ids_BL).logits
        q = teacher(input_ids=input_ids_BL).logits
    pick = idx_BT[..., None].expand(-1, -1, s.shape[-1])
    kl_BT = full_rkl(s.gather(1, pick), q.gather(1, pick))
    return float(kl_BT[mask_BT].mean())


@pytest.mark.parametrize("loss", ["full_rkl", "topk_rkl"])
def test_training_lowers_teacher_student_kl_on_a_fixed_batch(models, loss):
    student0, teacher, tok = models
    prompts = prompts_for(tok, 3)
    r = sample(
        student0,
        prompts,
        max_new_tokens=16,
        eos_id=tok.eos_token_id,
        pad_id=tok.pad_token_id,
        generator=torch.Generator().manual_seed(0),
        topk=16,
    )
    input_ids_BL, _, _ = r.to_padded(tok.pad_token_id)
    prompt_lens_B = torch.tensor([len(p) for p in prompts])
    tokens_BT, mask_BT, cand_BTK = (
        r.response_tokens_BT(tok.pad_token_id),
        r.response_mask_BT,
        r.student_topk_ids_BTK(),
    )
    sc = score_responses(
        teacher, prompts, r.responses, k=16, candidate_ids=cand_BTK, pad_id=tok.pad_token_id
    )
    student = copy.deepcopy(student0).train()
    kl0 = mean_full_rkl(student, teacher, input_ids_BL, prompt_lens_B, mask_BT)
    # (topk_rkl is a biased estimate of the KL gradient restricted to the student's top-K:
    # with a large step it overshoots on these near-uniform models, so the step is small)
    opt = torch.optim.Adam(student.parameters(), lr=1e-3)
    for _ in range(5):
        loss_BT, _ = token_losses(
            loss,
            student,
            teacher,
            input_ids_BL,
            prompt_lens_B,
            tokens_BT,
            mask_BT,
            candidate_ids_BTK=cand_BTK,
            teacher_candidate_logprobs_BTK=sc.candidate_logprobs_BTK,
            teacher_token_logprobs_BT=sc.token_logprobs_BT,
        )
        opt.zero_grad()
        masked_token_mean(loss_BT, None, mask_BT).backward()
        opt.step()
    kl1 = mean_full_rkl(student, teacher, input_ids_BL, prompt_lens_B, mask_BT)
    assert kl1 < 0.95 * kl0, (kl0, kl1)


# ---- every method x loss runs and logs every metric -------------------------------------

COMBOS = [
    *[
        dict(method=m, loss=lo)
        for m in ("full", "prefix", "prune")
        for lo in ("sampled_rkl", "topk_rkl", "full_rkl", "forward_kl", "jsd")
    ],
    dict(method="prune", online_pruning=True, chunk_size=8, tau=0.1, w_drop=0.25),
    dict(method="prune", reliable_prefix_only=True, tau=0.1, w_drop=0.25),
]


@pytest.mark.parametrize("combo", COMBOS, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_every_method_and_loss_runs_one_step(zoo, tmp_path, combo):
    cfg = tiny(tmp_path, prefix_len=16, **combo)
    summary = train(cfg)
    rows = step_rows(tmp_path / "run")
    assert len(rows) == 1
    missing = [k for k in METRIC_KEYS if k not in rows[0]]
    assert not missing, missing
    assert rows[0]["loss"] is not None and rows[0]["tokens_trained"] > 0
    expected_cap = {"full": 48, "prefix": 16, "prune": 32}[cfg.method]
    assert rows[0]["cap"] == expected_cap
    assert (tmp_path / "run" / "final" / "config.json").exists()
    assert summary["config"]["method"] == cfg.method


# ---- bug: the logged rkl depends on which tokens are trained ----------------------------


def test_logged_rkl_does_not_depend_on_reliable_prefix_only(zoo, tmp_path):
    """Step 1 samples the same rollout either way, so rkl (over all generated tokens, from
    the pre-update student) must be the same; only the loss may differ."""
    kw = dict(method="prune", tau=0.1, w_drop=0.25)
    train(tiny(tmp_path, "all", **kw))
    train(tiny(tmp_path, "reliable", reliable_prefix_only=True, **kw))
    a, b = step_rows(tmp_path / "all")[0], step_rows(tmp_path / "reliable")[0]
    assert a["overlap"] == b["overlap"] and a["tokens_generated"] == b["tokens_generated"]
    assert b["tokens_trained"] < a["tokens_trained"]  # some tokens really were left out
    assert b["rkl"] == pytest.approx(a["rkl"], abs=1e-5)


# ---- prefix schedule ----------------------------------------------------------------------


def test_prefix_schedule_is_linear_from_start_to_end():
    cfg = TrainConfig(method="prefix", prefix_len=10, prefix_len_end=30, max_steps=5)
    assert [build_method(cfg).cap(s) for s in range(5)] == [10, 15, 20, 25, 30]
    fixed = TrainConfig(method="prefix", prefix_len=10, max_steps=5)
    assert [build_method(fixed).cap(s) for s in range(5)] == [10] * 5
    full = TrainConfig(method="full", max_len=48, min_len=16, init_len=32)
    assert build_method(full).cap(3) == 48


def test_gradient_checkpointing_trains_exactly_the_same(zoo, tmp_path, monkeypatch):
    # checkpointed forwards keep SDPA (pruneopd/attention.py): compare SDPA with SDPA, since
    # the causal kernel's rounding differs from SDPA's and AdamW at lr 1e-2 amplifies it
    monkeypatch.setenv("PRUNEOPD_ATTENTION", "0")
    kw = dict(max_steps=2, lr=1e-2)
    train(tiny(tmp_path, "plain", **kw))
    train(tiny(tmp_path, "ckpt", gradient_checkpointing=True, **kw))
    a, b = step_rows(tmp_path / "plain"), step_rows(tmp_path / "ckpt")
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], rel=1e-5)
    wa = load_file(tmp_path / "plain" / "final" / "model.safetensors")
    wb = load_file(tmp_path / "ckpt" / "final" / "model.safetensors")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_bfloat16_weights_train(zoo, tmp_path, capsys):
    s = train(tiny(tmp_path, "bf16", dtype="bfloat16", max_steps=2, lr=1e-2))
    assert "pruneopd: sampling: lean (KV-cache decode in PyTorch); scoring: hf" in (
        capsys.readouterr().err
    )
    rows = step_rows(tmp_path / "bf16")
    assert len(rows) == 2 and all(math.isfinite(r["loss"]) for r in rows)
    w = load_file(tmp_path / "bf16" / "final" / "model.safetensors")
    assert all(t.dtype == torch.bfloat16 and torch.isfinite(t.float()).all() for t in w.values())
    assert s["skipped_steps"] == 0


def test_missing_cuda_is_a_config_error(zoo, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(ConfigError, match="'device' = 'cuda': no CUDA device is available"):
        train(tiny(tmp_path, "cuda", device="cuda"))


def test_eval_cache_evaluates_a_student_once(zoo, tmp_path, monkeypatch):
    """Two runs of one student with eval_cache: the second takes its step-0 evaluation from the
    cache (evaluate is not called for it) and gets the same numbers; another student misses."""
    import pruneopd.training.train as train_mod

    calls = []
    real = train_mod.evaluate
    monkeypatch.setattr(train_mod, "evaluate", lambda *a, **k: calls.append(1) or real(*a, **k))
    cache = tmp_path / "cache"
    first = train(tiny(tmp_path, "a", eval_cache=str(cache)))
    n_first = len(calls)  # before and after
    second = train(tiny(tmp_path, "b", eval_cache=str(cache), method="full", seed=3))
    assert len(calls) == n_first + 1  # only its final evaluation
    assert second["evals"][0] == first["evals"][0]
    assert len(list(cache.glob("*.json"))) == 1
    train(tiny(tmp_path, "c", eval_cache=str(cache), student="student-same"))
    assert len(list(cache.glob("*.json"))) == 2


def test_eval_max_len_caps_evaluation_and_its_responses_are_logged(zoo, tmp_path):
    """`eval_max_len` replaces the reference cap; each evaluation's greedy responses to the
    first `log_samples` held-out problems land in eval_samples.jsonl."""
    s = train(tiny(tmp_path, eval_max_len=6, log_samples=2, eval_problems=3))
    assert [e["max_new_tokens"] for e in s["evals"]] == [6, 6]
    assert all(e["cut_rate"] == 1.0 and e["mean_length"] == 6 for e in s["evals"])
    assert "responses" not in s["evals"][0]
    lines = (tmp_path / "run" / "eval_samples.jsonl").read_text().splitlines()
    rows = [json.loads(x) for x in lines]
    assert [(r["step"], r["index"]) for r in rows] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    first = get_task("regs").problems("test", 3, seed=0, difficulty=2)[0].prompt
    assert rows[0]["prompt"] == "<s>" + first and rows[0]["stopped_by"] == "cap"
    assert all(isinstance(r["response"], str) and r["correct"] is False for r in rows)
