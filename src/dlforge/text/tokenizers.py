"""Tokenizers for every dlforge model family: one interface, three implementations.

`Tokenizer` is the common interface (ids <-> text, special tokens, batch padding, save/load).
`CharTokenizer` is nanoGPT-style character level, `HFTokenizer` wraps any Hugging Face
`tokenizers.Tokenizer` (GPT-2 byte-level BPE, BERT WordPiece, ...), `BPETokenizer` trains a
byte-level BPE that round-trips any Unicode text exactly, and `WordPieceTokenizer` trains a BERT-style
WordPiece. `load_tokenizer` reads what `save` writes, and also Hugging Face `tokenizer.json` files,
GPT-2 / RoBERTa style `vocab.json` + `merges.txt`, or a BERT `vocab.txt`.
`StreamDecoder` turns ids generated one at a time into printable text pieces.
"""

from __future__ import annotations

import json
import os
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import tokenizers as hf
import torch

from dlforge.errors import DlforgeError
from dlforge.io import atomic_write_json, atomic_write_text
from dlforge.paths import model_file

ROLES = ("pad", "bos", "eos", "unk", "cls", "sep", "mask")
CHAR_FORMAT = "dlforge-char"

# Names that conventionally mean a special role, used when no config file says otherwise.
# "<s>"/"</s>" double as CLS/SEP in RoBERTa; a role is only filled by the first match.
_COMMON_SPECIAL_NAMES: dict[str, tuple[str, ...]] = {
    "[PAD]": ("pad",), "<pad>": ("pad",), "[UNK]": ("unk",), "<unk>": ("unk",),
    "[CLS]": ("cls",), "[SEP]": ("sep",), "[MASK]": ("mask",), "<mask>": ("mask",),
    "<s>": ("bos", "cls"), "</s>": ("eos", "sep"), "<|endoftext|>": ("bos", "eos"),
}

Padding = bool | Literal["longest", "max_length"]


def _check_roles(special_tokens: dict[str, str]) -> dict[str, str]:
    unknown = sorted(set(special_tokens) - set(ROLES))
    if unknown:
        raise DlforgeError(f"unknown special-token role(s) {unknown}; use only {list(ROLES)}")
    return {role: tok for role, tok in special_tokens.items() if tok is not None}


def _ids_to_list(ids: Sequence[int] | torch.Tensor | np.ndarray) -> list[int]:
    if isinstance(ids, (torch.Tensor, np.ndarray)):
        if ids.ndim != 1:
            raise DlforgeError(f"decode expects a 1-D sequence of ids, got shape {tuple(ids.shape)}")
        return ids.tolist()
    return ids if isinstance(ids, list) else list(ids)


def _special_id_property(role: str) -> property:
    def special_id(self: Tokenizer) -> int | None:
        return self._special_id(role)

    special_id.__doc__ = f"Id of the {role} token, or None when this tokenizer has none."
    return property(special_id)


