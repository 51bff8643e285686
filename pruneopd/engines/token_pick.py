"""How one token is drawn: the nucleus filter, the inverse-CDF pick and the uniforms a sampling
call draws (one row per sample, so a sample's tokens do not depend on the rest of the batch).

Shapes: A = samples, V = vocabulary.
"""

from __future__ import annotations

import torch


def top_p_filter(probs_AV: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero the probabilities outside the nucleus: the smallest set of most likely tokens whose
    mass reaches top_p (the most likely token is always kept). Not renormalised."""
    sorted_AV, order_AV = probs_AV.sort(-1, descending=True)
    mass_before_AV = sorted_AV.cumsum(-1) - sorted_AV
    sorted_AV = sorted_AV.masked_fill(mass_before_AV >= top_p, 0.0)
    return torch.zeros_like(probs_AV).scatter_(-1, order_AV, sorted_AV)


def pick_tokens(
    logits_AV: torch.Tensor,
    temperature: float,
    top_p: float,
    generator: torch.Generator | None = None,
    uniform_A: torch.Tensor | None = None,
) -> torch.Tensor:
    """[A] next tokens: argmax if temperature == 0, else a draw from softmax(logits / temperature)
    restricted to the top_p nucleus.

    The draw is by inverse CDF: sample a takes the first token whose cumulative probability
    exceeds uniform_A[a] (in [0, 1)) times the nucleus mass. Without `uniform_A` the uniforms
    come from `generator`. Example: probs [0.2, 0.5, 0.3], u = 0.6 -> cumulative [0.2, 0.7, 1.0]
    -> token 1.
    """
    if temperature == 0:
        return logits_AV.argmax(-1)
    probs_AV = torch.softmax(logits_AV.float() / temperature, dim=-1)
    if top_p < 1.0:
        probs_AV = top_p_filter(probs_AV, top_p)
    if uniform_A is None:
        uniform_A = torch.rand(
            probs_AV.shape[0], generator=generator, device=_rng_device(generator)
        )
    cdf_AV = probs_AV.cumsum(-1)
    target_A1 = uniform_A.to(cdf_AV.device, torch.float32)[:, None] * cdf_AV[:, -1:]
    tok_A = torch.searchsorted(cdf_AV, target_A1, right=True)[:, 0]
    return tok_A.clamp_(max=probs_AV.shape[-1] - 1)


def _rng_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def sample_uniforms(n_samples: int, n_tokens: int, generator: torch.Generator | None):
    """[n_samples, n_tokens] uniforms in [0, 1): the randomness of one sampling call.

    Sample i's token t uses entry [i, t], so a sample's tokens depend only on its own row, not on
    the rest of the batch. Drawing the rows of a global batch once and giving each process its
    slice makes a multi-process rollout equal to the one-process one.
    """
    return torch.rand((n_samples, n_tokens), generator=generator, device=_rng_device(generator))
