"""The table of checkpoint formats dlforge loads (and, where there is an exporter, saves): dlforge's own model
folder, each Hugging Face `model_type`, and torchvision/timm ResNet weight files. `load_pretrained` and
`Model.from_pretrained` (in `models.pretrained`) recognise a path by this table, check the kind once, and call
the converter found here; `save_pretrained(format="hf")` finds the exporter of the model's kind here.

Adding a format is adding a row: a Hugging Face architecture through `hf_format`, anything else as a `Format`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import DlforgeError
from ..hub.weights import deduplicated_state_dict, load_into, load_state_dict
from .autoencoder import VAE, Autoencoder
from .bert import Bert
from .converters import bart, bert, gpt2, resnet, t5, vit
from .gan import GAN
from .gpt import GPT
from .pretrained import Format, Head, check_field_types, fixed_head_error, register_formats
from .resnet import ResNet, ResNetConfig
from .seq2seq import Seq2Seq
from .small_cnn import ImageClassifier
from .unet import DiffusionModel
from .vit import ViT

# kind name (stored in checkpoints) -> model class; each class has `config_class` and `kind`
MODEL_CLASSES = {cls.kind: cls for cls in (GPT, Bert, Seq2Seq, GAN, ImageClassifier, Autoencoder, VAE,
                                           DiffusionModel, ResNet, ViT)}
WEIGHT_FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


# ------------------------------------------------------------------ dlforge's own folders
def dlforge_kind(directory: Path, config: dict) -> str:
    kind = config["dlforge_kind"]
    if not isinstance(kind, str) or kind not in MODEL_CLASSES:
        raise DlforgeError(f"{directory} holds a model of kind {kind!r}, which this dlforge version does not know "
                           f"(known: {', '.join(MODEL_CLASSES)})")
    return kind


def load_dlforge_folder(directory: Path, config: dict, head: Head) -> torch.nn.Module:
    """A dlforge model folder; BERT and ViT models take a new task head when one is asked for (e.g. a masked-LM
    run fine-tuned for classification)."""
    cls = MODEL_CLASSES[config["dlforge_kind"]]
    settings = config.get("config")
    if not isinstance(settings, dict):
        raise DlforgeError(f"{directory / 'config.json'} has an invalid model config: 'config' must be an "
                           "object of settings; the file is damaged or was edited: re-save the model")
    check_field_types(cls.config_class, settings, directory / "config.json")
    try:
        model_config = cls.config_class.from_dict(settings)
    except (TypeError, ValueError, KeyError) as e:
        raise DlforgeError(f"{directory / 'config.json'} has an invalid model config: {e}") from e
    if cls is Bert:
        saved_task = model_config.task
        model_config, new_head = bert.with_task(model_config, head.task, head.num_labels, head.labels)
        state = load_state_dict(directory)
        if model_config.task != saved_task:  # another task's head (an MLM transform) is no start for this one
            state = {k: v for k, v in state.items() if not k.startswith("head.")}
        return bert.load_bert_weights(model_config, state, directory, new_head)
    if cls is ViT:
        model_config, new_head = vit.with_task(model_config, head.task, head.num_labels, head.labels)
        return vit.load_vit_weights(model_config, load_state_dict(directory), directory, new_head)
    if head.asked():
        raise fixed_head_error(directory, cls.kind)
    model = cls(model_config)
    _, tied = deduplicated_state_dict(model)
    load_into(model, load_state_dict(directory), str(directory), allowed_missing=tuple(tied))
    return model


# ------------------------------------------------------------------ weight files
def is_weight_file(path: Path, config: dict | None) -> bool:
    return config is None and path.is_file() and path.suffix in WEIGHT_FILE_SUFFIXES


def load_torchvision_file(path: Path, config: None, head: Head) -> ResNet:
    if head.task not in (None, *resnet.TASKS):
        raise DlforgeError(f"task {head.task!r} does not fit an image backbone: choose one of "
                           f"{', '.join(resnet.TASKS)}")
    num_labels = 0 if head.task == "none" else head.num_labels
    return resnet.load_torchvision_resnet(path, num_labels=num_labels, labels=head.labels)


# ------------------------------------------------------------------ Hugging Face folders
def hf_format(model_type: str, title: str, kind: str, load, check_config, export=None, heads=False) -> Format:
    """The row of a Hugging Face architecture: recognised by config.json's model_type."""
    return Format(name=model_type, title=title, kind=kind,
                  matches=lambda path, config: config is not None and config.get("model_type") == model_type,
                  load=load, check_config=check_config, export=export, heads=heads)


def load_bert_family(directory: Path, config: dict, head: Head) -> Bert:
    return bert.load_hf_bert(directory, config, head.task, head.num_labels, head.labels)


def save_hf_seq2seq(model: Seq2Seq, directory: Path, tokenizer=None) -> Path:
    """A `Seq2Seq` as the Hugging Face family its positions say: T5 (relative buckets) or BART (learned)."""
    positional = model.config.positional
    if positional == "relative":
        return t5.save_hf_t5(model, directory, tokenizer)
    if positional == "learned":
        return bart.save_hf_bart(model, directory, tokenizer)
    raise DlforgeError(f"this Seq2Seq has positional={positional!r}, which neither Hugging Face T5 (relative "
                       "position buckets) nor BART (learned positions) has: save it with format='dlforge'")


register_formats([
    Format(name="dlforge model folders", title="", kind=dlforge_kind,
           matches=lambda path, config: config is not None and "dlforge_kind" in config,
           load=load_dlforge_folder, heads=True),
    hf_format("gpt2", "GPT-2", "gpt", lambda d, config, head: gpt2.load_hf_gpt2(d, config), gpt2.config_from_hf,
              export=gpt2.save_hf_gpt2),
    *(hf_format(model_type, title, "bert", load_bert_family, bert.config_from_hf, export=bert.save_hf_bert,
                heads=True)
      for model_type, title in (("bert", "BERT"), ("roberta", "RoBERTa"), ("distilbert", "DistilBERT"))),
    hf_format("t5", "T5", "seq2seq", lambda d, config, head: t5.load_hf_t5(d, config), t5.config_from_hf,
              export=save_hf_seq2seq),
    hf_format("bart", "BART", "seq2seq", lambda d, config, head: bart.load_hf_bart(d, config), bart.config_from_hf,
              export=save_hf_seq2seq),
    hf_format("vit", "ViT", "vit",
              lambda d, config, head: vit.load_hf_vit(d, config, head.task, head.num_labels, head.labels),
              vit.config_from_hf, export=lambda model, d, tokenizer: vit.save_hf_vit(model, d), heads=True),
    hf_format("resnet", "ResNet", "resnet",
              lambda d, config, head: resnet.load_hf_resnet(d, config, head.task, head.num_labels, head.labels),
              lambda config: ResNetConfig(**resnet.config_from_hf(config)),
              export=lambda model, d, tokenizer: resnet.save_hf_resnet(model, d), heads=True),
    Format(name="torchvision/timm ResNet weight files (.safetensors, .pth, .pt, .bin)", title="ResNet",
           kind="resnet", matches=is_weight_file, load=load_torchvision_file, heads=True),
])
