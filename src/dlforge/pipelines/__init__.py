"""Task pipelines: `dlforge.pipeline(task, model=...)` with Hugging Face's call signatures and outputs.

A pipeline loads a model folder (dlforge or Hugging Face format) once, then maps text to results:

    clf = dlforge.pipeline("text-classification", model="runs/sst2")
    clf(["a gripping film", "a dull film"], top_k=None)  # every label with its score

Tasks so far: text-classification (alias sentiment-analysis), feature-extraction, fill-mask,
sentence-similarity, text-generation. Each accepts a string or a list of strings (the result is
then a list) and processes lists in batches.
"""

from __future__ import annotations

from .tasks import PIPELINES, Pipeline, pipeline

__all__ = ["PIPELINES", "Pipeline", "pipeline"]
