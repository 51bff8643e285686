"""Several teachers (config key `teachers`): routing by field sends each sample to its own
teacher, a (1, 0) mixture is the first teacher's run, the per-teacher metrics add up, and
bad input stops before any compute with one line."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file

from pruneopd.cli import main
from pruneopd.config import ConfigError, load_config
from pruneopd.engines.local import LocalTeacher
from pruneopd.method.weighing import TokenWeights, weigh_tokens
from pruneopd.models import load_model
from pruneopd.tools.report import render_report
from pruneopd.training.panel import mix_logprobs, mix_weights
from pruneopd.training.setup import check_run, setup_run
from pruneopd.training.step import sample_phase, score_and_weigh
from pruneopd.training.train import train

# two distinct teachers of one vocabulary (the fast zoo's teacher and its same-style student)
TWO = [{"name": "regs", "model": "teacher"}, {"name": "add", "model": "student-same"}]
BASE = {
    "student": "student-cross",
    "task": "regs+add",
    "difficulty": 2,
    "method": "prune",
    "max_len": 16,
    "min_len": 4,
    "init_len": 12,
    "budget_step": 4,
    "budget_margin": 2,
    "max_steps": 2,
    "prompts_per_step": 4,
    "responses_per_prompt": 2,
    "eval_problems": 4,
    "eval_every": 0,
    "save_every": 0,
    "tensorboard": False,
    "progress": False,
    "log_samples": 0,
}


def config(tmp_path, name="run", **keys):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**BASE, "out": str(tmp_path / name), **keys}))
    return load_config(path)


def test_routing_scores_each_sample_with_its_own_teacher(zoo, tmp_path):
    """The routed scores and weights of every sample are its named teacher's: equal to that
    teacher scoring the whole batch alone (and the two teachers differ on those samples)."""
    cfg = config(tmp_path, teachers=TWO)
    run = setup_run(check_run(cfg)).run
    batch = sample_phase(run, 0)
    w = score_and_weigh(run, batch)
    owners = [0 if p.task == "regs" else 1 for p in batch.problems for _ in range(2)]
    assert sorted(set(owners)) == [0, 1]
    r, B = batch.rollout, w.mask_BT.shape[0]
    for i, name in enumerate(["teacher", "student-same"]):
        alone = LocalTeacher(load_model(name), run.tok.pad_token_id).score(
            batch.prompts, r.responses, k=cfg.topk, candidate_ids_BTK=w.cand_BTK
        )
        tw = weigh_tokens(
            run.drift,
            w.cand_BTK,
            alone.topk_ids_BTK,
            alone.topk_logprobs_BTK,
            w.tokens_BT,
            w.mask_BT,
        )
        rows = [b for b in range(B) if owners[b] == i]
        other = [b for b in range(B) if owners[b] != i]
        m = w.mask_BT[rows]
        torch.testing.assert_close(
            w.scores.token_logprobs_BT[rows][m], alone.token_logprobs_BT[rows][m], atol=1e-5, rtol=0
        )
        torch.testing.assert_close(
            w.scores.candidate_logprobs_BTK[rows][m],
            alone.candidate_logprobs_BTK[rows][m],
            atol=1e-5,
            rtol=0,
        )
        assert torch.equal(w.tw.weights_BT[rows], tw.weights_BT[rows])
        assert torch.equal(w.tw.eff_len_B[rows], tw.eff_len_B[rows])
        mo = w.mask_BT[other]  # the other teacher's samples were not scored by this one
        assert not torch.allclose(
            w.scores.token_logprobs_BT[other][mo], alone.token_logprobs_BT[other][mo], atol=1e-3
        )


def _metric_rows(out):
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    drop = ("t_", "teacher/", "eval/n_drifted", "eval/drifted_rate", "eval/accuracy_")
    return [{k: v for k, v in r.items() if not k.startswith(drop)} for r in rows]


def test_mixture_one_zero_is_the_first_teachers_run(zoo, tmp_path):
    """teacher_routing=mixture with weights (1, 0): metrics and final weights bit for bit the
    run with the first teacher alone (its held-out evaluation has no drift split: several
    teachers do not score held-out responses); the per-teacher metrics add up to the step's."""
    single = train(config(tmp_path, "single", teacher="teacher"))
    mixed = train(
        config(tmp_path, "mixed", teachers=TWO, teacher_routing="mixture", teacher_weights=[1, 0])
    )
    assert _metric_rows(tmp_path / "single") == _metric_rows(tmp_path / "mixed")
    a = load_file(tmp_path / "single" / "final" / "model.safetensors")
    b = load_file(tmp_path / "mixed" / "final" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert single["accuracy_after"] == mixed["accuracy_after"]
    teachers = mixed["teachers"]
    assert set(teachers) == {"regs", "add"}
    assert teachers["regs"]["tokens"] == teachers["add"]["tokens"] == mixed["tokens_generated"]
    assert teachers["regs"]["overlap"] != teachers["add"]["overlap"]


def test_routed_run_logs_each_teachers_metrics(zoo, tmp_path):
    s = train(config(tmp_path, teachers=TWO))
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "loss" in r]  # the steps' rows (not the evaluations')
    step = rows[0]
    assert step["teacher/regs/samples"] + step["teacher/add/samples"] == 8
    assert step["teacher/regs/tokens"] + step["teacher/add/tokens"] == step["tokens_generated"]
    t = s["teachers"]
    assert t["regs"]["samples"] + t["add"]["samples"] == 16
    assert t["regs"]["tokens"] + t["add"]["tokens"] == s["tokens_generated"]
    both = t["regs"]["overlap"] * t["regs"]["tokens"] + t["add"]["overlap"] * t["add"]["tokens"]
    mean = sum(r["overlap"] * r["tokens_generated"] for r in rows)
    assert math.isclose(both, mean, rel_tol=1e-9)
    report = render_report(tmp_path / "run").read_text()  # `pruneopd report RUN_DIR`
    assert (
        "## Teachers (routed by `task`)" in report and f"| add | {t['add']['samples']} |" in report
    )
    saved = load_config(tmp_path / "run" / "config.yaml")  # what resume reads back
    assert saved.teachers == TWO and saved.teacher == "teacher"


