"""Building blocks shared by every model family: attention, positional encodings, blocks."""

from .attention import KVCache, MultiHeadAttention, attention_reference, attention_with_weights, build_attention_mask
from .blocks import MLP, RMSNorm, TransformerBlock, make_norm
from .linear import Linear, split_gemv
from .outputs import StackOutputs
from .positional import (
    LearnedPositionalEmbedding,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
    sinusoidal_table,
)

__all__ = [
    "KVCache", "Linear", "split_gemv", "MultiHeadAttention", "attention_reference", "attention_with_weights",
    "build_attention_mask",
    "MLP", "RMSNorm", "StackOutputs", "TransformerBlock", "make_norm",
    "LearnedPositionalEmbedding", "RotaryEmbedding", "SinusoidalPositionalEncoding", "sinusoidal_table",
]
