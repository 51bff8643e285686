"""Configuration loading and the command line's error contract.

Input errors end with exit code 2 and exactly one line on stderr (no traceback). The CLI is
run in-process (`pruneopd.cli.main`) to keep the suite fast; only `--help`, which imports no
torch, is run as a real subprocess of the installed `pruneopd` script.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pruneopd.training.train as train_mod
from pruneopd.cli import main
from pruneopd.config import ConfigError, TrainConfig, load_config

# ---- load_config --------------------------------------------------------------------------


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_yaml_file_plus_overrides(tmp_path):
    p = write(tmp_path, "method: full\nloss: jsd\nmax_steps: 7\ntau: 0.5\nonline_pruning: false\n")
    cfg = load_config(p, ["max_steps=3", "lr=1e-3", "jsd_beta=0.25", "student=student-same"])
    assert isinstance(cfg, TrainConfig)
    assert (cfg.method, cfg.loss, cfg.tau) == ("full", "jsd", 0.5)  # from the file
    assert cfg.max_steps == 3 and isinstance(cfg.max_steps, int)  # override wins
    assert cfg.lr == 1e-3 and isinstance(cfg.lr, float)  # "1e-3" is a string in YAML 1.1
    assert cfg.jsd_beta == 0.25 and cfg.student == "student-same"
    assert cfg.w_drop == TrainConfig().w_drop  # untouched keys keep their defaults
    assert load_config(None, ["online_pruning=yes"]).online_pruning is True
    assert load_config(None, ["max_steps=2E2"]).max_steps == 200  # integer in exponent form
    assert load_config(write(tmp_path, "", "empty.yaml")).method == TrainConfig().method


@pytest.mark.parametrize(
    ("where", "key", "hint"),
    [
        ("override", "max_step", "max_steps"),
        ("override", "w_dorp", "w_drop"),
        ("file", "learning_rat", None),
        ("file", "tua", "tau"),
    ],
)
def test_unknown_key_suggests_the_closest(tmp_path, where, key, hint):
    with pytest.raises(ConfigError) as e:
        if where == "file":
            load_config(write(tmp_path, f"{key}: 3\n"))
        else:
            load_config(None, [f"{key}=3"])
    msg = str(e.value)
    assert f"'{key}'" in msg and "unknown config key" in msg
    if hint:
        assert f"did you mean '{hint}'" in msg
    if where == "file":
        assert "cfg.yaml" in msg


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("tau=1.5", "tau"),
        ("tau=-0.1", "tau"),
        ("w_drop=-1", "w_drop"),
        ("w_base=-0.5", "w_base"),
        ("min_len=600", "min_len"),
        ("init_len=1000", "init_len"),
        ("max_steps=0", "max_steps"),
        ("lr=0", "lr"),
        ("top_p=0", "top_p"),
        ("jsd_beta=2", "jsd_beta"),
        ("hit_ratio=1.1", "hit_ratio"),
        ("prune_floor=1", "prune_floor"),
        ("method=half", "method"),
        ("loss=kl", "loss"),
        ("drift_metric=x", "drift_metric"),
        ("max_steps=2.5", "max_steps"),
        ("tau=abc", "tau"),
        ("online_pruning=maybe", "online_pruning"),
    ],
)
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        load_config(None, [override])


def test_config_yaml_of_a_data_run_names_no_task(tmp_path):
    from pruneopd.config import config_to_yaml

    cfg = load_config(None, ["data=mine.jsonl", "method=full"])
    text = config_to_yaml(cfg)
    assert "task:" not in text and "data: mine.jsonl" in text
    assert load_config(write(tmp_path, text)) == cfg  # reads back as the same config
    assert "task: regs" in config_to_yaml(load_config(None, []))  # a built-in task is kept


def test_budget_keys_are_checked_for_prune_only():
    """init_len / min_len are the budget's (method=prune): other methods never read them."""
    for method in ("full", "prefix", "hybrid"):
        cfg = load_config(None, [f"method={method}", "max_len=64", "init_len=128", "min_len=96"])
        assert cfg.init_len == 128
    with pytest.raises(ConfigError, match="'min_len'"):
        load_config(None, ["method=prune", "max_len=64", "init_len=128", "min_len=96"])
    with pytest.raises(ConfigError, match="'init_len'"):
        load_config(None, ["method=prune", "max_len=64", "init_len=128", "min_len=16"])
    with pytest.raises(ConfigError, match="'max_len'"):  # every method's own keys still checked
        load_config(None, ["method=full", "max_len=0"])


def test_bad_values_in_the_file_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="'tau'"):
        load_config(write(tmp_path, "tau: 1.5\n"))
    with pytest.raises(ConfigError, match="'method'"):  # online pruning is a prune option
        load_config(write(tmp_path, "method: full\nonline_pruning: true\n"))


