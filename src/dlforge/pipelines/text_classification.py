"""The text-classification pipeline (alias sentiment-analysis), with Hugging Face's inputs and outputs.

    clf = dlforge.pipeline("text-classification", model="runs/sst2/model")
    clf("a great film")                                  # [{"label": "pos", "score": 0.98}]
    clf(["a great film", "a dull one"])                  # [{...}, {...}]: one dict per text
    clf({"text": "a man eats", "text_pair": "a person eats"})   # a sentence pair: {"label", "score"}
    clf("a great film", top_k=None)                      # every label, best first: [{...}, {...}]

As Hugging Face: without `top_k` each input gets its best label as a dict (a single string: wrapped in a list);
with `top_k` (an int, or None for all labels) each input gets a list, best first. `function_to_apply`:
"softmax", "sigmoid" or "none" (default: sigmoid for a multi-label or one-label model, none for regression,
else softmax). Tokenizer keywords: truncation, padding, max_length, tokenizer_kwargs.
"""

from __future__ import annotations

from ..errors import DlforgeError
from .base import TextPipeline, option_name

FUNCTIONS = ("softmax", "sigmoid", "none")
UNSET = ""  # top_k's default: "not given" (None means "every label", as in Hugging Face)


def function_name(function_to_apply) -> str:
    """"softmax", "sigmoid" or "none" from a name in any case (or Hugging Face's ClassificationFunction)."""
    name = option_name(function_to_apply)
    if name not in FUNCTIONS:
        raise DlforgeError(f"function_to_apply must be one of {', '.join(FUNCTIONS)}, got {function_to_apply!r}")
    return name


def score(logits, function: str):
    """Scores from logits (..., num_labels) by a classification function name (see `function_name`)."""
    return logits.softmax(-1) if function == "softmax" else logits.sigmoid() if function == "sigmoid" else logits


def ranked_labels(scores, names: list[str], top_k: int | None) -> list[dict]:
    """[{"label", "score"}] best first, the first top_k (all if None): one row of scores (num_labels,)."""
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise DlforgeError(f"top_k must be an integer >= 1 or None (every label), got {top_k!r}")
    ranked = sorted(({"label": n, "score": s} for n, s in zip(names, scores.tolist())), key=lambda d: -d["score"])
    return ranked[:top_k] if top_k is not None else ranked


def label_names(config, count: int) -> list[str]:
    return list(config.labels or [f"LABEL_{i}" for i in range(count)])


class TextClassification(TextPipeline):
    task_name = "text-classification"
    needs = ("sequence-classification",)

    def _sanitize_parameters(self, top_k=UNSET, function_to_apply=None, truncation=None, padding=None,
                             max_length=None, tokenizer_kwargs=None):
        post = {} if top_k == UNSET else {"top_k": top_k}
        if function_to_apply is not None:
            post["function_to_apply"] = function_name(function_to_apply)
        return self._tokenizer_options(truncation, padding, max_length, tokenizer_kwargs), {}, post

    def preprocess(self, item, **tokenizer_options):
        if isinstance(item, dict):
            if set(item) - {"text", "text_pair"} or "text" not in item:
                raise DlforgeError(f"a text pair is a dict {{'text': ..., 'text_pair': ...}}, got the keys "
                                   f"{', '.join(map(repr, item))}")
            return self.encode(item["text"], item.get("text_pair"), **tokenizer_options)
        if isinstance(item, (list, tuple)) and len(item) == 1 and isinstance(item[0], (list, tuple)) \
                and len(item[0]) == 2:  # [[text, pair]]: an older form Hugging Face still takes
            return self.encode(item[0][0], item[0][1], **tokenizer_options)
        if isinstance(item, (list, tuple)):
            raise DlforgeError("send a text pair as a dict {'text': 'my text', 'text_pair': 'my pair'}, not as a "
                               "list")
        return self.encode(item, **tokenizer_options)

    def _forward(self, windows):
        return self.run_windows(windows, lambda *inputs: self.model(*inputs).logits, per_token=False)

    def postprocess(self, logits, top_k=UNSET, function_to_apply=None):
        config = self.model.config
        if function_to_apply is None:
            function_to_apply = ("none" if config.problem_type == "regression" else "sigmoid"
                                 if config.problem_type == "multi_label" or logits.size(-1) == 1 else "softmax")
        scores = score(logits, function_to_apply)  # (num_labels,)
        names = label_names(config, logits.size(-1))
        if top_k == UNSET:  # Hugging Face's default: the best label as a dict
            return ranked_labels(scores, names, 1)[0]
        return ranked_labels(scores, names, top_k)

    def _nest(self, results, inputs, single, options):
        if single and isinstance(inputs, str) and "top_k" not in options:
            return [results[0]]  # as Hugging Face: one string without top_k gives a list of one dict
        return super()._nest(results, inputs, single, options)

