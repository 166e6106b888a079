"""Converters between other libraries' checkpoints and dlforge model classes: Hugging Face GPT-2, BERT / RoBERTa /
DistilBERT, T5, BART, ViT and ResNet folders, and torchvision/timm ResNet weight files. `load_pretrained` reaches
them through the table in `dlforge.models.formats`; `model.save_pretrained(dir, format="hf")` through the
exporters (`save_hf_*`)."""

from .bart import load_hf_bart, save_hf_bart
from .bert import load_hf_bert, save_hf_bert
from .gpt2 import load_hf_gpt2, save_hf_gpt2
from .resnet import load_hf_resnet, load_torchvision_resnet, save_hf_resnet, save_torchvision_resnet
from .t5 import load_hf_t5, save_hf_t5
from .vit import load_hf_vit, save_hf_vit

__all__ = ["load_hf_bart", "load_hf_bert", "load_hf_gpt2", "load_hf_resnet", "load_hf_t5", "load_hf_vit",
           "load_torchvision_resnet", "save_hf_bart", "save_hf_bert", "save_hf_gpt2", "save_hf_resnet",
           "save_hf_t5", "save_hf_vit", "save_torchvision_resnet"]
