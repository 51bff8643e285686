"""A lean one-token decode step for Llama / Qwen2 / Qwen3 / Mistral-architecture models.

Sampling calls the model once per generated token on a [A, 1] batch. Through a Hugging Face
`forward` every such call builds attention masks, rotary tables and cache objects and goes
through several layers of wrappers; on small models that bookkeeping, not the arithmetic, is
the cost. `LeanDecoder` runs the same arithmetic on the model's own weights with:

- a preallocated KV cache `[layers, A, kv_heads, P + N, head_dim]` written in place (no
  concatenation per token), filled from one Hugging Face prefill forward over the prompts;
- the rotary cos/sin of every position computed once by the model's own rotary module;
- attention of the one new query per sample in one `scaled_dot_product_attention` call,
  grouped-query heads sharing their key/value head, the left-padding mask only when some
  prompt is padded;
- dropping finished samples with one `index_select` per cache.

Logits equal the Hugging Face forward's up to float rounding (tests/test_decode.py).
Architectures outside `SUPPORTED` (or with sliding windows, biases on o_proj / MLP, or
non-SiLU MLPs) fall back to the Hugging Face forward.

Shapes: A = active samples, P = padded prompt length, N = max new tokens, S = P + N,
H = hidden size, D = head dim, V = vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812

SUPPORTED = ("llama", "qwen2", "qwen3", "mistral")


def supported(model) -> bool:
    """True when `LeanDecoder` reproduces `model`'s forward."""
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) not in SUPPORTED:
        return False
    if getattr(cfg, "hidden_act", "silu") != "silu" or getattr(cfg, "mlp_bias", False):
        return False
    windowed = getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True)
    if windowed and cfg.model_type != "llama":  # Llama configs carry no attention window
        return False
    if getattr(model, "training", False):
        return False
    dec = model.get_decoder()
    if not (hasattr(dec, "layers") and hasattr(dec, "rotary_emb") and hasattr(dec, "norm")):
        return False
    return plain_projections(model)


