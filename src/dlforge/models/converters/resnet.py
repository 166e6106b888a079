"""Pretrained ResNet weights from local files -> dlforge `ResNet`, by renaming keys (no torchvision, timm or
transformers code is imported).

torchvision and timm state dicts (`torchvision.models.resnet*`, `timm.create_model("resnet*")`; both use the
names of torchvision's ResNet, with S = stage 1.., B = block in the stage, i = the block's place in dlforge's flat
`layers` list, counting the blocks of all earlier stages):

    conv1.weight                          embeddings.conv.weight      stem conv (7×7/2; a 3×3 one = "small" stem)
    bn1.*                                 embeddings.bn.*
    layerS.B.conv{1,2,3}.weight           layers.i.conv{1,2,3}.weight (conv3 only in bottlenecks)
    layerS.B.bn{1,2,3}.*                  layers.i.bn{1,2,3}.*
    layerS.B.downsample.0.weight          layers.i.shortcut.0.weight  (projection conv 1×1/s)
    layerS.B.downsample.1.*               layers.i.shortcut.1.*       (its BN)
    fc.weight, fc.bias                    head.weight, head.bias

`*` is weight, bias, running_mean, running_var and num_batches_tracked (absent in old files: then left at 0).
Block type, depths, widths and the stem are read from the shapes (`layer1.0.conv3` present = bottleneck); a preset
name (`arch`) may be given instead. Files: .safetensors, or .pth / .pt / .bin read with torch.load(weights_only=True);
a state dict nested under "state_dict" or "model" (training checkpoints) and a DataParallel "module." prefix are
accepted. The weights are ImageNet-trained ResNet v1.5 (stride on the bottleneck's 3×3 conv) and expect [0, 1]
pixels normalised with the ImageNet mean / std, which a 3-channel model gets unless others are given.
`save_torchvision_resnet` writes the same names back (a round trip, or weights for torchvision users).

Hugging Face transformers ResNet directories (model_type "resnet": ResNetModel, ResNetForImageClassification,
e.g. microsoft/resnet-50; the classification model prefixes every backbone key with "resnet."):

    embedder.embedder.convolution.weight              embeddings.conv.weight
    embedder.embedder.normalization.*                 embeddings.bn.*
    encoder.stages.S.layers.B.layer.K.convolution.*   layers.i.conv{K+1}.*   (S, B count from 0)
    encoder.stages.S.layers.B.layer.K.normalization.* layers.i.bn{K+1}.*
    encoder.stages.S.layers.B.shortcut.convolution.*  layers.i.shortcut.0.*
    encoder.stages.S.layers.B.shortcut.normalization.* layers.i.shortcut.1.*
    classifier.1.weight, classifier.1.bias            head.weight, head.bias

config.json: num_channels, embedding_size (the stem width), hidden_sizes (each stage's *output* channels, so a
bottleneck's width is hidden_size / 4), depths, layer_type; `downsample_in_bottleneck` (stride on the first 1×1
conv) and `downsample_in_first_stage` (the first stage strides 2) are supported as the config fields
`stride_in_1x1` and `downsample_in_first_stage`; a hidden_act other than relu is rejected. preprocessor_config.json
gives image_size, image_mean / image_std and the processing (`config.preprocessing`: ConvNextImageProcessor's
shortest_edge / crop_pct rule, as transformers applies it); id2label the class names. `save_hf_resnet` writes the
same layout back (with the model's own preprocessor_config.json); a "small" stem has no place in it.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ...data.processor import PREPROCESSOR_FILE, ImageProcessor
from ...errors import DlforgeError
from ...hub.json_files import read_json_object
from ...hub.weights import _load_one, load_into, load_state_dict, save_state_dict
from ...io import atomic_directory, atomic_path, atomic_write_json
from ..resnet import IMAGENET_MEAN, IMAGENET_STD, RESNET_PRESETS, ResNet, ResNetConfig

TV_BLOCK = re.compile(r"layer(\d+)\.(\d+)\.(conv\d|bn\d|downsample\.[01])\.(\w+)")
HF_BLOCK = re.compile(r"encoder\.stages\.(\d+)\.layers\.(\d+)\.(?:layer\.(\d)|shortcut)\.(convolution|normalization)"
                      r"\.(\w+)")
OUR_BLOCK = re.compile(r"layers\.(\d+)\.(conv\d|bn\d|shortcut\.[01])\.(\w+)")
TASKS = ("none", "image-classification")


def _block_index(depths: list[int], stage: int, block: int) -> int | None:
    """Place in the flat `layers` list of block `block` of stage `stage` (both from 0); None if out of range."""
    if 0 <= stage < len(depths) and 0 <= block < depths[stage]:
        return sum(depths[:stage]) + block
    return None


def _stage_and_block(depths: list[int]) -> list[tuple[int, int]]:
    """Flat block index -> (stage, block), both from 0."""
    return [(s, b) for s, depth in enumerate(depths) for b in range(depth)]


# ------------------------------------------------------------------ torchvision / timm
def from_torchvision(state: dict[str, torch.Tensor], depths: list[int]) -> dict[str, torch.Tensor]:
    """torchvision names -> dlforge names; keys that fit nowhere are kept as they are (load_into names them)."""
    out = {}
    for key, tensor in state.items():
        new = key
        for theirs, ours in (("conv1.", "embeddings.conv."), ("bn1.", "embeddings.bn."), ("fc.", "head.")):
            if key.startswith(theirs):
                new = ours + key[len(theirs):]
        match = TV_BLOCK.fullmatch(key)
        if match:
            i = _block_index(depths, int(match[1]) - 1, int(match[2]))
            if i is not None:
                new = f"layers.{i}.{match[3].replace('downsample', 'shortcut')}.{match[4]}"
        out[new] = tensor
    return out


def to_torchvision(model: ResNet) -> dict[str, torch.Tensor]:
    """A dlforge ResNet's state dict under torchvision's names."""
    c = model.config
    if (c.stride_in_1x1 and c.block == "bottleneck") or c.downsample_in_first_stage:
        raise DlforgeError("torchvision's ResNet layout has no place for stride_in_1x1 / downsample_in_first_stage: "
                           "this model cannot be saved in it")
    places = _stage_and_block(c.depths)
    out = {}
    for key, tensor in model.state_dict().items():
        match = OUR_BLOCK.fullmatch(key)
        if match:
            stage, block = places[int(match[1])]
            out[f"layer{stage + 1}.{block}.{match[2].replace('shortcut', 'downsample')}.{match[3]}"] = tensor
        else:
            for ours, theirs in (("embeddings.conv.", "conv1."), ("embeddings.bn.", "bn1."), ("head.", "fc.")):
                if key.startswith(ours):
                    out[theirs + key[len(ours):]] = tensor
    return out


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a weight file (or a directory holding model.safetensors / pytorch_model.bin), unnested."""
    path = Path(path)
    if path.is_dir():
        state = load_state_dict(path)
    elif not path.is_file():
        raise DlforgeError(f"{path} does not exist: give a .safetensors, .pth, .pt or .bin weight file")
    else:
        state = _load_one(path)  # a pickle of anything but plain data is refused there
    for nest in ("state_dict", "model"):  # training checkpoints: {"state_dict": {...}, "epoch": ..., ...}
        if isinstance(state, dict) and isinstance(state.get(nest), dict):
            state = state[nest]
            break
    if not isinstance(state, dict):
        raise DlforgeError(f"{path} holds a {type(state).__name__}, not a state dict of named tensors")
    state = {k: v for k, v in state.items() if torch.is_tensor(v)}
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel / DDP
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def infer_torchvision_config(state: dict[str, torch.Tensor], source: str) -> dict:
    """block, depths, widths, stem, stem_width and channels read from torchvision-named tensor shapes."""
    if "conv1.weight" not in state or "layer1.0.conv1.weight" not in state:
        found = ", ".join(list(state)[:4]) or "nothing"
        raise DlforgeError(f"{source} is not a torchvision/timm-style ResNet state dict (needs conv1.weight and "
                           f"layer1.0.conv1.weight; found {found} ...); deep-stem variants (resnet50d) are not "
                           "supported")
    stem_width, channels, kernel = state["conv1.weight"].shape[:3]
    if kernel not in (3, 7):
        raise DlforgeError(f"{source}: a {kernel}×{kernel} stem conv is neither torchvision's 7×7 nor a 3×3 small stem")
    depths = []
    while True:
        blocks = [int(m[2]) for k in state if (m := TV_BLOCK.fullmatch(k)) and int(m[1]) == len(depths) + 1]
        if not blocks:
            break
        depths.append(max(blocks) + 1)
    block = "bottleneck" if "layer1.0.conv3.weight" in state else "basic"
    widths = []
    for s in range(1, len(depths) + 1):
        conv1 = state.get(f"layer{s}.0.conv1.weight")
        if conv1 is None:
            raise DlforgeError(f"{source}: layer{s}.0.conv1.weight is missing, so stage {s}'s width is unknown")
        width = conv1.shape[0]
        if block == "bottleneck":
            conv2, conv3 = state[f"layer{s}.0.conv2.weight"], state[f"layer{s}.0.conv3.weight"]
            if conv2.shape[1] != width or conv3.shape[0] != 4 * width:
                raise DlforgeError(f"{source}: stage {s} is not a plain bottleneck (conv2 {tuple(conv2.shape)}, "
                                   f"conv3 {tuple(conv3.shape)} for width {width}); ResNeXt and wide ResNets "
                                   "are not supported")
        widths.append(width)
    return dict(block=block, depths=depths, widths=widths, stem="imagenet" if kernel == 7 else "small",
                stem_width=stem_width if stem_width != widths[0] else None, channels=channels,
                image_size=224 if kernel == 7 else 32)


