"""Hugging Face ViT checkpoints (ViTModel, ViTForImageClassification) <-> dlforge `ViT`.

Both key layouts load: the Hub's (`encoder.layer.N.attention.attention.query`, what `save_pretrained`
writes) and transformers 5's in-memory names (`layers.N.attention.q_proj`), each with the `vit.` prefix of
ViTForImageClassification or bare as ViTModel. Separate query/key/value matrices are concatenated into the
fused `c_attn` (and split again on saving). The pooler is kept when the checkpoint has one;
`classifier` becomes `head`. preprocessor_config.json, when present, gives image_mean / image_std and the
processing (`config.preprocessing`, followed by `ImageProcessor.from_config`: a ViTImageProcessor resizes to its
height × width whatever the image's shape, as transformers does); a square processed size other than image_size
resizes the position embeddings to it, others are interpolated per input (HF's interpolate_pos_encoding).
`save_hf_vit` writes the model's processing back as preprocessor_config.json. ViTForMaskedImageModeling (its
encoder_stride decoder) and non-square `image_size` or patches are refused with a DlforgeError. Weights are loaded
as float32 whatever `dtype` / `torch_dtype` says.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import torch

from ...data.processor import ImageProcessor
from ...errors import DlforgeError
from ...hub.json_files import read_json_object
from ...hub.weights import fuse_qkv, load_into, load_state_dict, save_state_dict
from ...io import atomic_directory, atomic_write_json
from ..vit import ViT, ViTConfig

ARCHITECTURES = ("ViTModel", "ViTForImageClassification")
HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new", "relu": "relu"}
TASKS = ("none", "image-classification")

# HF key (vit. prefix removed, encoder.layer. renamed to layers.) -> dlforge key; first match wins
RULES = [
    (r"embeddings\.patch_embeddings\.projection\.", "embeddings.patch_embeddings."),
    (r"layers\.(\d+)\.attention\.(?:attention\.)?(query|key|value)\.", r"layers.\1.attn.\2."),
    (r"layers\.(\d+)\.attention\.(q|k|v)_proj\.", r"layers.\1.attn.\2."),
    (r"layers\.(\d+)\.attention\.(?:output\.dense|o_proj)\.", r"layers.\1.attn.c_proj."),
    (r"layers\.(\d+)\.layernorm_before\.", r"layers.\1.ln_1."),
    (r"layers\.(\d+)\.layernorm_after\.", r"layers.\1.ln_2."),
    (r"layers\.(\d+)\.(?:intermediate\.dense|mlp\.fc1)\.", r"layers.\1.mlp.c_fc."),
    (r"layers\.(\d+)\.(?:output\.dense|mlp\.fc2)\.", r"layers.\1.mlp.c_proj."),
    (r"layernorm\.", "norm."),
    (r"pooler\.dense\.", "pooler."),
    (r"classifier\.", "head."),
]
QKV = re.compile(r"layers\.(\d+)\.attn\.(query|key|value|q|k|v)\.(weight|bias)$")
SKIPPED = re.compile(r"^embeddings\.mask_token$")  # ViTModel(use_mask_token=True): unused without masking


def _square(hf: dict, name: str) -> int:
    value = hf.get(name, 224 if name == "image_size" else 16)
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise DlforgeError(f"ViT {name}={value} is not square: only square images and patches are supported")
        value = value[0]
    return int(value)


def config_from_hf(hf: dict, preprocessor: dict | None = None) -> ViTConfig:
    """dlforge ViTConfig of an HF config.json (+ preprocessor_config.json); unsupported options raise."""
    if hf.get("model_type") != "vit":
        raise DlforgeError(f"model_type {hf.get('model_type')!r} is not a Hugging Face ViT ('vit')")
    architecture = (hf.get("architectures") or ["ViTModel"])[0]
    if architecture not in ARCHITECTURES:
        raise DlforgeError(f"{architecture} is not supported (its encoder_stride decoder is not implemented): "
                           f"dlforge loads {', '.join(ARCHITECTURES)}")
    act = hf.get("hidden_act", "gelu")
    if act not in HF_ACTIVATIONS:
        raise DlforgeError(f"ViT hidden_act {act!r} is not supported (known: {', '.join(HF_ACTIVATIONS)})")
    hidden, heads = hf.get("hidden_size", 768), hf.get("num_attention_heads", 12)
    if hf.get("head_dim") not in (None, hidden // heads):
        raise DlforgeError(f"ViT head_dim={hf['head_dim']} != hidden_size / num_attention_heads is not supported")
    if hf.get("pooler_output_size") not in (None, hidden) or hf.get("pooler_act", "tanh") != "tanh":
        raise DlforgeError(f"a ViT pooler of size {hf.get('pooler_output_size')} with {hf.get('pooler_act')!r} "
                           f"is not supported (only hidden_size and tanh)")
    if hf.get("problem_type") not in (None, "single_label_classification"):
        raise DlforgeError(f"problem_type {hf['problem_type']!r} is not supported: dlforge's ViT classifier "
                           "trains single-label (cross-entropy) only")
    num_labels, labels = 0, None
    if architecture == "ViTForImageClassification":
        id2label = hf.get("id2label")
        num_labels = len(id2label) if id2label else hf.get("num_labels", 2)
        labels = [id2label[k] for k in sorted(id2label, key=int)] if id2label else None
    config = ViTConfig(image_size=_square(hf, "image_size"), patch_size=_square(hf, "patch_size"),
                       channels=hf.get("num_channels", 3), hidden_size=hidden, n_layer=hf.get("num_hidden_layers", 12),
                       n_head=heads, intermediate_size=hf.get("intermediate_size", 3072),
                       activation=HF_ACTIVATIONS[act], norm_eps=hf.get("layer_norm_eps", 1e-12),
                       qkv_bias=hf.get("qkv_bias", True), dropout=hf.get("hidden_dropout_prob", 0.0),
                       num_labels=num_labels, labels=labels)
    return _with_preprocessing(config, preprocessor) if preprocessor else config


def _with_preprocessing(config: ViTConfig, pre: dict) -> ViTConfig:
    """The config with the processing of a preprocessor_config.json (a ViTImageProcessor unless it names another):
    image_mean / image_std and the resize / crop / rescale settings."""
    processor = ImageProcessor.from_preprocessor_config(pre, config.image_size, config.channels, "ViTImageProcessor")
    return replace(config, image_mean=processor.image_mean, image_std=processor.image_std,
                   preprocessing=processor.settings())


def convert_state_dict(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF ViT tensors -> dlforge names, q/k/v fused into c_attn."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in hf_state.items():
        key = re.sub(r"^encoder\.layer\.", "layers.", key.removeprefix("vit."))
        if SKIPPED.search(key):
            continue
        new = next((re.sub("^" + p, t, key) for p, t in RULES if re.match(p, key)), key)
        match = QKV.match(new)
        if match:  # gather q, k, v to fuse them below
            qkv.setdefault(f"layers.{match[1]}.attn.c_attn.{match[3]}", {})[match[2][0]] = tensor
        else:
            out[new] = tensor  # unmapped keys are reported by name by load_into
    return {**out, **fuse_qkv(qkv)}


def with_task(config: ViTConfig, task: str | None, num_labels: int | None = None,
              labels: list[str] | None = None) -> tuple[ViTConfig, bool]:
    """The config with the head asked for (task None and no labels: the checkpoint's), and whether it is new."""
    if task is None and (num_labels or labels):
        task = "image-classification"
    if task is None:
        return config, False
    if task not in TASKS:
        raise DlforgeError(f"a ViT's task must be one of {', '.join(TASKS)}, got {task!r}")
    n = 0 if task == "none" else num_labels or (len(labels) if labels else config.num_labels)
    if n == 0 and task == "image-classification":
        raise DlforgeError("image-classification needs num_labels or labels (the checkpoint has no head)")
    if n == config.num_labels:
        return (replace(config, labels=labels) if labels else config), False
    return replace(config, num_labels=n, labels=labels), True


def load_vit_weights(config: ViTConfig, state: dict[str, torch.Tensor], source: str | Path,
                     new_head: bool = False) -> ViT:
    """Build `ViT(config)` and load dlforge-named weights (a new head starts fresh; a missing pooler is left out)."""
    if config.pooler != any(k.startswith("pooler.") for k in state):
        config = replace(config, pooler=not config.pooler)
    if new_head:
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    model = ViT(config)
    allowed = ("head.weight", "head.bias") if new_head else ()
    load_into(model, {k: v.float() for k, v in state.items()}, str(source), allowed_missing=allowed)
    return model


def _read_json(path: Path) -> dict | None:
    return read_json_object(path) if path.is_file() else None


def load_hf_vit(directory: str | Path, raw_config: dict, task: str | None = None, num_labels: int | None = None,
                labels: list[str] | None = None) -> ViT:
    """Load an HF ViTModel / ViTForImageClassification directory; `task` ("image-classification" with
    num_labels or labels, or "none") swaps the head. A preprocessor resolution other than image_size resizes
    the position embeddings to it (what HF computes with interpolate_pos_encoding=True)."""
    directory = Path(directory)
    preprocessor = _read_json(directory / "preprocessor_config.json")
    config, new_head = with_task(config_from_hf(raw_config, preprocessor), task, num_labels, labels)
    model = load_vit_weights(config, convert_state_dict(load_state_dict(directory)), directory, new_head)
    size = ImageProcessor.from_config(config).output_size()
    if size is not None and size[0] == size[1] != config.image_size:
        model.resize_position_embeddings(size[0])  # other shapes: the embeddings are interpolated per input
    return model


# ------------------------------------------------------------------ saving back to the HF format
HF_BLOCK_NAMES = {"ln_1": "layernorm_before", "attn.c_proj": "attention.output.dense", "ln_2": "layernorm_after",
                  "mlp.c_fc": "intermediate.dense", "mlp.c_proj": "output.dense"}
HF_ACT_NAMES = {"gelu": "gelu", "gelu_new": "gelu_new", "relu": "relu"}


def config_to_hf(c: ViTConfig) -> dict:
    if c.pooling != "cls" and c.num_labels:
        raise DlforgeError("a ViT classifier with pooling='mean' cannot be saved in the Hugging Face format (HF "
                           "ViTForImageClassification reads the [CLS] token): save it in dlforge's format")
    if c.activation not in HF_ACT_NAMES:
        raise DlforgeError(f"a ViT with activation {c.activation!r} cannot be saved in the Hugging Face format "
                           f"(HF ViT has no gated MLP; use one of {', '.join(HF_ACT_NAMES)})")
    hf = {"model_type": "vit", "architectures": ["ViTForImageClassification" if c.num_labels else "ViTModel"],
          "hidden_size": c.hidden_size, "num_hidden_layers": c.n_layer, "num_attention_heads": c.n_head,
          "intermediate_size": c.intermediate_size, "hidden_act": HF_ACT_NAMES[c.activation],
          "hidden_dropout_prob": c.dropout, "attention_probs_dropout_prob": c.dropout, "initializer_range": 0.02,
          "layer_norm_eps": c.norm_eps, "image_size": c.image_size, "patch_size": c.patch_size,
          "num_channels": c.channels, "qkv_bias": c.qkv_bias, "encoder_stride": c.patch_size,
          "pooler_output_size": c.hidden_size, "pooler_act": "tanh"}
    if c.num_labels:
        names = c.labels or [f"LABEL_{i}" for i in range(c.num_labels)]
        hf["id2label"] = {str(i): n for i, n in enumerate(names)}
        hf["label2id"] = {n: i for i, n in enumerate(names)}
    return hf


def state_dict_to_hf(model: ViT) -> dict[str, torch.Tensor]:
    """dlforge names -> the Hub's ViT layout (`vit.` prefix when the model has a classification head)."""
    prefix = "vit." if model.head is not None else ""
    out = {}
    for key, tensor in model.state_dict().items():
        if key.startswith("layers."):
            _, index, rest = key.split(".", 2)
            module, param = rest.rsplit(".", 1)
            base = f"{prefix}encoder.layer.{index}."
            if module == "attn.c_attn":
                for part, chunk in zip(("query", "key", "value"), tensor.chunk(3, dim=0)):
                    out[f"{base}attention.attention.{part}.{param}"] = chunk.clone()
            else:
                out[f"{base}{HF_BLOCK_NAMES[module]}.{param}"] = tensor
        elif key.startswith("head."):
            out["classifier." + key.removeprefix("head.")] = tensor
        elif key.startswith("embeddings.patch_embeddings."):
            out[prefix + key.replace("patch_embeddings.", "patch_embeddings.projection.")] = tensor
        elif key.startswith("norm."):
            out[prefix + "layernorm." + key.removeprefix("norm.")] = tensor
        elif key.startswith("pooler."):
            out[prefix + "pooler.dense." + key.removeprefix("pooler.")] = tensor
        else:  # embeddings.cls_token, embeddings.position_embeddings
            out[prefix + key] = tensor
    return out


def save_hf_vit(model: ViT, directory: str | Path) -> Path:
    """Write config.json + model.safetensors + preprocessor_config.json that transformers' ViTModel /
    ViTForImageClassification load (a pooler is written too; ViTForImageClassification ignores it)."""
    directory = Path(directory)
    hf_config = config_to_hf(model.config)
    hf_config["dtype"] = str(model.embeddings.cls_token.dtype).removeprefix("torch.")
    with atomic_directory(directory) as tmp:
        save_state_dict(state_dict_to_hf(model), tmp / "model.safetensors")
        atomic_write_json(tmp / "config.json", hf_config)
        ImageProcessor.from_config(model.config).save(tmp)
    return directory
