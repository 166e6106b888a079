"""Transfer learning on any dlforge model: LoRA, fine-tuning recipes, distillation, domain adaptation.

The building blocks the Trainer itself applies live in `dlforge.training` and are re-exported here under their
transfer-learning names: layer-wise LR decay, freezing and gradual unfreezing (`training/layerwise.py`) and the
distillers (`training/distill.py`).
"""

from ..training.distill import Distiller, FeatureMapDistiller, distillation_loss
from ..training.layerwise import GradualUnfreezing, freeze_below, layerwise_lr_scales, num_blocks, unfreeze_all
from .domain import DomainAdversarial, adapt_domain, reverse_gradient
from .features import extract_features, fit_classifier
from .lora import (
    LoRALinear,
    apply_lora,
    load_lora,
    lora_state_dict,
    merge_lora,
    save_lora,
    strip_lora,
    unmerge_lora,
)
from .recipe import find_learning_rate, finetune

__all__ = [
    "Distiller", "FeatureMapDistiller", "distillation_loss", "extract_features", "fit_classifier",
    "GradualUnfreezing", "freeze_below",
    "layerwise_lr_scales", "num_blocks", "unfreeze_all", "LoRALinear", "apply_lora", "load_lora",
    "lora_state_dict", "merge_lora", "save_lora", "strip_lora", "unmerge_lora", "finetune", "find_learning_rate",
    "DomainAdversarial", "adapt_domain", "reverse_gradient",
]