def test_routed_run_resumes_exactly(zoo, tmp_path):
    """A routed run stopped after step 1 and resumed ends as one that never stopped: the same
    step metrics (per teacher included) and the same per-teacher totals in summary.json."""
    whole = train(config(tmp_path, "whole", teachers=TWO, max_steps=3))
    train(config(tmp_path, "split", teachers=TWO, max_steps=1))
    split = train(config(tmp_path, "split", teachers=TWO, max_steps=3, resume="auto"))

    def steps(name):
        rows = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if not k.startswith("t_")} for r in rows if "loss" in r]

    assert steps("whole") == steps("split") and len(steps("whole")) == 3
    assert whole["teachers"] == split["teachers"]


def test_mix_logprobs_and_weights_by_hand():
    lp1, lp2 = torch.tensor([[-0.1, -2.0, 0.0]]), torch.tensor([[-1.5, -0.2, 0.0]])
    mask = torch.tensor([[True, True, False]])
    got = mix_logprobs([lp1, lp2], [0.25, 0.75], mask)
    want = [
        math.log(0.25 * math.exp(a) + 0.75 * math.exp(b)) for a, b in ((-0.1, -1.5), (-2.0, -0.2))
    ]
    torch.testing.assert_close(got, torch.tensor([[*want, 0.0]]))
    assert torch.equal(mix_logprobs([lp1, lp2], [1.0, 0.0], mask), lp1 * mask)

    def tw(w, events):
        w = torch.tensor([w])
        return TokenWeights(w, torch.tensor([events]), w, w + 0.5, (w > 0).sum(-1))

    a, b = tw([1.0, 1.0, 0.0], [0, 0, 1]), tw([1.0, 0.0, 0.0], [0, 1, 0])
    m = mix_weights([a, b], [0.5, 0.5])
    torch.testing.assert_close(m.weights_BT, torch.tensor([[1.0, 0.5, 0.0]]))
    torch.testing.assert_close(m.multipliers_BT, torch.tensor([[1.5, 1.0, 0.5]]))
    assert m.events_BT.tolist() == [[False, True, True]] and m.eff_len_B.tolist() == [2]


@pytest.mark.parametrize(
    "keys, needle",
    [
        (
            {"teachers": TWO + [{"name": "regs", "model": "teacher"}]},
            "two teachers are named 'regs'",
        ),
        ({"teachers": TWO, "teacher": "student-same"}, "'teacher' and 'teachers'"),
        ({"teachers": TWO, "teacher_routing": "vote"}, "'teacher_routing' = 'vote'"),
        (
            {"teachers": TWO, "teacher_routing": "mixture", "teacher_weights": [1, 2, 3]},
            "3 weights for 2 teachers",
        ),
        ({"teachers": [{"name": "a"}]}, "'model' must be a non-empty string"),
        ({"teachers": TWO, "loss": "full_rkl"}, "topk_rkl or sampled_rkl"),
    ],
)
def test_bad_teachers_config(tmp_path, keys, needle):
    with pytest.raises(ConfigError) as e:
        config(tmp_path, **keys)
    assert needle in str(e.value) and "\n" not in str(e.value)


def _cli(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_cli_check_refuses_bad_teachers(zoo, tmp_path, capsys):
    """--check: another vocabulary, a task naming no teacher, a data row naming an unknown
    teacher (file and line), teacher beside teachers on the command line: one line, exit 2,
    nothing written."""
    from pruneopd.tokenizer import build_tokenizer

    other = tmp_path / "other-vocab"
    shutil.copytree(zoo / "teacher", other)
    build_tokenizer(vocab_size=280).save_pretrained(other)
    path = tmp_path / "c.yaml"
    bad = [{"name": "regs", "model": "teacher"}, {"name": "add", "model": str(other)}]
    path.write_text(yaml.safe_dump({**BASE, "teachers": bad, "out": str(tmp_path / "r")}))
    err = _cli(["train", "--check", "--config", str(path)], capsys)
    assert "teacher 'add'" in err and "different vocabularies" in err
    path.write_text(yaml.safe_dump({**BASE, "teachers": TWO[:1], "out": str(tmp_path / "r")}))
    err = _cli(["train", "--check", "--config", str(path)], capsys)
    assert "task 'add' of task=regs+add names no teacher" in err
    data = tmp_path / "d.jsonl"
    rows = [{"prompt": f"q{i}", "answer": str(i), "domain": d} for i, d in enumerate("ab" * 4)]
    rows[2]["domain"] = "c"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    two = [{"name": "a", "model": "teacher"}, {"name": "b", "model": "student-same"}]
    keys = {**BASE, "teachers": two, "data": str(data), "teacher_field": "domain"}
    path.write_text(yaml.safe_dump({**keys, "out": str(tmp_path / "r"), "chat_template": False}))
    err = _cli(["train", "--check", "--config", str(path)], capsys)
    assert f"{data} line 3: field 'domain' = 'c' names no teacher (teachers: a, b)" in err
    path.write_text(yaml.safe_dump({**BASE, "teachers": TWO, "out": str(tmp_path / "r")}))
    err = _cli(["train", "--check", "--config", str(path), "teacher=teacher"], capsys)
    assert "'teacher' and 'teachers' cannot be combined" in err
    assert not (tmp_path / "r").exists()
