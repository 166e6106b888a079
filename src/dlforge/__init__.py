"""dlforge: readable, fast, from-scratch deep-learning reference models on PyTorch."""

__version__ = "0.1.0"

from .errors import DlforgeError  # noqa: E402


def pipeline(task: str, model, tokenizer=None, **kwargs):
    """`dlforge.pipeline("text-classification", model=DIR, **kwargs)`, as transformers' `pipeline`: kwargs are
    batch_size, device, device_map, torch_dtype / dtype and the task's call keywords (defaults for every call).
    See `dlforge.pipelines` (the README lists each task's keywords)."""
    from .pipelines import pipeline as build

    return build(task, model, tokenizer, **kwargs)


__all__ = ["DlforgeError", "__version__", "pipeline"]
