"""The token-classification pipeline (alias ner): a label per token, or entities grouped from them.

    ner = dlforge.pipeline("ner", model="runs/wnut17/model")
    ner("Empire State Building = ESB", aggregation_strategy="simple")
    -> [{"entity_group": "location", "score": 0.93, "word": "empire state building", "start": 0, "end": 21}, ...]

Hugging Face's call signature and outputs, computed the same way:
  aggregation_strategy  "none": one dict per token {"entity", "score", "index", "word", "start", "end"};
                        "simple": adjacent tokens of one type (B- starts a new entity, I- or a bare label
                        continues it) become {"entity_group", "score" (mean), "word", "start", "end"};
                        "first" / "average" / "max": as simple, but each word first gets one label: that of
                        its first sub-token, of its averaged scores, or of its most confident sub-token.
  ignore_labels         labels left out of the result (default ["O"]).
  stride                None (default): a text longer than the model's max length is truncated, as Hugging
                        Face does; an int: it is cut into windows overlapping by `stride` tokens and the
                        windows' entities are merged (an overlap keeps the longer, else the more confident
                        one). Not with aggregation_strategy="none", whose token indices are per window.
  max_length            the tokens per text (or per window); default and upper bound: the model's positions.
`start`/`end` are character offsets into the text given; "word" is decoded from the tokens (lower-cased
by an uncased tokenizer): text[start:end] is the exact span. The model must be a token classifier
(config.task token-classification) with B-/I- (IOB) or bare label names.
"""

from __future__ import annotations

import torch

from ..errors import DlforgeError
from .base import TextPipeline, check_positive, option_name

STRATEGIES = ("none", "simple", "first", "average", "max")