def _head(found: int, num_labels: int | None, labels: list[str] | None,
          found_labels: list[str] | None = None) -> tuple[int, list[str] | None, bool]:
    """(num_labels, labels, keep the checkpoint's head?) for a checkpoint whose head has `found` classes."""
    if num_labels is None:
        num_labels = len(labels) if labels is not None else found
    keep = num_labels == found
    if labels is None and keep and found_labels is not None and len(found_labels) == found:
        labels = found_labels
    return num_labels, labels, keep


def _build(config: ResNetConfig, state: dict[str, torch.Tensor], source: str, keep_head: bool) -> ResNet:
    """ResNet(config) with `state` (dlforge names) loaded; a new head starts fresh, num_batches_tracked may lack."""
    model = ResNet(config)
    if not keep_head:
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    allowed = [k for k in model.state_dict() if k.endswith(".num_batches_tracked") or
               (not keep_head and k.startswith("head."))]
    load_into(model, state, source, allowed_missing=tuple(allowed))
    return model


def load_torchvision_resnet(path: str | Path, arch: str | None = None, num_labels: int | None = None,
                            labels: list[str] | None = None, image_mean: list[float] | None = None,
                            image_std: list[float] | None = None, **overrides) -> ResNet:
    """A ResNet with torchvision/timm weights from a local file (see the module docstring).

    arch: a RESNET_PRESETS name, else the shape is read from the tensors. num_labels / labels: None keeps the
    file's `fc` as the head (1000 ImageNet classes); another count drops it for a fresh head (0: no head).
    image_mean / image_std: None gives a 3-channel model ImageNet's. overrides: other ResNetConfig fields
    (image_size, dropout, ...).
    """
    source = str(path)
    state = read_state_dict(path)
    if arch is not None:
        if arch not in RESNET_PRESETS:
            raise DlforgeError(f"unknown ResNet arch {arch!r}: choose one of {', '.join(RESNET_PRESETS)}")
        shape = {k: v for k, v in RESNET_PRESETS[arch].items() if k not in ("num_labels", "labels")}
    else:
        shape = infer_torchvision_config(state, source)
    found = state["fc.weight"].shape[0] if "fc.weight" in state else 0
    num_labels, labels, keep = _head(found, num_labels, labels)
    if image_mean is None and image_std is None and shape.get("channels", 3) == 3:
        image_mean, image_std = IMAGENET_MEAN, IMAGENET_STD
    config = ResNetConfig(**{**shape, "num_labels": num_labels, "labels": labels, "image_mean": image_mean,
                             "image_std": image_std, **overrides})
    return _build(config, from_torchvision(state, config.depths), source, keep)