def test_malformed_yaml_names_file_and_line(tmp_path):
    p = write(tmp_path, "method: prune\nloss: topk_rkl\nmax_steps: [1, 2\ntau: 0.5\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg and "not valid YAML" in msg
    assert "line " in msg and msg.split("line ")[1].split(":")[0].isdigit()
    p2 = write(tmp_path, "a: b\n  c: d\n", "bad2.yaml")  # a mapping where none is allowed
    with pytest.raises(ConfigError, match=r"bad2\.yaml line 2"):
        load_config(p2)


def test_non_mapping_yaml_and_bad_override_form(tmp_path):
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["max_steps"])


def test_string_overrides_are_kept_verbatim():
    assert load_config(None, ["out=runs/2024.10"]).out == "runs/2024.10"  # fine: has a '/'
    assert load_config(None, ["out=2024.10"]).out == "2024.10"  # YAML float -> "2024.1"
    assert load_config(None, ["student=yes"]).student == "yes"  # YAML bool -> "True"


# ---- the CLI ------------------------------------------------------------------------------


@pytest.fixture
def one_thread(monkeypatch):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setattr(train_mod, "set_threads", lambda: None)
    yield
    torch.set_num_threads(n)


def run_cli(argv, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(argv)
    out, err = capsys.readouterr()
    return e.value.code, out, err


def assert_one_line_error(code, err, *needles):
    assert code == 2, err
    assert err.endswith("\n") and err.count("\n") == 1, f"expected one line, got:\n{err}"
    assert err.startswith("pruneopd: error: ") and "Traceback" not in err
    for n in needles:
        assert n in err, err


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["train", "max_step=3"], ["'max_step'", "did you mean 'max_steps'"]),
        (["train", "tau=1.5"], ["'tau'", "(0, 1]"]),
        (
            ["train", "--config", "/nonexistent/cfg.yaml"],
            ["/nonexistent/cfg.yaml", "does not exist"],
        ),
        (["train", "--bogus-flag"], ["--bogus-flag"]),
        (["frobnicate"], ["frobnicate"]),
    ],
)
def test_cli_config_errors_are_one_line_exit_2(capsys, argv, needles):
    code, _, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, *needles)


def test_cli_missing_model_path(use_fast_zoo, one_thread, capsys, tmp_path):
    code, _, err = run_cli(["train", "student=/nonexistent", f"out={tmp_path / 'run'}"], capsys)
    assert_one_line_error(code, err, "/nonexistent")
    assert not (tmp_path / "run").exists()


def test_cli_unknown_task(use_fast_zoo, one_thread, capsys, tmp_path):
    code, _, err = run_cli(["train", "task=nope", f"out={tmp_path / 'run'}"], capsys)
    assert_one_line_error(code, err, "unknown task 'nope'")


def test_cli_unknown_task_exit_code_and_message(use_fast_zoo, one_thread, capsys, tmp_path):
    """The part of the contract that holds today: exit 2, error as the last line, no traceback."""
    code, _, err = run_cli(["train", "task=nope", f"out={tmp_path / 'run'}"], capsys)
    assert code == 2 and "Traceback" not in err
    assert (
        err.splitlines()[-1]
        == "pruneopd: error: unknown task 'nope'; built-in tasks: regs, add, loop"
    )
    assert not (tmp_path / "run").exists()


def test_cli_topk_larger_than_vocabulary(use_fast_zoo, one_thread, capsys, tmp_path):
    code, _, err = run_cli(["train", "topk=400", f"out={tmp_path / 'run'}"], capsys)
    assert_one_line_error(code, err, "'topk'", "larger than the vocabulary")


def test_cli_mismatched_vocabularies(use_fast_zoo, one_thread, capsys, tmp_path):
    from pruneopd.tokenizer import build_tokenizer

    other = tmp_path / "teacher-other-vocab"
    shutil.copytree(use_fast_zoo / "teacher", other)
    build_tokenizer(vocab_size=280).save_pretrained(other)  # its own tokenizer, 280 tokens
    code, _, err = run_cli(["train", f"teacher={other}", f"out={tmp_path / 'run'}"], capsys)
    assert_one_line_error(code, err, "vocabularies", str(other))
    assert not (tmp_path / "run").exists()


