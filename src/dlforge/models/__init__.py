"""Model families. Each file holds one family: a dataclass config and the nn.Module."""

from .gpt import GPT, GPTConfig
from .outputs import ModelOutput

# kind name (stored in checkpoints) -> model class; each class has `config_class` and `kind`
MODEL_CLASSES = {GPT.kind: GPT}

__all__ = ["GPT", "GPTConfig", "ModelOutput", "MODEL_CLASSES"]
