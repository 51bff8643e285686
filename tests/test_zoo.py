"""The built-in zoo (fast build): real HF checkpoints, the eval CLI, a deterministic build."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from pruneopd.models import ZOO_NAMES, load_model, load_tokenizer, tokenizer_path
from pruneopd.tokenizer import encode_prompt

EVAL_KEYS = {"accuracy", "partial_credit", "mean_length", "cut_rate", "n"}


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_zoo_model_is_a_hugging_face_checkpoint(fast_zoo, name):
    folder = fast_zoo / name
    assert (folder / "config.json").exists() and (folder / "model.safetensors").exists()
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    assert isinstance(model, LlamaForCausalLM)
    tok = AutoTokenizer.from_pretrained(str(fast_zoo / "tokenizer"))
    assert tokenizer_path(str(folder)) == fast_zoo / "tokenizer"
    shared = load_tokenizer(str(folder))  # the model folder resolves to the shared tokenizer
    assert shared.get_vocab() == tok.get_vocab()
    cfg = model.config
    assert cfg.vocab_size == len(tok)
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (
        tok.bos_token_id,
        tok.eos_token_id,
        tok.pad_token_id,
    )
    ids = torch.tensor([encode_prompt(tok, "regs a=1 b=2 c=3 ; 1:a+=b ;\n")])
    with torch.inference_mode():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tok))
    assert torch.isfinite(logits).all()


def test_zoo_names_resolve_through_env(use_fast_zoo):
    model = load_model("student-cross")
    assert isinstance(model, LlamaForCausalLM)
    assert len(load_tokenizer("teacher")) == model.config.vocab_size


def test_zoo_report(fast_zoo):
    report = json.loads((fast_zoo / "zoo_report.json").read_text())
    assert set(report["models"]) == set(ZOO_NAMES)
    for name in ZOO_NAMES:
        assert report["models"][name]["best_step"] is not None
    assert report["models"]["student-same"]["style"] == "terse"
    assert report["models"]["student-cross"]["style"] == "verbose"
    # the cross student's own style, mixed with some of the teacher's (ZooSpec.cross_own_share)
    assert report["models"]["student-cross"]["styles"] == {"verbose": 0.35, "terse": 0.65}
    assert report["models"]["student-same"]["styles"] == {"terse": 1.0}


def run_eval(model, *extra):
    cmd = [sys.executable, "-m", "pruneopd.cli", "eval", "--model", str(model)]
    cmd += ["--task", "regs", "--n", "4", "--difficulty", "2", "--json", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout  # exactly one JSON object on stdout
    res = json.loads(lines[0])
    assert isinstance(res, dict)
    assert EVAL_KEYS <= set(res)
    assert res["n"] == 4
    for k in ("accuracy", "partial_credit", "cut_rate"):
        assert 0.0 <= res[k] <= 1.0
    assert res["mean_length"] > 0
    return res


def test_eval_cli_json(fast_zoo):
    res = run_eval(fast_zoo / "teacher")
    assert "avg_at_n" not in res


def test_eval_cli_json_with_samples(fast_zoo):
    res = run_eval(fast_zoo / "student-cross", "--samples", "2")
    assert 0.0 <= res["avg_at_n"] <= 1.0


def test_fast_build_is_deterministic(tmp_path):
    """Same spec and seed -> bit-identical weights (costs two fast builds, ~15 s)."""
    from pruneopd.tools.zoo import FAST, build_zoo

    reports = [build_zoo(tmp_path / d, FAST, seed=0, log=lambda s: None) for d in ("a", "b")]
    for name in ZOO_NAMES:
        a = load_file(tmp_path / "a" / name / "model.safetensors")
        b = load_file(tmp_path / "b" / name / "model.safetensors")
        assert a.keys() == b.keys(), name
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
        for field in ("steps_taken", "best_step"):
            assert reports[0]["models"][name][field] == reports[1]["models"][name][field]
    tok_a = (tmp_path / "a" / "tokenizer" / "tokenizer.json").read_text()
    assert tok_a == (tmp_path / "b" / "tokenizer" / "tokenizer.json").read_text()


def test_shipped_zoo_teacher_reasons_and_students_are_weaker():
    """The shipped zoo: teacher >= 90% on every built-in task, both students inside the 20-60%
    band on theirs (64 problems here: the README's figures use 256), and the cross-family
    student agrees with the teacher's top-1 less often than the same-family one."""
    import json

    import torch

    from pruneopd.models import PACKAGE_ZOO, load_model, load_tokenizer
    from pruneopd.tasks import SUITES, TASKS
    from pruneopd.training.evaluate import evaluate

    TASKS = {name: TASKS[name] for name in SUITES["short"]}  # the long suite has its own zoo
    if not (PACKAGE_ZOO / "teacher" / "config.json").exists():
        pytest.skip("no shipped zoo")
    torch.set_num_threads(1)
    tok = load_tokenizer(str(PACKAGE_ZOO / "teacher"))
    teacher = load_model(str(PACKAGE_ZOO / "teacher"))
    for name, task in TASKS.items():
        acc = evaluate(teacher, tok, task, task.problems("test", 64, seed=0))["accuracy"]
        assert acc >= 0.9, (name, acc)
    task = TASKS["regs"]
    problems = task.problems("test", 64, seed=0)
    for name in ("student-same", "student-cross"):
        acc = evaluate(load_model(str(PACKAGE_ZOO / name)), tok, task, problems)["accuracy"]
        assert 0.15 <= acc <= 0.65, (name, acc)
    # the teacher supervises its own style without a wrong token (teacher-forced references)
    from pruneopd.tools.compat import style_fidelity

    for name, task in TASKS.items():
        fid = style_fidelity(teacher, tok, task, task.problems("test", 16, seed=0))
        assert fid["terse"]["token_top1"] > 0.99 and fid["terse"]["traces_right"] >= 0.9, (
            name,
            fid,
        )
        assert 0.0 <= fid["verbose"]["token_top1"] <= 1.0
    compat = json.loads((PACKAGE_ZOO / "zoo_report.json").read_text())["compatibility"]
    same, cross = (
        compat["student-same"]["top1_agreement"],
        compat["student-cross"]["top1_agreement"],
    )
    assert cross < same - 0.05, (same, cross)


def test_shipped_long_zoo_teacher_reasons():
    """The long suite's shipped teacher (pruneopd/zoo_weights/long/): >= 85% on 32 held-out
    `loop` problems of 5-9 rounds (its build stopped at 93% on 64), every response ended by
    itself."""
    from pruneopd.models import PACKAGE_ZOO, load_model, load_tokenizer
    from pruneopd.tasks import TASKS
    from pruneopd.training.evaluate import evaluate

    folder = PACKAGE_ZOO / "long" / "teacher"
    if not (folder / "config.json").exists():
        pytest.skip("no shipped long zoo")
    torch.set_num_threads(1)
    tok = load_tokenizer(str(folder))
    task = TASKS["loop"]
    res = evaluate(load_model(str(folder)), tok, task, task.problems("test", 32, seed=0))
    assert res["accuracy"] >= 0.85 and res["cut_rate"] == 0.0, res
    assert res["mean_length"] >= 600, res


def test_shipped_long_zoo_students():
    """The long suite's shipped students: just after their learning jump (their builds stopped
    at >= 30% on 64 held-out problems), and the two pairs differ where the monitor looks: on
    their own samples, student-same's top-16 overlap with the teacher is far above
    student-cross's (the card measures it on 256 problems: docs/testbed.md)."""
    from pruneopd.models import PACKAGE_ZOO, load_model, load_tokenizer
    from pruneopd.tasks import TASKS
    from pruneopd.tools.testbed import pair_card
    from pruneopd.training.evaluate import evaluate

    zoo = PACKAGE_ZOO / "long"
    if not (zoo / "student-cross" / "config.json").exists():
        pytest.skip("no shipped long students")
    torch.set_num_threads(1)
    tok = load_tokenizer(str(zoo / "teacher"))
    teacher = load_model(str(zoo / "teacher"))
    task = TASKS["loop"]
    overlap = {}
    for name in ("student-same", "student-cross"):
        student = load_model(str(zoo / name))
        res = evaluate(student, tok, task, task.problems("test", 32, seed=0))
        assert 0.1 <= res["accuracy"] <= 0.7, (name, res)
        card = pair_card(
            student,
            teacher,
            tok,
            task,
            task.problems("test", 8, seed=1),
            k=16,
            tau=0.5,
            w_drop=0.1,
            max_new_tokens=192,
        )
        overlap[name] = card["overlap_mean"]
    # the card (256 samples to the cap): 0.86 and 0.62
    assert overlap["student-same"] >= overlap["student-cross"] + 0.15, overlap


def test_eval_splits_accuracy_by_drift():
    """evaluate(drift=...): which greedy responses drift under the teacher's scores, and the
    accuracy on them and on the rest; the extremes, the split's identity, and shards combined."""
    from pruneopd.method.weighing import DriftSettings
    from pruneopd.models import load_model, load_tokenizer
    from pruneopd.tasks import TASKS
    from pruneopd.training.evaluate import DriftCheck, combine, evaluate

    tok = load_tokenizer("student-same")
    student, teacher = load_model("student-same").eval(), load_model("teacher").eval()
    task = TASKS["regs"]
    problems = task.problems("test", 12, seed=0)
    kw = dict(batch_size=6)
    never = DriftCheck(
        teacher, 8, DriftSettings("topk_overlap", 8, tau=0.7, w_drop=0.0, w_base=0.5)
    )
    res = evaluate(student, tok, task, problems, drift=never, **kw)
    assert res["n_drifted"] == 0 and res["accuracy_drifted"] is None
    assert res["accuracy_reliable"] == res["accuracy"]
    assert res["accuracy"] == evaluate(student, tok, task, problems, **kw)["accuracy"]
    every = DriftCheck(
        teacher, 8, DriftSettings("topk_overlap", 8, tau=1.0, w_drop=1.0, w_base=0.5)
    )
    res = evaluate(student, tok, task, problems, drift=every, **kw)
    assert res["n_drifted"] == 12  # some token of every response has top-8 overlap < 1
    assert res["accuracy_drifted"] == res["accuracy"] and res["accuracy_reliable"] is None
    two_misses = DriftSettings("topk_overlap", 1, tau=0.5, w_drop=0.5, w_base=0.5)  # top-1 misses
    some = DriftCheck(teacher, 8, two_misses)
    res = evaluate(student, tok, task, problems, drift=some, **kw)
    n_d = res["n_drifted"]
    assert 0 < n_d < 12, n_d
    ok = res["accuracy_drifted"] * n_d + res["accuracy_reliable"] * (12 - n_d)
    assert abs(ok - res["accuracy"] * 12) < 1e-9
    halves = [
        evaluate(student, tok, task, problems[a:b], drift=some, **kw) for a, b in ((0, 5), (5, 12))
    ]
    both = combine(halves)
    assert both["n_drifted"] == n_d
    for key in ("accuracy", "accuracy_drifted", "accuracy_reliable", "drifted_rate"):
        assert abs(both[key] - res[key]) < 1e-9, key
