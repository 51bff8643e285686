"""The interfaces the step calls: methods built from the config (one registry), the drift
settings and `weigh_tokens` (golden values by hand), the built-in Sampler / Teacher, and the
adapter trap (a sampler must see the weights the model computes with)."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_llama

from pruneopd.config import ConfigError, TrainConfig
from pruneopd.engines.decode import plain_projections
from pruneopd.engines.interfaces import SamplingSettings
from pruneopd.engines.local import LocalSampler, LocalTeacher
from pruneopd.engines.rollout import pick_engine, repeat_prompts
from pruneopd.engines.scoring import score_responses
from pruneopd.method import METHODS, build_method
from pruneopd.method.adaptive_prefix import AdaptivePrefixOPD
from pruneopd.method.full_opd import FullOPD
from pruneopd.method.hybrid import HybridOPD
from pruneopd.method.prefix_opd import PrefixOPD
from pruneopd.method.prune_opd import PruneOPD
from pruneopd.method.weighing import DriftSettings, weigh_tokens

V = 40


def test_every_method_is_built_from_its_config_name():
    assert build_method(TrainConfig(method="full")).__class__ is FullOPD
    assert build_method(TrainConfig(method="prefix")).__class__ is PrefixOPD
    adaptive = TrainConfig(method="prefix", prefix_schedule="adaptive")
    assert build_method(adaptive).__class__ is AdaptivePrefixOPD
    assert build_method(TrainConfig(method="prefix-adaptive")).__class__ is AdaptivePrefixOPD
    assert build_method(TrainConfig(method="prune")).__class__ is PruneOPD
    assert build_method(TrainConfig(method="prune", online_pruning=True)).online
    assert not build_method(TrainConfig(method="prune")).online
    assert build_method(TrainConfig(method="hybrid")).__class__ is HybridOPD
    with pytest.raises(ConfigError, match="must be one of " + ", ".join(METHODS)):
        TrainConfig(method="iw")


def test_a_new_method_is_one_class_and_a_registration_line(monkeypatch):
    class EveryOther(FullOPD):
        name = "every-other"

        def cap(self, step):
            return 8 if step % 2 else 16

    monkeypatch.setitem(METHODS, "every-other", EveryOther)
    m = build_method(TrainConfig(method="every-other"))
    assert [m.cap(s) for s in range(3)] == [16, 8, 16]
    assert m.learn(0, torch.tensor([3]), {})["next_cap"] == 8


def test_hybrid_refuses_split_groups_before_anything_runs():
    cfg = TrainConfig(method="hybrid", prompts_per_step=3, responses_per_prompt=4)
    with pytest.raises(ConfigError, match="whole groups"):
        build_method(cfg, world=4)  # 12 samples over 4 processes: 3 each, not a group of 4
    build_method(cfg, world=3)


def test_weigh_tokens_by_hand():
    """K' = 2 of top-3 lists; tau 0.75: an event where fewer than 2 of 2 ids are shared.
    Sample 0: overlaps 1, 0.5, 1 -> events 0, 1, 0 -> C 0, 1, 1 -> w 1, 0.6, 0.6 (w_drop 0.4),
    m = w + 0.5; sample 1 has one valid token."""
    s = torch.tensor([[[1, 2, 9], [3, 4, 9], [5, 6, 9]], [[1, 2, 9], [0, 0, 9], [0, 0, 9]]])
    t = torch.tensor([[[2, 1, 8], [3, 7, 8], [6, 5, 8]], [[1, 2, 8], [0, 0, 8], [0, 0, 8]]])
    lp = torch.zeros(2, 3, 3)
    mask = torch.tensor([[True, True, True], [True, False, False]])
    tokens = torch.zeros(2, 3, dtype=torch.long)
    tw = weigh_tokens(DriftSettings("topk_overlap", 2, 0.75, 0.4, 0.5), s, t, lp, tokens, mask)
    assert tw.overlap_BT.tolist() == [[1.0, 0.5, 1.0], [1.0, 0.0, 0.0]]
    assert tw.events_BT.tolist() == [[False, True, False], [False, False, False]]
    assert torch.allclose(tw.weights_BT, torch.tensor([[1.0, 0.6, 0.6], [1.0, 0.0, 0.0]]))
    assert torch.allclose(tw.multipliers_BT, torch.tensor([[1.5, 1.1, 1.1], [1.5, 0.0, 0.0]]))
    assert tw.eff_len_B.tolist() == [3, 1]
    cfg = TrainConfig(drift_k=2, topk=3, tau=0.75, w_drop=0.4, w_base=0.5)
    assert DriftSettings.from_config(cfg) == DriftSettings("topk_overlap", 2, 0.75, 0.4, 0.5)


def test_local_teacher_is_the_teachers_forward():
    teacher = tiny_llama(V, seed=1)
    prompts, responses = [[1, 2, 3], [4, 5]], [[6, 7, 8, 9], [10, 11]]
    got = LocalTeacher(teacher, pad_id=0).score(prompts, responses, k=4)
    ref = score_responses(teacher, prompts, responses, k=4, pad_id=0)
    assert torch.equal(got.token_logprobs_BT, ref.token_logprobs_BT)
    assert torch.equal(got.topk_ids_BTK, ref.topk_ids_BTK)


class LoraLinear(torch.nn.Linear):
    """A LoRA-style layer: W x + B A x, with the adapter outside `.weight`."""

    def __init__(self, base: torch.nn.Linear, r: int = 2):
        super().__init__(base.in_features, base.out_features, bias=base.bias is not None)
        self.load_state_dict(base.state_dict())
        g = torch.Generator().manual_seed(7)
        self.A = torch.nn.Parameter(torch.randn(r, base.in_features, generator=g) * 0.5)
        self.B = torch.nn.Parameter(torch.randn(base.out_features, r, generator=g) * 0.5)

    def forward(self, x):
        return super().forward(x) + x @ self.A.T @ self.B.T


def test_an_adapter_wrapped_student_is_sampled_through_its_own_forward():
    """The fused and lean engines read `.weight` directly: with an adapter on q_proj they must
    not be used, and the sampled log-probs must equal the adapted model's forward."""
    plain = tiny_llama(V, seed=2)
    adapted = tiny_llama(V, seed=2)
    assert plain_projections(adapted) and pick_engine(adapted, "auto") in ("fused", "lean")
    for layer in adapted.model.layers:
        layer.self_attn.q_proj = LoraLinear(layer.self_attn.q_proj)
    assert not plain_projections(adapted) and pick_engine(adapted, "auto") == "hf"
    prompts = repeat_prompts([[1, 2, 3], [4, 5, 6]], 2)
    settings = SamplingSettings(eos_id=V - 1, pad_id=0, topk=4)
    sampler = LocalSampler(plain, settings)
    sampler.push_weights(adapted)  # the sampler gets the weights through the interface
    gen = torch.Generator().manual_seed(0)
    r = sampler.sample(prompts, 6, sampler.draws(len(prompts), 6, gen))
    with torch.no_grad():
        for p, y, lp in zip(prompts, r.responses, r.student_logprobs, strict=True):
            ids = torch.tensor([p + y])
            want = adapted(input_ids=ids).logits[0, len(p) - 1 : -1].log_softmax(-1)
            want = want.gather(-1, torch.tensor(y)[:, None])[:, 0]
            assert torch.allclose(lp, want, atol=1e-5)
            base = plain(input_ids=ids).logits[0, len(p) - 1 : -1].log_softmax(-1)
            assert not torch.allclose(lp, base.gather(-1, torch.tensor(y)[:, None])[:, 0])


def test_no_import_circle_in_the_package():
    """The layers import downwards only: no module reaches itself through pruneopd imports
    (function-level imports included; imports under TYPE_CHECKING are types only)."""
    import ast
    from pathlib import Path

    import pruneopd

    root = Path(pruneopd.__file__).parent
    mods = {}
    for p in root.rglob("*.py"):
        parts = p.relative_to(root.parent).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    graph: dict[str, set[str]] = {m: set() for m in mods}

    class Imports(ast.NodeVisitor):
        def __init__(self, m):
            self.m = m

        def visit_If(self, node):
            if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                self.generic_visit(node)

        def visit_ImportFrom(self, node):
            if node.module and node.module.startswith("pruneopd"):
                for a in node.names:
                    full = f"{node.module}.{a.name}"
                    graph[self.m].add(full if full in mods else node.module)

    for m, p in mods.items():
        Imports(m).visit(ast.parse(p.read_text()))

    def reaches(start, node, seen):
        for n in graph.get(node, ()):
            if n == start or (n not in seen and (seen.add(n) or reaches(start, n, seen))):
                return True
        return False

    circles = sorted(m for m in graph if reaches(m, m, set()))
    assert not circles, f"modules on an import circle: {circles}"
