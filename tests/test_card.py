"""`pruneopd card`: the monitor and budget a pair's card recommends, worked by hand; the loss
chunk from the vocabulary; the start-up line saying which config a run starts from."""

import json
from pathlib import Path

import pytest
import torch

from pruneopd.cli import _config_path, main
from pruneopd.tools.card import choose_by_separation, recommend_budget, separation_sweep
from pruneopd.training.objective import loss_chunk_for


def _two_samples():
    """Sample 0 (wrong): the teacher's top-1 differs at t = 1, 2; sample 1 (right): never."""
    s_BTK = torch.tensor([[1, 1, 1, 1], [3, 3, 3, 3]])[..., None]
    t_BTK = torch.tensor([[1, 2, 2, 1], [3, 3, 3, 3]])[..., None]
    mask_BT = torch.ones(2, 4, dtype=torch.bool)
    return s_BTK, t_BTK, mask_BT, torch.tensor([False, True])


def test_separation_sweep_by_hand():
    rows = separation_sweep(*_two_samples(), ks=(1,), taus=(0.5,), w_drops=(0.2, 0.5))
    weak, strong = rows
    # w_drop 0.2: C_t = 0,1,2,2 -> w = 1, .8, .6, .6: never runs out -> nothing caught
    assert (weak["caught"], weak["false_alarm"], weak["separation"]) == (0.0, 0.0, 0.0)
    assert weak["event_rate"] == 0.25  # 2 of 8 tokens
    # w_drop 0.5: w = 1, .5, 0, 0: sample 0 runs out after 2 reliable tokens, sample 1 never
    assert (strong["caught"], strong["false_alarm"], strong["separation"]) == (1.0, 0.0, 1.0)
    assert strong["eff_len_median"] == 3.0 and strong["eff_len_p10"] == pytest.approx(2.2)
    pick = choose_by_separation(rows, n_right=1, n_wrong=1)
    assert (pick["k"], pick["tau"], pick["w_drop"]) == (1, 0.5, 0.5)
    assert "100% of the 1 wrong samples and 0% of the 1 right ones" in pick["reason"]


def test_without_wrong_samples_the_card_says_it_cannot_calibrate():
    s, t, m, _ = _two_samples()
    rows = separation_sweep(s, t, m, torch.tensor([True, True]), ks=(1,), taus=(0.5,))
    pick = choose_by_separation(rows, n_right=2, n_wrong=0)
    assert "every sample is right" in pick["reason"]
    assert pick["w_drop"] == 0.005  # keeps the most reliable length while still measuring


def test_recommended_budget_by_hand():
    lengths = list(range(100, 300, 10))  # 20 samples, p95 = 280.5 -> 1.25x = 350.6 -> 352
    eff = [40] * 10 + [200] * 10  # p10 = 40 -> 32; median 120 -> 128
    b = recommend_budget(lengths, cut_rate=0.0, eff_lengths=eff, max_len=512)
    assert b == {"max_len": 352, "init_len": 128, "min_len": 32}
    # more than 5% cut by the card's cap: keep the cap (the card says to raise it)
    assert recommend_budget(lengths, 0.1, eff, max_len=256)["max_len"] == 256


def test_loss_chunk_from_the_vocabulary():
    assert loss_chunk_for(49152) == 512  # 512 x 49152 x 4 B = 96 MiB <= 128 MiB < 1024 x ...
    assert loss_chunk_for(151936) == 128  # Qwen's vocabulary
    assert loss_chunk_for(64) == 4096  # the zoo: the old fixed default, golden runs unchanged


def test_which_config_a_run_starts_from(tmp_path):
    path, line = _config_path(None, ["max_steps=3"])
    assert path.name == "prune-same.yaml" and "the zoo's prune-same preset" in line
    assert _config_path(None, ["student=long/student-cross"])[0].name == "prune-same.yaml"
    mine = tmp_path / "my-student"
    mine.mkdir()
    path, line = _config_path(None, [f"student={mine}", "data=x.jsonl"])
    assert path is None and f"your own pair (student={mine})" in line and "2 overrides" in line
    path, line = _config_path("my.yaml", [])
    assert path == Path("my.yaml") and line == "pruneopd: config: my.yaml"


