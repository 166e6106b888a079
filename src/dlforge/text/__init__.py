"""Text processing: tokenizers for every model family (see `dlforge.text.tokenizers`)."""

from .tokenizers import (
    BPETokenizer,
    CharTokenizer,
    HFTokenizer,
    StreamDecoder,
    Tokenizer,
    WordPieceTokenizer,
    load_tokenizer,
)

__all__ = ["BPETokenizer", "CharTokenizer", "HFTokenizer", "StreamDecoder", "Tokenizer", "WordPieceTokenizer",
           "load_tokenizer"]
