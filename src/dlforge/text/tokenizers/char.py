"""`CharTokenizer`: nanoGPT-style character-level tokenizer (one id per distinct character, special tokens first),
saved as dlforge's own `tokenizer.json` format (`CHAR_FORMAT`)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from dlforge.errors import DlforgeError
from dlforge.io import atomic_write_json

from .base import Tokenizer, check_roles

CHAR_FORMAT = "dlforge-char"


class CharTokenizer(Tokenizer):
    """Character-level tokenizer: one id per distinct character, special tokens first.

    Text is taken literally, character by character: a special token's string written in the text
    is encoded as its characters, never as the special id.
    """

    def __init__(self, vocab: list[str], special_tokens: dict[str, str] | None = None) -> None:
        self.special_tokens = check_roles(special_tokens or {})
        specials = set(self.special_tokens.values())
        self._itos = list(vocab)
        self._stoi = {tok: i for i, tok in enumerate(self._itos)}
        if len(self._stoi) != len(self._itos):
            raise DlforgeError("character vocabulary has duplicate entries; retrain the tokenizer")
        missing = specials - self._stoi.keys()
        if missing:
            raise DlforgeError(f"special token(s) {sorted(missing)} are not in the vocabulary; "
                               "add them to the vocab or remove them from special_tokens")
        chars = [(tok, i) for i, tok in enumerate(self._itos) if tok not in specials]
        if any(len(tok) != 1 for tok, _ in chars):
            raise DlforgeError("character vocabulary has multi-character entries that are not special "
                               "tokens; list them in special_tokens or rebuild with CharTokenizer.train")
        # A dense code point -> id table (-1 = not in vocab) lets encode_to_numpy map a whole
        # corpus with one vectorised lookup instead of a Python loop.
        top = max((ord(tok) for tok, _ in chars), default=0)
        self._codepoint_table = np.full(top + 1, -1, dtype=np.int64)
        for tok, i in chars:
            self._codepoint_table[ord(tok)] = i

    @classmethod
    def train(cls, text: str | Iterable[str], special_tokens: dict[str, str] | None = None) -> CharTokenizer:
        """Vocab = special tokens (in role order given) + sorted distinct characters of the text.

        With no special tokens the ids equal nanoGPT's `sorted(set(text))` (65 for tiny Shakespeare).
        """
        chars: set[str] = set()
        for piece in [text] if isinstance(text, str) else text:
            chars.update(piece)
        specials = list(dict.fromkeys(check_roles(special_tokens or {}).values()))
        return cls(specials + sorted(chars - set(specials)), special_tokens)

    @property
    def vocab_size(self) -> int:
        return len(self._itos)

    def token_to_id(self, token: str) -> int | None:
        return self._stoi.get(token)

    def id_to_token(self, i: int) -> str:
        if not 0 <= i < len(self._itos):
            raise DlforgeError(f"token id {i} is out of range for a vocabulary of size {len(self._itos)}")
        return self._itos[i]

    def _encode(self, text: str) -> list[int]:
        stoi, unk = self._stoi, self.unk_token_id
        if unk is not None:
            return [stoi.get(c, unk) for c in text]
        try:
            return [stoi[c] for c in text]
        except KeyError as exc:
            raise self._unknown_char_error(exc.args[0]) from None

    @staticmethod
    def _unknown_char_error(char: str) -> DlforgeError:
        return DlforgeError(
            f"character {char!r} (U+{ord(char):04X}) is not in the tokenizer's vocabulary; retrain the "
            "tokenizer on text that contains it, or use a byte-level BPE tokenizer"
        )

    def encode_to_numpy(self, text: str) -> np.ndarray:
        # UTF-32 gives one 4-byte code point per character; surrogatepass keeps lone surrogates.
        codepoints = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")
        table = self._codepoint_table
        ids = table[np.minimum(codepoints, len(table) - 1)]
        unknown = (ids < 0) | (codepoints >= len(table))
        if unknown.any():
            if self.unk_token_id is None:
                raise self._unknown_char_error(chr(codepoints[np.argmax(unknown)]))
            ids = np.where(unknown, self.unk_token_id, ids)
        return ids.astype(self._numpy_dtype())

    def _decode(self, ids: list[int]) -> str:
        if ids and not (0 <= min(ids) and max(ids) < len(self._itos)):
            bad = next(i for i in ids if not 0 <= i < len(self._itos))
            raise DlforgeError(f"token id {bad} is out of range for a vocabulary of size {len(self._itos)}")
        itos = self._itos
        return "".join([itos[i] for i in ids])

    def save(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        atomic_write_json(directory / "tokenizer.json", {
            "type": CHAR_FORMAT, "version": 1, "vocab": self._itos, "special_tokens": self.special_tokens,
        })
        self._write_config(directory, {"dlforge_tokenizer": "char"})
