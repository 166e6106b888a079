"""The interface every dlforge tokenizer shares: ids <-> text, special-token roles, batch padding and
truncation, saving its config, and `StreamDecoder` for printing ids generated one at a time.

Special tokens are `{role: token string}` with the roles in `ROLES`; `check_roles` refuses any other role.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from dlforge.errors import DlforgeError
from dlforge.io import atomic_write_json

ROLES = ("pad", "bos", "eos", "unk", "cls", "sep", "mask")

Padding = bool | Literal["longest", "max_length"]


def check_roles(special_tokens: dict[str, str]) -> dict[str, str]:
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