_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def plain_projections(model) -> bool:
    """True when every projection the decoder reads (attention, MLP, the head) is a plain
    `nn.Linear`, whose `.weight` is what it computes with. An adapter-wrapped model (a LoRA
    layer around the linear, a subclass with a hook) is not: its own forward must sample it,
    or its adapters would be left out."""
    mods = [model.get_output_embeddings()]
    for layer in model.get_decoder().layers:
        mods += [getattr(layer.self_attn, n, None) for n in _PROJECTIONS[:4]]
        mods += [getattr(layer.mlp, n, None) for n in _PROJECTIONS[4:]]
    return all(type(m) is torch.nn.Linear for m in mods)


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm as Hugging Face computes it (in float32, weight applied in the input dtype)."""
    dtype = x.dtype
    if dtype == torch.float32:  # one fused kernel
        return F.rms_norm(x, weight.shape, weight, eps)
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rot = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rot * sin


class LeanDecoder:
    """KV-cached decoding of one token per active sample, after a prefill of the prompts."""

    def __init__(self, model, cache, prompt_len: int, max_new_tokens: int):
        """`cache`: the DynamicCache filled by a Hugging Face forward over the [B, P] prompts."""
        cfg = model.config
        dec = model.get_decoder()
        self.model, self.dec = model, dec
        self.eps = cfg.rms_norm_eps
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.qk_norm = cfg.model_type == "qwen3"
        self.P, S = prompt_len, prompt_len + max_new_tokens
        k0 = cache.layers[0].keys
        B = k0.shape[0]
        shape = (len(dec.layers), B, self.n_kv, S, self.head_dim)
        self.K = k0.new_zeros(shape)
        self.V = k0.new_zeros(shape)
        for i, layer in enumerate(cache.layers):
            self.K[i, :, :, :prompt_len] = layer.keys
            self.V[i, :, :, :prompt_len] = layer.values
        positions = torch.arange(S, device=k0.device)[None]
        cos, sin = dec.rotary_emb(k0, positions)  # [1, S, D]
        self.cos_SD, self.sin_SD = cos[0], sin[0]
        # [A, 1, 1, S] bool, True = attend: set at the first step when some prompt is padded
        self.attend_A11S: torch.Tensor | None = None
        self._mask_read = False

    def select(self, keep_A: torch.Tensor) -> None:
        """Keep only the samples at indices keep_A (the others are finished)."""
        self.K = self.K.index_select(1, keep_A)
        self.V = self.V.index_select(1, keep_A)
        if self.attend_A11S is not None:
            self.attend_A11S = self.attend_A11S.index_select(0, keep_A)

    def read_padding(self, mask_AS: torch.Tensor) -> None:
        """Record the prompts' left padding from an attention mask [A, >= P] (1 = attend),
        once: the response slots are never padding (finished samples leave the batch)."""
        if self._mask_read:
            return
        self._mask_read = True
        if not bool(mask_AS[:, : self.P].all()):
            A, S = mask_AS.shape[0], self.K.shape[3]
            self.attend_A11S = torch.ones((A, 1, 1, S), dtype=torch.bool, device=mask_AS.device)
            self.attend_A11S[:, 0, 0, : self.P] = mask_AS[:, : self.P].bool()

    def _layers(self, x_ACH, cos_A1CD, sin_A1CD, start: int, attend) -> torch.Tensor:
        """Every decoder layer over C new tokens per sample at cache slots start..start+C-1,
        writing their keys and values into the cache; the hidden states [A, C, H] after the
        last layer (before the final norm). `attend`: a bool mask broadcastable to
        [A, Hkv, G*C, start+C] (True = attend), or None when every query sees every slot."""
        A, C, _ = x_ACH.shape
        L = start + C
        G, D = self.n_heads // self.n_kv, self.head_dim
        x = x_ACH
        for i, layer in enumerate(self.dec.layers):
            att = layer.self_attn
            h = _rms(x, layer.input_layernorm.weight, self.eps)
            q = att.q_proj(h).view(A, C, self.n_heads, D).transpose(1, 2)  # [A, Hq, C, D]
            k = att.k_proj(h).view(A, C, self.n_kv, D).transpose(1, 2)  # [A, Hkv, C, D]
            v = att.v_proj(h).view(A, C, self.n_kv, D).transpose(1, 2)
            if self.qk_norm:
                q = _rms(q, att.q_norm.weight, att.q_norm.variance_epsilon)
                k = _rms(k, att.k_norm.weight, att.k_norm.variance_epsilon)
            q, k = _rotate(q, cos_A1CD, sin_A1CD), _rotate(k, cos_A1CD, sin_A1CD)
            self.K[i, :, :, start:L] = k
            self.V[i, :, :, start:L] = v
            # the G = heads / kv_heads query heads of a group share their K/V head (GQA):
            # they go in as G*C queries against it, in one fused pass over the cache
            # (experiments/decode_attention.py: 1.2-1.3x the three-operator matmul path at
            # 128-1024 slots)
            q_AKQD = q.reshape(A, self.n_kv, G * C, D)
            o = F.scaled_dot_product_attention(
                q_AKQD,
                self.K[i, :, :, :L],
                self.V[i, :, :, :L],
                attn_mask=attend,
                scale=att.scaling,
            )  # [A, Hkv, G*C, D]
            o = o.view(A, self.n_heads, C, D).transpose(1, 2).reshape(A, C, self.n_heads * D)
            x = x + att.o_proj(o)
            h = _rms(x, layer.post_attention_layernorm.weight, self.eps)
            mlp = layer.mlp
            x = x + mlp.down_proj(F.silu(mlp.gate_proj(h)) * mlp.up_proj(h))
        return x

    @torch.inference_mode()
    def forward_chunk(self, tok_AC: torch.Tensor, pos_A: torch.Tensor, t: int) -> torch.Tensor:
        """Final hidden states [A, C, H] (after the last norm) after feeding C tokens per
        sample at response positions t..t+C-1, writing them into the cache: a teacher's
        chunked prefill while the student samples (online pruning).

        pos_A: rotary position of each sample's first token of the chunk. Query c attends the
        prompt (without its padding), the earlier responses and the chunk's tokens up to c.
        """
        A, C = tok_AC.shape
        start, L = self.P + t, self.P + t + C
        G = self.n_heads // self.n_kv
        x = self.dec.embed_tokens(tok_AC)  # [A, C, H]
        pos_AC = pos_A[:, None] + torch.arange(C, device=pos_A.device)
        cos, sin = self.cos_SD[pos_AC][:, None], self.sin_SD[pos_AC][:, None]  # [A, 1, C, D]
        slots_L = torch.arange(L, device=x.device)
        causal_CL = slots_L[None] <= start + torch.arange(C, device=x.device)[:, None]
        attend = causal_CL.repeat(G, 1)[None, None]  # [1, 1, G*C, L]: query (g, c)
        if self.attend_A11S is not None:
            attend = attend & self.attend_A11S[..., :L]
        x = self._layers(x, cos, sin, start, attend)
        return _rms(x, self.dec.norm.weight, self.eps)

    @torch.inference_mode()
    def step(self, tok_A: torch.Tensor, pos_A: torch.Tensor, t: int, mask_AS: torch.Tensor):
        """Logits [A, V] after feeding token tok_A at response position t.

        pos_A: rotary position of each token (prompt length without padding + t).
        mask_AS: [A, >= P] attention mask (1 = attend) over the prompt's cache slots, read at
        the first step only (the response slots are never padding: finished samples leave).
        """
        L = self.P + t + 1
        x = self.dec.embed_tokens(tok_A[:, None])  # [A, 1, H]
        cos, sin = self.cos_SD[pos_A][:, None, None], self.sin_SD[pos_A][:, None, None]
        self.read_padding(mask_AS)
        # one query per sample sees every slot up to its own, so only the padding is masked
        attend = None if self.attend_A11S is None else self.attend_A11S[..., :L]
        x = self._layers(x, cos, sin, L - 1, attend)[:, 0]
        x = _rms(x, self.dec.norm.weight, self.eps)
        return self.model.get_output_embeddings()(x)
