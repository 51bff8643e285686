"""Nothing changed: every method on both zoo suites (3 steps, fixed seed) logs the same metrics
and ends with the same weights, bit for bit, as when tests/golden/golden.json was recorded
(before the package moved into layers, issue 28). See tests/golden/golden_runs.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "golden"))
import golden_runs  # noqa: E402

RECORD = json.loads(golden_runs.RECORD.read_text())


@pytest.mark.parametrize(
    "name,preset,extra", golden_runs.cases(), ids=[c[0] for c in golden_runs.cases()]
)
def test_golden_run(name, preset, extra, tmp_path, monkeypatch):
    if golden_runs.cpu_id() != RECORD["cpu"] or torch.__version__ != RECORD["torch"]:
        pytest.skip(
            f"golden.json was recorded on another CPU or torch ({RECORD['cpu'][:40]}..., "
            f"{RECORD['torch']}); bit-exact floats only hold on the same"
        )
    import pruneopd.training.train as train_mod

    monkeypatch.delenv("PRUNEOPD_ZOO", raising=False)
    monkeypatch.setattr(train_mod, "set_threads", lambda: None)
    n = torch.get_num_threads()
    try:
        got = golden_runs.run_case(preset, extra, tmp_path / "run")
    finally:
        torch.set_num_threads(n)
    want = RECORD["cases"][name]
    for step, (g, w) in enumerate(zip(got["metrics"], want["metrics"], strict=True)):
        assert g == w, f"{name}: metrics row {step} differs"
    assert got == want
