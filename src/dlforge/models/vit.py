"""Vision Transformer (Dosovitskiy et al., 2021): an image is a sequence of patches read by a transformer encoder.

    z_0 = [x_cls; x_1 E; ...; x_N E] + E_pos        (N = (H/P)·(W/P) patches of P×P pixels, E a P×P conv)
    z_l = Block(z_{l-1}),  l = 1..L                  (pre-LN: x + MSA(LN(x)), x + MLP(LN(x)))
    h   = LN(z_L)                                    (= Hugging Face ViTModel's last_hidden_state)
    logits = head(h[:, 0])                           (the [CLS] token, as ViTForImageClassification; or with
                                                     pooling="mean" head(mean of h[:, 1:]), global average pooling)

The blocks are the shared `dlforge.nn.TransformerBlock`, so LoRA and the fine-tuning tools find them by
name (`layers.N.attn.c_attn`, `…attn.c_proj`, `…mlp.c_fc`, `…mlp.c_proj`). The patch convolution, the [CLS]
token and the position embeddings live under `embeddings.` (depth 0 for freeze_below / layer-wise LR decay).

Position embeddings are learned for the grid of `image_size / patch_size` patches. Images of another size
get them interpolated (bicubic over the 2-D grid, the [CLS] position kept), which is exactly what Hugging
Face does with `interpolate_pos_encoding=True`; `resize_position_embeddings` makes that permanent for
fine-tuning at a new resolution. The optional pooler (dense + tanh on [CLS], HF ViTModel's pooler_output) is
only read by `pool`; the head reads the final-LayerNorm [CLS] token (or, with `pooling="mean"`, the mean of the
patch tokens, which HF's ViT classes cannot express). `VIT_PRESETS` holds config shapes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from ..data.processor import check_image_processing
from ..errors import DlforgeError
from ..nn import Linear, StackOutputs, TransformerBlock
from ..nn.blocks import ACTIVATIONS
from ..settings import check_model_config
from .config import ModelConfig
from .outputs import ModelOutput
from .pretrained import PretrainedModel


@dataclass
class ViTConfig(ModelConfig):
    image_size: int = 224  # side of the square images the position embeddings were learned for
    patch_size: int = 16
    channels: int = 3
    hidden_size: int = 768
    n_layer: int = 12
    n_head: int = 12
    intermediate_size: int = 3072
    activation: str = "gelu"  # gelu | gelu_new | relu (Hugging Face-compatible) | swiglu | geglu
    norm_eps: float = 1e-12
    qkv_bias: bool = True  # bias on the query/key/value projection (the other linears always have one)
    dropout: float = 0.0  # embeddings, attention and MLP
    pooler: bool = False  # HF ViTModel's dense + tanh over [CLS] (pooler_output); the head does not use it
    pooling: str = "cls"  # what the head reads: "cls" (the [CLS] token, as HF) or "mean" (the patch tokens' mean)
    head_dropout: float = 0.0  # before the classification head
    num_labels: int = 0  # 0 = backbone only
    labels: list[str] | None = None  # class names in id order
    image_mean: list[float] | None = None  # per-channel normalisation the weights expect; None = [-1, 1] input
    image_std: list[float] | None = None
    # how images are resized and cropped for the weights (`ImageProcessor.settings()`, Hugging Face's
    # preprocessor_config.json names); None = the shorter side to image_size, then the centre square
    preprocessing: dict | None = None

    def __post_init__(self):
        check_model_config(self, at_least_one=("image_size", "patch_size", "channels", "hidden_size", "n_head",
                                                "intermediate_size"))
        if self.patch_size < 1 or self.image_size < self.patch_size:
            raise DlforgeError(f"need 1 <= patch_size <= image_size, got patch_size={self.patch_size}, "
                               f"image_size={self.image_size}")
        for name in ("channels", "hidden_size", "n_layer", "n_head", "intermediate_size"):
            if getattr(self, name) < 1:
                raise DlforgeError(f"ViT {name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.n_head:
            raise DlforgeError(f"hidden_size ({self.hidden_size}) must be divisible by n_head ({self.n_head})")
        if self.activation not in ACTIVATIONS:
            raise DlforgeError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        if self.pooling not in ("cls", "mean"):
            raise DlforgeError(f"pooling must be 'cls' or 'mean', got {self.pooling!r}")
        for name in ("dropout", "head_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise DlforgeError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.num_labels < 0:
            raise DlforgeError(f"num_labels must be >= 0 (0 = no classification head), got {self.num_labels}")
        if self.labels is not None and len(self.labels) != self.num_labels:
            raise DlforgeError(f"{len(self.labels)} label names for num_labels={self.num_labels}: give one name "
                               "per class, or none")
        check_image_processing(self)

    @property
    def grid_size(self) -> int:
        """Patches per side at `image_size`."""
        return self.image_size // self.patch_size


# shapes of well-known ViTs (model config kwargs); override e.g. num_labels when building a model
VIT_PRESETS: dict[str, dict] = {
    # google/vit-base-patch16-224 (ImageNet-21k pretraining, ImageNet-1k fine-tuning): 86 M parameters
    "vit-b/16": dict(image_size=224, patch_size=16, channels=3, hidden_size=768, n_layer=12, n_head=12,
                     intermediate_size=3072, norm_eps=1e-12, num_labels=1000,
                     image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5]),
    # ViT-S/16 (DeiT-S, timm vit_small_patch16_224): 22 M parameters
    "vit-s/16": dict(image_size=224, patch_size=16, channels=3, hidden_size=384, n_layer=12, n_head=6,
                     intermediate_size=1536, norm_eps=1e-6, num_labels=1000),
    # ViT-Ti/16 (DeiT-Ti): 5.7 M parameters
    "vit-ti/16": dict(image_size=224, patch_size=16, channels=3, hidden_size=192, n_layer=12, n_head=3,
                      intermediate_size=768, norm_eps=1e-6, num_labels=1000),
    # MNIST from scratch on a CPU: 7×7 patches of 4×4 pixels + [CLS] = 50 tokens, 0.8 M parameters, about 2 s per
    # batch of 128 on the 2 shared cores (an epoch ≈ 15 min), so a run sees a few epochs: no dropout. Train it with
    # AdamW at ~1e-3 after a warmup (transformers diverge without one)
    "mnist": dict(image_size=28, patch_size=4, channels=1, hidden_size=128, n_layer=6, n_head=4,
                  intermediate_size=256, norm_eps=1e-6, dropout=0.0, num_labels=10,
                  labels=[str(d) for d in range(10)]),
}


class ViTEmbeddings(nn.Module):
    """Patches → tokens, [CLS] prepended, position embeddings added (interpolated for another grid)."""

    def __init__(self, c: ViTConfig):
        super().__init__()
        self.patch_size, self.grid = c.patch_size, c.grid_size
        self.patch_embeddings = nn.Conv2d(c.channels, c.hidden_size, kernel_size=c.patch_size, stride=c.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.hidden_size))
        self.position_embeddings = nn.Parameter(torch.zeros(1, 1 + c.grid_size ** 2, c.hidden_size))
        self.dropout = nn.Dropout(c.dropout)

    def positions_for(self, rows: int, cols: int) -> torch.Tensor:
        """Position embeddings (1, 1 + rows·cols, D) for a rows × cols patch grid: the learned ones at the
        native grid, else interpolated."""
        if (rows, cols) == (self.grid, self.grid):
            return self.position_embeddings
        return self.interpolated_positions(rows, cols)

    def interpolated_positions(self, rows: int, cols: int) -> torch.Tensor:
        """The patch part resized bicubically to rows × cols, [CLS] kept (as HF's interpolate_pos_encoding)."""
        pos = self.position_embeddings
        D = pos.size(-1)
        grid = pos[:, 1:].reshape(1, self.grid, self.grid, D).permute(0, 3, 1, 2)  # (1, D, g, g)
        grid = F.interpolate(grid.float(), size=(rows, cols), mode="bicubic", align_corners=False)
        grid = grid.to(pos.dtype).permute(0, 2, 3, 1).reshape(1, rows * cols, D)  # (1, rows·cols, D)
        return torch.cat([pos[:, :1], grid], dim=1)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.patch_embeddings(pixel_values)  # (B, D, rows, cols)
        rows, cols = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)  # (B, N, D)
        cls = self.cls_token.expand(x.size(0), -1, -1)  # (B, 1, D)
        x = torch.cat([cls, x], dim=1) + self.positions_for(rows, cols)  # (B, 1 + N, D)
        return self.dropout(x)


