"""The fused decode step (pruneopd/fused.py, csrc/fused_decode.cpp) equals the Hugging Face
forward and LeanDecoder: Llama with grouped-query heads and a head dim the kernel has no
specialisation for (8), Llama at head dim 32 (a specialised one), Qwen2 with q/k/v biases;
with left padding and samples dropped mid-way. `sample` gives the same tokens, log-probs and
top-k through engine="fused" and engine="lean". Skipped where the kernel cannot be built."""

from __future__ import annotations

import pytest
import torch
from test_decode import check_chunks_equal_hf, check_engines_agree, check_step_equals_hf, prefill
from tiny import tiny_llama
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from pruneopd.engines import fused, rollout
from pruneopd.engines.decode import LeanDecoder
from pruneopd.engines.rollout import pick_engine, sample

pytestmark = pytest.mark.skipif(not fused.available(), reason="the fused kernel cannot be built")

V, PAD, EOS = 50, 0, 2
PROMPTS = [[5, 6, 7], [8], [9, 10, 11, 12, 13], [14, 15]]


def llama_d32(seed: int = 0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=V,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    return LlamaForCausalLM(cfg).eval()


def qwen2_bias(seed: int = 0):
    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=V,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        max_position_embeddings=128,
    )
    model = Qwen2ForCausalLM(cfg).eval()
    assert model.model.layers[0].self_attn.q_proj.bias is not None
    with torch.no_grad():  # Qwen2's biases start at zero: make them count
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    return model


MODELS = {"llama-gqa-d8": lambda: tiny_llama(V), "llama-d32": llama_d32, "qwen2-bias": qwen2_bias}


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_fused_step_equals_hf_forward(arch):
    model = MODELS[arch]()
    assert fused.supported(model)
    check_step_equals_hf(model, fused.FusedDecoder)


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_fused_chunks_equal_hf_forward(arch):
    """forward_chunk as one extension call (the sgemm attention with its causal edge inside
    the chunk and the left padding masked) against the Hugging Face forward."""
    check_chunks_equal_hf(MODELS[arch](), fused.FusedDecoder)


def test_fused_chunks_equal_lean_without_padding():
    """No padded prompt (the unmasked branch), longer chunks: the same hidden states as
    LeanDecoder's chunks, chunk after chunk."""
    model = llama_d32(2)
    prompts = [[5, 6, 7, 8], [9, 10, 11, 12]]
    toks = torch.randint(3, V, (2, 40), generator=torch.Generator().manual_seed(1))
    a, b = (
        cls(model, *prefill(model, prompts)[:2], 40) for cls in (fused.FusedDecoder, LeanDecoder)
    )
    pos = torch.tensor([4, 4])
    for t in range(0, 40, 16):
        C = min(16, 40 - t)
        got, want = (
            a.forward_chunk(toks[:, t : t + C], pos, t),
            b.forward_chunk(toks[:, t : t + C], pos, t),
        )
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        pos = pos + C


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_sample_is_the_same_through_fused_and_lean(arch):
    stopped_by = check_engines_agree(MODELS[arch](), "lean", "fused", max_new_tokens=40)
    assert {"eos", "cap"} <= set(stopped_by)  # both ways of stopping were exercised


def test_long_cache_attention_equals_lean():
    """Hundreds of cache slots (the attention's four-slot blocks, its tail and the softmax over
    a long row) at head dim 32: the same logits as LeanDecoder's SDPA."""
    model = llama_d32(1)
    prompts = [[5 + i] * (3 + 2 * i) for i in range(5)]  # uneven left padding
    u = torch.rand(5, 300, generator=torch.Generator().manual_seed(0))
    kw = dict(max_new_tokens=300, eos_id=-1, pad_id=PAD, uniforms_BN=u)
    a = sample(model, prompts, engine="lean", **kw)
    b = sample(model, prompts, engine="fused", **kw)
    assert a.responses == b.responses
    for x, y in zip(a.student_logprobs, b.student_logprobs, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)


def test_engine_choice(monkeypatch):
    model = tiny_llama(V)
    assert pick_engine(model, "auto") == "fused"
    torch.manual_seed(0)
    qwen3 = Qwen3ForCausalLM(
        Qwen3Config(
            vocab_size=V,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
        )
    ).eval()
    assert not fused.supported(qwen3) and pick_engine(qwen3, "auto") == "lean"
    with pytest.raises(ValueError, match="engine='fused' does not support"):
        pick_engine(qwen3, "fused")
    assert not fused.supported(tiny_llama(V).to(torch.float64))
    with pytest.raises(ValueError, match="engine must be auto, fused, lean or hf"):
        pick_engine(model, "fast")
    monkeypatch.setenv("PRUNEOPD_FUSED", "0")
    monkeypatch.setattr(fused, "_EXT", None)
    assert pick_engine(model, "auto") == "lean"
    with pytest.raises(RuntimeError, match="PRUNEOPD_FUSED=0"):
        pick_engine(model, "fused")


