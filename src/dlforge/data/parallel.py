"""Line-aligned parallel text (translation pairs, document → summary) and its training batches.

`read_parallel(source, target)` reads two UTF-8 files (plain or .gz), line i of one paired with line i
of the other, and says which file is shorter when they do not line up. `ParallelBatches` turns the
tokenized pairs into batches of about `max_tokens` source+target tokens each (Vaswani et al. batch
by tokens, not sentences: pairs of similar length share a batch, so little is padding). The batches
are fixed once; every epoch visits them in a new order drawn from (seed, epoch), so a step's batch is
a pure function of the step and `--resume` continues exactly.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from ..errors import DlforgeError


def read_lines(path: str | Path) -> list[str]:
    """The lines of a UTF-8 text file, gzip-compressed or not, without their line ends."""
    path = Path(path)
    if not path.is_file():
        raise DlforgeError(f"{path} does not exist: give a UTF-8 text file with one sentence per line")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            return f.read().splitlines()
    except UnicodeDecodeError as e:
        raise DlforgeError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}): convert it first") from e
    except (OSError, EOFError) as e:
        raise DlforgeError(f"cannot read {path}: {e}") from e


def read_parallel(source: str | Path, target: str | Path) -> tuple[list[str], list[str]]:
    """(sources, targets), line-aligned; pairs where either side is blank are dropped."""
    src, tgt = read_lines(source), read_lines(target)
    if len(src) != len(tgt):
        raise DlforgeError(f"{source} has {len(src)} lines but {target} has {len(tgt)}: the files must be "
                           "line-aligned (line i of one translates line i of the other)")
    pairs = [(s.strip(), t.strip()) for s, t in zip(src, tgt) if s.strip() and t.strip()]
    if not pairs:
        raise DlforgeError(f"{source} and {target} hold no non-empty line pairs")
    return [s for s, _ in pairs], [t for _, t in pairs]


def pad_rows(rows: list[list[int]], fill: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [fill] * (width - len(r)) for r in rows], dtype=torch.long)


def collate_pairs(sources: list[list[int]], targets: list[list[int]], pad_id: int) -> dict:
    """Token ids -> {"input_ids", "attention_mask", "labels"} with right padding; labels -100 on padding."""
    input_ids = pad_rows(sources, pad_id)
    attention_mask = pad_rows([[1] * len(s) for s in sources], 0)
    labels = pad_rows(targets, -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class ParallelBatches:
    """Token-budget batches of (source ids, target ids) pairs for the Trainer.

    sources[i] is the encoder input (with its special tokens), targets[i] the label sequence (ending
    in EOS). A batch holds pairs of similar length whose padded source + target size stays within
    `max_tokens`. Under several processes each takes every world_size-th pair of the batch.
    """

    def __init__(self, sources: list[list[int]], targets: list[list[int]], val_sources: list[list[int]],
                 val_targets: list[list[int]], pad_id: int, max_tokens: int, seed: int = 0, grad_accum: int = 1):
        if not sources:
            raise DlforgeError("no training pairs")
        self.sources, self.targets, self.pad_id, self.seed = sources, targets, pad_id, seed
        self.val_sources, self.val_targets, self.grad_accum = val_sources, val_targets, grad_accum
        self.batches = self._make_batches(sources, targets, max_tokens)
        self._epoch, self._order = -1, None

    @staticmethod
    def _make_batches(sources, targets, max_tokens: int) -> list[np.ndarray]:
        lengths = np.array([len(s) for s in sources]), np.array([len(t) for t in targets])
        order = np.lexsort((lengths[1], lengths[0]))  # by source length, then target length
        batches, current, longest_src, longest_tgt = [], [], 0, 0
        for i in order:
            src, tgt = max(longest_src, lengths[0][i]), max(longest_tgt, lengths[1][i])
            if current and (len(current) + 1) * (src + tgt) > max_tokens:
                batches.append(np.array(current))
                current, src, tgt = [], lengths[0][i], lengths[1][i]
            current.append(i)
            longest_src, longest_tgt = src, tgt
        if current:
            batches.append(np.array(current))
        return batches

    @property
    def steps_per_epoch(self) -> int:
        return len(self.batches)

    def train_batch(self, step: int, micro_step: int = 0, rank: int = 0, world_size: int = 1) -> dict:
        index = step * self.grad_accum + micro_step
        epoch, position = divmod(index, len(self.batches))
        if epoch != self._epoch:  # a new permutation of the batches for each epoch
            self._epoch = epoch
            self._order = np.random.default_rng((self.seed, epoch)).permutation(len(self.batches))
        rows = self.batches[self._order[position]][rank::world_size]
        if len(rows) == 0:
            rows = self.batches[self._order[position]][:1]
        return collate_pairs([self.sources[i] for i in rows], [self.targets[i] for i in rows], self.pad_id)

    def eval_batches(self, rank: int = 0, world_size: int = 1, batch_size: int = 64):
        for start in range(rank * batch_size, len(self.val_sources), batch_size * world_size):
            end = start + batch_size
            yield collate_pairs(self.val_sources[start:end], self.val_targets[start:end], self.pad_id)
