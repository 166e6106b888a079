"""Where a translation looked: the cross-attention weights of an encoder–decoder model, as a heatmap.

`cross_attention(model, tokenizer, source)` translates the source (greedy, or beam search with
`num_beams`), then runs the decoder once more over its own output with `output_attentions=True`, which returns every
cross-attention layer's weights: (layers, heads, output tokens, source tokens), each row a distribution over
the source. `plot_cross_attention` draws one layer/head, a layer averaged over heads, or all layers
averaged, with the tokens as tick labels. `dlforge attention RUN --source TEXT` does both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import DlforgeError
from ..io import atomic_save_figure, pyplot
from .seq2seq_generation import generate_seq2seq


@dataclass
class CrossAttention:
    weights: torch.Tensor  # (layers, heads, T_out, S)
    source_tokens: list[str]
    output_tokens: list[str]  # what each decoder position produced (the row labels)
    translation: str


def _token_labels(tokenizer, ids: list[int]) -> list[str]:
    """Readable labels: each id decoded alone (byte-level BPE marks a leading space with 'Ġ' in the vocabulary)."""
    return [tokenizer.decode([i], skip_special_tokens=False).strip() or tokenizer.id_to_token(i) for i in ids]


@torch.no_grad()
def cross_attention(model, tokenizer, source: str, num_beams: int = 1, max_new_tokens: int = 64) -> CrossAttention:
    if not hasattr(model, "decoder") or not hasattr(model.decoder, "layers"):
        raise DlforgeError("attention maps need an encoder-decoder (seq2seq) model, e.g. a `dlforge train seq2seq` run")
    device = next(model.parameters()).device
    enc = tokenizer.encode_batch([source], add_special_tokens=True, return_tensors="pt")
    ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    output = generate_seq2seq(model.eval(), ids, mask, num_beams=num_beams, max_new_tokens=max_new_tokens)[0]
    eos = model.config.eos_token_id
    produced = output[1:].tolist()
    if eos in produced:
        produced = produced[:produced.index(eos) + 1]
    decoder_inputs = output[:1 + len(produced) - 1].unsqueeze(0)  # start token + all but the last produced
    out = model(ids, mask, decoder_input_ids=decoder_inputs, output_attentions=True)
    weights = torch.stack([w[0].float().cpu() for w in out.cross_attentions])  # (L, H, T_out, S)
    return CrossAttention(weights, _token_labels(tokenizer, ids[0].tolist()), _token_labels(tokenizer, produced),
                          tokenizer.decode(produced, skip_special_tokens=True).strip())


def select(weights: torch.Tensor, layer: int | None, head: int | None) -> tuple[torch.Tensor, str]:
    """One (T_out, S) map: a layer's head, a layer averaged over heads, or everything averaged."""
    n_layers, n_heads = weights.shape[:2]
    if layer is not None and not -n_layers <= layer < n_layers:
        raise DlforgeError(f"--layer {layer} is out of range: the decoder has {n_layers} layers (0..{n_layers - 1})")
    if head is not None and not -n_heads <= head < n_heads:
        raise DlforgeError(f"--head {head} is out of range: each layer has {n_heads} heads (0..{n_heads - 1})")
    if head is not None and layer is None:
        raise DlforgeError("--head needs --layer: a head belongs to one layer")
    if layer is None:
        return weights.mean(dim=(0, 1)), f"mean of {n_layers} layers × {n_heads} heads"
    if head is None:
        return weights[layer].mean(dim=0), f"layer {layer % n_layers}, mean of {n_heads} heads"
    return weights[layer, head], f"layer {layer % n_layers}, head {head % n_heads}"


def plot_cross_attention(result: CrossAttention, path: str | Path, layer: int | None = None,
                         head: int | None = None) -> Path:
    """Write the heatmap PNG (rows: output tokens, columns: source tokens) atomically; returns the path."""
    plt = pyplot()

    grid, what = select(result.weights, layer, head)
    rows, cols = grid.shape
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * cols + 2), max(3.0, 0.4 * rows + 1.5)), dpi=100)
    image = ax.imshow(grid.numpy(), cmap="viridis", aspect="auto", vmin=0.0)
    ax.set_xticks(range(cols), result.source_tokens, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(rows), result.output_tokens, fontsize=8)
    ax.set_xlabel("source")
    ax.set_ylabel("output")
    ax.set_title(f"cross-attention ({what})", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.04)
    return atomic_save_figure(fig, path)
