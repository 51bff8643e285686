"""Data files: the three layouts, math-verify answers, one-line errors, and a tiny
Qwen3-architecture pair trained from a JSONL and a verl-style Parquet file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pruneopd.cli import main
from pruneopd.tasks import Problem
from pruneopd.tasks.data import DataError, DataTask, read_records

FIX = Path(__file__).parent / "fixtures"
CHAT = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def tok(fast_zoo):
    from pruneopd.tokenizer import load_tokenizer

    t = load_tokenizer(fast_zoo / "tokenizer")
    t.chat_template = CHAT
    return t


@pytest.mark.parametrize(
    ("name", "first_answer", "templated"),
    [
        ("math_plain.jsonl", "43", True),
        ("math_gsm8k.jsonl", "26", True),
        ("math_verl.parquet", "58", True),
    ],
)
def test_layouts_are_recognised(tok, name, first_answer, templated):
    task = DataTask(FIX / name, tok)
    assert len(task.train) == 24 and task.test == []
    p = task.train[0]
    assert p.answer == first_answer  # GSM8K: only what follows '####'
    assert p.data["templated"] is templated and p.prompt.startswith("<|user|>")
    assert p.prompt.endswith("<|assistant|>")


def test_text_prompts_stay_plain_without_a_template(tok):
    task = DataTask(FIX / "math_plain.jsonl", tok, chat_template=False)
    assert task.train[0].prompt.startswith("Ana has") and not task.train[0].data["templated"]


def test_train_prompts_cycle_in_seeded_epochs_and_test_is_held_out(tok):
    task = DataTask(FIX / "math_plain.jsonl", tok, eval_holdout=4)
    assert len(task.train) == 20 and len(task.test) == 4
    a = task.problems("train", 50, seed=3)
    assert a == task.problems("train", 50, seed=3) and a != task.problems("train", 50, seed=4)
    assert set(p.prompt for p in a[:20]) == set(p.prompt for p in task.train)  # one epoch
    assert not set(p.prompt for p in a) & set(p.prompt for p in task.test)
    assert task.eval_name == "data:math_plain.jsonl (its last 4 records)"


def test_eval_data_is_what_evaluations_score_and_name(tok):
    task = DataTask(FIX / "math_plain.jsonl", tok, eval_path=FIX / "math_gsm8k.jsonl")
    gsm8k = DataTask(FIX / "math_gsm8k.jsonl", tok)
    assert len(task.train) == 24 and [p.answer for p in task.test] == [
        p.answer for p in gsm8k.train
    ]
    assert task.eval_name == "data:math_gsm8k.jsonl"  # evaluations' records name the eval file


@pytest.mark.parametrize(
    ("gold", "response", "ok"),
    [
        ("7", "3 + 4 = 7, so the answer is \\boxed{7}", True),
        ("7", "the answer is \\boxed{8}", False),
        ("\\frac{1}{2}", "that is \\boxed{\\frac{2}{4}}", True),
        ("\\frac{1}{2}", "\\boxed{0.5}", True),
        ("12", "", False),
        ("12", "}}}{{\\boxed{", False),
    ],
)
def test_math_verify_checks_answers(tok, gold, response, ok):
    task = DataTask(FIX / "math_plain.jsonl", tok)
    p = Problem(task.name, "q", gold, (gold,), {})
    assert task.check(p, response) is ok
    assert task.partial_credit(p, response) == float(ok)


def test_steps_give_line_by_line_partial_credit(tok, tmp_path):
    """A record's `steps` (the reference's lines): partial credit is the share written right
    before the first wrong line, worked by hand; without them it is the answer's 0/1."""
    rows = [
        {
            "prompt": "7, 3, 9",
            "answer": "19",
            "steps": ["7 + 3 = 10", "10 + 9 = 19", "The total is 19."],
        },
        {"prompt": "1, 1", "answer": "2"},
    ]
    path = tmp_path / "s.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = DataTask(path, tok)
    p, plain = task.train
    assert p.steps == ("7 + 3 = 10", "10 + 9 = 19", "The total is 19.")
    assert task.partial_credit(p, "7 + 3 = 10\n10 + 9 = 19\nThe total is 19.") == 1.0
    assert task.partial_credit(p, " 7 + 3 = 10\n\n10 + 9 = 18\nThe total is 18.") == 1 / 3
    assert task.partial_credit(p, "7 + 3 = 11\n10 + 9 = 19") == 0.0
    assert task.partial_credit(p, "7 + 3 = 10\n10 + 9 = 19") == 2 / 3  # stopped early
    # extra lines after the reference's count nothing and cost nothing
    assert task.partial_credit(p, "7 + 3 = 10\n10 + 9 = 19\nThe total is 19.\n19 + 1 = 20") == 1.0
    assert task.partial_credit(plain, "so 2") == 1.0 and task.partial_credit(plain, "3") == 0.0


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (
            '{"prompt": "a", "answer": "1"}\n{"prompt": "b", "answer": "2"}\n{"prompt": "c", "ans\n',
            "line 3: malformed JSON",
        ),
        ('{"prompt": "a", "answer": "1"}\n[1, 2]\n', "line 2: expected a JSON object"),
        ("", "holds no records"),
        ('{"prompt": "a", "answer": "1"}\n{"prompt": "b"}\n', "line 2: no field 'answer'"),
        ('{"prompt": 5, "answer": "1"}\n', "line 1: field 'prompt' must be text"),
        ('{"prompt": "a", "answer": ""}\n', "line 1: field 'answer' is empty"),
        ('{"text": "a", "label": "1"}\n', "no prompt field found"),
        ('{"prompt": "a", "answer": "1", "steps": []}\n', "line 1: field 'steps' must be"),
        ('{"prompt": "a", "answer": "1", "steps": ["1", 2]}\n', "line 1: field 'steps' must be"),
    ],
)
def test_bad_data_files_name_the_problem(tok, tmp_path, text, needle):
    with pytest.raises(DataError, match=needle):
        DataTask(write(tmp_path, "d.jsonl", text), tok)


