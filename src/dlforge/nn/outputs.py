"""What a stack of transformer layers reports besides its final state, when the caller asks for it.

Hugging Face models take `output_hidden_states=True` and `output_attentions=True`; dlforge's models take the
same flags and collect the same things here:
- hidden states: the embeddings' output, then each layer's output, n_layers + 1 tensors (B, T, C). Where the
  stack ends in a norm, Hugging Face's language models report the normed state as the last one (GPT-2, T5,
  BART): such a stack calls `final_hidden_state`; its ViT keeps the last layer's raw output;
- attention probabilities: one (B, heads, T_q, T_k) tensor per layer, the softmax the layer applied (after
  attention dropout in training, as Hugging Face's eager attention), for self-attention and, in a decoder,
  cross-attention. Asking for them makes each layer compute attention written out instead of the fused
  SDPA kernel, which never materialises the probabilities; without the flag the fast path is untouched.
"""

from __future__ import annotations

import torch


class StackOutputs:
    """Collects one stack's hidden states and attention probabilities, each only if asked for."""

    def __init__(self, hidden_states: bool = False, attentions: bool = False, cross_attentions: bool = False):
        self.hidden_states: list[torch.Tensor] | None = [] if hidden_states else None
        self.attentions: list[torch.Tensor] | None = [] if attentions else None
        self.cross_attentions: list[torch.Tensor] | None = [] if cross_attentions else None

    def add_hidden_state(self, x: torch.Tensor) -> None:
        """Record a (B, T, C) state: the embeddings' output first, then each layer's output."""
        if self.hidden_states is not None:
            self.hidden_states.append(x)

    def final_hidden_state(self, x: torch.Tensor) -> None:
        """Report the state after the stack's final norm (B, T, C) in place of the last layer's raw output."""
        if self.hidden_states is not None:
            self.hidden_states[-1] = x

    def fields(self, prefix: str = "") -> dict:
        """ModelOutput keyword arguments: `{prefix}hidden_states`, `{prefix}attentions` (tuples or None) and,
        when collected, `cross_attentions`."""
        hidden = self.hidden_states
        out = {f"{prefix}hidden_states": None if hidden is None else tuple(hidden),
               f"{prefix}attentions": None if self.attentions is None else tuple(self.attentions)}
        if self.cross_attentions is not None:
            out["cross_attentions"] = tuple(self.cross_attentions)
        return out