class Tokenizer(ABC):
    """Common interface. Subclasses implement `_encode`, `_decode`, the vocab lookups and `save`.

    Special tokens are stored as `{role: token string}` with roles pad, bos, eos, unk, cls, sep, mask.
    """

    special_tokens: dict[str, str]

    # ---- vocabulary (implemented by subclasses) ----
    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @abstractmethod
    def token_to_id(self, token: str) -> int | None: ...

    @abstractmethod
    def id_to_token(self, i: int) -> str: ...

    @abstractmethod
    def _encode(self, text: str) -> list[int]: ...

    @abstractmethod
    def _decode(self, ids: list[int]) -> str: ...

    @abstractmethod
    def save(self, directory: str | os.PathLike) -> None: ...

    # ---- special tokens ----
    def _special_id(self, role: str) -> int | None:
        token = self.special_tokens.get(role)
        return None if token is None else self.token_to_id(token)

    pad_token_id = _special_id_property("pad")
    bos_token_id = _special_id_property("bos")
    eos_token_id = _special_id_property("eos")
    unk_token_id = _special_id_property("unk")
    cls_token_id = _special_id_property("cls")
    sep_token_id = _special_id_property("sep")
    mask_token_id = _special_id_property("mask")

    @property
    def special_token_ids(self) -> set[int]:
        ids = (self._special_id(role) for role in self.special_tokens)
        return {i for i in ids if i is not None}

    # ---- encoding / decoding ----
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Text -> ids. `add_special_tokens` wraps the ids as BOS ... EOS (each only if defined).

        When BOS and EOS are the same token (GPT-2's `<|endoftext|>`) it is added once, at the end,
        as a document separator. Tokenizers whose tokenizer.json has a post-processor that adds
        tokens (BERT's [CLS] ... [SEP]) use that post-processor instead.
        """
        ids = self._encode(text)
        return self._add_bos_eos(ids) if add_special_tokens else ids

    def _add_bos_eos(self, ids: list[int]) -> list[int]:
        bos, eos = self.bos_token_id, self.eos_token_id
        prefix = [bos] if bos is not None and bos != eos else []
        suffix = [eos] if eos is not None else []
        return prefix + ids + suffix

    def encode_to_numpy(self, text: str) -> np.ndarray:
        """Encode a (large) text into a compact array for corpus files: uint16 when ids fit."""
        return np.asarray(self.encode(text), dtype=self._numpy_dtype())

    def _numpy_dtype(self) -> type:
        return np.uint16 if self.vocab_size <= 65536 else np.uint32

    def decode(self, ids: Sequence[int] | torch.Tensor | np.ndarray, skip_special_tokens: bool = True) -> str:
        ids = _ids_to_list(ids)
        if skip_special_tokens:
            special = self.special_token_ids
            ids = [i for i in ids if i not in special]
        return self._decode(ids)

    def stream_decoder(self, skip_special_tokens: bool = True) -> StreamDecoder:
        return StreamDecoder(self, skip_special_tokens)

    def _encode_many(self, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
        return [self.encode(t, add_special_tokens) for t in texts]

    # ---- batching ----
    def encode_batch(
        self,
        texts: list[str],
        padding: Padding = "longest",
        truncation: bool = False,
        max_length: int | None = None,
        padding_side: Literal["right", "left"] = "right",
        return_tensors: Literal["pt"] | None = "pt",
        add_special_tokens: bool = False,
    ) -> dict:
        """Encode several texts into `{"input_ids", "attention_mask"}` (long tensors or lists).

        Truncation keeps the first `max_length` ids; with special tokens, the closing one ([SEP],
        EOS) is kept at the end, as Hugging Face tokenizers do. Padding uses
        `pad_token_id`, else `eos_token_id`, else 0; padded positions always have mask 0, so the
        filler id never matters to a model that respects the attention mask.
        """
        if isinstance(texts, str):
            raise DlforgeError("encode_batch expects a list of strings; wrap a single text in a list")
        if padding_side not in ("right", "left"):
            raise DlforgeError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        seqs = self._encode_many(list(texts), add_special_tokens)
        if truncation:
            if max_length is None:
                raise DlforgeError("truncation=True needs max_length; pass max_length=N")
            seqs = [self._truncate(s, max_length, add_special_tokens) for s in seqs]
        width = self._padded_width(seqs, padding, max_length)
        input_ids, mask = self._pad(seqs, width, padding_side)
        if return_tensors == "pt":
            if len({len(s) for s in input_ids}) > 1:
                raise DlforgeError("texts have different lengths; pass padding=True or return_tensors=None")
            shape = (len(seqs), len(input_ids[0]) if seqs else 0)  # keeps an empty batch 2-D
            return {"input_ids": torch.tensor(input_ids, dtype=torch.long).reshape(shape),
                    "attention_mask": torch.tensor(mask, dtype=torch.long).reshape(shape)}
        if return_tensors is not None:
            raise DlforgeError(f"return_tensors must be 'pt' or None, got {return_tensors!r}")
        return {"input_ids": input_ids, "attention_mask": mask}

    def _truncate(self, ids: list[int], max_length: int, keep_final_special: bool) -> list[int]:
        """Keep the first max_length ids; a closing special token ([SEP], EOS) stays at the end."""
        if len(ids) <= max_length:
            return ids
        if keep_final_special and max_length > 1 and ids[-1] in self.special_token_ids:
            return ids[: max_length - 1] + ids[-1:]
        return ids[:max_length]

    def _padded_width(self, seqs: list[list[int]], padding: Padding, max_length: int | None) -> int | None:
        if padding is False:
            return None
        if padding is True or padding == "longest":
            return max((len(s) for s in seqs), default=0)
        if padding == "max_length":
            if max_length is None:
                raise DlforgeError("padding='max_length' needs max_length; pass max_length=N")
            return max(max_length, max((len(s) for s in seqs), default=0))
        raise DlforgeError(f"padding must be True, False, 'longest' or 'max_length', got {padding!r}")

    def _pad(self, seqs: list[list[int]], width: int | None, side: str) -> tuple[list, list]:
        pad_id = next((i for i in (self.pad_token_id, self.eos_token_id) if i is not None), 0)
        ids_out, mask_out = [], []
        for seq in seqs:
            fill = 0 if width is None else width - len(seq)
            pads, ones, zeros = [pad_id] * fill, [1] * len(seq), [0] * fill
            ids_out.append(seq + pads if side == "right" else pads + seq)
            mask_out.append(ones + zeros if side == "right" else zeros + ones)
        return ids_out, mask_out

    def __call__(self, text: str | list[str], **kwargs) -> dict:
        """`tok(texts)` == `tok.encode_batch(texts)`; a single string becomes a batch of one."""
        return self.encode_batch([text] if isinstance(text, str) else text, **kwargs)

    # ---- persistence ----
    def _write_config(self, directory: Path, extra: dict) -> None:
        config = dict(extra)
        config.update({f"{role}_token": tok for role, tok in self.special_tokens.items()})
        atomic_write_json(directory / "tokenizer_config.json", config)

    @staticmethod
    def load(path: str | os.PathLike) -> Tokenizer:
        """Same as `load_tokenizer`: the returned class depends on the files found."""
        return load_tokenizer(path)


class CharTokenizer(Tokenizer):
    """Character-level tokenizer: one id per distinct character, special tokens first.

    Text is taken literally, character by character: a special token's string written in the text
    is encoded as its characters, never as the special id.
    """

    def __init__(self, vocab: list[str], special_tokens: dict[str, str] | None = None) -> None:
        self.special_tokens = _check_roles(special_tokens or {})
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
        specials = list(dict.fromkeys(_check_roles(special_tokens or {}).values()))
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
        self.special_tokens = _check_roles(special_tokens)
        # Registering them as special makes the library match them in text and skip them on decode.
        # Tokens already registered as special keep their options (RoBERTa's <mask> strips the space before it).
        present = {t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special}
        wanted = [tok for tok in dict.fromkeys(self.special_tokens.values()) if tok not in present]
        tokenizer.add_special_tokens([hf.AddedToken(tok, special=True) for tok in wanted])

    def _detect_special_tokens(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for name, roles in _COMMON_SPECIAL_NAMES.items():
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
        special_tokens = _check_roles({"eos": "<|endoftext|>"} if special_tokens is None else special_tokens)
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
        files = _as_file_list(texts_or_files)
        if files is not None:
            tokenizer.train(files, trainer)
        else:
            texts = [texts_or_files] if isinstance(texts_or_files, str) else texts_or_files
            tokenizer.train_from_iterator(texts, trainer)
        return cls(tokenizer, special_tokens)


BERT_SPECIAL_TOKENS = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}


def _bert_pipeline(model: hf.models.WordPiece, lowercase: bool, strip_accents: bool | None = None,
                   chinese_chars: bool = True) -> hf.Tokenizer:
    """A WordPiece model with BERT's normalizer, pre-tokenizer and decoder (as BertTokenizerFast sets them up)."""
    tokenizer = hf.Tokenizer(model)
    tokenizer.normalizer = hf.normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=chinese_chars,
                                                         strip_accents=strip_accents, lowercase=lowercase)
    tokenizer.pre_tokenizer = hf.pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = hf.decoders.WordPiece(prefix="##")
    return tokenizer


def _set_bert_post_processor(tokenizer: hf.Tokenizer, cls: str, sep: str) -> None:
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
        special_tokens = _check_roles(dict(BERT_SPECIAL_TOKENS) if special_tokens is None else special_tokens)
        if "unk" not in special_tokens:
            raise DlforgeError("WordPiece needs an unknown-word token: add special_tokens['unk'], e.g. '[UNK]'")
        specials = list(dict.fromkeys(special_tokens.values()))
        if vocab_size <= len(specials):
            raise DlforgeError(f"vocab_size {vocab_size} is too small: it must exceed the {len(specials)} "
                               "special tokens")
        tokenizer = _bert_pipeline(hf.models.WordPiece(unk_token=special_tokens["unk"]), lowercase)
        files = _as_file_list(texts_or_files)
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
        tokenizer = _bert_pipeline(hf.models.WordPiece(vocab, unk_token=special_tokens["unk"]), lowercase)
        if "cls" in special_tokens and "sep" in special_tokens:
            _set_bert_post_processor(tokenizer, special_tokens["cls"], special_tokens["sep"])
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


def _as_file_list(source: object) -> list[str] | None:
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


class StreamDecoder:
    """Turns ids arriving one at a time into printable text, for streaming generation.

    Output is held back while the decoded tail is an incomplete UTF-8 sequence (shows as U+FFFD).
    Only a short window of recent ids is decoded each step (the text-generation-inference trick),
    so streaming stays linear. For byte-level BPE and char tokenizers the pieces from `put`
    plus `flush()` concatenate to exactly `decode(all_ids)`.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self._prefix = 0  # start of the window decoded for context (gets word-joining spaces right)
        self._read = 0  # ids before this index have been emitted

    def _pending_text(self) -> tuple[str, str]:
        decode = lambda ids: self.tokenizer.decode(ids, self.skip_special_tokens)
        return decode(self.ids[self._prefix:self._read]), decode(self.ids[self._prefix:])

    def put(self, token_id: int) -> str:
        """Add one id; return the newly printable text (often "")."""
        self.ids.append(int(token_id))
        done, current = self._pending_text()
        if len(current) <= len(done) or current.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(self.ids)
        return current[len(done):]

    def flush(self) -> str:
        """Return whatever is still held back (e.g. a truly invalid byte sequence at the end)."""
        done, current = self._pending_text()
        self._prefix = self._read = len(self.ids)
        return current[len(done):]


# ---------------------------------------------------------------- loading


def _token_string(value: object) -> str | None:
    # transformers writes special tokens either as plain strings or as AddedToken dicts.
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(model_file(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DlforgeError(f"cannot read {path} as JSON ({message}); re-save or re-download it") from None
    if not isinstance(data, dict):  # every tokenizer file is an object of settings
        raise DlforgeError(f"{path} holds a JSON {type(data).__name__}, not an object; re-save or re-download it")
    return data


def _configured_special_tokens(directory: Path) -> dict[str, str] | None:
    """Special tokens from special_tokens_map.json, overridden by tokenizer_config.json."""
    found: dict[str, str] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        if (directory / name).is_file():
            config = _read_json(directory / name)
            for role in ROLES:
                token = _token_string(config.get(f"{role}_token"))
                if token is not None:
                    found[role] = token
    return found or None


def _invalid_file_error(path: Path, exc: Exception) -> DlforgeError:
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return DlforgeError(f"{path} is not a valid tokenizer file ({message}); re-save or re-download it")


def _load_tokenizer_json(path: Path) -> Tokenizer:
    data = _read_json(path)
    specials = _configured_special_tokens(path.parent)
    if isinstance(data, dict) and data.get("type") == CHAR_FORMAT:
        if not isinstance(data.get("vocab"), list):
            raise DlforgeError(f"{path} has no 'vocab' list; re-save the tokenizer")
        return CharTokenizer(data["vocab"], specials or data.get("special_tokens"))
    try:
        tokenizer = hf.Tokenizer.from_file(str(path))
    except Exception as exc:  # the library raises plain Exception on a malformed file
        raise _invalid_file_error(path, exc) from None
    return HFTokenizer(tokenizer, specials)


def _load_vocab_merges(directory: Path) -> Tokenizer:
    """A GPT-2 or RoBERTa style pair: byte-level BPE with GPT-2's pre-tokenizer (no prefix space).

    A vocabulary with distinct CLS and SEP tokens (RoBERTa's <s> and </s>) gets RoBERTa's post-processor
    (<s> A </s> and <s> A </s></s> B </s>) and a mask token that absorbs the space before it, as in
    RobertaTokenizerFast; GPT-2's (<|endoftext|> only) gets none.
    """
    vocab, merges = model_file(directory / "vocab.json"), model_file(directory / "merges.txt")
    try:
        model = hf.models.BPE.from_file(str(vocab), str(merges))
    except Exception as exc:  # the library raises plain Exception on malformed files
        raise _invalid_file_error(directory / "merges.txt", exc) from None
    tokenizer = hf.Tokenizer(model)
    tokenizer.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = hf.decoders.ByteLevel()
    specials = _configured_special_tokens(directory)
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


def _load_vocab_txt(directory: Path) -> Tokenizer:
    """A BERT-style WordPiece vocab.txt (one token per line, id = line number), set up as BertTokenizerFast
    does from tokenizer_config.json: `do_lower_case` (default True), `strip_accents`, `tokenize_chinese_chars`."""
    path = directory / "tokenizer_config.json"
    config = _read_json(path) if path.is_file() else {}
    specials = _configured_special_tokens(directory)
    named = {**BERT_SPECIAL_TOKENS, **(specials or {})}
    vocab = model_file(directory / "vocab.txt")
    try:
        model = hf.models.WordPiece.from_file(str(vocab), unk_token=named["unk"])
    except Exception as exc:  # the library raises plain Exception on malformed files
        raise _invalid_file_error(directory / "vocab.txt", exc) from None
    tokenizer = _bert_pipeline(model, bool(config.get("do_lower_case", True)), config.get("strip_accents"),
                               bool(config.get("tokenize_chinese_chars", True)))
    _set_bert_post_processor(tokenizer, named["cls"], named["sep"])
    return HFTokenizer(tokenizer, specials)


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
        return _load_vocab_merges(path)
    if (path / "vocab.txt").is_file():
        return _load_vocab_txt(path)
    raise DlforgeError(f"no tokenizer found in {path}: expected tokenizer.json, vocab.json + merges.txt, "
                       "or a WordPiece vocab.txt")
