"""Teacher scores from the per-position log-prob lists a vLLM engine or server returns.

vLLM scores a sequence with `prompt_logprobs=K`: for every position j >= 1 of prompt + response
it lists the log-probs of the K most likely tokens (ranks 1..K) and of the token that is really
there (its own rank, possibly > K); with `prompt_logprobs=-1` it lists the whole vocabulary.
Both the in-process engine (vLLM's flat format) and the OpenAI-compatible server (JSON dicts)
are turned into the same flat entry arrays, one row per (position, token) pair, and
`scores_from_entries` makes the `TokenScores` the trainer needs from them.

Shapes: E = entries of one sequence, T = response length, K = top-K, Kc = candidates,
V = vocabulary, B = sequences.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import pad_sequence

from pruneopd.engines.scoring import TokenScores


@dataclass
class Entries:
    """One sequence's response-position log-probs, flattened: entry e says that at response
    position pos_E[e] token id_E[e] has log-prob lp_E[e] and rank rank_E[e] (1 = most likely)."""

    pos_E: torch.Tensor  # long
    id_E: torch.Tensor  # long
    lp_E: torch.Tensor  # float32
    rank_E: torch.Tensor  # long


def entries_from_flat(flat, prompt_len: int, n: int) -> Entries:
    """Entries of response positions 0..n-1 from vLLM's `FlatLogprobs` of prompt + response
    (index j of the flat list predicts token j of the sequence; response position t is
    sequence index prompt_len + t)."""
    starts, ends = flat.start_indices, flat.end_indices
    j0, j1 = prompt_len, prompt_len + n
    if n == 0:
        e0 = e1 = 0
    else:
        e0, e1 = starts[j0], ends[j1 - 1]
    counts = torch.tensor([ends[j] - starts[j] for j in range(j0, j1)], dtype=torch.long)
    return Entries(
        pos_E=torch.repeat_interleave(torch.arange(n), counts),
        id_E=torch.tensor(flat.token_ids[e0:e1], dtype=torch.long),
        lp_E=torch.tensor(flat.logprobs[e0:e1], dtype=torch.float32),
        rank_E=torch.tensor(
            [r if r is not None else 0 for r in flat.ranks[e0:e1]], dtype=torch.long
        ),
    )


def entries_from_dicts(rows: list, prompt_len: int, n: int) -> Entries:
    """Entries from a server's `prompt_logprobs`: one `{token_id: {"logprob", "rank"}}` dict per
    sequence index (None at index 0), JSON keys being the ids as strings."""
    pos, ids, lps, ranks = [], [], [], []
    for t in range(n):
        row = rows[prompt_len + t]
        if not row:
            raise ValueError(f"no log-probs at sequence index {prompt_len + t}")
        for key, v in row.items():
            pos.append(t)
            ids.append(int(key))
            lps.append(float(v["logprob"]))
            ranks.append(int(v.get("rank") or 0))
    return Entries(
        torch.tensor(pos, dtype=torch.long),
        torch.tensor(ids, dtype=torch.long),
        torch.tensor(lps, dtype=torch.float32),
        torch.tensor(ranks, dtype=torch.long),
    )


def scores_from_entries(
    entries: Entries,
    tokens_T: torch.Tensor,
    *,
    k: int,
    candidates_TK: torch.Tensor | None,
    vocab: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(token log-prob [T], top-K ids [T, K], top-K log-probs [T, K], candidates' log-probs
    [T, Kc] or None) of one sequence.

    The top-K are the entries of rank 1..k; the sampled token's log-prob is its own entry.
    Candidate log-probs need every candidate listed (the whole vocabulary, `prompt_logprobs=-1`);
    a missing one raises ValueError naming the position.
    """
    e = entries
    T = tokens_T.shape[0]
    top = (e.rank_E >= 1) & (e.rank_E <= k)
    ids_TK = torch.full((T, k), -1, dtype=torch.long)
    lps_TK = torch.zeros((T, k), dtype=torch.float32)
    ids_TK[e.pos_E[top], e.rank_E[top] - 1] = e.id_E[top]
    lps_TK[e.pos_E[top], e.rank_E[top] - 1] = e.lp_E[top]
    if T and bool((ids_TK < 0).any()):
        t = int((ids_TK < 0).any(-1).nonzero()[0, 0])
        raise ValueError(f"the engine listed fewer than top-{k} log-probs at response position {t}")
    is_tok_E = e.id_E == tokens_T[e.pos_E] if T else torch.zeros(0, dtype=torch.bool)
    token_lp_T = torch.full((T,), float("nan"), dtype=torch.float32)
    token_lp_T[e.pos_E[is_tok_E]] = e.lp_E[is_tok_E]
    if bool(token_lp_T.isnan().any()):
        t = int(token_lp_T.isnan().nonzero()[0, 0])
        raise ValueError(
            f"the engine gave no log-prob for the sampled token at response position {t}"
        )
    cand_TK = None
    if candidates_TK is not None:  # the whole distribution: dense [T, V] is small then
        dense_TV = torch.full((T, vocab), float("nan"), dtype=torch.float32)
        dense_TV[e.pos_E, e.id_E] = e.lp_E
        cand_TK = dense_TV.gather(1, candidates_TK[:T])
        if bool(cand_TK.isnan().any()):
            t = int(cand_TK.isnan().any(-1).nonzero()[0, 0])
            raise ValueError(
                f"the engine gave no log-prob for a candidate at response position {t}: "
                "candidates need the whole distribution (prompt_logprobs=-1)"
            )
    return token_lp_T, ids_TK, lps_TK, cand_TK


def stack_scores(parts: list[tuple], k: int) -> TokenScores:
    """[B, T, ...] `TokenScores` (zeros on padding) from each sequence's `scores_from_entries`."""
    token = pad_sequence([p[0] for p in parts], batch_first=True)
    if not parts or token.shape[1] == 0:
        B = len(parts)
        z = torch.zeros(B, 0, k)
        return TokenScores(
            torch.zeros(B, 0),
            z.long(),
            z,
            None if not parts or parts[0][3] is None else torch.zeros(B, 0, 0),
        )
    cands = None if parts[0][3] is None else pad_sequence([p[3] for p in parts], batch_first=True)
    return TokenScores(
        token_logprobs_BT=token,
        topk_ids_BTK=pad_sequence([p[1] for p in parts], batch_first=True),
        topk_logprobs_BTK=pad_sequence([p[2] for p in parts], batch_first=True),
        candidate_logprobs_BTK=cands,
    )


def scores_of_batch(
    entries: list[Entries],
    responses: list[list[int]],
    *,
    k: int,
    candidate_ids_BTK: torch.Tensor | None,
    vocab: int,
) -> TokenScores:
    """[B, T, ...] `TokenScores` of a batch from each sequence's entries (the loop that an
    engine's or a server's `score` ends with); candidate_ids_BTK: the student's candidates per
    response position (None: no candidate log-probs)."""
    parts = []
    for b, (e, r) in enumerate(zip(entries, responses, strict=True)):
        cand = None if candidate_ids_BTK is None else candidate_ids_BTK[b, : len(r)].cpu()
        parts.append(
            scores_from_entries(
                e, torch.tensor(r, dtype=torch.long), k=k, candidates_TK=cand, vocab=vocab
            )
        )
    return stack_scores(parts, k)
