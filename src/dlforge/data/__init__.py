"""Datasets and batch sources for training."""

from .text import TextBatches, build_token_file, corpus_files, open_token_file, read_corpus_text

__all__ = ["TextBatches", "build_token_file", "corpus_files", "open_token_file", "read_corpus_text"]