def test_unknown_format_and_missing_file(tmp_path):
    with pytest.raises(DataError, match="unknown format '.csv'"):
        read_records(write(tmp_path, "d.csv", "a,b\n"))
    with pytest.raises(DataError, match="does not exist"):
        read_records(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        read_records(write(tmp_path, "d.parquet", "not parquet"))


# ---- a tiny random Qwen3 pair with its own tokenizer -------------------------------------


def tiny_qwen3(path: Path, tok, seed: int, hidden: int = 32) -> Path:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen3Config(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    Qwen3ForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def qwen_pair(tmp_path_factory, tok):
    root = tmp_path_factory.mktemp("qwen")
    return tiny_qwen3(root / "student", tok, 0), tiny_qwen3(root / "teacher", tok, 1, hidden=48)


def run_main(argv, capsys):
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr()


@pytest.mark.parametrize("data", ["math_plain.jsonl", "math_verl.parquet"])
def test_tiny_qwen3_trains_from_a_data_file(qwen_pair, tmp_path, capsys, monkeypatch, data):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    student, teacher = qwen_pair
    out = tmp_path / "run"
    code, cap = run_main(
        [
            "train",
            f"student={student}",
            f"teacher={teacher}",
            f"data={FIX / data}",
            "max_steps=2",
            f"out={out}",
            "progress=false",
            "max_len=32",
            "init_len=32",
            "min_len=16",
            "prompts_per_step=8",
        ],
        capsys,
    )
    assert code == 0, cap.err
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert sum("loss" in r for r in rows) == 2
    assert (out / "final" / "model.safetensors").exists() and (out / "summary.json").exists()
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out / "final").config.model_type == "qwen3"


def test_mismatched_vocabularies_are_refused_before_any_compute(qwen_pair, tmp_path, capsys):
    student, teacher = qwen_pair
    from transformers import AutoTokenizer

    other = tmp_path / "teacher2"
    import shutil

    shutil.copytree(teacher, other)
    t = AutoTokenizer.from_pretrained(other)
    t.add_tokens(["<extra_token>"])
    t.save_pretrained(other)
    code, cap = run_main(
        [
            "train",
            f"student={student}",
            f"teacher={other}",
            f"data={FIX / 'math_plain.jsonl'}",
            f"out={tmp_path / 'r'}",
        ],
        capsys,
    )
    assert code == 2 and cap.err.count("\n") == 1 and "different vocabularies" in cap.err
    assert not (tmp_path / "r").exists()


def test_data_file_without_the_named_field_is_one_line(qwen_pair, tmp_path, capsys):
    student, teacher = qwen_pair
    code, cap = run_main(
        [
            "train",
            f"student={student}",
            f"teacher={teacher}",
            f"data={FIX / 'math_plain.jsonl'}",
            "answer_field=solution",
            f"out={tmp_path / 'r'}",
        ],
        capsys,
    )
    assert code == 2 and cap.err.count("\n") == 1
    assert "math_plain.jsonl line 1: no field 'solution'" in cap.err


def test_missing_model_path_is_one_line(tmp_path, capsys):
    code, cap = run_main(
        [
            "train",
            f"student={tmp_path / 'nope'}",
            "teacher=teacher",
            f"data={FIX / 'math_plain.jsonl'}",
            f"out={tmp_path / 'r'}",
        ],
        capsys,
    )
    assert code == 2 and cap.err.count("\n") == 1 and "nope" in cap.err


def padless_copy(src: Path, dst: Path) -> Path:
    """A copy of a model folder whose tokenizer has no pad token (as most Llama and Mistral
    tokenizers)."""
    import shutil

    from transformers import AutoTokenizer

    shutil.copytree(src, dst)
    t = AutoTokenizer.from_pretrained(dst)
    t.pad_token = None
    t.save_pretrained(dst)
    assert AutoTokenizer.from_pretrained(dst).pad_token_id is None
    return dst


def test_padless_tokenizer_pads_with_eos_and_says_so(qwen_pair, tmp_path, capsys, monkeypatch):
    """Without a pad token a run pads with EOS (one stderr line naming it); `--check` too."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    student = padless_copy(qwen_pair[0], tmp_path / "student")
    teacher = padless_copy(qwen_pair[1], tmp_path / "teacher")
    out = tmp_path / "run"
    argv = [
        "train",
        f"student={student}",
        f"teacher={teacher}",
        f"data={FIX / 'math_plain.jsonl'}",
        "max_steps=1",
        f"out={out}",
        "progress=false",
        "max_len=16",
        "init_len=16",
        "min_len=8",
        "eval_problems=2",
    ]
    note = "the tokenizer has no pad token; padding with its EOS token '</s>' (id 2)"
    code, cap = run_main([*argv[:1], "--check", *argv[1:]], capsys)
    assert code == 0 and note in cap.err, cap.err
    code, cap = run_main(argv, capsys)
    assert code == 0, cap.err
    assert [x for x in cap.err.splitlines() if "pad token" in x] == [
        f"pruneopd: note: {note}; padded positions are masked"
    ]
    assert (out / "final" / "model.safetensors").exists()


def test_eval_scores_a_model_on_a_data_file(qwen_pair, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    student = qwen_pair[0]
    args = ["eval", "--model", str(student), "--n", "3", "--max-len", "8", "--json"]
    code, cap = run_main([*args, "--data", str(FIX / "math_plain.jsonl")], capsys)
    assert code == 0, cap.err
    res = json.loads(cap.out)
    assert res["task"] == "data:math_plain.jsonl" and res["n"] == 3
    assert res["max_new_tokens"] == 8 and 0 <= res["accuracy"] <= 1
    for extra in ([], ["--task", "regs", "--data", str(FIX / "math_plain.jsonl")]):
        code, cap = run_main([*args, *extra], capsys)
        assert code == 2 and cap.err.count("\n") == 1 and "exactly one of --task" in cap.err


def test_real_task_batches_train_on_the_answer_only_and_resume(tok, tmp_path):
    """The running-sums files (pruneopd real task) and the fine-tune's batches: labels only on
    the answer and its end-of-turn tokens; a stream restored from its state goes on alike."""
    from pruneopd.tools.real_task import write_task
    from pruneopd.tools.real_tune import ChatBatches, conversation_ids, read_rows

    info = write_task(tmp_path, n_train=20, n_dev=4, n_test=6)
    assert (info["train"], info["dev"], info["test"]) == (20, 4, 6)
    rows = read_rows(tmp_path / "train.jsonl")
    r = rows[0]
    xs = [int(x) for x in r["prompt"].splitlines()[1].split(", ")]
    assert r["answer"] == str(sum(xs)) and r["response"].endswith(f"The total is {sum(xs)}.")
    assert r["steps"] == r["response"].splitlines() and len(r["steps"]) == len(xs)
    prompts = {
        json.loads(x)["prompt"]
        for f in ("train", "dev", "test")
        for x in (tmp_path / f"{f}.jsonl").read_text().splitlines()
    }
    assert len(prompts) == 30  # no prompt in two files
    head, tail = conversation_ids(tok, r["prompt"], r["response"])
    b = ChatBatches(rows, tok, batch_size=3, seed=0)
    ids_BL, labels_BL = next(b)
    for ids_L, labels_L in zip(ids_BL, labels_BL, strict=True):
        kept = labels_L != -100
        assert torch.equal(ids_L[kept], labels_L[kept]) and kept.any() and not kept[0]
    state = b.state_dict()
    again = ChatBatches(rows, tok, batch_size=3, seed=0)
    again.load_state_dict(state)
    for _ in range(8):  # across the epoch boundary (20 rows, 3 a batch)
        x, y = next(b), next(again)
        assert torch.equal(x[0], y[0]) and torch.equal(x[1], y[1])
    assert tok.decode(tail).startswith(r["response"][:10]) and len(head) > 0