class ViT(PretrainedModel):
    """ViT encoder + optional pooler + optional linear classification head on the final-LN [CLS] token."""

    kind = "vit"
    config_class = ViTConfig
    log_names: tuple[str, ...] = ()

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.config = c = config
        self.embeddings = ViTEmbeddings(c)
        self.layers = nn.ModuleList([
            TransformerBlock(c.hidden_size, c.n_head, c.intermediate_size, c.activation, "layernorm", c.norm_eps,
                             pre_ln=True, dropout=c.dropout) for _ in range(c.n_layer)])
        if not c.qkv_bias:  # the shared block puts a bias on every linear: drop only the q/k/v one (same name)
            for layer in self.layers:
                layer.attn.c_attn = Linear(c.hidden_size, 3 * c.hidden_size, bias=False)
        self.norm = nn.LayerNorm(c.hidden_size, eps=c.norm_eps)
        self.pooler = Linear(c.hidden_size, c.hidden_size) if c.pooler else None
        self.head_dropout = nn.Dropout(c.head_dropout)
        self.head = Linear(c.hidden_size, c.num_labels) if c.num_labels else None
        self.apply(self._init_weights)
        nn.init.trunc_normal_(self.embeddings.cls_token, std=0.02)
        nn.init.trunc_normal_(self.embeddings.position_embeddings, std=0.02)

    @staticmethod
    def _init_weights(module):
        """As Hugging Face ViT: truncated N(0, 0.02) weights, zero biases, unit LayerNorms."""
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    @property
    def feature_dim(self) -> int:
        return self.config.hidden_size

    def _check(self, pixel_values: torch.Tensor) -> None:
        c = self.config
        if pixel_values.dim() != 4 or pixel_values.size(1) != c.channels:
            raise DlforgeError(f"this ViT takes images of shape (B, {c.channels}, H, W), got "
                               f"{tuple(pixel_values.shape)}")
        if min(pixel_values.shape[-2:]) < c.patch_size:
            raise DlforgeError(f"images of {tuple(pixel_values.shape[-2:])} pixels are smaller than one "
                               f"{c.patch_size}×{c.patch_size} patch")

    def encode(self, pixel_values: torch.Tensor, outputs: StackOutputs | None = None) -> torch.Tensor:
        """Final-LayerNorm hidden states (B, 1 + N, D), [CLS] first (HF ViTModel's last_hidden_state).
        Images of another size than config.image_size use interpolated position embeddings. `outputs` collects
        every layer's states (before the final LayerNorm, as HF's ViT reports them) and attentions."""
        self._check(pixel_values)
        x = self.embeddings(pixel_values.to(self.embeddings.patch_embeddings.weight.dtype))  # (B, 1 + N, D)
        outputs = outputs if outputs is not None else StackOutputs()  # collects nothing unless asked
        outputs.add_hidden_state(x)
        for layer in self.layers:
            x = layer(x, outputs=outputs)
            outputs.add_hidden_state(x)
        return self.norm(x)

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The vector the head reads (B, D): the final-LayerNorm [CLS] token, or with pooling="mean" the mean of
        the final-LayerNorm patch tokens (global average pooling, as a CNN's head reads its feature map)."""
        return self.pool_hidden(self.encode(pixel_values))

    def pool_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """`features` from the hidden states (B, 1 + N, D) that `encode` returned: (B, D)."""
        return hidden[:, 1:].mean(dim=1) if self.config.pooling == "mean" else hidden[:, 0]

    def classify(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> ModelOutput:
        """The head on pooled features (B, D): logits (B, num_labels), and the cross-entropy loss with labels."""
        logits = self.head(self.head_dropout(features))  # (B, num_labels)
        loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
        return ModelOutput(loss=loss, logits=logits)

    def pool(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """tanh(dense([CLS])) (B, D), HF ViTModel's pooler_output; needs config.pooler."""
        if self.pooler is None:
            raise DlforgeError("this ViT has no pooler (config.pooler=False): use features() for the [CLS] vector")
        return self._pooler_output(self.encode(pixel_values))

    def _pooler_output(self, hidden: torch.Tensor) -> torch.Tensor:
        """tanh(dense(h[:, 0])) (B, D) from the final hidden states (B, 1 + N, D)."""
        return torch.tanh(self.pooler(hidden[:, 0]))

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None,
                output_hidden_states: bool = False, output_attentions: bool = False) -> ModelOutput:
        """pixel_values (B, C, H, W), normalised; labels (B,) class ids. With a head: logits (B, num_labels) and,
        with labels, the cross-entropy loss. A backbone (num_labels=0) returns HF ViTModel's fields:
        last_hidden_state (B, 1 + N, D) and, with config.pooler, pooler_output (B, D).
        output_hidden_states / output_attentions add every layer's states / attention probabilities."""
        if self.head is None and labels is not None:
            raise DlforgeError("this model has no classification head: give num_labels (or call "
                               "with_head(num_labels)) to train a classifier")
        outputs = StackOutputs(output_hidden_states, output_attentions)
        hidden = self.encode(pixel_values, outputs)
        if self.head is None:
            pooled = self._pooler_output(hidden) if self.pooler is not None else None
            return ModelOutput(last_hidden_state=hidden, pooler_output=pooled, **outputs.fields())
        return replace(self.classify(self.pool_hidden(hidden), labels), **outputs.fields())

    @torch.no_grad()
    def predict(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Predicted class ids (B,)."""
        return self(pixel_values).logits.argmax(dim=-1)

    def with_head(self, num_labels: int, labels: list[str] | None = None) -> ViT:
        """Put a freshly initialised Linear(hidden, num_labels) head on the backbone (0 = remove the head)."""
        self.config = replace(self.config, num_labels=num_labels, labels=labels)
        like = self.embeddings.cls_token
        self.head = None
        if num_labels:
            self.head = Linear(self.config.hidden_size, num_labels).to(device=like.device, dtype=like.dtype)
            self._init_weights(self.head)
        return self

    @torch.no_grad()
    def resize_position_embeddings(self, image_size: int) -> ViT:
        """Interpolate the position embeddings to the grid of `image_size` for good (fine-tuning at a new
        resolution); config.image_size becomes image_size."""
        config = replace(self.config, image_size=image_size)  # validates
        emb = self.embeddings
        trainable = emb.position_embeddings.requires_grad
        emb.position_embeddings = nn.Parameter(emb.positions_for(config.grid_size, config.grid_size).clone(),
                                               requires_grad=trainable)
        emb.grid = config.grid_size
        self.config = config
        return self
