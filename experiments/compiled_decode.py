"""Experiment (session 4): does `torch.compile` make the lean decode step faster on CPU?

Compiles the two per-layer pieces of `LeanDecoder.step` around the KV-cache attention
(RMSNorm + q/k/v projections + rotary; o-projection + residual + RMSNorm + MLP) with
`torch.compile(dynamic=True)` (the active batch shrinks as samples finish), checks that
sampling gives the same tokens, and times 32 x 128-token samplings of the shipped
`student-same`, alternating with the eager step (median of the middle 4 of 6 each).

    python experiments/compiled_decode.py [THREADS]

Session 4, 1 thread, two runs: first compiled sampling call 32.5 s cold and 7.8 s with
inductor's on-disk cache (compilation), same tokens (largest log-prob difference 2e-5),
compiled / eager time per sampling call 0.75x (0.820 s eager, first run, with an earlier
variant of the eager step) and 0.84x (0.718 s eager, this file): slower. Not used.
"""

import sys
import time

import torch
import torch.nn.functional as F  # noqa: N812

from pruneopd.engines import decode, rollout
from pruneopd.models import load_model, load_tokenizer
from pruneopd.tasks import TASKS

torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)


def layer_in(x, ln_w, wq, wk, wv, cos, sin, eps: float, H: int, Hkv: int, D: int):  # noqa: N803
    A = x.shape[0]
    h = F.rms_norm(x, ln_w.shape, ln_w, eps)
    q = F.linear(h, wq).view(A, H, D)
    k = F.linear(h, wk).view(A, Hkv, D)
    v = F.linear(h, wv).view(A, Hkv, D)
    return decode._rotate(q, cos, sin), decode._rotate(k, cos, sin), v


def layer_out(x, o, wo, ln_w, wg, wu, wd, eps: float):
    x = x + F.linear(o, wo)
    h = F.rms_norm(x, ln_w.shape, ln_w, eps)
    return x + F.linear(F.silu(F.linear(h, wg)) * F.linear(h, wu), wd)


C_IN = torch.compile(layer_in, dynamic=True)
C_OUT = torch.compile(layer_out, dynamic=True)


class Compiled(decode.LeanDecoder):
    @torch.inference_mode()
    def step(self, tok_A, pos_A, t, mask_AS):  # noqa: N803
        A, L = tok_A.shape[0], self.P + t + 1
        H, Hkv, D = self.n_heads, self.n_kv, self.head_dim
        G = H // Hkv
        x = self.dec.embed_tokens(tok_A)
        cos, sin = self.cos_SD[pos_A][:, None], self.sin_SD[pos_A][:, None]
        blocked = ~mask_AS[:, None, None, :L].bool()
        for i, layer in enumerate(self.dec.layers):
            att, mlp = layer.self_attn, layer.mlp
            q, k, v = C_IN(
                x,
                layer.input_layernorm.weight,
                att.q_proj.weight,
                att.k_proj.weight,
                att.v_proj.weight,
                cos,
                sin,
                self.eps,
                H,
                Hkv,
                D,
            )
            self.K[i, :, :, L - 1] = k
            self.V[i, :, :, L - 1] = v
            scores = (q.view(A, Hkv, G, D) @ self.K[i, :, :, :L].transpose(-1, -2)) * att.scaling
            o = scores.masked_fill(blocked, float("-inf")).softmax(-1) @ self.V[i, :, :, :L]
            x = C_OUT(
                x,
                o.reshape(A, H * D),
                att.o_proj.weight,
                layer.post_attention_layernorm.weight,
                mlp.gate_proj.weight,
                mlp.up_proj.weight,
                mlp.down_proj.weight,
                self.eps,
            )
        x = decode._rms(x, self.dec.norm.weight, self.eps)
        return self.model.get_output_embeddings()(x)


eager = decode.LeanDecoder
tok = load_tokenizer("teacher")
student = load_model("student-same").eval()
prompts = [
    tok.encode(p.prompt, add_special_tokens=False)
    for p in TASKS["regs"].problems("test", 32, seed=1)
]


def run(cls):
    decode.LeanDecoder = cls
    t0 = time.perf_counter()
    r = rollout.sample(
        student,
        prompts,
        max_new_tokens=128,
        eos_id=tok.eos_token_id,
        pad_id=tok.pad_token_id,
        generator=torch.Generator().manual_seed(0),
        topk=16,
    )
    return time.perf_counter() - t0, r


t0 = time.perf_counter()
_, rc = run(Compiled)
print(f"first compiled call {time.perf_counter() - t0:.1f}s")
_, re_ = run(eager)
diff = max(
    float((a - b).abs().max())
    for a, b in zip(rc.student_logprobs, re_.student_logprobs, strict=True)
)
print("same tokens:", rc.responses == re_.responses, "max logprob diff", diff)
times = {"eager": [], "compiled": []}
for _ in range(6):
    for name, cls in (("eager", eager), ("compiled", Compiled)):
        times[name].append(run(cls)[0])
e, c = sorted(times["eager"])[1:-1], sorted(times["compiled"])[1:-1]
print(f"eager {sum(e) / 4:.3f}s compiled {sum(c) / 4:.3f}s speed-up {sum(e) / sum(c):.2f}x")
