"""Encoder–decoder pipelines: `text2text-generation`, `translation`, `summarization`.

They differ only in the key of their output, as in Hugging Face: `[{"generated_text": ...}]`,
`[{"translation_text": ...}]`, `[{"summary_text": ...}]` for one input (a list of those for a list of
inputs; a list per input when num_return_sequences > 1). Generation options use the Hugging Face
keyword names (max_new_tokens, min_new_tokens, max_length, min_length, num_beams, do_sample,
temperature, top_k, top_p, repetition_penalty, length_penalty, no_repeat_ngram_size, early_stopping,
num_return_sequences) plus dlforge's `seed` for sampling and `max_source_length` (source tokens kept; longer
sources are truncated; default and upper bound: the model's positions, 512 for relative ones). A T5
checkpoint's task prefix ("translate English to German: ", "summarize: ") is put in front of each input when
its config.json has one for the task (`translation_en_to_de` names the language pair); `prefix=` overrides it.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from ..errors import DlforgeError
from ..hub import read_json_object
from ..models import resolve_model_dir
from ..text.seq2seq_generation import Seq2SeqGenerationConfig, generate_text2text
from .base import Pipeline, given

GENERATION_OPTIONS = tuple(f.name for f in dataclasses.fields(Seq2SeqGenerationConfig))

def task_prefixes(model) -> dict[str, str]:
    """{"summarization": "summarize: ", "translation_en_to_de": "translate English to German: ", ...}
    from a Hugging Face config.json's task_specific_params (empty for other models)."""
    if not (isinstance(model, (str, bytes)) or hasattr(model, "__fspath__")):
        return {}
    config = read_json_object(Path(resolve_model_dir(model)) / "config.json")
    params = config.get("task_specific_params") or {}
    return {task: p["prefix"] for task, p in params.items() if isinstance(p, dict) and p.get("prefix")}


class Text2TextGeneration(Pipeline):
    task_name = "text2text-generation"
    output_key = "generated_text"
    extra_keywords = GENERATION_OPTIONS

    def __init__(self, model, tokenizer=None, task: str | None = None, **options):
        prefixes = task_prefixes(model)
        self.prefix = prefixes.get(task or self.task_name, prefixes.get(self.task_name, ""))
        super().__init__(model, tokenizer, **options)

    def _check_model(self) -> None:
        if self.model.kind != "seq2seq":
            raise DlforgeError(f"{self.task_name} needs a seq2seq model, but this one is a {self.model.kind} model")
        if self.tokenizer is None:
            raise DlforgeError("this model folder has no tokenizer (tokenizer.json): pass tokenizer=...")

    def _sanitize_parameters(self, prefix=None, seed=None, max_length=None, min_length=None, max_source_length=None,
                             **generate_options):
        # transformers' max_length/min_length count the decoder start token
        if max_length is not None:
            generate_options.setdefault("max_new_tokens", max_length - 1)
        if min_length is not None:
            generate_options.setdefault("min_new_tokens", max(0, min_length - 1))
        forward = given(seed=seed, max_source_length=max_source_length, **generate_options)
        return ({} if prefix is None else {"prefix": prefix}), forward, {}

    def preprocess(self, text, prefix=None):
        if not isinstance(text, str):
            raise DlforgeError(f"{self.task_name} takes texts (strings), got {type(text).__name__}")
        return (self.prefix if prefix is None else prefix) + text

    def _forward(self, sources, seed=None, max_source_length=None, **options):
        options.setdefault("max_new_tokens", 128)
        n = options.get("num_return_sequences", 1)
        limit = self.model.config.max_position if self.model.config.positional != "relative" else 512
        outputs = generate_text2text(self.model, self.tokenizer, sources, seed=seed,
                                     max_source_length=min(max_source_length or limit, limit),
                                     batch_size=len(sources), **options)
        return [out if n > 1 else [out] for out in outputs]

    def postprocess(self, outputs):
        return [{self.output_key: o} for o in outputs]

    def _nest(self, results, inputs, single, options):
        if not single and all(len(r) == 1 for r in results):
            return [r[0] for r in results]  # one sequence per input: a flat list, as transformers returns
        return super()._nest(results, inputs, single, options)


class Translation(Text2TextGeneration):
    task_name = "translation"
    output_key = "translation_text"


class Summarization(Text2TextGeneration):
    task_name = "summarization"
    output_key = "summary_text"


TRANSLATION_TASK = re.compile(r"translation_([a-z]+)_to_([a-z]+)$")
