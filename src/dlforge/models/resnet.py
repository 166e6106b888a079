"""ResNet image classifiers (He et al., 2016): residual blocks with batch norm, the standard vision backbone.

    stem     "imagenet": conv 7×7/2 → BN → ReLU → max-pool 3×3/2   (H/4;  ImageNet-sized images)
             "small":    conv 3×3/1 → BN → ReLU                    (H;    28×28 / 32×32 images)
    stage s  depths[s] blocks of width widths[s]; the first block of every stage after the first halves H, W
    pool     global average over H, W → features (B, hidden)  → dropout → linear = logits (B, num_labels)

    basic block       x → conv3×3/s → BN → ReLU → conv3×3 → BN → + shortcut(x) → ReLU          (out = width)
    bottleneck block  x → conv1×1 → BN → ReLU → conv3×3/s → BN → ReLU → conv1×1 → BN → + shortcut(x) → ReLU
                                                                                        (out = 4 · width)

The bottleneck puts the stride on its 3×3 convolution ("ResNet v1.5", as torchvision and timm; the paper's v1
strides the first 1×1: `stride_in_1x1`). The shortcut is the identity, or a projection (conv 1×1/s → BN) when the
block changes the shape. depths [2,2,2,2] / [3,4,6,3] with basic blocks are ResNet-18 / -34, [3,4,6,3] with
bottlenecks ResNet-50 (RESNET_PRESETS). Convolutions start Kaiming-normal (fan_out, ReLU), BN at gain 1 / shift 0;
`zero_init_residual` starts each block's last BN gain at 0 so every block begins as the identity.

Names follow dlforge's vision protocol: the stem is `embeddings`, all blocks of all stages are one flat list
`layers` (top-k fine-tuning and layer-wise LR decay count blocks), the classifier is `head`. BatchNorm layers whose
parameters are all frozen stay in eval mode under `model.train()`, so feature extraction and top-k fine-tuning
do not move the frozen layers' running statistics (freeze first, then call `train()`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from ..data.processor import check_image_processing
from ..errors import DlforgeError
from ..settings import check_model_config
from .config import ModelConfig
from .outputs import ModelOutput
from .pretrained import PretrainedModel

BLOCKS = ("basic", "bottleneck")
STEMS = ("imagenet", "small")
EXPANSION = {"basic": 1, "bottleneck": 4}
IMAGENET_MEAN = [0.485, 0.456, 0.406]  # what torchvision / timm / microsoft ResNet weights expect on [0, 1] pixels
IMAGENET_STD = [0.229, 0.224, 0.225]

_IMAGENET_SHAPE = dict(stem="imagenet", image_size=224, channels=3, widths=[64, 128, 256, 512])
RESNET_PRESETS: dict[str, dict] = {
    "resnet18": dict(block="basic", depths=[2, 2, 2, 2], **_IMAGENET_SHAPE),  # 11.7 M params with 1000 classes
    "resnet34": dict(block="basic", depths=[3, 4, 6, 3], **_IMAGENET_SHAPE),  # 21.8 M
    "resnet50": dict(block="bottleneck", depths=[3, 4, 6, 3], **_IMAGENET_SHAPE),  # 25.6 M
    # 28×28 grayscale digits: 0.31 M params, ~37 M multiply-adds per image (2× the VGG-style ImageClassifier)
    "mnist": dict(block="basic", depths=[1, 1, 1], widths=[32, 64, 128], stem="small", image_size=28, channels=1,
                  num_labels=10, labels=[str(i) for i in range(10)]),
}


@dataclass
class ResNetConfig(ModelConfig):
    block: str = "basic"  # basic | bottleneck
    depths: list[int] = field(default_factory=lambda: [2, 2, 2, 2])  # blocks per stage
    widths: list[int] = field(default_factory=lambda: [64, 128, 256, 512])  # per stage; bottleneck outputs 4×
    stem: str = "imagenet"  # imagenet (7×7/2 conv + max-pool) | small (3×3/1 conv, no pool)
    stem_width: int | None = None  # channels the stem makes; None = widths[0]
    image_size: int = 224  # the size the weights were trained at (any size runs: the pool is global)
    channels: int = 3
    num_labels: int = 0  # 0 = backbone only (no head)
    labels: list[str] | None = None  # class names in id order
    image_mean: list[float] | None = None  # per channel on [0, 1] pixels; None = images scaled to [-1, 1]
    image_std: list[float] | None = None
    # how images are resized and cropped for the weights (`ImageProcessor.settings()`, Hugging Face's
    # preprocessor_config.json names); None = the shorter side to image_size, then the centre square
    preprocessing: dict | None = None
    dropout: float = 0.0  # before the head
    zero_init_residual: bool = False  # each block's last BN gain starts at 0
    stride_in_1x1: bool = False  # bottleneck: stride on the first 1×1 conv (ResNet v1) instead of the 3×3 (v1.5)
    downsample_in_first_stage: bool = False  # the first stage halves H, W too (Hugging Face's flag)

    def __post_init__(self):
        check_model_config(self, at_least_one=("image_size", "channels"))
        if self.block not in BLOCKS:
            raise DlforgeError(f"ResNet block must be one of {', '.join(BLOCKS)}, got {self.block!r}")
        if self.stem not in STEMS:
            raise DlforgeError(f"ResNet stem must be one of {', '.join(STEMS)}, got {self.stem!r}")
        self.depths, self.widths = list(self.depths), list(self.widths)  # own copies (presets share lists)
        for name in ("labels", "image_mean", "image_std"):
            if getattr(self, name) is not None:
                setattr(self, name, list(getattr(self, name)))
        if not self.depths or len(self.depths) != len(self.widths):
            raise DlforgeError(f"ResNet depths and widths need one entry per stage (same length, at least one), "
                               f"got depths {self.depths} and widths {self.widths}")
        if min(self.depths) < 1 or min(self.widths) < 1:
            raise DlforgeError(f"ResNet depths and widths must be >= 1, got depths {self.depths}, "
                               f"widths {self.widths}")
        for name in ("image_size", "channels"):
            if getattr(self, name) < 1:
                raise DlforgeError(f"ResNet {name} must be >= 1, got {getattr(self, name)}")
        if self.stem_width is not None and self.stem_width < 1:
            raise DlforgeError(f"ResNet stem_width must be >= 1 (or None for widths[0]), got {self.stem_width}")
        if self.num_labels < 0:
            raise DlforgeError(f"num_labels must be >= 0 (0 = no head), got {self.num_labels}")
        if self.labels is not None and len(self.labels) != self.num_labels:
            raise DlforgeError(f"{len(self.labels)} label names for num_labels={self.num_labels}: "
                               "give one name per class")
        check_image_processing(self)
        if not 0.0 <= self.dropout < 1.0:
            raise DlforgeError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def hidden_size(self) -> int:
        """Size of the pooled features the head reads: the last stage's output channels."""
        return self.widths[-1] * EXPANSION[self.block]

    @classmethod
    def preset(cls, name: str, **overrides) -> ResNetConfig:
        """A config from RESNET_PRESETS, e.g. `ResNetConfig.preset("resnet50", num_labels=1000)`."""
        if name not in RESNET_PRESETS:
            raise DlforgeError(f"unknown ResNet preset {name!r}: choose one of {', '.join(RESNET_PRESETS)}")
        return cls(**{**RESNET_PRESETS[name], **overrides})