def save_torchvision_resnet(model: ResNet, path: str | Path) -> Path:
    """Write the weights under torchvision's names: .safetensors, or .pth / .pt / .bin (torch.save of tensors)."""
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in to_torchvision(model).items()}
    if path.suffix == ".safetensors":
        save_state_dict(state, path)
    elif path.suffix in (".pth", ".pt", ".bin"):
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
    else:
        raise DlforgeError(f"cannot tell the format of {path.name}: name it .safetensors, .pth, .pt or .bin")
    return path


# ------------------------------------------------------------------ Hugging Face transformers
def from_hf(state: dict[str, torch.Tensor], depths: list[int]) -> dict[str, torch.Tensor]:
    """Hugging Face ResNet names -> dlforge names (unmapped keys kept, for load_into to name)."""
    out = {}
    for key, tensor in state.items():
        key = key.removeprefix("resnet.")
        new = key
        for theirs, ours in (("embedder.embedder.convolution.", "embeddings.conv."),
                             ("embedder.embedder.normalization.", "embeddings.bn."), ("classifier.1.", "head.")):
            if key.startswith(theirs):
                new = ours + key[len(theirs):]
        match = HF_BLOCK.fullmatch(key)
        if match:
            i = _block_index(depths, int(match[1]), int(match[2]))
            conv = match[4] == "convolution"
            part = f"{'conv' if conv else 'bn'}{int(match[3]) + 1}" if match[3] else f"shortcut.{0 if conv else 1}"
            if i is not None:
                new = f"layers.{i}.{part}.{match[5]}"
        out[new] = tensor
    return out


