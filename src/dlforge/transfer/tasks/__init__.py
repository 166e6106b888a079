"""The tasks `dlforge finetune` knows, by CLI name (see `base.FinetuneTask`)."""

from .base import ExampleBatches, FinetuneTask, collate

FINETUNE_TASKS: dict[str, type[FinetuneTask]] = {}


def register(task_class: type[FinetuneTask]) -> type[FinetuneTask]:
    FINETUNE_TASKS[task_class.name] = task_class
    return task_class


__all__ = ["ExampleBatches", "FinetuneTask", "FINETUNE_TASKS", "collate", "register"]

# each task module registers its task on import (so after `register` exists)
from . import image_classification, question_answering, text_classification, token_classification  # noqa: E402,F401
