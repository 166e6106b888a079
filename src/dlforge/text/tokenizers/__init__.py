"""Tokenizers for every dlforge model family: one interface, several implementations, one loader.

`Tokenizer` (base.py) is the common interface (ids <-> text, special tokens, batch padding, save).
`CharTokenizer` (char.py) is nanoGPT-style character level, `HFTokenizer` (huggingface.py) wraps any Hugging Face
`tokenizers.Tokenizer` (GPT-2 byte-level BPE, BERT WordPiece, ...), `BPETokenizer` (bpe.py) trains a
byte-level BPE that round-trips any Unicode text exactly, and `WordPieceTokenizer` (wordpiece.py) trains a
BERT-style WordPiece. `load_tokenizer` (loading.py) reads what `save` writes, and also Hugging Face
`tokenizer.json` files, GPT-2 / RoBERTa style `vocab.json` + `merges.txt`, or a BERT `vocab.txt`.
`StreamDecoder` turns ids generated one at a time into printable text pieces; `SourceTargetTokenizer` pairs a
seq2seq model's two vocabularies.
"""

from .base import ROLES, Padding, StreamDecoder, Tokenizer
from .bpe import BPETokenizer, add_roberta_special_handling
from .char import CHAR_FORMAT, CharTokenizer
from .huggingface import HFTokenizer
from .loading import load_tokenizer
from .source_target import SourceTargetTokenizer
from .wordpiece import BERT_SPECIAL_TOKENS, WordPieceTokenizer

__all__ = ["BERT_SPECIAL_TOKENS", "CHAR_FORMAT", "ROLES", "BPETokenizer", "CharTokenizer", "HFTokenizer", "Padding",
           "SourceTargetTokenizer", "StreamDecoder", "Tokenizer", "WordPieceTokenizer", "add_roberta_special_handling",
           "load_tokenizer"]
