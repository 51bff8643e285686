"""Malformed input, fuzzed: random truncations and corruptions of a real config file and
values of the wrong type. Whatever the input, `pruneopd train --check` either accepts it
(exit 0) or exits 2 with exactly one clean line on stderr: never a traceback."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from pruneopd.cli import main

PRESET = Path(__file__).parents[1] / "pruneopd" / "configs" / "prune-cross.yaml"
WRONG_VALUES = [
    "[1, 2]",
    "{a: 1}",
    "null",
    "-3",
    "1e999",
    "'text'",
    "0",
    "-0.5",
    "2.5",
    "true",
    "99999999",
    "''",
    "[[",
    "nan",
    '"\\x00"',
]
JUNK = [":", "[", "{", '"', "'", "\t", "-", "\\", "\x00", "é", "#", "&", "*", "!", "%", "|", ">"]


def mutate(text: str, rng: random.Random) -> bytes:
    lines = text.splitlines()
    kind = rng.randrange(7)
    if kind == 0:  # truncate anywhere
        return text[: rng.randrange(len(text))].encode()
    if kind == 1:  # a wrong value for a random key
        i = rng.randrange(len(lines))
        key = lines[i].split(":")[0]
        lines[i] = f"{key}: {rng.choice(WRONG_VALUES)}"
    elif kind == 2:  # junk characters spliced in
        for _ in range(rng.randint(1, 3)):
            j = rng.randrange(len(text))
            text = text[:j] + rng.choice(JUNK) + text[j:]
        return text.encode("utf-8")
    elif kind == 3:  # a misspelt key
        i = rng.randrange(len(lines))
        key, _, rest = lines[i].partition(":")
        j = rng.randrange(len(key))
        lines[i] = key[:j] + key[j + 1 :] + ":" + rest
    elif kind == 4:  # random bytes (not even UTF-8)
        return bytes(rng.randrange(256) for _ in range(rng.randint(1, 200)))
    elif kind == 5:  # a line lost its colon or indentation went wrong
        i = rng.randrange(len(lines))
        lines[i] = rng.choice([lines[i].replace(":", ""), "  " + lines[i], lines[i] + ": x"])
    else:  # out-of-range numbers for numeric keys
        i = rng.randrange(len(lines))
        key = lines[i].split(":")[0]
        lines[i] = f"{key}: {rng.choice(['-1', '0', '1.5', '100000', '-0.001'])}"
    return "\n".join(lines).encode()


def run_main(argv, capsys) -> tuple[int, str]:
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    return code, capsys.readouterr().err


def assert_clean(code: int, err: str, what: str):
    assert code in (0, 2), f"{what}: exit {code}\n{err}"
    assert "Traceback" not in err, f"{what}:\n{err}"
    if code == 2:
        lines = err.strip("\n").splitlines()
        assert len(lines) == 1 and lines[0].startswith("pruneopd: error: "), f"{what}:\n{err}"


@pytest.fixture
def base(tmp_path, use_fast_zoo) -> str:
    text = PRESET.read_text().replace("out: runs/prune-cross", f"out: {tmp_path / 'run'}")
    # a small run keeps --check cheap (it still loads both models and builds every prompt)
    return text.replace("max_steps: 100", "max_steps: 2").replace(
        "eval_problems: 256", "eval_problems: 8"
    )


def fuzz(n_cases: int, make, argv_for, capsys, names_file: bool = False) -> int:
    """Run `n_cases` corrupted inputs (`make(n) -> path`) through `main(argv_for(path))`;
    every outcome must be clean (exit 0, or exit 2 with one line, naming the file when
    `names_file`); returns how many were rejected."""
    errors = 0
    for n in range(n_cases):
        path = make(n)
        code, err = run_main(argv_for(path), capsys)
        assert_clean(code, err, f"case {n}: {path.read_bytes()[:300]!r}")
        if code == 2:
            errors += 1
            assert not names_file or str(path) in err, err
    return errors


def write_case(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_fuzzed_config_files_exit_0_or_2_with_one_line(base, tmp_path, capsys):
    rng = random.Random(0)
    errors = fuzz(  # 60 cases: each accepted one loads the models (the suite's slowest test)
        60,
        lambda n: write_case(tmp_path / f"cfg{n}.yaml", mutate(base, rng)),
        lambda p: ["train", "--config", str(p), "--check"],
        capsys,
    )
    assert errors >= 30, f"only {errors} of 60 mutations were rejected: the fuzzer is too weak"
    assert not (tmp_path / "run").exists()  # --check writes nothing


@pytest.mark.parametrize(
    "override",
    [
        "max_steps=[1]",
        "tau=0",
        "tau=1.01",
        "w_drop=-0.1",
        "min_len=600",
        "topk=100000",
        "lr=abc",
        "method=ful",
        "student=/nonexistent/model",
        "difficulty=100000",
        "resume=/nonexistent/ckpt",
        "on_nonfinite=ignore",
        "keep_checkpoints=0",
        "out=",
        "max_len=4000",
        "data=/nonexistent/data.jsonl",
        "data=README.md",
        "max_steps=1e999",
        "max_steps=1.5e0",
        "seed=-1e400",
    ],
)
def test_bad_overrides_are_one_line(base, tmp_path, capsys, override):
    path = tmp_path / "cfg.yaml"
    path.write_text(base)
    code, err = run_main(["train", "--config", str(path), "--check", override], capsys)
    assert code == 2
    assert_clean(code, err, override)
    assert override.split("=")[0] in err or "model" in err or "prompts" in err, err


def mutate_jsonl(text: str, rng: random.Random) -> bytes:
    lines = text.splitlines()
    kind = rng.randrange(5)
    if kind == 0:  # truncated file (a cut-off last line)
        return text[: rng.randrange(len(text))].encode()
    if kind == 1:  # junk in a random line
        i, j = rng.randrange(len(lines)), rng.randrange(20)
        lines[i] = lines[i][:j] + rng.choice(JUNK) + lines[i][j:]
    elif kind == 2:  # a field of the wrong type or missing
        i = rng.randrange(len(lines))
        lines[i] = rng.choice(
            [
                '{"prompt": 3, "answer": "1"}',
                '{"prompt": "q"}',
                "[]",
                '"x"',
                '{"prompt": ["a"], "answer": "1"}',
                '{"prompt": "", "answer": "1"}',
                '{"prompt": "q", "answer": null}',
                "{}",
            ]
        )
    elif kind == 3:  # bytes that are not UTF-8
        i = rng.randrange(len(lines))
        return ("\n".join(lines[:i]) + "\n").encode() + b"\xff\xfe" + lines[i].encode()
    else:  # empty or blank file
        return rng.choice([b"", b"\n\n", b"   \n"])
    return "\n".join(lines).encode()


def test_fuzzed_data_files_exit_0_or_2_with_one_line(base, tmp_path, capsys):
    good = (Path(__file__).parent / "fixtures" / "math_plain.jsonl").read_text()
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(base)
    rng = random.Random(2)
    errors = fuzz(
        40,
        lambda n: write_case(tmp_path / f"d{n}.jsonl", mutate_jsonl(good, rng)),
        lambda p: ["train", "--config", str(cfg), "--check", f"data={p}", "chat_template=false"],
        capsys,
        names_file=True,
    )
    assert errors >= 25, f"only {errors} of 40 corrupted data files were rejected"


def test_real_processes_exit_2_with_one_line(base, tmp_path, use_fast_zoo):
    """The same through a real process: exit status and stderr as a user sees them."""
    rng = random.Random(1)
    env = {**os.environ, "PRUNEOPD_ZOO": str(use_fast_zoo), "OMP_NUM_THREADS": "1"}
    cases = [
        b"max_steps: [1, 2\n",
        bytes(rng.randrange(256) for _ in range(64)),
        base.replace("tau: 0.5", "tau: high").encode(),
    ]
    for n, data in enumerate(cases):
        path = tmp_path / f"bad{n}.yaml"
        path.write_bytes(data)
        p = subprocess.run(
            [sys.executable, "-m", "pruneopd.cli", "train", "--config", str(path)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert_clean(p.returncode, p.stderr, f"case {n}")
        assert p.returncode == 2
