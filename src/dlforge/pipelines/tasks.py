"""The registry of task pipelines: task names (and aliases) -> pipeline classes, and `pipeline(task, model)`."""

from __future__ import annotations

from ..errors import DlforgeError
from .base import Pipeline
from .feature_extraction import FeatureExtraction, SentenceSimilarity
from .fill_mask import FillMask
from .image_generation import ImageGeneration
from .question_answering import QuestionAnswering
from .text2text import TRANSLATION_TASK, Summarization, Text2TextGeneration, Translation
from .text_classification import TextClassification
from .text_generation import TextGeneration
from .token_classification import TokenClassification
from .vision import ImageClassification, ImageFeatureExtraction
from .zero_shot import ZeroShotClassification

PIPELINES: dict[str, type[Pipeline]] = {
    p.task_name: p for p in (TextClassification, FeatureExtraction, SentenceSimilarity, FillMask, TextGeneration,
                             ZeroShotClassification, TokenClassification, QuestionAnswering, Text2TextGeneration,
                             Translation, Summarization, ImageGeneration, ImageClassification,
                             ImageFeatureExtraction)}
ALIASES = {"sentiment-analysis": "text-classification", "ner": "token-classification"}


def pipeline(task: str, model, tokenizer=None, **kwargs) -> Pipeline:
    """Build the pipeline for `task` from a model folder or hub id (or a model object with `tokenizer=`).

    kwargs: Hugging Face's construction keywords (batch_size, device, device_map, torch_dtype / dtype) and any
    call keyword of the task, which becomes the default of every call."""
    name = ALIASES.get(task, task)
    if isinstance(name, str) and TRANSLATION_TASK.match(name):  # translation_en_to_de: the pair picks a T5 prefix
        return Translation(model, tokenizer, task=name, **kwargs)
    if name not in PIPELINES:
        raise DlforgeError(f"unknown task {task!r}: choose one of {', '.join(sorted([*PIPELINES, *ALIASES]))}")
    return PIPELINES[name](model, tokenizer, **kwargs)
