"""Text embeddings: feature-extraction (Hugging Face's: every token's hidden state) and sentence-similarity
(dlforge's: one pooled, normalised vector per text, or its cosine similarities to `others`).

    fx = dlforge.pipeline("feature-extraction", model=minilm_dir)
    fx("hello world")                  # [1, T, hidden] nested lists, as Hugging Face's pipeline
    fx("hello world", return_tensors=True)   # the same as a (1, T, hidden) tensor

    sim = dlforge.pipeline("sentence-similarity", model=minilm_dir)
    sim(["a cat sits"])                # [[hidden floats]]: mean-pooled, unit length
    sim(["a cat sits"], others=["a kitten", "tax law"])   # [[cos to "a kitten", cos to "tax law"]]

Tokenizer keywords: truncation, padding ("max_length" pads to max_length: feature-extraction then returns the
pad positions' states too), max_length, tokenizer_kwargs (Hugging Face's feature-extraction calls it
tokenize_kwargs; both are accepted).
"""

from __future__ import annotations

import torch

from ..errors import DlforgeError
from .base import TextPipeline

ENCODERS = ("none", "masked-lm", "sequence-classification", "token-classification", "question-answering")


class FeatureExtraction(TextPipeline):
    """Per-token hidden states, [1, T, hidden] nested lists per text (Hugging Face's layout)."""

    task_name = "feature-extraction"
    needs = ENCODERS

    def _sanitize_parameters(self, truncation=None, padding=None, max_length=None, tokenizer_kwargs=None,
                             tokenize_kwargs=None, return_tensors=None):
        if tokenizer_kwargs is not None and tokenize_kwargs is not None:
            raise DlforgeError("give tokenize_kwargs= or tokenizer_kwargs=, not both")
        pre = self._tokenizer_options(truncation, padding, max_length, tokenizer_kwargs or tokenize_kwargs)
        return pre, {}, {} if return_tensors is None else {"return_tensors": bool(return_tensors)}

    def preprocess(self, text, **tokenizer_options):
        return self.encode(text, **tokenizer_options)

    def _forward(self, windows):
        return self.run_windows(windows, self.model.encode)  # per text (T, hidden)

    def postprocess(self, states, return_tensors=False):
        return states[None] if return_tensors else [states.tolist()]


class SentenceSimilarity(TextPipeline):
    """Pooled, normalised sentence embeddings; with `others`, cosine similarities to them."""

    task_name = "sentence-similarity"
    needs = ENCODERS

    def _sanitize_parameters(self, others=None, truncation=None, padding=None, max_length=None,
                             tokenizer_kwargs=None):
        pre = self._tokenizer_options(truncation, padding, max_length, tokenizer_kwargs)
        if others is None:
            return pre, {}, {}
        if isinstance(others, str) or not all(isinstance(o, str) for o in others) or not others:
            raise DlforgeError("others must be a non-empty list of texts to compare each input with")
        return pre, {}, {"others": self.embed(list(others), **pre)}  # (n_others, hidden), once per call

    def embed(self, texts: list[str], **tokenizer_options) -> torch.Tensor:
        """Unit-length mean-pooled embeddings (len(texts), hidden)."""
        return torch.stack(self.embed_windows([self.encode(t, **tokenizer_options) for t in texts]))

    def embed_windows(self, windows: list[dict]) -> list[torch.Tensor]:
        """Per encoded window, its unit-length mean-pooled embedding (hidden,)."""
        return self.run_windows(windows, self.model.embed, per_token=False)

    def preprocess(self, text, **tokenizer_options):
        return self.encode(text, **tokenizer_options)

    def _forward(self, windows):
        return self.embed_windows(windows)

    def postprocess(self, vector, others=None):
        return vector.tolist() if others is None else (others @ vector).tolist()
