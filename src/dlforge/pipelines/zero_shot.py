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
from .feature_extraction import SentenceSimilarity

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
    temperature = 0.05  # embedding-similarity, single-label: softmax(cos / temperature)

    def __init__(self, *args, **kwargs):
        self._hypothesis_vectors: dict[tuple[str, ...], torch.Tensor] = {}  # embedding-similarity, per label set
        super().__init__(*args, **kwargs)

    def _check_model(self) -> None:
        super()._check_model()
        config = self.model.config
        names = config.labels if config.task == "sequence-classification" and config.labels else []
        # as Hugging Face: the first label whose name starts with "entail", in any case
        self.entailment_id = next((i for i, n in enumerate(names) if n.lower().startswith("entail")), None)
        self.method = "nli" if self.entailment_id is not None else "embedding-similarity"

    def __call__(self, sequences, *args, **kwargs):
        if len(args) == 1 and "candidate_labels" not in kwargs:  # zs(text, ["a", "b"]), as Hugging Face
            kwargs["candidate_labels"] = args[0]
        elif args:
            raise DlforgeError("zero-shot-classification takes the sequences and the candidate labels as arguments; "
                               "give other options by keyword")
        return super().__call__(sequences, **kwargs)

    def _sanitize_parameters(self, candidate_labels=None, hypothesis_template=None, multi_label=None,
                             max_length=None):
        pre = self._tokenizer_options(max_length=max_length)
        if candidate_labels is not None:
            pre["labels"] = parse_labels(candidate_labels)
        if hypothesis_template is not None:
            pre["hypothesis_template"] = hypothesis_template
        return pre, {}, {} if multi_label is None else {"multi_label": bool(multi_label)}

    def preprocess(self, sequence, labels=None, hypothesis_template=None, **tokenizer_options):
        labels = parse_labels(labels)
        template = hypothesis_template or DEFAULT_TEMPLATES[self.method]
        try:
            hypotheses = [template.format(label) for label in labels]
        except (IndexError, KeyError, ValueError) as e:
            raise DlforgeError(f"hypothesis_template {template!r} cannot be filled ({e}): use one {{}} "
                               "where the label goes, e.g. 'This example is {}.'") from e
        if hypotheses[0] == template:
            raise DlforgeError(f"hypothesis_template {template!r} has no {{}}: put one where the label "
                               "goes, e.g. 'This example is {}.'")
        if self.method == "nli":  # every (premise=sequence, hypothesis) pair; a long premise is cut, not split
            windows = [self.encode(sequence, h, truncation="only_first", **tokenizer_options) for h in hypotheses]
        else:
            windows = [self.encode(sequence, **tokenizer_options)]
        return {"sequence": sequence, "labels": labels, "hypotheses": hypotheses, "windows": windows}

    def _forward(self, items):
        flat = [w for item in items for w in item["windows"]]
        if self.method == "nli":
            logits = iter(self.run_windows(flat, lambda *inputs: self.model(*inputs).logits, per_token=False))
            return [(item, torch.stack([next(logits) for _ in item["windows"]])) for item in items]  # (L, labels)
        vectors = self.embed_windows(flat)  # one (hidden,) per sequence
        return [(item, self._hypotheses_embedded(item["hypotheses"]) @ v) for item, v in zip(items, vectors)]

    def _hypotheses_embedded(self, hypotheses: list[str]) -> torch.Tensor:
        """(L, hidden) unit vectors of the filled templates; embedded once per label set."""
        key = tuple(hypotheses)
        if key not in self._hypothesis_vectors:
            self._hypothesis_vectors = {key: self.embed(hypotheses)}
        return self._hypothesis_vectors[key]

    def postprocess(self, output, multi_label=False):
        item, values = output  # nli: logits (L, num_labels); embedding-similarity: cosines (L,)
        multi = multi_label or len(item["labels"]) == 1  # one label: a yes/no question (as Hugging Face)
        if self.method == "nli" and multi:
            contradiction = -1 if self.entailment_id == 0 else 0  # Hugging Face's choice
            scores = values[:, [contradiction, self.entailment_id]].softmax(-1)[:, 1]
        elif self.method == "nli":
            scores = values[:, self.entailment_id].softmax(-1)
        else:
            scores = (values + 1) / 2 if multi else (values / self.temperature).softmax(-1)
        order = sorted(range(len(item["labels"])), key=lambda i: -scores[i].item())
        return {"sequence": item["sequence"], "labels": [item["labels"][i] for i in order],
                "scores": [scores[i].item() for i in order], "method": self.method}
