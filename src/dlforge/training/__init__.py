"""The Trainer shared by every model family, with its optimizer, schedule and logging."""

from .optim import EMA, learning_rate, make_adamw
from .trainer import TrainConfig, Trainer

__all__ = ["EMA", "Trainer", "TrainConfig", "learning_rate", "make_adamw"]
