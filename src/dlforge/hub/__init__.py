"""Checkpoint formats: dlforge's own model directories and Hugging Face checkpoints."""

from .bart import load_hf_bart
from .bert import load_hf_bert, save_hf_bert
from .checkpoint import load_pretrained, resolve_model_dir, save_pretrained
from .gpt2 import load_hf_gpt2, save_hf_gpt2
from .resnet import load_hf_resnet, load_torchvision_resnet, save_torchvision_resnet
from .t5 import load_hf_t5
from .vit import load_hf_vit, save_hf_vit
from .weights import load_state_dict

__all__ = ["load_hf_bert", "save_hf_bert", "load_pretrained", "resolve_model_dir", "save_pretrained",
           "load_hf_gpt2", "save_hf_gpt2", "load_hf_t5", "load_hf_bart", "load_state_dict", "load_hf_vit",
           "save_hf_vit",
           "load_hf_resnet", "load_torchvision_resnet", "save_torchvision_resnet"]