def conv(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False)


class Stem(nn.Module):
    def __init__(self, c: ResNetConfig, width: int):
        super().__init__()
        big = c.stem == "imagenet"
        self.conv = conv(c.channels, width, 7 if big else 3, stride=2 if big else 1)
        self.bn = nn.BatchNorm2d(width)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1) if big else nn.Identity()

    def forward(self, x):  # (B, C, H, W) -> (B, width, H/4, W/4) or (B, width, H, W)
        return self.pool(F.relu(self.bn(self.conv(x)), inplace=True))


def projection(c_in: int, c_out: int, stride: int) -> nn.Module | None:
    """conv 1×1/stride → BN where the block changes the shape, else None (identity shortcut)."""
    if stride == 1 and c_in == c_out:
        return None
    return nn.Sequential(conv(c_in, c_out, 1, stride), nn.BatchNorm2d(c_out))


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, width: int, stride: int, stride_in_1x1: bool = False):
        super().__init__()
        self.conv1, self.bn1 = conv(c_in, width, 3, stride), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = conv(width, width, 3), nn.BatchNorm2d(width)
        self.shortcut = projection(c_in, width, stride)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x):  # (B, c_in, H, W) -> (B, width, H/s, W/s)
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        out += x if self.shortcut is None else self.shortcut(x)  # in place: no new (B, C, H, W) tensor per block
        return F.relu(out, inplace=True)


class Bottleneck(nn.Module):
    def __init__(self, c_in: int, width: int, stride: int, stride_in_1x1: bool = False):
        super().__init__()
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1, self.bn1 = conv(c_in, width, 1, s1), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = conv(width, width, 3, s3), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = conv(width, 4 * width, 1), nn.BatchNorm2d(4 * width)
        self.shortcut = projection(c_in, 4 * width, stride)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x):  # (B, c_in, H, W) -> (B, 4·width, H/s, W/s)
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        out = self.bn3(self.conv3(out))
        out += x if self.shortcut is None else self.shortcut(x)
        return F.relu(out, inplace=True)


