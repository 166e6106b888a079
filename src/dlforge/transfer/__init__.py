"""Transfer learning on any dlforge model: LoRA, fine-tuning strategies, distillation, domain adaptation."""

from .distill import Distiller, FeatureMapDistiller, distillation_loss
from .domain import DomainAdversarial, adapt_domain, reverse_gradient
from .features import extract_features, fit_classifier
from .finetune import GradualUnfreezing, freeze_below, layerwise_lr_scales, num_blocks, unfreeze_all
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
from .recipe import find_learning_rate, finetune  # noqa: E402  (after .finetune: the function takes the module's name)

__all__ = [
    "Distiller", "FeatureMapDistiller", "distillation_loss", "extract_features", "fit_classifier",
    "GradualUnfreezing", "freeze_below",
    "layerwise_lr_scales", "num_blocks", "unfreeze_all", "LoRALinear", "apply_lora", "load_lora",
    "lora_state_dict", "merge_lora", "save_lora", "strip_lora", "unmerge_lora", "finetune", "find_learning_rate",
    "DomainAdversarial", "adapt_domain", "reverse_gradient",
]
