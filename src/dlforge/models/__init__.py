"""Model families. Each file holds one family: a dataclass config and the nn.Module."""

from .bert import Bert, BertConfig
from .gpt import GPT, GPTConfig
from .outputs import ModelOutput

# kind name (stored in checkpoints) -> model class; each class has `config_class` and `kind`
MODEL_CLASSES = {GPT.kind: GPT, Bert.kind: Bert}

__all__ = ["Bert", "BertConfig", "GPT", "GPTConfig", "ModelOutput", "MODEL_CLASSES"]
