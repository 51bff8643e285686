"""The shared byte-level BPE tokenizer: lossless, a real Hugging Face tokenizer, digit-wise."""

from __future__ import annotations

import random

import pytest
from transformers import AutoTokenizer

from pruneopd.tasks import TASKS
from pruneopd.tokenizer import (
    BOS,
    EOS,
    PAD,
    build_tokenizer,
    decode_response,
    encode_prompt,
    load_tokenizer,
)

TRICKY = [
    "",
    " ",
    "  two leading spaces",
    "trailing spaces  ",
    "tabs\tand\nnewlines\r\n\n",
    "hello , world . it 's ok , isn't it ? yes !",  # what clean-up of spaces would break
    "héllo wörld ñ ß Ø",
    "数字 ١٢٣ 𝟘𝟙𝟚 ½ ⅓",
    "emoji 🎉👍🏽 and ZWJ 👨‍👩‍👧",
    "control \x00\x01\x7f and NBSP\u00a0here",
    "<s> </s> <pad> look like special tokens but are text here?",
    "0123456789 9876543210 007",
]


def random_texts(n: int = 200, seed: int = 0) -> list[str]:
    """Random strings over ASCII, Latin-1, CJK, emoji and whitespace (no lone surrogates)."""
    rng = random.Random(seed)
    ranges = [(0x20, 0x7E), (0xA0, 0xFF), (0x4E00, 0x4FFF), (0x1F300, 0x1F64F), (0x0, 0x1F)]
    out = []
    for _ in range(n):
        chars = []
        for _ in range(rng.randint(1, 40)):
            lo, hi = rng.choice(ranges)
            chars.append(chr(rng.randint(lo, hi)))
        out.append("".join(chars))
    return out


def task_texts() -> list[str]:
    texts = []
    for task in TASKS.values():
        for d in (1, None, min(46, task.max_difficulty)):
            for p in task.problems("test", 5, seed=4, difficulty=d):
                texts.append(p.prompt)
                texts.extend(task.render(p, s) for s in task.styles)
    return texts


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()  # ~2 s: once per module


def encode(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_round_trip_task_texts(tok):
    for text in task_texts():
        assert tok.decode(encode(tok, text)) == text


@pytest.mark.parametrize("text", TRICKY)
def test_round_trip_tricky_text(tok, text):
    ids = encode(tok, text)
    assert tok.decode(ids) == text
    assert tok.unk_token_id is None or tok.unk_token_id not in ids


def test_round_trip_random_unicode(tok):
    for text in random_texts():
        assert tok.decode(encode(tok, text)) == text


def test_prompt_and_response_helpers(tok):
    task = TASKS["regs"]
    p = task.problems("test", 1, seed=0)[0]
    ids = encode_prompt(tok, p.prompt)
    assert ids[0] == tok.bos_token_id and ids[1:] == encode(tok, p.prompt)
    resp = task.render(p, "terse")
    padded = encode(tok, resp) + [tok.eos_token_id, tok.pad_token_id, tok.pad_token_id]
    assert decode_response(tok, padded) == resp


def test_save_and_auto_tokenizer_round_trip(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").exists()
    for loaded in (AutoTokenizer.from_pretrained(str(tmp_path)), load_tokenizer(tmp_path)):
        assert loaded.get_vocab() == tok.get_vocab()
        assert len(loaded) == len(tok)
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            assert getattr(loaded, name) == getattr(tok, name)
        assert loaded.padding_side == tok.padding_side
        for text in task_texts()[:30] + TRICKY + random_texts(50, seed=1):
            ids = encode(tok, text)
            assert encode(loaded, text) == ids
            assert loaded.decode(ids) == text
        batch = loaded(["1:2", "regs a=1"], padding=True)["input_ids"]
        assert batch == tok(["1:2", "regs a=1"], padding=True)["input_ids"]


def test_special_tokens_exist_and_are_distinct(tok):
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == (BOS, EOS, PAD)
    special = [tok.bos_token_id, tok.eos_token_id, tok.pad_token_id]
    assert all(isinstance(i, int) and 0 <= i < len(tok) for i in special)
    assert len(set(special)) == 3
    assert [tok.convert_ids_to_tokens(i) for i in special] == [BOS, EOS, PAD]
    # no ordinary text ever encodes to a special id
    for text in task_texts()[:30] + random_texts(50):
        assert not set(encode(tok, text)) & set(special)


def test_vocabulary_size(tok):
    assert len(tok) >= 300


def test_digits_are_single_tokens(tok):
    vocab = tok.get_vocab()
    for d in "0123456789":
        assert len(encode(tok, d)) == 1
        assert d in vocab  # its own vocabulary entry
    number = "98765432101234567890"
    ids = encode(tok, number)
    assert [tok.decode([i]) for i in ids] == list(number)
    # no vocabulary entry holds two digits, so a number is always read digit by digit
    for i in range(len(tok)):
        piece = tok.decode([i])
        assert sum(c.isdigit() for c in piece) <= 1, (i, piece)
    # in task text too: every digit of the trace is a token of its own
    for text in task_texts():
        pieces = [tok.decode([i]) for i in encode(tok, text)]
        assert sum(sum(c.isdigit() for c in piece) for piece in pieces) == sum(
            c.isdigit() for c in text
        )
        assert all(sum(c.isdigit() for c in piece) <= 1 for piece in pieces)


def test_stop_ids_add_the_chat_templates_end_of_turn_token():
    """Sampling stops at EOS and at the chat template's end-of-turn token (as Llama 3's
    <|eot_id|> beside its EOS); one id when they are the same token or there is no template."""
    from pruneopd.config import TrainConfig
    from pruneopd.engines.interfaces import SamplingSettings
    from pruneopd.tokenizer import stop_ids

    t = build_tokenizer(vocab_size=300)
    assert stop_ids(t) == t.eos_token_id
    t.add_special_tokens({"additional_special_tokens": ["<|eot_id|>"]})
    eot = t.convert_tokens_to_ids("<|eot_id|>")
    t.chat_template = "{% for m in messages %}{{ m['content'] }}<|eot_id|>{% endfor %}"
    assert stop_ids(t) == (t.eos_token_id, eot)
    assert SamplingSettings.from_config(TrainConfig(), t).eos_id == (t.eos_token_id, eot)
    t.eos_token = "<|eot_id|>"  # EOS is the end-of-turn token (SmolLM2's <|im_end|>)
    assert stop_ids(t) == eot
