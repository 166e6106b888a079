"""dlforge: readable, fast, from-scratch deep-learning reference models on PyTorch."""

__version__ = "0.1.0"

from .errors import DlforgeError  # noqa: E402

__all__ = ["DlforgeError", "__version__"]
