"""The value every dlforge model's forward returns: the Trainer only needs `.loss`.

`logs` holds extra per-batch scalars that the Trainer averages over each log window and writes to
metrics.csv beside the loss (e.g. a GAN's d_loss, g_loss, D(x), D(G(z)); a VAE's reconstruction and KL terms).
The model class names them in its `log_names` attribute so the CSV columns are known up front."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ModelOutput:
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    logs: dict[str, float | torch.Tensor] | None = None