def test_build_failure_is_one_line_and_falls_back(monkeypatch, capsys):
    monkeypatch.setattr(fused, "_EXT", None)
    monkeypatch.setattr(fused, "_NOTED", False)
    monkeypatch.setattr(fused, "_ERROR", "the fused decode kernel could not be built: no g++")
    assert not fused.available() and not fused.available()
    assert pick_engine(tiny_llama(V), "auto") == "lean"
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "pruneopd: the fused decode kernel could not be built: no g++; "
        "sampling with the lean engine"
    ]


@pytest.mark.parametrize("shape", [(32, 128, 384), (3, 7, 5), (1, 64, 33)])
def test_linear_equals_matmul(shape):
    """The column-split product the kernel uses for its projections and the sampler's head."""
    A, K, N = shape
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(A, K, generator=g), torch.randn(N, K, generator=g)
    out = fused.load().linear(x, w)
    torch.testing.assert_close(out, x @ w.T, atol=1e-5, rtol=1e-5)
    strided = fused.load().linear(x.T.contiguous().T, w)  # a non-contiguous x is copied first
    torch.testing.assert_close(strided, x @ w.T, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("top_p", [1.0, 0.9])
def test_fused_chunks_and_pruning_match_lean(top_p):
    """With on_chunk (online pruning), the fused engine samples a chunk per call into the
    extension (`sample_steps`, here also with a top_p nucleus): the same chunks (samples,
    tokens, masks, log-probs, top-k) reach on_chunk, and the same samples are pruned, as
    through LeanDecoder's token-by-token loop."""
    model = MODELS["llama-gqa-d8"]()
    prompts = [p for p in PROMPTS for _ in range(3)]

    def run(engine):
        seen = []

        def on_chunk(c):
            seen.append(c)
            return c.sample_ids_A % 3 == 0 if c.start == 5 else None

        r = sample(
            model,
            prompts,
            max_new_tokens=200,
            eos_id=EOS,
            pad_id=PAD,
            topk=4,
            top_p=top_p,
            chunk_size=5,
            on_chunk=on_chunk,
            engine=engine,
            generator=torch.Generator().manual_seed(3),
        )
        return r, seen

    (a, ca), (b, cb) = run("lean"), run("fused")
    assert a.responses == b.responses and a.stopped_by == b.stopped_by
    assert set(a.stopped_by) == {"pruned", "eos"}  # every sample ended before the cap...
    assert ca[-1].tokens_AC.shape[1] < 5  # ...the last one inside a chunk, which ends there
    assert len(ca) == len(cb)
    for x, y in zip(ca, cb, strict=True):
        assert x.start == y.start and torch.equal(x.sample_ids_A, y.sample_ids_A)
        assert torch.equal(x.tokens_AC, y.tokens_AC) and torch.equal(x.mask_AC, y.mask_AC)
        assert torch.equal(x.student_topk_ids_ACK, y.student_topk_ids_ACK)
        torch.testing.assert_close(x.student_logprobs_AC, y.student_logprobs_AC, atol=1e-5, rtol=0)


def test_a_stale_build_lock_is_removed_and_a_fresh_one_kept(tmp_path, capsys):
    """A build killed mid-way leaves torch's lock file, and the next build would wait for it
    forever: one older than STALE_LOCK_S goes (with a line), a fresh one stays."""
    import os
    import time

    old = tmp_path / "ext_a" / "lock"
    new = tmp_path / "py311_cpu" / "ext_b" / "lock"
    for lock in (old, new):
        lock.parent.mkdir(parents=True)
        lock.touch()
    t = time.time() - fused.STALE_LOCK_S - 5
    os.utime(old, (t, t))
    fused._clear_stale_lock(tmp_path, "ext_a")
    fused._clear_stale_lock(tmp_path, "ext_b")
    assert not old.exists() and new.exists()
    assert "removed a stale build lock" in capsys.readouterr().err


def test_several_stop_ids_stop_every_engine_alike():
    """eos_id=(EOS, END): a chat template's end-of-turn token stops a sample as EOS does, the
    same token for token through fused, lean and hf (the kernel takes a list of stop ids)."""
    model = MODELS["llama-d32"]()
    prompts = [p for p in PROMPTS for _ in range(3)]
    kw = dict(max_new_tokens=40, pad_id=PAD, topk=4, temperature=1.0)
    one = sample(model, prompts, eos_id=EOS, generator=torch.Generator().manual_seed(1), **kw)
    # the end-of-turn token: a token some sample draws before its EOS
    end = next(r[len(r) // 2] for r in one.responses if len(r) > 4 and r[len(r) // 2] != EOS)
    runs = [
        sample(
            model,
            prompts,
            eos_id=(EOS, end),
            engine=engine,
            generator=torch.Generator().manual_seed(1),
            **kw,
        )
        for engine in ("fused", "lean", "hf")
    ]
    for r in runs[1:]:
        assert r.responses == runs[0].responses and r.stopped_by == runs[0].stopped_by
    ends = [
        r[-1] for r, why in zip(runs[0].responses, runs[0].stopped_by, strict=True) if why == "eos"
    ]
    assert end in ends  # stopped at the end-of-turn token
    assert all(end not in r[:-1] and EOS not in r[:-1] for r in runs[0].responses)
    assert runs[0].responses != one.responses


PLANS = {
    "spread-1": lambda A: fused.Plan(1, False, ""),
    "spread-5": lambda A: fused.Plan(5, False, ""),  # groups of 5, 5, 2 of the 12 samples
    "split-4": lambda A: fused.Plan(4, True, ""),
    "split-all": lambda A: fused.Plan(A, True, ""),  # the plan of a real model
    # one spread group: parallel_for may run it outside a parallel region, and then its own
    # parallel loops use every thread (each needs its scratch; once a heap overflow)
    "spread-all": lambda A: fused.Plan(A, False, ""),
}


@pytest.mark.parametrize("plan", sorted(PLANS))
def test_every_sampling_plan_gives_the_lean_engines_tokens(plan, monkeypatch):
    """sample_steps with its samples in other groups than the zoo's (spread groups of 1 and 5,
    split groups of 4 and of every active sample, as samples stop): the same tokens, stops,
    log-probs and top-k ids as the lean engine, greedy and sampled (check_engines_agree);
    split-all also on two threads (the columns, attention units and picks shared between
    them, each thread with its own scratch)."""
    monkeypatch.setattr(fused.FusedDecoder, "plan", lambda self: PLANS[plan](self.K.shape[1]))
    stopped_by = check_engines_agree(MODELS["llama-gqa-d8"](), "lean", "fused", 40)
    assert {"eos", "cap"} <= set(stopped_by)
    if plan in ("split-all", "spread-all"):
        threads = torch.get_num_threads()
        torch.set_num_threads(2)
        try:
            check_engines_agree(MODELS["llama-gqa-d8"](), "lean", "fused", 24)
        finally:
            torch.set_num_threads(threads)


def test_plan_follows_what_is_streamed():
    """Weights that fit the caches (the zoo's): spread groups of 4 at any batch, so the zoo's
    tokens are unchanged; weights streamed from memory (SmolLM2's 81M student: 324 MB, 23 KB
    of KV cache per slot): one group per thread at 8 and 32 samples and up to 600 slots, one
    split group for fewer samples than threads, groups of 4 again once the KV cache outweighs
    the weights."""
    mb = 1 << 20

    def plan(*a):
        p = fused.plan_sampling(*a)
        return p.group, p.split

    for A in (1, 4, 8, 32, 64):
        assert plan(3 * mb, 70 * mb // 32, A, 2) == (4, False)
    for A in (2, 8, 32):
        for slots in (128, 256, 600):
            assert plan(324 * mb, 23040 * slots, A, 2) == (A // 2, False)
    assert plan(324 * mb, 23040 * 300, 1, 2) == (1, True)
    assert plan(324 * mb, 23040 * 300, 32, 1) == (32, False)
    # a mid-size model with a huge KV cache per sample: groups of 4 keep theirs cached
    assert plan(40 * mb, 8 * mb, 32, 2) == (4, False)


def test_a_quiet_machine_splits_streamed_weights():
    """No other process busy: a streamed model's samples in one split group (every weight read
    once per step), at any batch; cached weights (the zoo's) and one thread as before."""
    mb = 1 << 20

    def plan(*a):
        p = fused.plan_sampling(*a, quiet=True)
        return p.group, p.split

    for A in (2, 8, 32):
        assert plan(324 * mb, 23040 * 300, A, 2) == (A, True)
        assert plan(3 * mb, 70 * mb // 32, A, 2) == (4, False)
        assert plan(324 * mb, 23040 * 300, A, 1) == (A, False)
    assert "no other process busy" in fused.plan_sampling(324 * mb, 23040, 8, 2, quiet=True).why
    # a huge KV cache per sample (8 MB): weights 40 MB + every KV cache 256 MB once per step,
    # 148 MB per thread, against 4 groups of 4 per thread reading the weights 4 times, 160 MB
    assert plan(40 * mb, 8 * mb, 32, 2) == (32, True)


def test_the_engine_is_said_once(capsys):
    model = tiny_llama(V)
    kw = dict(max_new_tokens=3, eos_id=EOS, pad_id=PAD, temperature=0.0)
    rollout._SAID.clear()
    sample(model, PROMPTS, **kw)
    sample(model, PROMPTS, **kw)
    sample(model, PROMPTS, engine="lean", **kw)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("pruneopd: sampling 4 samples on the fused engine, groups of 4")
    assert "they stay in the CPU caches" in lines[0]
    assert lines[1].startswith("pruneopd: sampling 4 samples on the lean engine")
