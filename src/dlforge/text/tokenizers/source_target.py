"""`SourceTargetTokenizer`: the two vocabularies of a sequence-to-sequence model trained with separate ones."""

from __future__ import annotations

import os
from pathlib import Path

from .base import Tokenizer


class SourceTargetTokenizer:
    """The two vocabularies of a sequence-to-sequence model trained with separate ones: inputs are encoded with
    `source`, outputs decoded with `target` (everything not about encoding, e.g. `decode`, `eos_token_id`,
    `vocab_size`, is the target's). Saved as the target's files plus a `source_tokenizer/` folder."""

    SOURCE_DIR = "source_tokenizer"

    def __init__(self, source: Tokenizer, target: Tokenizer):
        self.source, self.target = source, target

    def __getattr__(self, name: str):
        return getattr(self.target, name)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.source.encode(text, add_special_tokens)

    def encode_batch(self, texts: list[str], **options) -> dict:
        return self.source.encode_batch(texts, **options)

    def save(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        self.target.save(directory)
        (directory / self.SOURCE_DIR).mkdir(parents=True, exist_ok=True)
        self.source.save(directory / self.SOURCE_DIR)
