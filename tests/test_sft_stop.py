"""A fine-tune stopped by Ctrl-C or SIGTERM (`pruneopd real tune`, the zoo's warm-ups) saves the
step under way and, resumed from it, ends with the weights of a run that never stopped."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from pruneopd.tools.sft import train_sft


class Batches:
    """A seeded endless stream of random token batches with a position to save."""

    def __init__(self):
        self.pos = 0

    def state_dict(self) -> dict:
        return {"pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.pos = state["pos"]

    def __next__(self):
        g = torch.Generator().manual_seed(self.pos)
        self.pos += 1
        ids_BL = torch.randint(0, 32, (2, 6), generator=g)
        return ids_BL, ids_BL.clone()


def _model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=16,
    )
    return LlamaForCausalLM(cfg)


def test_a_stopped_fine_tune_saves_its_step_and_resumes_exactly():
    kw = dict(steps=6, lr=1e-2, warmup=1, eval_every=4, on_eval=lambda step: False)
    ref = _model()
    assert train_sft(ref, Batches(), **kw) == 6

    model, saved = _model(), {}
    stop = SimpleNamespace(requested=False)

    def on_step(step, loss):
        stop.requested = step == 2  # the signal arrives during step 2

    def on_checkpoint(step, state):
        saved[step] = (copy.deepcopy(model.state_dict()), copy.deepcopy(state))

    taken = train_sft(
        model, Batches(), **kw, on_step=on_step, on_checkpoint=on_checkpoint, stop=stop
    )
    assert taken == 2 and list(saved) == [2]  # step 2 finished and saved, nothing more

    again = _model()
    weights, state = saved[2]
    again.load_state_dict(weights)
    assert train_sft(again, Batches(), **kw, resume=state) == 6
    for (name, a), b in zip(ref.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
