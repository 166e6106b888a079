"""`HFTokenizer`: any Hugging Face `tokenizers.Tokenizer` (byte-level BPE, WordPiece, Unigram...) behind dlforge's
`Tokenizer` interface, with character offsets and overlapping windows for QA / NER (`encode_windows`).
`training_files` tells the trainable subclasses (BPE, WordPiece) whether they were given files or texts."""

from __future__ import annotations

import os
from pathlib import Path

import tokenizers as hf

from dlforge.errors import DlforgeError
from dlforge.io import atomic_write_text

from .base import Tokenizer, check_roles

# Names that conventionally mean a special role, used when no config file says otherwise.
# "<s>"/"</s>" double as CLS/SEP in RoBERTa; a role is only filled by the first match.
COMMON_SPECIAL_NAMES: dict[str, tuple[str, ...]] = {
    "[PAD]": ("pad",), "<pad>": ("pad",), "[UNK]": ("unk",), "<unk>": ("unk",),
    "[CLS]": ("cls",), "[SEP]": ("sep",), "[MASK]": ("mask",), "<mask>": ("mask",),
    "<s>": ("bos", "cls"), "</s>": ("eos", "sep"), "<|endoftext|>": ("bos", "eos"),
}


class HFTokenizer(Tokenizer):
    """Wraps a `tokenizers.Tokenizer` (any model: byte-level BPE, WordPiece, Unigram...).

    Special tokens come from `special_tokens`, or are detected by common names ([PAD], <s>,
    <|endoftext|>, ...). Any given special token that the tokenizer lacks is added to it.
    """

    def __init__(self, tokenizer: hf.Tokenizer, special_tokens: dict[str, str] | None = None) -> None:
        # a tokenizer.json may carry its own padding/truncation settings (all-MiniLM pads to 128);
        # encode_batch pads and truncates itself and derives the attention mask from the real lengths
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self.tokenizer = tokenizer
        if special_tokens is None:
            special_tokens = self._detect_special_tokens()
        self.special_tokens = check_roles(special_tokens)
        # Registering them as special makes the library match them in text and skip them on decode.
        # Tokens already registered as special keep their options (RoBERTa's <mask> strips the space before it).
        present = {t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special}
        wanted = [tok for tok in dict.fromkeys(self.special_tokens.values()) if tok not in present]
        tokenizer.add_special_tokens([hf.AddedToken(tok, special=True) for tok in wanted])

    def _detect_special_tokens(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for name, roles in COMMON_SPECIAL_NAMES.items():
            if self.tokenizer.token_to_id(name) is not None:
                for role in roles:
                    found.setdefault(role, name)
        return found

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    def id_to_token(self, i: int) -> str:
        token = self.tokenizer.id_to_token(i)
        if token is None:
            raise DlforgeError(f"token id {i} is out of range for a vocabulary of size {self.vocab_size}")
        return token

    def _post_processor_adds_tokens(self) -> bool:
        post = self.tokenizer.post_processor
        return post is not None and post.num_special_tokens_to_add(False) > 0

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        if add_special_tokens and self._post_processor_adds_tokens():
            return self.tokenizer.encode(text, add_special_tokens=True).ids
        return super().encode(text, add_special_tokens)

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def _encode_many(self, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
        # The library encodes batches in parallel; add BOS/EOS ourselves unless its post-processor does.
        by_library = add_special_tokens and self._post_processor_adds_tokens()
        seqs = [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=by_library)]
        return [self._add_bos_eos(s) for s in seqs] if add_special_tokens and not by_library else seqs

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def encode_windows(self, texts: list[str], pairs: list[str] | None = None, max_length: int | None = None,
                       stride: int = 0, truncation: str | None = None) -> list[list[dict]]:
        """Encode texts (or text pairs) with character offsets, split into overlapping windows.

        Returns, per input, a list of windows (one unless the input exceeds `max_length`), each a dict
        of lists over its tokens: `input_ids`, `token_type_ids`, `attention_mask`, `offsets` ((start, end)
        character spans in the text they came from; (0, 0) for special tokens), `sequence_ids` (0 = text,
        1 = pair, None = special token) and `word_ids`. With pairs, only the second member (a QA
        context) is cut into windows (`truncation="only_first"` cuts the first member instead, e.g. an
        NLI premise); consecutive windows share `stride` tokens.
        """
        if pairs is not None and len(pairs) != len(texts):
            raise DlforgeError(f"got {len(texts)} texts but {len(pairs)} pairs: give one pair per text")
        if truncation not in (None, "only_first", "only_second", "longest_first"):
            raise DlforgeError(f"truncation must be only_first, only_second or longest_first, got {truncation!r}")
        if max_length is not None:
            strategy = truncation or ("only_second" if pairs is not None else "longest_first")
            self.tokenizer.enable_truncation(max_length, stride=stride, strategy=strategy)
        try:
            inputs = list(zip(texts, pairs)) if pairs is not None else list(texts)
            encodings = self.tokenizer.encode_batch(inputs, add_special_tokens=True)
        except Exception as e:  # the library raises a bare Exception when the question leaves no room
            raise DlforgeError(f"cannot split the input into windows of {max_length} tokens with stride {stride}: "
                               f"{e}; use a longer max_length or a shorter first text") from e
        finally:
            self.tokenizer.no_truncation()
        out = []
        for first in encodings:
            out.append([{"input_ids": e.ids, "token_type_ids": e.type_ids, "attention_mask": e.attention_mask,
                         "offsets": e.offsets, "sequence_ids": e.sequence_ids, "word_ids": e.word_ids}
                        for e in [first, *first.overflowing]])
        return out

    def save(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        atomic_write_text(directory / "tokenizer.json", self.tokenizer.to_str(pretty=True))
        # "PreTrainedTokenizerFast" lets transformers' AutoTokenizer open the same directory.
        self._write_config(directory, {"tokenizer_class": "PreTrainedTokenizerFast"})


def training_files(source: object) -> list[str] | None:
    """Return the paths when `source` is a list of files, else None (it is text)."""
    if isinstance(source, str) or not isinstance(source, (list, tuple)) or not source:
        return None
    if all(isinstance(s, os.PathLike) for s in source):
        missing = [str(s) for s in source if not Path(s).is_file()]
        if missing:
            raise DlforgeError(f"training file {missing[0]} does not exist; check the path")
        return [str(s) for s in source]
    if all(isinstance(s, str) and "\n" not in s and os.path.isfile(s) for s in source):
        return list(source)
    return None
