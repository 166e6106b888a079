"""Tests for dlforge.text.tokenizers: char, byte-level BPE, Hugging Face files, batching, streaming."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import numpy as np
import pytest
import tokenizers as hf
import torch

from dlforge.errors import DlforgeError
from dlforge.text import BPETokenizer, CharTokenizer, HFTokenizer, Tokenizer, load_tokenizer

SHAKESPEARE = Path(__file__).resolve().parents[2] / "src/dlforge/assets/tinyshakespeare.txt.gz"

TRAIN_TEXT = (
    "First Citizen: Before we proceed any further, hear me speak.\n"
    "All: Speak, speak. You are all resolved rather to die than to famish?\n"
    "The quick brown fox jumps over the lazy dog; naïve café, déjà vu — 東京 and 世界.\n"
) * 30

ROUND_TRIP_STRINGS = [
    "", " ", "hello world", "  leading and trailing spaces  ", "tabs\tand\nnewlines\r\n",
    "\x00nul\x01\x7f", "emoji 🌍🎉👩‍👩‍👧 flags 🇫🇷", "中文字符 日本語 한국어",
    "Ελληνικά кириллица עברית العربية", "combining e\u0301 and zero\u200bwidth", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math 𝟘𝟙",
]


def random_unicode_strings(count: int, seed: int = 0) -> list[str]:
    """Strings of code points drawn from the BMP, the supplementary planes and ASCII controls."""
    rng = random.Random(seed)
    planes = [(0x0, 0x7F), (0x80, 0x7FF), (0x800, 0xD7FF), (0xE000, 0xFFFD),
              (0x10000, 0x1FFFF), (0x20000, 0x2FFFF), (0xE0000, 0xE01EF), (0xF0000, 0x10FFFD)]
    out = []
    for _ in range(count):
        chars = [chr(rng.randint(*rng.choice(planes))) for _ in range(rng.randint(1, 20))]
        out.append("".join(chars))
    return out


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    return BPETokenizer.train([TRAIN_TEXT], vocab_size=300)


# ---------------------------------------------------------------- char


def test_char_round_trip_and_nanogpt_ids():
    text = "First Citizen:\nBefore we proceed"
    tok = CharTokenizer.train(text)
    chars = sorted(set(text))
    assert tok.vocab_size == len(chars)
    assert tok.encode(text) == [chars.index(c) for c in text]
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode(torch.tensor(tok.encode(text))) == text


def test_char_tiny_shakespeare_matches_nanogpt():
    text = gzip.decompress(SHAKESPEARE.read_bytes()).decode("utf-8")
    tok = CharTokenizer.train(text)
    assert tok.vocab_size == 65
    assert tok.encode("First Citizen") == [18, 47, 56, 57, 58, 1, 15, 47, 58, 47, 64, 43, 52]
    array = tok.encode_to_numpy(text)
    assert array.dtype == np.uint16
    assert np.array_equal(array, np.array(tok.encode(text)))


def test_char_unknown_character_error():
    tok = CharTokenizer.train("abc")
    for encode in (tok.encode, tok.encode_to_numpy):
        with pytest.raises(DlforgeError) as info:
            encode("abé")
        message = str(info.value)
        assert "'é'" in message and "U+00E9" in message
        assert "retrain" in message and "byte-level BPE" in message and "\n" not in message


def test_char_special_tokens_come_first_and_unk_maps():
    tok = CharTokenizer.train(["ba", "c"], special_tokens={"pad": "<pad>", "unk": "<unk>"})
    assert [tok.id_to_token(i) for i in range(tok.vocab_size)] == ["<pad>", "<unk>", "a", "b", "c"]
    assert tok.pad_token_id == 0 and tok.unk_token_id == 1 and tok.eos_token_id is None
    assert tok.special_token_ids == {0, 1}
    assert tok.encode("az") == [2, 1]
    assert tok.encode_to_numpy("az").tolist() == [2, 1]
    assert tok.decode([0, 2, 3]) == "ab"
    assert tok.decode([0, 2], skip_special_tokens=False) == "<pad>a"


# ---------------------------------------------------------------- byte-level BPE


def test_bpe_round_trips_any_unicode(bpe):
    assert bpe.vocab_size <= 300
    assert bpe.eos_token_id is not None
    for text in ROUND_TRIP_STRINGS + random_unicode_strings(200):
        assert bpe.decode(bpe.encode(text)) == text, repr(text)


def test_bpe_matches_special_token_strings_in_text(bpe):
    ids = bpe.encode("end<|endoftext|>")
    assert ids[-1] == bpe.eos_token_id
    assert bpe.decode(ids) == "end"
    assert bpe.decode(ids, skip_special_tokens=False) == "end<|endoftext|>"


def test_bpe_vocab_too_small():
    with pytest.raises(DlforgeError, match="at least 257"):
        BPETokenizer.train(["some text"], vocab_size=100)
    with pytest.raises(DlforgeError, match="at least 258"):
        BPETokenizer.train(["some text"], vocab_size=257, special_tokens={"eos": "</s>", "pad": "<pad>"})


def test_bpe_trains_from_files(tmp_path, bpe):
    path = tmp_path / "corpus.txt"
    path.write_text(TRAIN_TEXT, encoding="utf-8")
    from_file = BPETokenizer.train([path], vocab_size=300)
    assert from_file.encode(TRAIN_TEXT[:200]) == bpe.encode(TRAIN_TEXT[:200])


def test_add_special_tokens_adds_eos_once_when_bos_is_eos(bpe):
    ids = bpe.encode("hello")
    assert bpe.encode("hello", add_special_tokens=True) == ids + [bpe.eos_token_id]
    char = CharTokenizer.train("ab", special_tokens={"bos": "<s>", "eos": "</s>"})
    assert char.encode("ab", add_special_tokens=True) == [0, 2, 3, 1]


# ---------------------------------------------------------------- batching


def test_batch_right_and_left_padding():
    tok = CharTokenizer.train("abcd", special_tokens={"pad": "<pad>"})
    right = tok.encode_batch(["ab", "abcd"])
    assert right["input_ids"].dtype == torch.long
    assert right["input_ids"].tolist() == [[1, 2, 0, 0], [1, 2, 3, 4]]
    assert right["attention_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    left = tok.encode_batch(["ab", "abcd"], padding_side="left", return_tensors=None)
    assert left["input_ids"] == [[0, 0, 1, 2], [1, 2, 3, 4]]
    assert left["attention_mask"] == [[0, 0, 1, 1], [1, 1, 1, 1]]
    fixed = tok.encode_batch(["a"], padding="max_length", max_length=3)
    assert fixed["input_ids"].tolist() == [[1, 0, 0]]
    assert tok.encode_batch([])["input_ids"].shape == (0, 0)


def test_batch_truncation_and_errors():
    tok = CharTokenizer.train("abcdef")
    out = tok.encode_batch(["abcdef", "ab"], truncation=True, max_length=3)
    assert out["input_ids"].tolist() == [[0, 1, 2], [0, 1, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    unpadded = tok.encode_batch(["abc", "a"], padding=False, return_tensors=None)
    assert unpadded["input_ids"] == [[0, 1, 2], [0]]
    with pytest.raises(DlforgeError, match="padding=True"):
        tok.encode_batch(["abc", "a"], padding=False)
    with pytest.raises(DlforgeError, match="max_length"):
        tok.encode_batch(["abc"], truncation=True)


def test_batch_pads_with_eos_when_no_pad_token(bpe):
    out = bpe(["hello there", "hi"])
    assert out["input_ids"][1, -1].item() == bpe.eos_token_id
    assert out["attention_mask"][1].sum().item() == len(bpe.encode("hi"))
    single = bpe("hello")
    assert single["input_ids"].tolist() == [bpe.encode("hello")]


# ---------------------------------------------------------------- save / load


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_save_load_round_trip(tmp_path, bpe, kind):
    char = CharTokenizer.train(TRAIN_TEXT, special_tokens={"eos": "<eos>"})
    tok: Tokenizer = char if kind == "char" else bpe
    tok.save(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file() and (tmp_path / "tokenizer_config.json").is_file()
    for loaded in (load_tokenizer(tmp_path), load_tokenizer(tmp_path / "tokenizer.json")):
        assert type(loaded).__name__ == ("CharTokenizer" if kind == "char" else "HFTokenizer")
        assert loaded.vocab_size == tok.vocab_size
        assert loaded.special_tokens == tok.special_tokens
        assert loaded.eos_token_id == tok.eos_token_id
        assert loaded.encode(TRAIN_TEXT) == tok.encode(TRAIN_TEXT)


def small_gpt2_style_tokenizer() -> hf.Tokenizer:
    tokenizer = hf.Tokenizer(hf.models.BPE())
    tokenizer.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = hf.decoders.ByteLevel()
    trainer = hf.trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>"], show_progress=False,
                                     initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([TRAIN_TEXT], trainer)
    return tokenizer


SENTENCES = ["Before we proceed any further, hear me speak.", "naïve café 東京", "  odd   spacing\n", "x"]


def test_load_hf_tokenizer_json_with_config(tmp_path):
    reference = small_gpt2_style_tokenizer()
    reference.save(str(tmp_path / "tokenizer.json"))
    config = {"bos_token": "<|endoftext|>", "eos_token": {"content": "<|endoftext|>", "special": True}}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = load_tokenizer(tmp_path)
    assert isinstance(tok, HFTokenizer)
    assert tok.bos_token_id == tok.eos_token_id == reference.token_to_id("<|endoftext|>")
    for sentence in SENTENCES:
        assert tok.encode(sentence) == reference.encode(sentence).ids
        assert tok.decode(tok.encode(sentence)) == sentence


def test_load_vocab_and_merges_pair(tmp_path):
    reference = small_gpt2_style_tokenizer()
    reference.model.save(str(tmp_path))
    tok = load_tokenizer(tmp_path)
    assert tok.eos_token_id == tok.bos_token_id == reference.token_to_id("<|endoftext|>")
    for sentence in SENTENCES:
        assert tok.encode(sentence) == reference.encode(sentence).ids
    transformers = pytest.importorskip("transformers")
    gpt2 = transformers.GPT2TokenizerFast.from_pretrained(str(tmp_path))
    for sentence in SENTENCES:
        assert tok.encode(sentence) == gpt2(sentence)["input_ids"]


def test_wordpiece_detects_special_tokens_and_uses_post_processor():
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4, "hello": 5, "world": 6, "##s": 7}
    tokenizer = hf.Tokenizer(hf.models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = hf.pre_tokenizers.Whitespace()
    tokenizer.decoder = hf.decoders.WordPiece()
    tokenizer.post_processor = hf.processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok = HFTokenizer(tokenizer)
    roles = (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id)
    assert roles == (0, 1, 2, 3, 4)
    assert tok.encode("hello worlds") == [5, 6, 7]
    assert tok.encode("hello worlds", add_special_tokens=True) == [2, 5, 6, 7, 3]
    assert tok.decode([2, 5, 6, 7, 3]) == "hello worlds"


def test_load_errors(tmp_path):
    with pytest.raises(DlforgeError, match="no tokenizer found in .*vocab.json \\+ merges.txt"):
        load_tokenizer(tmp_path)
    with pytest.raises(DlforgeError, match="does not exist"):
        load_tokenizer(tmp_path / "missing")
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(DlforgeError, match="cannot read .* as JSON"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"model": 3}')
    with pytest.raises(DlforgeError, match="not a valid tokenizer file"):
        load_tokenizer(tmp_path)


# ---------------------------------------------------------------- streaming


def test_stream_decoder_matches_full_decode(bpe):
    text = "Hi 🌍! 東京 and 世界, déjà vu 👩‍👩‍👧."
    ids = bpe.encode(text) + [bpe.eos_token_id]
    stream = bpe.stream_decoder()
    pieces = [stream.put(i) for i in ids]
    pieces.append(stream.flush())
    assert "" in pieces[:-1]  # some multi-byte characters really were split across tokens
    assert all("\ufffd" not in piece for piece in pieces)
    assert "".join(pieces) == bpe.decode(ids) == text


def test_stream_decoder_flushes_incomplete_tail(bpe):
    ids = bpe.encode("ok 🌍")[:-1]  # cut inside the emoji's bytes
    stream = bpe.stream_decoder()
    streamed = "".join(stream.put(i) for i in ids)
    assert streamed + stream.flush() == bpe.decode(ids)
