"""dlforge: readable, fast, from-scratch deep-learning reference models on PyTorch."""

__version__ = "0.1.0"

from .errors import DlforgeError  # noqa: E402


def pipeline(task: str, model, tokenizer=None, **kwargs):
    """`dlforge.pipeline("text-classification", model=DIR, **kwargs)`, as transformers' `pipeline`: kwargs are
    batch_size, device, device_map, torch_dtype / dtype and the task's call keywords (defaults for every call).
    See `dlforge.pipelines` (the README lists each task's keywords)."""
    from .pipelines import pipeline as build

    return build(task, model, tokenizer, **kwargs)


def __getattr__(name: str):
    """`dlforge.load_pretrained`, imported on first use so that `import dlforge` stays fast (no torch)."""
    if name == "load_pretrained":
        from .models import load_pretrained

        return load_pretrained
    raise AttributeError(f"module 'dlforge' has no attribute {name!r}")


__all__ = ["DlforgeError", "__version__", "load_pretrained", "pipeline"]
