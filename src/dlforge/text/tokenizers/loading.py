"""`load_tokenizer`: whatever tokenizer a folder or a tokenizer.json file holds, by the files found (dlforge char
format, Hugging Face tokenizer.json, GPT-2 / RoBERTa vocab.json + merges.txt, BERT vocab.txt, a seq2seq model's
source/target pair)."""

from __future__ import annotations

import os
from pathlib import Path

import tokenizers as hf

from dlforge.errors import DlforgeError

from .base import Tokenizer
from .bpe import load_vocab_merges
from .char import CHAR_FORMAT, CharTokenizer
from .files import configured_special_tokens, invalid_file_error, read_json_settings
from .huggingface import HFTokenizer
from .source_target import SourceTargetTokenizer
from .wordpiece import load_vocab_txt


def _load_tokenizer_json(path: Path) -> Tokenizer:
    data = read_json_settings(path)
    specials = configured_special_tokens(path.parent)
    if isinstance(data, dict) and data.get("type") == CHAR_FORMAT:
        if not isinstance(data.get("vocab"), list):
            raise DlforgeError(f"{path} has no 'vocab' list; re-save the tokenizer")
        return CharTokenizer(data["vocab"], specials or data.get("special_tokens"))
    try:
        tokenizer = hf.Tokenizer.from_file(str(path))
    except Exception as exc:  # the library raises plain Exception on a malformed file
        raise invalid_file_error(path, exc) from None
    return HFTokenizer(tokenizer, specials)


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load a tokenizer from a directory or a tokenizer.json file.

    A directory may hold tokenizer.json (dlforge char format or Hugging Face format), a GPT-2 or
    RoBERTa style vocab.json + merges.txt pair, or a BERT WordPiece vocab.txt (looked for in that
    order); special tokens come from tokenizer_config.json / special_tokens_map.json when present,
    else they are detected by common names.
    """
    path = Path(path)
    if not path.exists():
        raise DlforgeError(f"tokenizer path {path} does not exist; check the path")
    if path.is_file():
        return _load_tokenizer_json(path)
    if (path / SourceTargetTokenizer.SOURCE_DIR).is_dir():  # a seq2seq model with separate vocabularies
        target = load_tokenizer(path / "tokenizer.json") if (path / "tokenizer.json").is_file() else None
        if target is None:
            raise DlforgeError(f"{path} has a {SourceTargetTokenizer.SOURCE_DIR}/ but no tokenizer.json for the "
                               "target side: the model folder is incomplete")
        return SourceTargetTokenizer(load_tokenizer(path / SourceTargetTokenizer.SOURCE_DIR), target)
    if (path / "tokenizer.json").is_file():
        return _load_tokenizer_json(path / "tokenizer.json")
    if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
        return load_vocab_merges(path)
    if (path / "vocab.txt").is_file():
        return load_vocab_txt(path)
    raise DlforgeError(f"no tokenizer found in {path}: expected tokenizer.json, vocab.json + merges.txt, "
                       "or a WordPiece vocab.txt")