def test_cli_help_lists_subcommands():
    exe = shutil.which("pruneopd")
    cmd = [exe] if exe else [sys.executable, "-m", "pruneopd.cli"]
    res = subprocess.run([*cmd, "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stderr == ""
    for sub in ("zoo", "eval", "train"):
        assert sub in res.stdout
    assert "usage: pruneopd" in res.stdout


def test_cli_help_config_lists_every_key(capsys):
    main(["train", "--help-config"])
    out = capsys.readouterr().out
    for key in ("tau", "w_drop", "w_base", "online_pruning", "reliable_prefix_only"):
        assert f"  {key} = " in out


def test_monitor_k():
    assert TrainConfig().monitor_k == 16
    assert TrainConfig(drift_k=1).monitor_k == 1
    # the top-p acceptance metric takes its nucleus within the teacher's whole top-K
    assert TrainConfig(drift_k=1, drift_metric="teacher_top_p_accept").monitor_k == 16
    with pytest.raises(ConfigError, match="drift_k"):
        TrainConfig(drift_k=17)


def test_zoo_build_refuses_to_overwrite_a_zoo(fast_zoo, capsys):
    # a build into a zoo of another seed (or spec) would mix two zoos: refused
    code, _, err = run_cli(
        ["zoo", "build", "--fast", "--seed", "1", "--out", str(fast_zoo)], capsys
    )
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "--force" in err and "another spec" in err


def test_busy_cores_note():
    from pruneopd.models import busy_cores_note

    assert busy_cores_note(2, 2, 0.3) is None
    assert busy_cores_note(1, 2, 1.0) is None
    note = busy_cores_note(2, 2, 1.0)
    assert note.startswith("pruneopd: note: load average 1.0 on 2 cores")
    assert "OMP_NUM_THREADS=1" in note and "\n" not in note
    assert "OMP_NUM_THREADS=14" in busy_cores_note(16, 16, 2.2)
    assert busy_cores_note(16, 16, 0.6) is None
    assert "OMP_NUM_THREADS=1" in busy_cores_note(2, 2, 3.5)  # never fewer than one


def test_note_busy_cores_once(monkeypatch, capsys):
    from pruneopd import models

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(models.torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(models.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(models.os, "getloadavg", lambda: (1.0, 1.0, 1.0))
    monkeypatch.setattr(models, "_noted", [])
    models.note_busy_cores()
    models.note_busy_cores()
    err = capsys.readouterr().err
    assert err.count("pruneopd: note: load average 1.0 on 2 cores") == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setattr(models, "_noted", [])
    models.note_busy_cores()  # the user chose the threads: no note
    assert capsys.readouterr().err == ""


def test_a_stderr_line_is_one_write(monkeypatch):
    """Torchrun ranks share stderr: a line and its newline go out in one write, or two ranks'
    stop lines run together (seen in CI: '...resume=autopruneopd: step 2 ...')."""
    import sys
    from types import SimpleNamespace

    from pruneopd.errors import say

    writes = []
    fake = SimpleNamespace(write=writes.append, flush=lambda: None)
    monkeypatch.setattr(sys, "stderr", fake)
    say("pruneopd: step 2 of 5 stopped: x")
    assert writes == ["pruneopd: step 2 of 5 stopped: x\n"]


def test_overrides_on_both_sides_of_an_option(tmp_path):
    from pruneopd.cli import parse

    args = parse(["train", "a=1", "--config", "c.yaml", "b=2", "a=3"])
    assert args.config == "c.yaml" and args.overrides == ["a=1", "b=2", "a=3"]  # the last a wins
    args = parse(["card", "student=s", "--n", "8", "teacher=t"])
    assert args.n == 8 and args.overrides == ["student=s", "teacher=t"]


@pytest.mark.parametrize(
    "argv", [["train", "a=1", "--config", "c.yaml", "stray"], ["eval", "--model", "m", "x=1"]]
)
def test_what_is_not_an_override_is_still_refused(capsys, argv):
    code, _, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, "unrecognized arguments")


def test_real_tune_from_and_out(tmp_path, monkeypatch, capsys):
    """`real tune student --from A --out B` starts from A and writes B (names under --real);
    a missing start or the same folder twice is one line, exit 2."""
    import pruneopd.tools.real_tune as real_tune

    real = tmp_path / "real"
    (real / "sums").mkdir(parents=True)
    for name in ("train.jsonl", "dev.jsonl"):
        (real / "sums" / name).write_text("")
    (real / "student-sums").mkdir()
    (real / "student-sums" / "config.json").write_text("{}")
    calls = []
    monkeypatch.setattr(real_tune, "tune", lambda *a, **k: calls.append((a, k)) or {"ok": 1})
    base = ["real", "tune", "student", "--real", str(real)]
    main([*base, "--from", "student-sums", "--out", "student-300", "--steps", "7", "--seed", "3"])
    (start, _, _, out), kw = calls[0]
    assert (start, out) == (real / "student-sums", real / "student-300")
    assert kw["steps"] == 7 and kw["seed"] == 3
    capsys.readouterr()
    code, _, err = run_cli([*base, "--from", "student-sums", "--out", "student-sums"], capsys)
    assert_one_line_error(code, err, "--from and --out are the same folder")
    code, _, err = run_cli([*base, "--from", "nope"], capsys)
    assert_one_line_error(code, err, str(real / "nope" / "config.json"), "does not exist")
