"""Sampling's decode as compiled C++ calls (`csrc/fused_decode.cpp`, `csrc/sample_loop.cpp`).

`decode.LeanDecoder.step` runs ~150 small PyTorch operators per generated token; on the small
models this package trains by default they, not the arithmetic, are most of sampling's time
(docs/benchmarks.md 6b: ~7 ms per decode step of fixed cost at 32 samples). `FusedDecoder`
keeps LeanDecoder's cache and prefill, and replaces `step` (and the teacher's chunked forward
`forward_chunk`, online pruning's scoring) with one call into a C++ extension: per layer
RMSNorm, one q/k/v matmul, rotary + the cache write and the attention over the cache in one
loop per (sample, kv head), the o projection added in place, RMSNorm, one gate/up matmul,
SiLU * up, the down projection added in place.

`FusedDecoder.sample_steps` goes further: a block of tokens per call (the pick from the
logits with the caller's uniforms, the log-prob and top-k, the decode step), with the samples
in groups that each run all the block's steps before the next group starts.
`sampling_plan.plan_sampling` picks the groups from what each step streams from memory: on a
model whose weights fit the CPU caches (the zoo's, a few MB), groups of `SAMPLE_GROUP` spread
over the threads, so a group's KV cache stays in the CPU caches between its tokens
(docs/benchmarks.md 6e); on one whose weights do not (a real model, hundreds of MB), one group per thread, so each thread
reads every weight once per step, not once per group of 4, or, when no other process is busy
(`cpu_load.machine_quiet`), one split group that reads every weight once per step
(docs/benchmarks.md 10). `rollout.sample` uses it on this engine.

The extension is compiled on first use with `torch.utils.cpp_extension.load` (about 40 s on 2
cores; it needs a C++ compiler and `ninja`) and cached in torch's extensions folder
($TORCH_EXTENSIONS_DIR, default ~/.cache/torch_extensions), under a name that includes this
CPU's instruction-set flags, since it is built for the CPU it runs on (-march=native).
`available()` says whether it loads; `rollout.sample(engine="auto")` takes it when it does and
the model qualifies (`supported`), else LeanDecoder.

Logits equal LeanDecoder's up to float rounding, and so the sampled tokens do, except where a
uniform falls within that rounding of a CDF boundary (tests/test_fused.py).

The same extension holds the causal attention kernel of the whole-sequence forwards
(`csrc/causal_attention.cpp`, used through `pruneopd.engines.attention`).

Shapes: A = active samples, H = hidden size, S = cache slots, D = head dim, V = vocabulary.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import time
from pathlib import Path

import torch

from pruneopd.engines import cpu_load, decode
from pruneopd.engines.records import stop_id_list
from pruneopd.engines.sampling_plan import (  # noqa: F401 (re-exported: their home was here)
    CACHED_WEIGHT_BYTES,
    SAMPLE_GROUP,
    Plan,
    plan_sampling,
)

_CSRC = Path(__file__).parents[1] / "csrc"
_SOURCES = [_CSRC / "fused_decode.cpp", _CSRC / "causal_attention.cpp", _CSRC / "sample_loop.cpp"]
_EXT = None  # the loaded extension module
_ERROR: str | None = None  # why it could not be loaded, once tried
_NOTED = False  # whether available() has said why


def _cpu_tag() -> str:
    """A short hash of this CPU's instruction-set flags (the build targets this CPU), torch's
    version, the build flags, the C++ sources (headers included, which torch's own rebuild check
    skips) and their folder."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = line
                break
    except OSError:
        pass
    sources = b"".join(f.read_bytes() for f in sorted(_CSRC.glob("*.[ch]*")))
    build = f"{' '.join(_flags())} {torch.__version__} {hashlib.sha1(sources).hexdigest()}"
    # the checkout's own folder too: torch's build file names the sources by path, so two
    # checkouts sharing one build folder would rebuild it in turn, each time the other loads
    key = f"{platform.machine()} {flags} {build} {_CSRC.resolve()}"
    return hashlib.sha1(key.encode()).hexdigest()[:10]


def _flags() -> list[str]:
    # -fopenmp: at::parallel_for is inline OpenMP code, serial without it (torch's own libgomp
    # is the one loaded at run time); -march / -mcpu=native: this CPU's vector instructions
    arch = {"x86_64": "-march=native", "AMD64": "-march=native", "aarch64": "-mcpu=native"}
    # -fno-trapping-math: lets the compiler turn exp_neg's selects into blends, without which
    # its loops stay scalar (values are unchanged: no fast-math reassociation)
    native = [arch[platform.machine()]] if platform.machine() in arch else []
    return ["-O3", "-fopenmp", "-fno-trapping-math", *native]


