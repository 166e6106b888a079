"""Model families. Each file holds one family: a dataclass config and the nn.Module."""

from .bert import Bert, BertConfig
from .gpt import GPT, GPTConfig
from .outputs import ModelOutput
from .seq2seq import Seq2Seq, Seq2SeqConfig

# kind name (stored in checkpoints) -> model class; each class has `config_class` and `kind`
MODEL_CLASSES = {GPT.kind: GPT, Bert.kind: Bert, Seq2Seq.kind: Seq2Seq}

__all__ = ["Bert", "BertConfig", "GPT", "GPTConfig", "ModelOutput", "MODEL_CLASSES", "Seq2Seq", "Seq2SeqConfig"]
