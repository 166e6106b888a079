"""The value every dlforge model's forward returns, with Hugging Face's field names and meanings.

- `loss`: the training loss, when labels (or `targets`) were given; the Trainer reads only this;
- `logits`: a head's output: next-token or masked-token scores (B, T, V), class scores (B, num_labels), per-token
  scores (B, T, num_labels), start/end scores (B, T, 2). A bare encoder (BERT without a task, a ViT without a
  head) has none;
- `last_hidden_state`: a bare encoder's final states (B, T, C), after its final norm where the model has one;
  `pooler_output`: its pooled vector (B, C) where it has a pooler (a ViT with `pooler=True`);
- `hidden_states`: with `output_hidden_states=True`, a tuple of n_layers + 1 states (B, T, C): the embeddings'
  output, then each layer's (the last one after the final norm, except in a ViT, as in Hugging Face);
- `attentions`: with `output_attentions=True`, a tuple of one (B, heads, T, T) softmax per layer;
- encoder–decoders: `decoder_hidden_states`, `decoder_attentions`, `cross_attentions` (B, heads, T, S),
  `encoder_last_hidden_state`, `encoder_hidden_states`, `encoder_attentions`;
- `logs`: extra per-batch scalars that the Trainer averages over each log window and writes to metrics.csv
  beside the loss (a GAN's d_loss, g_loss, D(x), D(G(z)); a VAE's reconstruction and KL terms). The model class
  names them in its `log_names` attribute so the CSV columns are known up front.

As in Hugging Face, fields are read as attributes or by name (`out["logits"]`), `keys()` lists the ones that
are set, and `to_tuple()` / `out[i]` give the set ones in field order (loss first when there is one).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from ..errors import DlforgeError


class MissingOutputError(DlforgeError, KeyError):
    """A field asked for by name that this output does not have: a KeyError, as a mapping's missing key is."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass
class ModelOutput:
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    decoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    decoder_attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None
    encoder_last_hidden_state: torch.Tensor | None = None
    encoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    encoder_attentions: tuple[torch.Tensor, ...] | None = None
    logs: dict[str, float | torch.Tensor] | None = None

    def keys(self) -> list[str]:
        """Names of the fields that are set, in field order."""
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def items(self) -> list[tuple[str, object]]:
        return [(name, getattr(self, name)) for name in self.keys()]

    def to_tuple(self) -> tuple:
        """The fields that are set, in field order (Hugging Face's `to_tuple`)."""
        return tuple(getattr(self, name) for name in self.keys())

    def __contains__(self, name: str) -> bool:
        return name in self.keys()

    def __getitem__(self, key: str | int | slice):
        if isinstance(key, str):
            if key not in self.keys():
                raise MissingOutputError(f"this model output has no {key!r}: it has {', '.join(self.keys())} "
                                         "(hidden states and attentions need output_hidden_states=True / "
                                         "output_attentions=True)")
            return getattr(self, key)
        if isinstance(key, (int, slice)):
            return self.to_tuple()[key]
        raise DlforgeError(f"index a model output by field name or position, not {type(key).__name__}")
