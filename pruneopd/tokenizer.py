"""The shared tokenizer of every built-in model: a small byte-level BPE trained on task text.

It is a real Hugging Face `PreTrainedTokenizerFast`, saved with `save_pretrained` and
loaded with `AutoTokenizer.from_pretrained`, like any checkpoint's tokenizer. Pre-tokenisation
keeps every digit and punctuation mark its own piece (so numbers are read digit by digit)
and lets BPE merge only letters into words; the 256 byte symbols make any text encodable.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
VOCAB_SIZE = 1024
_SPLIT = Regex(r" ?[A-Za-z]+| ?[0-9]| ?[^\sA-Za-z0-9]|\s+")


# the tasks whose text the BPE is trained on; `loop` is written with `regs`'s symbols, so
# both suites share one tokenizer (and adding a task does not change the shipped one)
CORPUS_TASKS = ("regs", "add")


def corpus(n_per_task: int = 400, seed: int = 0) -> list[str]:
    """Prompts and reference responses in every style of the corpus tasks."""
    from pruneopd.tasks import TASKS

    texts = []
    for task in (TASKS[name] for name in CORPUS_TASKS):
        for p in task.problems("train", n_per_task, seed=seed):
            texts.append(p.prompt)
            texts.extend(task.render(p, s) for s in task.styles)
    return texts


def build_tokenizer(vocab_size: int = VOCAB_SIZE, seed: int = 0) -> PreTrainedTokenizerFast:
    """Train the byte-level BPE on task text (deterministic for a given seed)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(_SPLIT, behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(seed=seed), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, padding_side="left"
    )


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    return AutoTokenizer.from_pretrained(str(path))


def ensure_padding(tok) -> str | None:
    """A tokenizer without a pad token (most Llama and Mistral ones) pads with its EOS token,
    else its unk token: padded positions are masked everywhere (attention and loss masks), so
    any id serves. Returns the start-up line naming that token, or None when the tokenizer has
    a pad token. Raises ValueError when it has none of the three."""
    if tok.pad_token_id is not None:
        return None
    for kind in ("eos", "unk"):
        token = getattr(tok, f"{kind}_token", None)
        if token is not None:
            tok.pad_token = token
            return (
                f"pruneopd: note: the tokenizer has no pad token; padding with its {kind.upper()} "
                f"token {token!r} (id {tok.pad_token_id}); padded positions are masked"
            )
    raise ValueError("the tokenizer has no pad token, and no EOS or unk token to pad with")


# end-of-turn tokens of common chat templates (ChatML / SmolLM / Qwen, Llama 3, Gemma, Phi-3)
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>")


def stop_ids(tok) -> int | tuple[int, ...]:
    """The ids sampling stops at: EOS, and the end-of-turn token of the tokenizer's chat
    template when it is another token (Llama 3 ends a turn with <|eot_id|>, its EOS is
    <|end_of_text|>). Example: SmolLM2 (EOS <|im_end|>) -> 2; a tokenizer without a chat
    template -> its EOS id."""
    template = getattr(tok, "chat_template", None)
    ids = [tok.eos_token_id]
    if isinstance(template, str):
        vocab = tok.get_vocab()
        ids += [vocab[t] for t in END_OF_TURN if t in template and vocab.get(t) not in (None, *ids)]
    return ids[0] if len(ids) == 1 else tuple(ids)


def encode_prompt(tok, text: str) -> list[int]:
    """Token ids a model is prompted with: BOS (if the tokenizer has one) + the prompt text."""
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    return bos + tok(text, add_special_tokens=False)["input_ids"]


def prompt_ids(tok, problem) -> list[int]:
    """A problem's prompt ids; a prompt already rendered by a chat template keeps its own
    special tokens."""
    if problem.data.get("templated"):
        return tok(problem.prompt, add_special_tokens=False)["input_ids"]
    return encode_prompt(tok, problem.prompt)


def decode_response(tok, ids: list[int]) -> str:
    """Response text without special tokens (EOS, padding)."""
    return tok.decode(ids, skip_special_tokens=True)
