"""Encoder–decoder pipelines: `text2text-generation`, `translation`, `summarization`.

They differ only in the key of their output, as in Hugging Face: `[{"generated_text": ...}]`,
`[{"translation_text": ...}]`, `[{"summary_text": ...}]` for one input (a list of those for a list of
inputs; a list per input when num_return_sequences > 1). Generation options use the Hugging Face
keyword names (max_new_tokens, min_new_tokens, max_length, min_length, num_beams, do_sample,
temperature, top_k, top_p, repetition_penalty, length_penalty, no_repeat_ngram_size, early_stopping,
num_return_sequences) plus `seed` for sampling. A T5 checkpoint's task prefix ("translate English to
German: ", "summarize: ") is put in front of each input when its config.json has one for the task
(`translation_en_to_de` names the language pair); `prefix=` overrides it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..text.seq2seq_generation import generate_text2text
from .tasks import Pipeline


def task_prefixes(model) -> dict[str, str]:
    """{"summarization": "summarize: ", "translation_en_to_de": "translate English to German: ", ...}
    from a Hugging Face config.json's task_specific_params (empty for other models)."""
    if not (isinstance(model, (str, bytes)) or hasattr(model, "__fspath__")):
        return {}
    from ..models import resolve_model_dir

    config = Path(resolve_model_dir(model)) / "config.json"
    params = json.loads(config.read_text(encoding="utf-8")).get("task_specific_params") or {}
    return {task: p["prefix"] for task, p in params.items() if isinstance(p, dict) and p.get("prefix")}


class Text2TextGeneration(Pipeline):
    task_name = "text2text-generation"
    output_key = "generated_text"
    needs = ("seq2seq",)

    def __init__(self, model, tokenizer=None, prefix: str | None = None, task: str | None = None, **kwargs):
        prefixes = task_prefixes(model)
        super().__init__(model, tokenizer, **kwargs)
        wanted = task or self.task_name
        self.prefix = prefix if prefix is not None else prefixes.get(wanted, prefixes.get(self.task_name, ""))

    def _context(self) -> int:
        c = self.model.config
        return c.max_position if c.positional != "relative" else 512

    def __call__(self, inputs, **options):
        result = super().__call__(inputs, **options)
        if not isinstance(inputs, str) and all(len(r) == 1 for r in result):
            return [r[0] for r in result]  # one sequence per input: a flat list, as transformers returns
        return result

    def _run(self, texts, seed: int | None = None, max_length: int | None = None, min_length: int | None = None,
             **options):
        # transformers' max_length/min_length count the decoder start token
        if max_length is not None:
            options.setdefault("max_new_tokens", max_length - 1)
        if min_length is not None:
            options.setdefault("min_new_tokens", max(0, min_length - 1))
        options.setdefault("max_new_tokens", 128)
        n = options.get("num_return_sequences", 1)
        outputs = generate_text2text(self.model, self.tokenizer, [self.prefix + t for t in texts], seed=seed,
                                     max_source_length=min(self.max_length, self._context()),
                                     batch_size=len(texts), **options)
        return [[{self.output_key: o} for o in (out if n > 1 else [out])] for out in outputs]


class Translation(Text2TextGeneration):
    task_name = "translation"
    output_key = "translation_text"


class Summarization(Text2TextGeneration):
    task_name = "summarization"
    output_key = "summary_text"


TRANSLATION_TASK = re.compile(r"translation_([a-z]+)_to_([a-z]+)$")