def load(verbose: bool = False):
    """The compiled extension (compiling it on first use); raises RuntimeError if it cannot be
    built here, with the reason in one line."""
    global _EXT, _ERROR
    if _EXT is not None:
        return _EXT
    if _ERROR is not None:
        raise RuntimeError(_ERROR)
    if os.environ.get("PRUNEOPD_FUSED", "1") == "0":
        raise RuntimeError("the fused decode kernel is switched off (PRUNEOPD_FUSED=0)")
    name = f"pruneopd_fused_decode_{_cpu_tag()}"
    try:
        from torch.utils.cpp_extension import get_default_build_root
        from torch.utils.cpp_extension import load as cpp_load

        root = Path(get_default_build_root())  # torch adds a py3XX_cpu folder unless set
        if not [*root.glob(f"{name}/*.so"), *root.glob(f"*/{name}/*.so")]:
            print(
                "pruneopd: building the fused decode kernel (once per machine, about a minute)",
                file=sys.stderr,
                flush=True,
            )
        _clear_stale_lock(root, name)
        _EXT = cpp_load(
            name=name,
            sources=[str(s) for s in _SOURCES],
            extra_cflags=_flags(),
            extra_ldflags=["-fopenmp"],
            verbose=verbose,
        )
    except Exception as e:  # noqa: BLE001 (no compiler, no ninja, a build error: all mean "not here")
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        _ERROR = f"the fused decode kernel could not be built: {first}"
        raise RuntimeError(_ERROR) from None
    return _EXT


STALE_LOCK_S = 600  # a build takes about a minute; a lock this old was left by a killed build


def _clear_stale_lock(root: Path, name: str) -> None:
    """torch's build lock (`<build dir>/lock`) outlives a build that was killed, and the next
    build then waits for it forever: remove one older than STALE_LOCK_S, saying so."""
    for lock in [root / name / "lock", *root.glob(f"*/{name}/lock")]:
        try:
            age = time.time() - lock.stat().st_mtime
        except OSError:
            continue
        if age > STALE_LOCK_S:
            lock.unlink(missing_ok=True)
            print(
                f"pruneopd: removed a stale build lock ({lock}, {age / 60:.0f} min old)",
                file=sys.stderr,
            )


def available() -> bool:
    """True when the extension loads (building it once if needed). The first time it cannot,
    one line on stderr says why (sampling then runs on LeanDecoder)."""
    global _NOTED
    if os.environ.get("PRUNEOPD_FUSED", "1") == "0":
        return False
    try:
        load()
    except RuntimeError as e:
        if not _NOTED:
            _NOTED = True
            print(f"pruneopd: {e}; sampling with the lean engine", file=sys.stderr, flush=True)
        return False
    return True


def supported(model) -> bool:
    """True when `FusedDecoder` reproduces `model`'s forward: what LeanDecoder supports, in
    float32 on the CPU, without Qwen3's q/k norms."""
    if not decode.supported(model):
        return False
    p = next(model.parameters())
    plain = model.config.model_type != "qwen3"
    return plain and p.dtype == torch.float32 and p.device.type == "cpu"


