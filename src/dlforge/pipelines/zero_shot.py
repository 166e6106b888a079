"""The zero-shot-classification pipeline: score any labels, chosen at call time, without training.

    zs = dlforge.pipeline("zero-shot-classification", model="...")
    zs("The striker scored twice", candidate_labels=["sports", "politics"], multi_label=False)
    -> {"sequence": ..., "labels": [...best first], "scores": [...], "method": "nli"}

Each label is put into `hypothesis_template` and compared with the sequence, by one of two methods:
  nli                   the model is a sequence classifier with an "entailment" label (an NLI model, e.g.
                        MNLI-trained): it reads each (premise=sequence, hypothesis) pair, exactly as Hugging
                        Face's pipeline does. Single-label: softmax over the labels' entailment logits;
                        multi-label (or one label): per label, softmax over [contradiction, entailment].
  embedding-similarity  any other encoder (e.g. a sentence-transformers model): cosine similarity of the
                        mean-pooled, normalised embeddings of the sequence and of each hypothesis.
                        Single-label: softmax(cos / temperature) over the labels, temperature 0.05 (the
                        scale 20 that sentence-transformers trains its contrastive models with);
                        multi-label (or one label): (cos + 1) / 2, a rescaled similarity in [0, 1], not a
                        calibrated probability (compare labels, or pick a threshold on your own data).
Every result dict carries a "method" key saying which of the two was used. The default template is Hugging
Face's "This example is {}." for nli, and "This text is about {}." for embedding-similarity (see below).
"""

from __future__ import annotations

import torch

from ..errors import DlforgeError
from ..text.answer_spans import pad_windows
from .tasks import FeatureExtraction, SentenceSimilarity

# Hugging Face's default for NLI models; for embeddings, a topic phrasing that sentence encoders match better
# (all-MiniLM-L6-v2, SST-2 dev with positive/negative: 66.2% vs 63.5% accuracy; 5 of 5 vs 4 of 5 on the
# obvious topic sentences of tests/pipelines/test_zero_shot.py)
DEFAULT_TEMPLATES = {"nli": "This example is {}.", "embedding-similarity": "This text is about {}."}


def parse_labels(candidate_labels) -> list[str]:
    """A list of labels, or one string of comma-separated labels (as Hugging Face accepts)."""
    if isinstance(candidate_labels, str):
        candidate_labels = candidate_labels.split(",")
    labels = [str(label).strip() for label in candidate_labels or [] if str(label).strip()]
    if not labels:
        raise DlforgeError("zero-shot-classification needs candidate_labels, e.g. candidate_labels=['sports', "
                           "'politics'] (on the command line: --candidate-labels sports,politics)")
    return labels


class ZeroShotClassification(SentenceSimilarity):  # a SentenceSimilarity for its `embed`
    task_name = "zero-shot-classification"
    needs = FeatureExtraction.needs
    temperature = 0.05  # embedding-similarity, single-label: softmax(cos / temperature)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        config = self.model.config
        names = config.labels if config.task == "sequence-classification" and config.labels else []
        # as Hugging Face: the first label whose name starts with "entail", in any case
        self.entailment_id = next((i for i, n in enumerate(names) if n.lower().startswith("entail")), None)
        self.method = "nli" if self.entailment_id is not None else "embedding-similarity"
        if self.method == "nli" and not hasattr(self.tokenizer, "encode_windows"):
            raise DlforgeError("zero-shot-classification with an NLI model needs a Hugging Face tokenizer "
                               "(tokenizer.json or vocab.txt) to encode sentence pairs")

    def __call__(self, sequences, candidate_labels=None, hypothesis_template: str | None = None,
                 multi_label: bool = False):
        labels = parse_labels(candidate_labels)
        hypothesis_template = hypothesis_template or DEFAULT_TEMPLATES[self.method]
        try:
            hypotheses = [hypothesis_template.format(label) for label in labels]
        except (IndexError, KeyError, ValueError) as e:
            raise DlforgeError(f"hypothesis_template {hypothesis_template!r} cannot be filled ({e}): use one {{}} "
                               "where the label goes, e.g. 'This example is {}.'") from e
        if hypotheses[0] == hypothesis_template:
            raise DlforgeError(f"hypothesis_template {hypothesis_template!r} has no {{}}: put one where the label "
                               "goes, e.g. 'This example is {}.'")
        multi = multi_label or len(labels) == 1  # one label: a yes/no question (as Hugging Face)
        vectors = self.embed(hypotheses) if self.method == "embedding-similarity" else None  # (L, C), once
        return super().__call__(sequences, labels=labels, hypotheses=hypotheses, multi=multi, vectors=vectors)

    def _run(self, texts, labels, hypotheses, multi, vectors):
        scores = self._nli_scores(texts, hypotheses, multi) if vectors is None else \
            self._similarity_scores(texts, vectors, multi)  # (B, L)
        out = []
        for text, row in zip(texts, scores.tolist()):
            order = sorted(range(len(labels)), key=lambda i: -row[i])
            out.append({"sequence": text, "labels": [labels[i] for i in order], "scores": [row[i] for i in order],
                        "method": self.method})
        return out

    @torch.no_grad()
    def _nli_scores(self, texts: list[str], hypotheses: list[str], multi: bool) -> torch.Tensor:
        premises = [t for t in texts for _ in hypotheses]  # every (sequence, hypothesis) pair, sequence-major
        pairs = hypotheses * len(texts)
        logits = []
        for start in range(0, len(pairs), self.batch_size):
            windows = self.tokenizer.encode_windows(
                premises[start:start + self.batch_size], pairs[start:start + self.batch_size],
                max_length=min(self.max_length, self._context()), truncation="only_first")
            batch = [w[0] for w in windows]  # a long premise is cut, not split: keep its first window
            pad_id = self.tokenizer.pad_token_id or 0
            inputs = self._on_device(pad_windows(batch, "input_ids", pad_id), pad_windows(batch, "attention_mask", 0),
                                     pad_windows(batch, "token_type_ids", 0))
            logits.append(self.model(*inputs).logits.float().cpu())
        logits = torch.cat(logits).view(len(texts), len(hypotheses), -1)  # (B, L, num_labels)
        if multi:
            contradiction = -1 if self.entailment_id == 0 else 0  # Hugging Face's choice
            return logits[..., [contradiction, self.entailment_id]].softmax(-1)[..., 1]
        return logits[..., self.entailment_id].softmax(-1)

    def _similarity_scores(self, texts: list[str], vectors: torch.Tensor, multi: bool) -> torch.Tensor:
        cos = self.embed(texts) @ vectors.t()  # (B, L): both sides are unit vectors
        return (cos + 1) / 2 if multi else (cos / self.temperature).softmax(-1)