def config_from_hf(hf: dict) -> dict:
    """ResNetConfig fields (the shape) of a Hugging Face ResNet config.json (missing keys: HF's defaults)."""
    if hf.get("hidden_act", "relu") != "relu":
        raise DlforgeError(f"hidden_act={hf['hidden_act']!r} is not supported: dlforge's ResNet uses relu")
    block = hf.get("layer_type", "bottleneck")
    if block not in ("basic", "bottleneck"):
        raise DlforgeError(f"layer_type={block!r} is not a ResNet block type (basic, bottleneck)")
    hidden_sizes = list(hf.get("hidden_sizes", [256, 512, 1024, 2048]))
    if block == "bottleneck" and any(h % 4 for h in hidden_sizes):
        raise DlforgeError(f"hidden_sizes {hidden_sizes} are not all divisible by 4: a bottleneck's output is "
                           "4× its width in dlforge")
    return dict(block=block, depths=list(hf.get("depths", [3, 4, 6, 3])), stem="imagenet",
                widths=[h // 4 for h in hidden_sizes] if block == "bottleneck" else hidden_sizes,
                stem_width=hf.get("embedding_size", 64), channels=hf.get("num_channels", 3),
                stride_in_1x1=block == "bottleneck" and bool(hf.get("downsample_in_bottleneck", False)),
                downsample_in_first_stage=bool(hf.get("downsample_in_first_stage", False)))


def hf_processing(directory: Path, channels: int) -> dict:
    """ResNetConfig fields of a preprocessor_config.json (a ConvNextImageProcessor unless it names another):
    image_size (the processed size), image_mean / image_std and the processing settings. Without the file: the
    ImageNet mean / std for RGB (what Hugging Face's image processors assume) and dlforge's own processing."""
    path = directory / PREPROCESSOR_FILE
    if not path.is_file():
        return dict(image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD) if channels == 3 else {}
    processor = ImageProcessor.from_preprocessor_config(read_json_object(path), 224, channels, "ConvNextImageProcessor")
    size = processor.output_size()
    side = size[0] if size else processor.size.get("shortest_edge", processor.size.get("height"))
    return dict(image_size=side, image_mean=processor.image_mean, image_std=processor.image_std,
                preprocessing=processor.settings())


def load_hf_resnet(directory: str | Path, raw_config: dict, task: str | None = None, num_labels: int | None = None,
                   labels: list[str] | None = None) -> ResNet:
    """A Hugging Face ResNet directory -> ResNet. task None keeps the checkpoint's head (ResNetModel: none);
    "image-classification" with num_labels / labels puts on a fresh head if the count differs; "none" drops it."""
    if raw_config.get("model_type") != "resnet":
        raise DlforgeError(f"{directory}: model_type {raw_config.get('model_type')!r} is not a ResNet")
    if task is not None and task not in TASKS:
        raise DlforgeError(f"task {task!r} does not fit an image backbone: choose one of {', '.join(TASKS)}")
    directory = Path(directory)
    shape = config_from_hf(raw_config)
    state = from_hf(load_state_dict(directory), shape["depths"])
    architecture = (raw_config.get("architectures") or [""])[0]
    has_head = architecture.endswith("ForImageClassification") or (not architecture and "head.weight" in state)
    found = state["head.weight"].shape[0] if has_head and "head.weight" in state else 0
    if not has_head:  # ResNetModel / ResNetBackbone: a classifier in the file would be unexpected
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    id2label = raw_config.get("id2label") or {}
    found_labels = [id2label[k] for k in sorted(id2label, key=int)] if id2label else None
    if task == "none":
        num_labels, labels = 0, None
    elif task == "image-classification" and not found and num_labels is None and labels is None:
        raise DlforgeError(f"{directory} has no classification head: give num_labels or labels for a new one")
    num_labels, labels, keep = _head(found, num_labels, labels, found_labels)
    config = ResNetConfig(**{"image_size": 224, **shape, **hf_processing(directory, shape["channels"]),
                             "num_labels": num_labels, "labels": labels})
    return _build(config, state, str(directory), keep)


# ------------------------------------------------------------------ saving back to the Hugging Face format
def config_to_hf(c: ResNetConfig) -> dict:
    """config.json of transformers' ResNetModel (no head) or ResNetForImageClassification."""
    if c.stem != "imagenet":
        raise DlforgeError(f"a ResNet with the {c.stem!r} stem cannot be saved in the Hugging Face format (its "
                           "embedder is the 7×7 conv + max-pool stem): save it in dlforge's format")
    hf = {"model_type": "resnet", "architectures": ["ResNetForImageClassification" if c.num_labels else "ResNetModel"],
          "num_channels": c.channels, "embedding_size": c.stem_width or c.widths[0],
          "hidden_sizes": [w * 4 for w in c.widths] if c.block == "bottleneck" else list(c.widths),
          "depths": list(c.depths), "layer_type": c.block, "hidden_act": "relu",
          "downsample_in_first_stage": c.downsample_in_first_stage,
          "downsample_in_bottleneck": c.block == "bottleneck" and c.stride_in_1x1}
    if c.num_labels:
        names = c.labels or [f"LABEL_{i}" for i in range(c.num_labels)]
        hf["id2label"] = {str(i): n for i, n in enumerate(names)}
        hf["label2id"] = {n: i for i, n in enumerate(names)}
    return hf


def to_hf(model: ResNet) -> dict[str, torch.Tensor]:
    """A dlforge ResNet's state dict under Hugging Face's names (`resnet.` before the backbone with a head)."""
    prefix = "resnet." if model.config.num_labels else ""
    places = _stage_and_block(model.config.depths)
    out = {}
    for key, tensor in model.state_dict().items():
        match = OUR_BLOCK.fullmatch(key)
        if match:  # conv{K} / bn{K} -> layer.{K-1}.convolution / .normalization; shortcut.0 / .1 the same way
            stage, block = places[int(match[1])]
            part, param = match[2], match[3]
            module = "convolution" if part.startswith("conv") or part == "shortcut.0" else "normalization"
            where = "shortcut" if part.startswith("shortcut") else f"layer.{int(part[-1]) - 1}"
            out[f"{prefix}encoder.stages.{stage}.layers.{block}.{where}.{module}.{param}"] = tensor
        elif key.startswith("head."):
            out["classifier.1." + key.removeprefix("head.")] = tensor
        else:
            for ours, theirs in (("embeddings.conv.", "embedder.embedder.convolution."),
                                 ("embeddings.bn.", "embedder.embedder.normalization.")):
                if key.startswith(ours):
                    out[prefix + theirs + key[len(ours):]] = tensor
    return out


def save_hf_resnet(model: ResNet, directory: str | Path) -> Path:
    """Write config.json + model.safetensors + preprocessor_config.json that transformers' ResNetModel /
    ResNetForImageClassification (and `load_hf_resnet`) load."""
    directory = Path(directory)
    hf_config = config_to_hf(model.config)
    with atomic_directory(directory) as tmp:
        save_state_dict(to_hf(model), tmp / "model.safetensors")
        atomic_write_json(tmp / "config.json", hf_config)
        ImageProcessor.from_config(model.config).save(tmp)
    return directory