class FusedDecoder(decode.LeanDecoder):
    """LeanDecoder whose one-token `step` is one call into the compiled extension."""

    def __init__(self, model, cache, prompt_len: int, max_new_tokens: int):
        super().__init__(model, cache, prompt_len, max_new_tokens)
        self.ext = load()
        self.K, self.V = self.K.contiguous(), self.V.contiguous()
        self.weights = []
        empty = torch.empty(0)
        with torch.no_grad():
            for layer in self.dec.layers:
                att, mlp = layer.self_attn, layer.mlp
                qkv = torch.cat([att.q_proj.weight, att.k_proj.weight, att.v_proj.weight])
                bias = empty
                if att.q_proj.bias is not None:
                    bias = torch.cat([att.q_proj.bias, att.k_proj.bias, att.v_proj.bias])
                gate_up = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])
                self.weights += [
                    layer.input_layernorm.weight.detach(),
                    qkv.contiguous(),
                    att.o_proj.weight.detach(),
                    layer.post_attention_layernorm.weight.detach(),
                    gate_up.contiguous(),
                    mlp.down_proj.weight.detach(),
                    bias,
                ]
            self.weights.append(self.dec.norm.weight.detach())
        self.scale = float(self.dec.layers[0].self_attn.scaling)
        self.cos_SD, self.sin_SD = self.cos_SD.contiguous(), self.sin_SD.contiguous()
        head = self.model.get_output_embeddings().weight
        self.weight_bytes = sum(w.numel() * w.element_size() for w in [*self.weights, head])
        # one sample's KV cache at full length, every layer
        self.kv_bytes_per_sample = 2 * self.K[:, 0].numel() * self.K.element_size()

    def plan(self) -> Plan:
        """`plan_sampling` for this model and its current samples."""
        A, threads = self.K.shape[1], torch.get_num_threads()
        streamed = self.weight_bytes > CACHED_WEIGHT_BYTES and threads > 1
        quiet = streamed and cpu_load.machine_quiet()  # measured only where it matters
        return plan_sampling(self.weight_bytes, self.kv_bytes_per_sample, A, threads, quiet)

    def select(self, keep_A: torch.Tensor) -> None:
        super().select(keep_A)
        if self.attend_A11S is not None:
            self.attend_A11S = self.attend_A11S.contiguous()

    def _attend_AS(self) -> torch.Tensor:
        """The prompts' padding as a bool [A, S] (True = attend), or an empty tensor."""
        if self.attend_A11S is None:
            return torch.empty(0, dtype=torch.bool)
        return self.attend_A11S[:, 0, 0].contiguous()

    @torch.inference_mode()
    def forward_chunk(self, tok_AC: torch.Tensor, pos_A: torch.Tensor, t: int) -> torch.Tensor:
        """Final hidden states [A, C, H] after feeding C tokens per sample at response positions
        t..t+C-1 (see LeanDecoder.forward_chunk), as one call into the extension."""
        A, C = tok_AC.shape
        x_RH = self.dec.embed_tokens(tok_AC).reshape(A * C, -1)
        h_RH = self.ext.forward_tokens(
            x_RH.contiguous(),
            self.weights,
            self.K,
            self.V,
            pos_A.long(),
            self.cos_SD,
            self.sin_SD,
            self._attend_AS(),
            self.P + t,
            C,
            self.n_heads,
            self.n_kv,
            self.eps,
            self.scale,
        )
        return h_RH.view(A, C, -1)

    def can_sample_steps(self) -> bool:
        """Whether `sample_steps` reproduces this model's sampling: the head is a plain
        bias-free linear layer and the input embedding a plain lookup."""
        head = self.model.get_output_embeddings()
        emb = self.dec.embed_tokens
        return (
            isinstance(head, torch.nn.Linear)
            and head.bias is None
            and type(emb) is torch.nn.Embedding
        )

    @torch.inference_mode()
    def sample_steps(
        self,
        logits_AV,
        uniforms_An,
        pos_A,
        t: int,
        n: int,
        *,
        temperature: float,
        top_p: float = 1.0,
        topk: int,
        eos_id: int | tuple[int, ...],
        decode_last: bool,
        plan: Plan | None = None,
    ):
        """n tokens per sample in one call into the extension, from the logits [A, V] of
        response position t: each step picks a token (argmax at temperature 0, else the
        inverse CDF at uniforms_An[:, step] in the top_p nucleus, as `rollout.pick_tokens`),
        records its temperature-1 log-prob and top-k ids, and decodes it (a sample stops at
        eos_id; the last step decodes only with decode_last). Returns (tokens [A, n],
        log-probs [A, n], top-k ids [A, n, max(topk, 1)] int32, tokens produced [A], logits
        [A, V] after the last decode). The samples run as `plan` says (default: `self.plan()`),
        each group all n steps at once (csrc/sample_loop.cpp)."""
        plan = plan or self.plan()
        head = self.model.get_output_embeddings()
        u = torch.empty(0) if uniforms_An is None else uniforms_An
        return self.ext.sample_steps(
            logits_AV.float().contiguous(),
            self.weights,
            head.weight.detach(),
            self.dec.embed_tokens.weight.detach(),
            self.K,
            self.V,
            pos_A.long(),
            self.cos_SD,
            self.sin_SD,
            self._attend_AS(),
            u,
            self.P + t,
            n,
            float(temperature),
            float(top_p),
            topk,
            stop_id_list(eos_id),
            decode_last,
            plan.group,
            plan.split,
            self.n_heads,
            self.n_kv,
            self.eps,
            self.scale,
        )

    @torch.inference_mode()
    def step(self, tok_A: torch.Tensor, pos_A: torch.Tensor, t: int, mask_AS: torch.Tensor):
        """Logits [A, V] after feeding token tok_A at response position t (see LeanDecoder)."""
        self.read_padding(mask_AS)
        x_AH = self.dec.embed_tokens(tok_A)
        h_AH = self.ext.decode_step(
            x_AH.contiguous(),
            self.weights,
            self.K,
            self.V,
            pos_A.long(),
            self.cos_SD,
            self.sin_SD,
            self._attend_AS(),
            self.P + t,
            self.n_heads,
            self.n_kv,
            self.eps,
            self.scale,
        )
        head = self.model.get_output_embeddings()
        if getattr(head, "bias", None) is None:
            return self.ext.linear(h_AH, head.weight)
        return head(h_AH)


def main() -> int:
    """`python -m pruneopd.engines.fused`: build the extension now (e.g. in CI before the tests)."""
    try:
        load(verbose="-v" in sys.argv)
    except RuntimeError as e:
        print(f"pruneopd.engines.fused: {e}", file=sys.stderr)
        return 1
    print(f"pruneopd.engines.fused: the fused decode kernel is built ({_EXT.__file__})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
