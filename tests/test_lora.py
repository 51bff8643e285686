"""LoRA students (training/lora.py): the samplers see the adapted weights (sampled log-probs =
the adapted model's forward), only the adapters train, a stopped run resumes bit-exactly,
final/ is saved merged (plain `from_pretrained`) or as a peft adapter, and bad LoRA input is
one line, exit 2, before any compute."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("peft", reason="peft is not installed (pip install -e '.[lora]')")

from peft import AutoPeftModelForCausalLM  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from pruneopd.config import LORA_TARGETS, TrainConfig  # noqa: E402
from pruneopd.engines import fused  # noqa: E402
from pruneopd.engines.rollout import sample  # noqa: E402
from pruneopd.models import load_model, resolve  # noqa: E402
from pruneopd.training import distributed, lora  # noqa: E402
from pruneopd.training.train import train  # noqa: E402
from tests.test_config_cli import assert_one_line_error, run_cli  # noqa: E402
from tests.test_resume import cfg_for  # noqa: E402
from tests.tiny import tiny_llama  # noqa: E402

RUN = dict(max_steps=4, lora_r=4, lr=5e-2, eval_every=0, save_every=1)


def _adapted(seed: int = 0):
    """A tiny Llama with LoRA on q/k/v/o and random (nonzero) B, so the adapters matter."""
    student = lora.adapt(tiny_llama(64, seed=seed), TrainConfig(lora_r=4, lora_alpha=8.0))
    torch.manual_seed(seed + 1)
    with torch.no_grad():
        for _, layer in lora.lora_layers(student.get_base_model()):
            layer.lora_B["default"].weight.normal_(0, 0.5)
    return student


def _forward_logprobs(model, prompt, response) -> torch.Tensor:
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    lp = logits.log_softmax(-1)[len(prompt) - 1 : -1]
    return lp.gather(-1, torch.tensor(response)[:, None])[:, 0]


@pytest.mark.parametrize("engine", ["lean", "fused"])
def test_sampled_logprobs_equal_the_adapted_forward(engine):
    if engine == "fused" and not fused.available():
        pytest.skip("the fused kernel does not build here")
    torch.set_num_threads(1)
    student = _adapted()
    ps = distributed.ParallelStudent(student, "ddp", distributed.Dist())
    assert ps.adapter is student and ps.model is not student.get_base_model()
    prompts = [[1, 5, 9, 3], [2, 7], [4, 4, 8, 1, 6]]
    r = sample(
        ps.model,
        prompts,
        max_new_tokens=12,
        eos_id=0,
        pad_id=0,
        topk=4,
        engine=engine,
        generator=torch.Generator().manual_seed(0),
    )
    plain = tiny_llama(64)  # the student without its adapters
    gap = 0.0
    for p, resp, lp in zip(prompts, r.responses, r.student_logprobs, strict=True):
        want = _forward_logprobs(student, p, resp)
        torch.testing.assert_close(lp, want, atol=2e-5, rtol=0)
        gap = max(gap, float((_forward_logprobs(plain, p, resp) - want).abs().max()))
    assert gap > 0.05  # the adapters change the distribution: the check above can fail
    # after an update of the adapters the merged copy follows them
    with torch.no_grad():
        for _, layer in lora.lora_layers(student.get_base_model()):
            layer.lora_A["default"].weight.mul_(-1.0)
    ps.after_update()
    r2 = sample(
        ps.model,
        prompts,
        max_new_tokens=8,
        eos_id=0,
        pad_id=0,
        topk=4,
        engine=engine,
        generator=torch.Generator().manual_seed(1),
    )
    for p, resp, lp in zip(prompts, r2.responses, r2.student_logprobs, strict=True):
        torch.testing.assert_close(lp, _forward_logprobs(student, p, resp), atol=2e-5, rtol=0)


def test_merged_copy_shares_the_frozen_weights():
    student = _adapted()
    inner = student.get_base_model()
    view = lora.merged_copy(inner)
    mine = {n: p for n, p in inner.named_parameters()}
    for name, p in view.named_parameters():
        if any(name.endswith(f"{t}.weight") for t in ("q_proj", "k_proj", "v_proj", "o_proj")):
            assert p.data_ptr() != mine[name.replace(".weight", ".base_layer.weight")].data_ptr()
        else:
            assert p is mine[name], name  # no copy of the weights the adapters leave alone
    assert all(type(m) is not type(inner.model.layers[0].self_attn.q_proj) for m in view.modules())


def _only_adapters(ckpt) -> None:
    state = torch.load(ckpt / "trainer.pt", weights_only=True)
    n_adapters = len(load_file(ckpt / "student" / "adapter_model.safetensors"))
    assert len(state["optimizer"]["param_groups"][0]["params"]) == n_adapters
    assert sorted(p.name for p in (ckpt / "student").iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]


def test_lora_run_resumes_exactly_and_saves_final(zoo, tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "run"
    train(cfg_for(ref, **RUN))
    train(cfg_for(out, **{**RUN, "max_steps": 2}))  # stops after step 2 ...
    _only_adapters(out / "checkpoints" / "step-00000002")
    train(cfg_for(out, **RUN, resume="auto"))  # ... and continues to step 4
    rows = [
        [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()] for d in (ref, out)
    ]
    for a, b in zip(*rows, strict=True):
        for k in ("t_sample", "t_teacher", "t_update"):
            a.pop(k, None), b.pop(k, None)
        assert a == b
    assert all(r["logprob_mismatch"] < 1e-5 for r in rows[0] if "loss" in r)
    wa, wb = (
        load_file(ref / "final" / "model.safetensors"),
        load_file(out / "final" / "model.safetensors"),
    )
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    # merged final/ = the student + its adapters folded in, as peft merges them (bit for bit);
    # only the adapted projections moved
    adapter = out / "checkpoints" / "step-00000004" / "student"
    merged = AutoPeftModelForCausalLM.from_pretrained(str(adapter)).merge_and_unload()
    final = AutoModelForCausalLM.from_pretrained(str(out / "final")).state_dict()
    start = AutoModelForCausalLM.from_pretrained(str(resolve("student-cross"))).state_dict()
    for k, v in merged.state_dict().items():
        assert torch.equal(final[k], v), k
        adapted = any(f"{t}.weight" in k for t in LORA_TARGETS)
        assert torch.equal(v, start[k]) != adapted, k


def test_final_saved_as_adapter(zoo, tmp_path):
    out = tmp_path / "run"
    train(cfg_for(out, **{**RUN, "max_steps": 1, "lora_save": "adapter", "save_every": 0}))
    assert (out / "final" / "adapter_config.json").is_file()
    assert not (out / "final" / "model.safetensors").exists()
    got = AutoPeftModelForCausalLM.from_pretrained(str(out / "final"))
    ckpt = out / "checkpoints" / "step-00000001" / "student" / "adapter_model.safetensors"
    want = load_file(ckpt)
    mine = load_file(out / "final" / "adapter_model.safetensors")
    assert mine.keys() == want.keys() and all(torch.equal(mine[k], want[k]) for k in want)
    assert got.peft_config["default"].r == 4
    # pruneopd's own loader (eval --model, student=) takes it too: the base with it merged
    merged = load_model(str(out / "final")).state_dict()
    start = AutoModelForCausalLM.from_pretrained(str(resolve("student-cross"))).state_dict()
    want = got.merge_and_unload().state_dict()
    assert merged.keys() == start.keys()
    for k, v in merged.items():
        assert torch.equal(v, want[k]), k
        assert torch.equal(v, start[k]) != any(f"{t}.weight" in k for t in LORA_TARGETS), k


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["lora_r=-1"], ["'lora_r'", "must be >= 0"]),
        (["lora_r=4", "lora_alpha=0"], ["'lora_alpha'", "> 0"]),
        (["lora_r=4", "lora_save=both"], ["'lora_save'", "merged, adapter"]),
        (["lora_r=4", "lora_target_modules="], ["'lora_target_modules'", "at least one"]),
        (["lora_r=4", "parallel=fsdp"], ["'parallel'", "parallel=ddp"]),
        (
            ["lora_r=4", "lora_target_modules=q_proj,c_attn,qkv"],
            ["c_attn, qkv are not a linear layer", "down_proj, gate_proj, k_proj", "v_proj"],
        ),
    ],
)
@pytest.mark.parametrize("check", [False, True])
def test_bad_lora_input_is_one_line_before_any_compute(zoo, capsys, tmp_path, args, needles, check):
    out = tmp_path / "run"
    argv = ["train", *(["--check"] if check else []), f"out={out}", *args]
    code, _, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, *needles)
    assert not out.exists()


def test_without_peft_a_lora_run_says_what_to_install(zoo, capsys, tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_peft(name, *a, **k):
        if name == "peft" or name.startswith("peft."):
            raise ImportError("No module named 'peft'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_peft)
    code, _, err = run_cli(["train", "--check", f"out={tmp_path / 'run'}", "lora_r=4"], capsys)
    assert_one_line_error(code, err, "'lora_r' = 4", "peft", "pip install -e '.[lora]'")


def test_target_modules_from_yaml_and_the_command_line(tmp_path):
    from pruneopd.config import ConfigError, config_to_yaml, load_config

    f = tmp_path / "cfg.yaml"
    f.write_text("lora_r: 8\nlora_target_modules: [q_proj, v_proj]\n")
    a = load_config(f)
    b = load_config(None, ["lora_r=8", "lora_target_modules=q_proj, v_proj"])
    c = load_config(None, ["lora_r=8", "lora_target_modules=[q_proj,v_proj]"])
    assert a.lora_target_modules == b.lora_target_modules == c.lora_target_modules
    assert a.lora_target_modules == ["q_proj", "v_proj"]
    (tmp_path / "back.yaml").write_text(config_to_yaml(a))  # a run's config.yaml reads back
    assert load_config(tmp_path / "back.yaml") == a
    f.write_text("lora_r: 8\nlora_target_modules: {q_proj: 1}\n")
    with pytest.raises(ConfigError, match="'lora_target_modules'"):
        load_config(f)
