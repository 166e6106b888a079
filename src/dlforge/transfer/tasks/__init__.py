"""The tasks `dlforge finetune` knows, by CLI name (see `base.FinetuneTask`)."""

from .base import ExampleBatches, FinetuneTask, collate
from .image_classification import ImageClassificationTask
from .question_answering import QuestionAnsweringTask
from .text_classification import TextClassificationTask
from .token_classification import TokenClassificationTask

FINETUNE_TASKS: dict[str, type[FinetuneTask]] = {
    task.name: task for task in (TextClassificationTask, TokenClassificationTask, QuestionAnsweringTask,
                                 ImageClassificationTask)}


def register(task_class: type[FinetuneTask]) -> type[FinetuneTask]:
    """Make another FinetuneTask subclass known to `finetune` by its `name` (usable as a class decorator)."""
    FINETUNE_TASKS[task_class.name] = task_class
    return task_class


__all__ = ["ExampleBatches", "FinetuneTask", "FINETUNE_TASKS", "ImageClassificationTask", "QuestionAnsweringTask",
           "TextClassificationTask", "TokenClassificationTask", "collate", "register"]
