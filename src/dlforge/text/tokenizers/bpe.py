"""Byte-level BPE (GPT-2 / RoBERTa style): `BPETokenizer` trains one that round-trips any Unicode text exactly;
`load_vocab_merges` reads a GPT-2 / RoBERTa `vocab.json` + `merges.txt` pair, and `add_roberta_special_handling`
gives it RoBERTa's special tokens."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import tokenizers as hf

from dlforge.errors import DlforgeError
from dlforge.paths import model_file

from .base import check_roles
from .files import configured_special_tokens, invalid_file_error
from .huggingface import HFTokenizer, training_files


class BPETokenizer(HFTokenizer):
    """Byte-level BPE (GPT-2 style): every Unicode string encodes and decodes back exactly.

    Like every HFTokenizer, a special token's string in the text ("<|endoftext|>") encodes to its
    special id, so it is dropped by `decode` unless `skip_special_tokens=False`.
    """

    @classmethod
    def train(
        cls,
        texts_or_files: str | Iterable[str] | Sequence[str | os.PathLike],
        vocab_size: int,
        special_tokens: dict[str, str] | None = None,
        min_frequency: int = 2,
    ) -> BPETokenizer:
        """Train on an iterable of texts, or a list of file paths (pathlib.Path or existing files).

        `special_tokens` defaults to `{"eos": "<|endoftext|>"}` for GPT-style training.
        """
        special_tokens = check_roles({"eos": "<|endoftext|>"} if special_tokens is None else special_tokens)
        specials = list(dict.fromkeys(special_tokens.values()))
        minimum = 256 + len(specials)
        if vocab_size < minimum:
            raise DlforgeError(f"vocab_size {vocab_size} is too small: byte-level BPE needs at least "
                               f"{minimum} (256 bytes + {len(specials)} special tokens)")
        tokenizer = hf.Tokenizer(hf.models.BPE())
        tokenizer.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = hf.decoders.ByteLevel()
        trainer = hf.trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials,
            initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
        )
        files = training_files(texts_or_files)
        if files is not None:
            tokenizer.train(files, trainer)
        else:
            texts = [texts_or_files] if isinstance(texts_or_files, str) else texts_or_files
            tokenizer.train_from_iterator(texts, trainer)
        return cls(tokenizer, special_tokens)


def load_vocab_merges(directory: Path) -> HFTokenizer:
    """A GPT-2 or RoBERTa style pair: byte-level BPE with GPT-2's pre-tokenizer (no prefix space).

    A vocabulary with distinct CLS and SEP tokens (RoBERTa's <s> and </s>) gets RoBERTa's post-processor
    (<s> A </s> and <s> A </s></s> B </s>) and a mask token that absorbs the space before it, as in
    RobertaTokenizerFast; GPT-2's (<|endoftext|> only) gets none.
    """
    try:
        vocab, merges = model_file(directory / "vocab.json"), model_file(directory / "merges.txt")
        model = hf.models.BPE.from_file(str(vocab), str(merges))
    except Exception as exc:  # the library raises plain Exception on malformed files
        raise invalid_file_error(directory / "merges.txt", exc) from None
    tokenizer = hf.Tokenizer(model)
    tokenizer.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = hf.decoders.ByteLevel()
    specials = configured_special_tokens(directory)
    configured = specials or {}
    tokenizer = HFTokenizer(tokenizer, specials)
    add_roberta_special_handling(tokenizer, *(configured.get(role, default) for role, default in
                                              (("cls", "<s>"), ("sep", "</s>"), ("mask", "<mask>"))))
    return tokenizer


def add_roberta_special_handling(tokenizer: HFTokenizer, cls: str = "<s>", sep: str = "</s>",
                                 mask: str = "<mask>") -> bool:
    """Give a byte-level BPE RoBERTa's special tokens: <s> A </s> (pairs <s> A </s></s> B </s>) and a mask
    token that absorbs the space before it ("is <mask>." masks the word " Paris", as in pretraining).

    Does nothing (returns False) unless the vocabulary has distinct `cls` and `sep` tokens.
    """
    hf_tok = tokenizer.tokenizer
    cls_id, sep_id = hf_tok.token_to_id(cls), hf_tok.token_to_id(sep)
    if cls_id is None or sep_id is None or cls_id == sep_id:
        return False
    if hf_tok.token_to_id(mask) is not None:  # re-adding a token replaces its options
        hf_tok.add_special_tokens([hf.AddedToken(mask, lstrip=True, special=True)])
    hf_tok.post_processor = hf.processors.RobertaProcessing((sep, sep_id), (cls, cls_id), trim_offsets=True,
                                                            add_prefix_space=False)
    return True