class ResNet(PretrainedModel):
    """Stem (`embeddings`) → residual blocks (`layers`) → global average pool → dropout → `head`."""

    kind = "resnet"
    config_class = ResNetConfig
    log_names: tuple[str, ...] = ()

    def __init__(self, config: ResNetConfig):
        super().__init__()
        self.config = c = config
        c_in = c.stem_width or c.widths[0]
        self.embeddings = Stem(c, c_in)
        block_class = BasicBlock if c.block == "basic" else Bottleneck
        blocks = []
        for stage, (depth, width) in enumerate(zip(c.depths, c.widths)):
            for i in range(depth):
                first = i == 0 and (stage > 0 or c.downsample_in_first_stage)
                blocks.append(block_class(c_in, width, 2 if first else 1, c.stride_in_1x1))
                c_in = width * EXPANSION[c.block]
        self.layers = nn.ModuleList(blocks)
        self.dropout = nn.Dropout(c.dropout)
        self.head = nn.Linear(c.hidden_size, c.num_labels) if c.num_labels else None
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if c.zero_init_residual:
            for block in self.layers:
                nn.init.zeros_(block.last_bn.weight)

    @property
    def feature_dim(self) -> int:
        return self.config.hidden_size

    def train(self, mode: bool = True):
        """As nn.Module.train, but BatchNorm layers with all parameters frozen stay in eval mode."""
        super().train(mode)
        if mode:
            for module in self.modules():
                params = list(module.parameters(recurse=False))
                if isinstance(module, nn.BatchNorm2d) and params and not any(p.requires_grad for p in params):
                    module.eval()
        return self

    def _check(self, pixel_values):
        if pixel_values.dim() != 4 or pixel_values.size(1) != self.config.channels:
            raise DlforgeError(f"this ResNet takes images of shape (B, {self.config.channels}, H, W), "
                               f"got {tuple(pixel_values.shape)}")

    def feature_map(self, pixel_values, hidden_states: list | None = None) -> torch.Tensor:
        """The last stage's activations (B, hidden, H', W') of normalised images (B, C, H, W). `hidden_states`, a
        list, receives the stem's output and each stage's (HF ResNetModel's hidden_states)."""
        self._check(pixel_values)
        if pixel_values.device.type == "cpu" and not torch.is_grad_enabled():
            # oneDNN's convolutions run fastest on channels-last activations: CPU inference of ResNet-50 (batch 8,
            # 224²) takes 25 % less time in fp32 and 30 % less under bf16 autocast (RESULTS.md §21). The weights stay
            # as they are: the layout follows the input through every layer.
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        x = self.embeddings(pixel_values)  # (B, stem_width, H/4, W/4) with the imagenet stem
        stage_ends = set(itertools.accumulate(self.config.depths))  # block counts after which a stage is done
        if hidden_states is not None:
            hidden_states.append(x)
        for i, block in enumerate(self.layers, start=1):
            x = block(x)
            if hidden_states is not None and i in stage_ends:
                hidden_states.append(x)
        return x

    def features(self, pixel_values) -> torch.Tensor:
        """Globally average-pooled last feature map (B, hidden): what the head reads."""
        return self.feature_map(pixel_values).mean(dim=(2, 3))

    def forward(self, pixel_values, labels=None, output_hidden_states: bool = False) -> ModelOutput:
        """pixel_values (B, C, H, W) normalised; labels (B,) class ids or None. With a head: logits (B, num_labels)
        and, with labels, the cross-entropy loss. A backbone (num_labels=0) returns HF ResNetModel's fields:
        last_hidden_state, the last feature map (B, hidden, H', W'), and pooler_output, its average (B, hidden, 1, 1).
        output_hidden_states adds the stem's and every stage's output."""
        if self.head is None and labels is not None:
            raise DlforgeError("this model has no classification head: put one on with "
                               "model.with_head(num_labels) before training it on labels")
        hidden = [] if output_hidden_states else None
        fmap = self.feature_map(pixel_values, hidden)  # (B, hidden, H', W')
        pooled = fmap.mean(dim=(2, 3), keepdim=True)  # (B, hidden, 1, 1)
        hidden_states = tuple(hidden) if hidden is not None else None
        if self.head is None:
            return ModelOutput(last_hidden_state=fmap, pooler_output=pooled, hidden_states=hidden_states)
        logits = self.head(self.dropout(pooled.flatten(1)))  # (B, num_labels)
        loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
        return ModelOutput(loss=loss, logits=logits, hidden_states=hidden_states)

    def with_head(self, num_labels: int, labels: list[str] | None = None) -> ResNet:
        """Replace the head by a freshly initialised Linear(hidden, num_labels) (0: remove it)."""
        self.config = replace(self.config, num_labels=num_labels, labels=labels)  # validates
        ref = next(self.parameters())
        self.head = (nn.Linear(self.feature_dim, num_labels).to(ref.device, ref.dtype) if num_labels else None)
        return self
