"""Text corpora for language-model training.

A corpus is a UTF-8 file or a folder of them. It is read in chunks, tokenized, and the token ids
are appended to a flat binary file that training reads through `numpy.memmap`, so a corpus larger
than RAM works. The first `1 - val_fraction` of the ids is the training split and the rest the
validation split (the split nanoGPT and char-rnn use for tiny Shakespeare).

Batches are a pure function of (seed, step, micro-step): resuming a run or adding processes
changes nothing about which windows a given step sees. Each process takes its slice of the
global batch, so N processes with a global batch B see exactly the batch 1 process sees.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..errors import DlforgeError
from ..io import atomic_path, atomic_write_json

CHUNK_CHARS = 1 << 22  # ~4 MB of text per tokenizer call


def corpus_files(source: str | Path) -> list[Path]:
    """The text files of a corpus: the file itself, or every non-hidden file under a folder."""
    source = Path(source)
    if not source.exists():
        raise DlforgeError(f"{source} does not exist: give a UTF-8 text file or a folder of text files")
    if source.is_file():
        files = [source]
    else:
        files = sorted(p for p in source.rglob("*") if p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(source).parts))
        if not files:
            raise DlforgeError(f"folder {source} holds no files: put one or more UTF-8 text files in it")
    for path in files:
        check_text_file(path)
    return files


def check_text_file(path: Path) -> None:
    """Reject empty, binary and non-UTF-8 files with a message that says what to do."""
    if path.stat().st_size == 0:
        raise DlforgeError(f"{path} is empty: give a text file with some content")
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    if b"\x00" in head:
        raise DlforgeError(f"{path} looks like a binary file (it contains NUL bytes): give a UTF-8 text file")
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 4:  # not just a character cut by the 64 KB boundary
            raise DlforgeError(f"{path} is not UTF-8 text (byte 0x{head[e.start]:02x} at offset {e.start}): "
                               "convert it, e.g. `iconv -f latin1 -t utf-8 in.txt > out.txt`") from e


def iter_text_chunks(files: list[Path]) -> Iterator[str]:
    """Yield the corpus text in chunks of about CHUNK_CHARS characters, cut after a newline."""
    for path in files:
        try:
            with open(path, encoding="utf-8", newline="") as f:
                carry = ""
                while True:
                    block = f.read(CHUNK_CHARS)
                    if not block:
                        break
                    text = carry + block
                    cut = text.rfind("\n") + 1 or len(text)
                    yield text[:cut]
                    carry = text[cut:]
                if carry:
                    yield carry
        except UnicodeDecodeError as e:
            raise DlforgeError(f"{path} is not UTF-8 text (invalid byte at offset {e.start} of a chunk): "
                               "convert it, e.g. `iconv -f latin1 -t utf-8 in.txt > out.txt`") from e


def read_corpus_text(source: str | Path) -> str:
    """The whole corpus as one string (for small corpora and tokenizer training)."""
    return "".join(iter_text_chunks(corpus_files(source)))


def build_token_file(source: str | Path, tokenizer, out_path: str | Path) -> Path:
    """Tokenize a corpus into a flat uint16/uint32 file at `out_path` (atomically)."""
    files = corpus_files(source)
    dtype = np.uint16 if tokenizer.vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32
    separator = tokenizer.eos_token_id
    total = 0
    with atomic_path(out_path) as tmp, open(tmp, "wb") as out:
        for i, path in enumerate(files):
            if i and separator is not None:  # documents are separated by EOS when the tokenizer has one
                out.write(np.array([separator], dtype=dtype).tobytes())
                total += 1
            for chunk in iter_text_chunks([path]):
                ids = np.asarray(tokenizer.encode_to_numpy(chunk), dtype=dtype)
                out.write(ids.tobytes())
                total += ids.size
    out_path = Path(out_path)
    atomic_write_json(out_path.with_suffix(".json"), {"dtype": np.dtype(dtype).name, "tokens": total,
                                                      "sources": [str(p) for p in files]})
    return out_path


def open_token_file(path: str | Path) -> np.memmap:
    path = Path(path)
    meta = json.loads(path.with_suffix(".json").read_text())
    return np.memmap(path, dtype=np.dtype(meta["dtype"]), mode="r")


class TextBatches:
    """Random windows of `block_size + 1` tokens from a memory-mapped id array.

    `train_batch(step, micro_step, rank, world_size)` returns {"input_ids", "targets"} of shape
    (batch_size / world_size, block_size); targets are the inputs shifted by one token.
    """

    def __init__(self, ids: np.ndarray, block_size: int, batch_size: int, seed: int = 0,
                 val_fraction: float = 0.1, eval_batches: int = 20):
        n_val = int(len(ids) * val_fraction)
        self.train_ids, self.val_ids = ids[: len(ids) - n_val], ids[len(ids) - n_val:]
        self.block_size, self.batch_size, self.seed, self.n_eval = block_size, batch_size, seed, eval_batches
        for name, split in (("training", self.train_ids), ("validation", self.val_ids)):
            if len(split) <= block_size + 1:
                raise DlforgeError(f"the {name} split has {len(split)} tokens, fewer than one context window "
                                   f"({block_size + 1}): use more text or a smaller block_size")

    def _windows(self, ids: np.ndarray, starts: np.ndarray) -> dict[str, torch.Tensor]:
        rows = np.stack([ids[s: s + self.block_size + 1] for s in starts]).astype(np.int64)  # (b, T+1)
        rows = torch.from_numpy(rows)
        return {"input_ids": rows[:, :-1], "targets": rows[:, 1:]}

    def _rank_slice(self, starts: np.ndarray, rank: int, world_size: int) -> np.ndarray:
        if len(starts) % world_size:
            raise DlforgeError(f"batch_size {len(starts)} is not divisible by the {world_size} processes")
        per_rank = len(starts) // world_size
        return starts[rank * per_rank: (rank + 1) * per_rank]

    def train_batch(self, step: int, micro_step: int = 0, rank: int = 0, world_size: int = 1):
        rng = np.random.default_rng([self.seed, step, micro_step])
        starts = rng.integers(0, len(self.train_ids) - self.block_size, size=self.batch_size)  # last start: L-T-1
        return self._windows(self.train_ids, self._rank_slice(starts, rank, world_size))

    def eval_batches(self, rank: int = 0, world_size: int = 1):
        """The same fixed validation windows at every evaluation, so losses are comparable."""
        rng = np.random.default_rng([self.seed, 1 << 30])
        for _ in range(self.n_eval):
            starts = rng.integers(0, len(self.val_ids) - self.block_size, size=self.batch_size)
            yield self._windows(self.val_ids, self._rank_slice(starts, rank, world_size))
