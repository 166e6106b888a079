"""Task pipelines: `dlforge.pipeline(task, model=...)` with Hugging Face's call signatures and outputs.

A pipeline loads a model folder (dlforge or Hugging Face format) once, then maps text to results:

    clf = dlforge.pipeline("text-classification", model="runs/sst2")
    clf(["a gripping film", "a dull film"], top_k=None)  # every label with its score

Tasks: text-classification (alias sentiment-analysis), token-classification (alias ner), fill-mask,
question-answering (question=/context= or {"question", "context"} records), feature-extraction,
sentence-similarity, zero-shot-classification, text-generation; image-classification and
image-feature-extraction (images: paths, folders, PIL images; see pipelines/vision.py); image-generation.
Each accepts one input or a list (the result is then a list), processes lists in batches, streams
generators, and takes Hugging Face's keywords (see pipelines/base.py; an unknown keyword is a DlforgeError).
`read_inputs(path, column=None)` reads a list of inputs from a .txt, .csv, .tsv or .jsonl file (a string
passed to a pipeline is always a text).
"""

from __future__ import annotations

from .base import Pipeline, TextPipeline
from .inputs import read_inputs
from .tasks import ALIASES, PIPELINES, pipeline

__all__ = ["ALIASES", "PIPELINES", "Pipeline", "TextPipeline", "pipeline", "read_inputs"]
