"""A zoo build resumes: killed (SIGKILL) mid-model, it continues from the model's last
checkpoint and ends with the same weights as a build that never stopped; finished models are
never trained again; a zoo of another spec is refused."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from pruneopd.models import ZOO_NAMES
from pruneopd.tools.zoo import PARTIAL, build_zoo

# The long suite's fast spec with more steps and evaluations, so there is something to lose.
SPEC = (
    "replace(FAST_LONG, teacher_steps=12, student_steps=12, teacher_eval_every=3, "
    "student_eval_every=3, teacher_target=2.0, student_target=2.0)"
)


# Evaluation by teacher-forced likelihood of the reference traces instead of greedy accuracy
# (which is 0 for every tiny model): a function of the weights that grows as they train, so
# every evaluation keeps the newest model and the final weights are what gets compared.
LIKELIHOOD_EVAL = textwrap.dedent("""
    import math as _math
    def likelihood_eval(model, tok, task, problems, **kw):
        from pruneopd.tokenizer import encode_prompt
        total = 0.0
        for p in problems:
            ids = encode_prompt(tok, p.prompt) + tok(task.render(p, "terse"),
                                                     add_special_tokens=False)["input_ids"]
            with torch.inference_mode():
                total += model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss
        return {"accuracy": _math.exp(-float(total) / len(problems))}
""")


def _spec():
    from dataclasses import replace  # noqa: F401  (used by eval)

    from pruneopd.tools.zoo import FAST_LONG  # noqa: F401

    return eval(SPEC)


def _build_killed(out, kill_at_eval: int) -> int:
    """Build in a child process that SIGKILLs itself at its `kill_at_eval`-th evaluation
    (after training past its last checkpoint); returns the child's exit status."""
    script = textwrap.dedent(f"""
        import os, signal, torch
        from dataclasses import replace
        import pruneopd.tools.zoo as zoo
        from pruneopd.tools.zoo import FAST_LONG, build_zoo
        torch.set_num_threads(1)
        exec({LIKELIHOOD_EVAL!r})
        calls = [0]
        def evaluate(*a, **k):
            calls[0] += 1
            if calls[0] == {kill_at_eval}:
                os.kill(os.getpid(), signal.SIGKILL)
            return likelihood_eval(*a, **k)
        zoo.evaluate = evaluate
        build_zoo({str(out)!r}, {SPEC}, seed=0, log=lambda s: None)
    """)
    return subprocess.run([sys.executable, "-c", script], timeout=600).returncode


def _weights(folder):
    return {name: load_file(folder / name / "model.safetensors") for name in ZOO_NAMES}


def test_killed_build_resumes_to_the_same_zoo(tmp_path, monkeypatch):
    import pruneopd.tools.zoo as zoo

    scope = {"torch": torch}
    exec(LIKELIHOOD_EVAL, scope)
    monkeypatch.setattr(zoo, "evaluate", scope["likelihood_eval"])
    torch.set_num_threads(1)
    ref = build_zoo(tmp_path / "ref", _spec(), seed=0, log=lambda s: None)
    # every model improved at every evaluation, so what is compared below is its last step
    assert all(ref["models"][n]["best_step"] == 12 for n in ZOO_NAMES), ref["models"]
    out = tmp_path / "killed"
    # evaluations: teacher at steps 3, 6, 9, 12; then student-same 3, 6, ...
    assert _build_killed(out, kill_at_eval=3) == -9  # teacher, after its step-6 checkpoint
    assert (out / PARTIAL / "teacher" / "state.pt").exists()
    assert _build_killed(out, kill_at_eval=4) == -9  # teacher done at 12, student-same at 6
    assert not (out / PARTIAL / "teacher").exists()
    assert (out / PARTIAL / "student-same" / "state.pt").exists()
    logs = []
    got = build_zoo(out, _spec(), seed=0, log=logs.append)
    assert any("teacher: already built" in x for x in logs), logs
    assert any("student-same: resuming at step 3" in x for x in logs), logs
    a, b = _weights(tmp_path / "ref"), _weights(out)
    for name in ZOO_NAMES:
        assert a[name].keys() == b[name].keys()
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), (name, key)
        for field in ("steps_taken", "best_step"):
            assert ref["models"][name][field] == got["models"][name][field], (name, field)
    assert not (out / PARTIAL).exists() or not any((out / PARTIAL).iterdir())


def test_finished_models_are_not_trained_again(tmp_path):
    torch.set_num_threads(1)
    build_zoo(tmp_path, _spec(), seed=0, log=lambda s: None)
    stamp = {n: (tmp_path / n / "model.safetensors").stat().st_mtime_ns for n in ZOO_NAMES}
    logs = []
    build_zoo(tmp_path, _spec(), seed=0, log=logs.append)
    assert sum("already built" in x for x in logs) == len(ZOO_NAMES)
    assert stamp == {n: (tmp_path / n / "model.safetensors").stat().st_mtime_ns for n in ZOO_NAMES}
    # another spec (or seed) in the same folder is refused unless forced
    with pytest.raises(ValueError, match="another spec or seed.*--force"):
        build_zoo(tmp_path, _spec(), seed=1, log=lambda s: None)
