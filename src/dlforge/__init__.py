"""dlforge: readable, fast, from-scratch deep-learning reference models on PyTorch."""

__version__ = "0.1.0"

from .errors import DlforgeError  # noqa: E402


def pipeline(task: str, model, tokenizer=None, **kwargs):
    """`dlforge.pipeline("text-classification", model=DIR)`: see `dlforge.pipelines`."""
    from .pipelines import pipeline as build

    return build(task, model, tokenizer, **kwargs)


__all__ = ["DlforgeError", "__version__", "pipeline"]
