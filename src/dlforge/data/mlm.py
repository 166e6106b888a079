"""Masked-language-model batches (Devlin et al., 2019): 15 % of tokens are chosen; of those 80 %
become [MASK], 10 % a random token and 10 % stay unchanged; the loss is taken on the chosen ones.

Special tokens ([CLS], [SEP], padding) are never chosen. Masking is drawn from a seeded
generator per (seed, step, micro-step), so a resumed run masks exactly as an uninterrupted one.
"""

from __future__ import annotations

import torch

from ..errors import DlforgeError


def mask_tokens(input_ids: torch.Tensor, special_mask: torch.Tensor, mask_token_id: int, vocab_size: int,
                generator: torch.Generator, probability: float = 0.15) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (masked input ids, labels with -100 where no prediction is wanted). Shapes (B, T)."""
    labels = input_ids.clone()
    chosen = (torch.rand(input_ids.shape, generator=generator) < probability) & ~special_mask
    labels[~chosen] = -100
    masked = input_ids.clone()
    roll = torch.rand(input_ids.shape, generator=generator)
    masked[chosen & (roll < 0.8)] = mask_token_id
    randomise = chosen & (roll >= 0.8) & (roll < 0.9)
    masked[randomise] = torch.randint(vocab_size, input_ids.shape, generator=generator)[randomise]
    return masked, labels


class MaskedLMBatches:
    """Batches of lines (one text per line) tokenized with special tokens and masked for MLM."""

    def __init__(self, texts: list[str], val_texts: list[str], tokenizer, max_length: int, batch_size: int,
                 seed: int = 0, probability: float = 0.15):
        if tokenizer.mask_token_id is None:
            raise DlforgeError("masked-LM training needs a tokenizer with a mask token ([MASK] or <mask>)")
        if not texts:
            raise DlforgeError("no training texts for masked-LM training")
        self.texts, self.val_texts, self.tokenizer = texts, val_texts, tokenizer
        self.max_length, self.batch_size, self.seed, self.probability = max_length, batch_size, seed, probability

    def _batch(self, lines: list[str], generator: torch.Generator) -> dict:
        enc = self.tokenizer.encode_batch(lines, padding="longest", truncation=True, max_length=self.max_length,
                                          add_special_tokens=True)
        ids = enc["input_ids"]
        special = torch.isin(ids, torch.tensor(sorted(self.tokenizer.special_token_ids))) | (enc["attention_mask"] == 0)
        masked, labels = mask_tokens(ids, special, self.tokenizer.mask_token_id, self.tokenizer.vocab_size,
                                     generator, self.probability)
        return {"input_ids": masked, "attention_mask": enc["attention_mask"], "labels": labels}

    def train_batch(self, step: int, micro_step: int = 0, rank: int = 0, world_size: int = 1) -> dict:
        g = torch.Generator().manual_seed(hash((self.seed, step, micro_step)) & 0x7FFFFFFF)
        picks = torch.randint(len(self.texts), (self.batch_size,), generator=g)
        per_rank = self.batch_size // world_size
        rows = picks[rank * per_rank:(rank + 1) * per_rank].tolist()
        return self._batch([self.texts[i] for i in rows], g)

    def eval_batches(self, rank: int = 0, world_size: int = 1):
        g = torch.Generator().manual_seed(self.seed + 1)
        for start in range(0, len(self.val_texts), self.batch_size):
            yield self._batch(self.val_texts[start:start + self.batch_size], g)
