"""Layer-wise training by block depth: top-k freezing, layer-wise learning-rate decay, gradual unfreezing.

The fine-tuning strategies of `dlforge.transfer.finetune` (and the Trainer's `layer_lr_decay`) are built on these.

Layers are numbered by depth: 0 for embeddings, 1..L for the transformer blocks (`layers.N.` in
BERT, `transformer.h.N.` in GPT), L + 1 for everything after them (final norm, task head).
- top-k: train only the top k blocks and the head (`freeze_below`);
- layer-wise LR decay (Howard & Ruder, 2018; Clark et al., 2020): depth d gets lr · decay^(L+1-d),
  so the head learns fastest and the embeddings slowest (`layerwise_lr_scales`, which the Trainer
  applies through `TrainConfig.layer_lr_decay`);
- gradual unfreezing: start with the head only and unfreeze one more block from the top every
  `every` steps (`GradualUnfreezing`, a Trainer step callback).
"""

from __future__ import annotations

import re

from torch import nn

BLOCK = re.compile(r"(?:^|\.)(?:layers|h)\.(\d+)\.")
EMBEDDING = re.compile(r"(?:^|\.)(?:embeddings|wte|wpe)\b")


def num_blocks(model: nn.Module) -> int:
    depths = [int(m[1]) for name, _ in model.named_parameters() if (m := BLOCK.search(name))]
    return max(depths) + 1 if depths else 0


def depth_of(name: str, n_blocks: int) -> int:
    match = BLOCK.search(name)
    if match:
        return int(match[1]) + 1
    if EMBEDDING.search(name):
        return 0
    return n_blocks + 1


def layerwise_lr_scales(model: nn.Module, decay: float) -> dict[str, float]:
    """Parameter name -> learning-rate multiplier decay^(L + 1 - depth)."""
    n = num_blocks(model)
    return {name: decay ** (n + 1 - depth_of(name, n)) for name, _ in model.named_parameters()}


def freeze_below(model: nn.Module, k: int) -> None:
    """Train only the top k blocks and what follows them (k = 0: the head alone)."""
    n = num_blocks(model)
    for name, param in model.named_parameters():
        param.requires_grad = depth_of(name, n) > n - k


def unfreeze_all(model: nn.Module) -> None:
    for param in model.parameters():
        param.requires_grad = True


class GradualUnfreezing:
    """Trainer step callback: the head first, then one more block from the top every `every` steps."""

    def __init__(self, model: nn.Module, every: int):
        self.model, self.every = model, every
        freeze_below(model, 0)

    def __call__(self, trainer) -> None:
        freeze_below(self.model, trainer.step // self.every)