def test_first_departure_by_hand():
    from pruneopd.tools.card import first_departure

    # teacher's top-2 ids [5, 6] everywhere, probabilities 0.95 / 0.05: nucleus(0.9) = {5}
    ids_BTK = torch.tensor([[5, 6]]).expand(2, 4, 2)
    logp_BTK = torch.tensor([0.95, 0.05]).log().expand(2, 4, 2)
    tokens_BT = torch.tensor([[5, 6, 5, 5], [5, 5, 5, 0]])
    mask_BT = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]).bool()
    d = first_departure(tokens_BT, ids_BTK, logp_BTK, mask_BT)
    assert d["positions"] == [1, 3] and d["never"] == 0.5
    assert d["share_after"] == pytest.approx(2 / 7) and d["median"] == 1.0


def test_card_on_the_zoo_writes_a_config_that_trains(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "card"
    argv = ["card", "student=student-cross", "teacher=teacher", "max_len=64", "min_len=32"]
    argv += ["init_len=64", "--n", "12", "--out", str(out)]
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code
    cap = capsys.readouterr()
    assert code == 0, cap.err
    assert "pruneopd: config: the zoo's prune-same preset" in cap.err
    rec = json.loads((out / "card.json").read_text())["recommended"]
    line = next(x for x in cap.out.splitlines() if x.startswith("recommended: "))
    assert line == "recommended: " + " ".join(f"{k}={v}" for k, v in rec["keys"].items())
    assert rec["keys"]["loss_chunk"] == 4096 and rec["keys"]["max_len"] <= 64
    assert (out / "top1_by_position.png").exists()
    dep = json.loads((out / "card.json").read_text())["card"]["departure"]
    assert len(dep["positions"]) == 12 and 0.0 <= dep["share_after"] < 1.0
    assert any(
        x.startswith("the student leaves the teacher's top-0.9 nucleus")
        for x in cap.out.splitlines()
    )
    # method auto's horizon on these samples, and the line that says it
    horizon = rec["auto_horizon"]
    assert horizon is None or 32 <= horizon < 64
    auto = next(x for x in cap.out.splitlines() if x.startswith("method auto: "))
    assert ("no horizon" in auto) == (horizon is None)
    from pruneopd.config import load_config

    cfg = load_config(out / "card.yaml", [f"out={tmp_path / 'run'}"])
    assert cfg.drift_k == rec["keys"]["drift_k"] and cfg.student == "student-cross"


def test_gradient_checkpointing_turns_on_by_itself_past_the_activation_budget():
    from types import SimpleNamespace

    from pruneopd.config import TrainConfig
    from pruneopd.models import load_model
    from pruneopd.training.pair import activation_bytes, checkpointing_note

    small = SimpleNamespace(hidden_size=4, intermediate_size=8, num_hidden_layers=2)
    assert activation_bytes(small, samples=10, seq_len=100) == 10 * 100 * 2 * (24 + 32) * 4
    smol = SimpleNamespace(hidden_size=576, intermediate_size=1536, num_hidden_layers=15)
    assert activation_bytes(smol, 16, 356) / 1e9 == pytest.approx(3.28, abs=0.01)
    student = load_model("student-cross")
    need = activation_bytes(student.config, 32, 200)
    cfg = TrainConfig(activation_memory_gb=need / 1e9 * 1.01)
    assert (
        checkpointing_note(cfg, student, 32, 200) is None
        and not student.is_activation_checkpointing
    )
    cfg = TrainConfig(activation_memory_gb=need / 1e9 * 0.99)
    assert "gradient checkpointing on: the student's activations for 32 samples x 200" in (
        checkpointing_note(cfg, student, 32, 200)
    )
    assert student.is_activation_checkpointing
    assert (
        checkpointing_note(
            TrainConfig(activation_memory_gb=0), load_model("student-cross"), 10**6, 10**6
        )
        is None
    )