class TokenClassification(TextPipeline):
    task_name = "token-classification"
    needs = ("token-classification",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        config = self.model.config
        self.labels = config.labels or [f"LABEL_{i}" for i in range(config.num_labels)]
        backend = self.tokenizer.tokenizer  # the `tokenizers.Tokenizer`
        # as Hugging Face: a tokenizer with a continuation prefix ("##") marks sub-words exactly
        self.word_aware = bool(getattr(backend.model, "continuing_subword_prefix", None))
        self._decoder = backend.decoder

    def _check_model(self) -> None:
        super()._check_model()
        if not hasattr(self.tokenizer, "encode_windows"):
            raise DlforgeError("token-classification needs a Hugging Face tokenizer (tokenizer.json or vocab.txt) "
                               "for the character offsets of each token")

    def _sanitize_parameters(self, aggregation_strategy=None, ignore_labels=None, stride=None, max_length=None):
        pre, post = {}, {}
        if max_length is not None:
            pre["max_length"] = check_positive("max_length", max_length)
        if aggregation_strategy is not None:
            post["strategy"] = option_name(aggregation_strategy)
            if post["strategy"] not in STRATEGIES:
                raise DlforgeError(f"aggregation_strategy must be one of {', '.join(STRATEGIES)}, got "
                                   f"{aggregation_strategy!r}")
        if stride is not None:
            if post.get("strategy", "none") == "none":
                raise DlforgeError("stride splits long texts into windows whose entities are merged: choose an "
                                   "aggregation_strategy other than 'none' (simple, first, average or max)")
            if isinstance(stride, bool) or not isinstance(stride, int):
                raise DlforgeError(f"stride must be an integer >= 0, got {stride!r}")
            pre["stride"] = stride
        if ignore_labels is not None:
            post["ignore"] = [ignore_labels] if isinstance(ignore_labels, str) else list(ignore_labels)
        return pre, {}, post

    def preprocess(self, text, stride=None, max_length=None):
        if not isinstance(text, str):
            raise DlforgeError(f"token-classification takes texts (strings), got {type(text).__name__}")
        limit = self.token_limit(max_length)
        if stride is not None and not 0 <= stride < limit:
            raise DlforgeError(f"stride must be >= 0 and below the max length {limit}, got {stride}")
        windows = self.tokenizer.encode_windows([text], max_length=limit, stride=stride or 0)[0]
        return text, windows if stride is not None else windows[:1]  # without stride: truncated, as Hugging Face

    def _forward(self, items):
        flat = [w for _, windows in items for w in windows]
        probs = iter(self.run_windows(flat, lambda *inputs: self.model(*inputs).logits.float().softmax(-1)))
        return [(text, [(w, next(probs)) for w in windows]) for text, windows in items]  # probs (T, num_labels)

    def postprocess(self, output, strategy="none", ignore=("O",)):
        text, windows = output
        entities = []
        for window, probs in windows:
            grouped = self._aggregate(self._tokens(text, window, probs, strategy), strategy)
            entities += [e for e in grouped if e.get("entity", e.get("entity_group")) not in ignore]
        return _merge_overlaps(entities) if len(windows) > 1 else entities

    def _tokens(self, text: str, window: dict, probs: torch.Tensor, strategy: str) -> list[dict]:
        """The window's non-special tokens: word piece, probabilities, offsets, index, whether a sub-word."""
        tokens = []
        unk = self.tokenizer.unk_token_id
        for index, (token_id, seq, (start, end)) in enumerate(zip(window["input_ids"], window["sequence_ids"],
                                                                  window["offsets"])):
            if seq is None:  # [CLS], [SEP]
                continue
            word, piece = self.tokenizer.id_to_token(token_id), text[start:end]
            if self.word_aware:
                subword = len(word) != len(piece)  # "##ing" is longer than "ing"
            else:  # Hugging Face's fallback: glued to the previous character
                subword = start > 0 and " " not in text[start - 1:start + 1]
            if token_id == unk:
                word, subword = piece, False
            tokens.append({"word": word, "probs": probs[index], "start": start, "end": end, "index": index,
                           "subword": subword})
        return tokens

    def _label(self, probs: torch.Tensor) -> tuple[str, float]:
        best = int(probs.argmax())
        return self.labels[best], float(probs[best])

    def _to_string(self, pieces: list[str]) -> str:
        return self._decoder.decode(pieces) if self._decoder is not None else " ".join(pieces)

    def _aggregate(self, tokens: list[dict], strategy: str) -> list[dict]:
        if strategy in ("none", "simple"):
            entities = []
            for t in tokens:
                label, score = self._label(t["probs"])
                entities.append({"entity": label, "score": score, "index": t["index"], "word": t["word"],
                                 "start": t["start"], "end": t["end"]})
        else:
            words = []  # the tokens of each word: a new word at each token that is not a sub-word
            for t in tokens:
                if words and t["subword"]:
                    words[-1].append(t)
                else:
                    words.append([t])
            entities = [self._word_entity(w, strategy) for w in words]
        return entities if strategy == "none" else self._group(entities)

    def _word_entity(self, tokens: list[dict], strategy: str) -> dict:
        if strategy == "first":
            label, score = self._label(tokens[0]["probs"])
        elif strategy == "max":
            label, score = self._label(max(tokens, key=lambda t: float(t["probs"].max()))["probs"])
        else:  # average
            label, score = self._label(torch.stack([t["probs"] for t in tokens]).mean(0))
        return {"entity": label, "score": score, "word": self._to_string([t["word"] for t in tokens]),
                "start": tokens[0]["start"], "end": tokens[-1]["end"]}

    def _group(self, entities: list[dict]) -> list[dict]:
        """Adjacent entities of one type make a group; a B- tag always starts a new one."""
        groups: list[list[dict]] = []
        for e in entities:
            prefix, kind = _tag(e["entity"])
            if groups and prefix != "B" and kind == _tag(groups[-1][-1]["entity"])[1]:
                groups[-1].append(e)
            else:
                groups.append([e])
        return [{"entity_group": g[0]["entity"].split("-", 1)[-1], "score": sum(e["score"] for e in g) / len(g),
                 "word": self._to_string([e["word"] for e in g]), "start": g[0]["start"], "end": g[-1]["end"]}
                for g in groups]


def _tag(label: str) -> tuple[str, str]:
    """("B" | "I", type): a label without a B-/I- prefix counts as a continuation of its own type."""
    if label.startswith(("B-", "I-")):
        return label[0], label[2:]
    return "I", label


def _merge_overlaps(entities: list[dict]) -> list[dict]:
    """Entities of overlapping windows: of two that overlap, keep the longer (or, as long, the more confident)."""
    if not entities:
        return entities
    entities = sorted(entities, key=lambda e: e["start"])
    merged, previous = [], entities[0]
    for e in entities:
        if previous["start"] <= e["start"] < previous["end"]:
            longer, as_long = e["end"] - e["start"], previous["end"] - previous["start"]
            if longer > as_long or (longer == as_long and e["score"] > previous["score"]):
                previous = e
        else:
            merged.append(previous)
            previous = e
    merged.append(previous)
    return merged
