"""BERT-style WordPiece: `WordPieceTokenizer` trains one with BERT's normalizer, pre-tokenizer and [CLS] A [SEP]
post-processor; `load_vocab_txt` reads a BERT `vocab.txt` set up as BertTokenizerFast does."""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path

import tokenizers as hf

from dlforge.errors import DlforgeError
from dlforge.paths import model_file

from .base import check_roles
from .files import configured_special_tokens, invalid_file_error, read_json_settings
from .huggingface import HFTokenizer, training_files

BERT_SPECIAL_TOKENS = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}


def bert_pipeline(model: hf.models.WordPiece, lowercase: bool, strip_accents: bool | None = None,
                   chinese_chars: bool = True) -> hf.Tokenizer:
    """A WordPiece model with BERT's normalizer, pre-tokenizer and decoder (as BertTokenizerFast sets them up)."""
    tokenizer = hf.Tokenizer(model)
    tokenizer.normalizer = hf.normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=chinese_chars,
                                                         strip_accents=strip_accents, lowercase=lowercase)
    tokenizer.pre_tokenizer = hf.pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = hf.decoders.WordPiece(prefix="##")
    return tokenizer


def set_bert_post_processor(tokenizer: hf.Tokenizer, cls: str, sep: str) -> None:
    """[CLS] A [SEP] for one text, [CLS] A [SEP] B [SEP] with token type 1 on B for a pair."""
    cls_id, sep_id = tokenizer.token_to_id(cls), tokenizer.token_to_id(sep)
    if cls_id is not None and sep_id is not None:
        tokenizer.post_processor = hf.processors.TemplateProcessing(
            single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
            special_tokens=[(cls, cls_id), (sep, sep_id)])


class WordPieceTokenizer(HFTokenizer):
    """BERT-style WordPiece: BERT normalization (optionally lower-cased), `##` continuation pieces,
    and [CLS] A [SEP] (B [SEP]) added by `encode(..., add_special_tokens=True)`."""

    @classmethod
    def train(
        cls,
        texts_or_files: str | Iterable[str] | Sequence[str | os.PathLike],
        vocab_size: int,
        lowercase: bool = True,
        special_tokens: dict[str, str] | None = None,
        min_frequency: int = 2,
    ) -> WordPieceTokenizer:
        """Train on an iterable of texts, or a list of file paths (like `BPETokenizer.train`).

        `special_tokens` defaults to BERT's [PAD], [UNK], [CLS], [SEP], [MASK], which get ids 0-4.
        The same input gives the same vocabulary in every process (see `_continuation_pieces`).
        """
        special_tokens = check_roles(dict(BERT_SPECIAL_TOKENS) if special_tokens is None else special_tokens)
        if "unk" not in special_tokens:
            raise DlforgeError("WordPiece needs an unknown-word token: add special_tokens['unk'], e.g. '[UNK]'")
        specials = list(dict.fromkeys(special_tokens.values()))
        if vocab_size <= len(specials):
            raise DlforgeError(f"vocab_size {vocab_size} is too small: it must exceed the {len(specials)} "
                               "special tokens")
        tokenizer = bert_pipeline(hf.models.WordPiece(unk_token=special_tokens["unk"]), lowercase)
        files = training_files(texts_or_files)
        if files is None:  # two passes over the texts: keep them
            texts = [texts_or_files] if isinstance(texts_or_files, str) else list(texts_or_files)
        pieces = _continuation_pieces(tokenizer.normalizer, _file_chunks(files) if files is not None else texts)
        trainer = hf.trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                               special_tokens=specials + pieces, show_progress=False)
        if files is not None:
            tokenizer.train(files, trainer)
        else:
            tokenizer.train_from_iterator(texts, trainer)
        # rebuild without the added-token entries of the pieces: they are ordinary vocabulary
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        tokenizer = bert_pipeline(hf.models.WordPiece(vocab, unk_token=special_tokens["unk"]), lowercase)
        if "cls" in special_tokens and "sep" in special_tokens:
            set_bert_post_processor(tokenizer, special_tokens["cls"], special_tokens["sep"])
        return cls(tokenizer, special_tokens)


def _continuation_pieces(normalizer, texts: Iterable[str]) -> list[str]:
    """"##c" for every character c of the normalized texts that can continue a word, sorted.

    The library's WordPiece trainer numbers these pieces in hash-map order, which changes from process to
    process and, through the ids, which merges win ties: the vocabulary would differ on every run. Given
    up front (as tokens the trainer places first, in this order), every run learns the same vocabulary.
    """
    chars: set[str] = set()
    for text in texts:
        chars.update(normalizer.normalize_str(text))
    return ["##" + c for c in sorted(chars) if _continues_words(c)]


# BERT's pre-tokenizer splits at spaces and punctuation (ASCII symbols count), and its normalizer isolates
# CJK ideographs: none of these is ever inside a word.
_ASCII_PUNCTUATION = {chr(i) for r in ((33, 48), (58, 65), (91, 97), (123, 127)) for i in range(*r)}
_CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
               (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def _continues_words(c: str) -> bool:
    if c.isspace() or c in _ASCII_PUNCTUATION or unicodedata.category(c).startswith("P"):
        return False
    return not any(lo <= ord(c) <= hi for lo, hi in _CJK_RANGES)


def _file_chunks(files: list[str]) -> Iterable[str]:
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as f:
            while chunk := f.read(1 << 22):
                yield chunk


def load_vocab_txt(directory: Path) -> HFTokenizer:
    """A BERT-style WordPiece vocab.txt (one token per line, id = line number), set up as BertTokenizerFast
    does from tokenizer_config.json: `do_lower_case` (default True), `strip_accents`, `tokenize_chinese_chars`."""
    path = directory / "tokenizer_config.json"
    config = read_json_settings(path) if path.is_file() else {}
    specials = configured_special_tokens(directory)
    named = {**BERT_SPECIAL_TOKENS, **(specials or {})}
    try:
        model = hf.models.WordPiece.from_file(str(model_file(directory / "vocab.txt")), unk_token=named["unk"])
    except Exception as exc:  # the library raises plain Exception on malformed files
        raise invalid_file_error(directory / "vocab.txt", exc) from None
    tokenizer = bert_pipeline(model, bool(config.get("do_lower_case", True)), config.get("strip_accents"),
                               bool(config.get("tokenize_chinese_chars", True)))
    set_bert_post_processor(tokenizer, named["cls"], named["sep"])
    return HFTokenizer(tokenizer, specials)
