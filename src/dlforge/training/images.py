"""Image-model training recipe: images -> autoencoder / VAE / GAN / diffusion model / classifier -> Trainer.

This is what `dlforge train ae|vae|gan|diffusion|classifier` runs, and what Python users call as
`train_image_model(kind, data, out, ...)`. The data is an MNIST IDX folder, a folder of images (one sub-folder per
class) or `sklearn-digits` (see `dlforge.data.images`). The model's resolution, channels and classes come from the
data unless `--set image_size=...` asks for another size.

Every family trains on the same Trainer. At every evaluation the model's `preview` (reconstructions, or samples
from a fixed noise batch, EMA weights when enabled) is written to `samples/step-<step>.png` and `samples.png`.
GANs and diffusion models keep their latest weights as `checkpoints/best` (their validation loss does not rank
sample quality); the others keep the lowest validation loss (the classifier: the highest accuracy).
"""

from __future__ import annotations

import importlib
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from ..data.class_names import ClassNames
from ..data.images import ImageBatches, ImageSet, check_affine_augmentation, load_image_set, save_grid, select_classes
from ..data.processor import ImageProcessor
from ..errors import DlforgeError
from ..io import atomic_write_json, atomic_write_with
from ..models import load_pretrained
from ..models.gan import DCGAN_TRAIN_SETTINGS
from ..settings import setting_types
from .distill import FeatureMapDistiller
from .distributed import init_distributed
from .lm import split_settings
from .trainer import EvalMetric, TrainConfig, Trainer, check_model_fits, open_run, resolve_device

log = logging.getLogger(__name__)

# family -> (module, model class, config class) under dlforge.models, imported when used
FAMILIES = {
    "ae": ("autoencoder", "Autoencoder", "AutoencoderConfig"),
    "vae": ("autoencoder", "VAE", "AutoencoderConfig"),
    "gan": ("gan", "GAN", "GANConfig"),
    "diffusion": ("unet", "DiffusionModel", "DiffusionConfig"),
    "classifier": ("small_cnn", "ImageClassifier", "ImageClassifierConfig"),
    "vit": ("vit", "ViT", "ViTConfig"),
    "resnet": ("resnet", "ResNet", "ResNetConfig"),
}
# backbones for transfer learning: trained as classifiers on pixel_values; `only_classes` makes a smaller label set
VISION_FAMILIES = ("vit", "resnet")
LATEST_IS_BEST = ("gan", "diffusion")
CONDITIONAL_FAMILIES = ("gan", "diffusion")  # may take class labels; the classifier always does


@dataclass
class ImageDataConfig:
    image_size: int | None = None  # default: the data's own size (MNIST 28, digits 8, a folder's shared size)
    channels: int | None = None  # default: the data's (1 for grayscale folders, else 3)
    conditional: bool = True  # GAN/diffusion: condition on the class labels when the data has them
    flip: bool = False  # random horizontal flips (not for digits)
    crop_padding: int = 0  # random translations by up to this many pixels
    rotate: float = 0.0  # random rotations by up to this many degrees
    scale: float = 0.0  # random zooms by a factor in [1 - scale, 1 + scale]
    val_fraction: float = 0.05  # held out from the training split for validation
    eval_images: int = 2000  # validation images per evaluation
    preview_images: int = 64  # images in each sample grid
    only_classes: str | None = None  # train on these classes only, comma-separated names (e.g. a "normal" digit)

    def __post_init__(self):
        if self.image_size is not None and self.image_size < 8:
            raise DlforgeError(f"image_size must be >= 8, got {self.image_size}")
        if self.channels not in (None, 1, 3):
            raise DlforgeError(f"channels must be 1 or 3, got {self.channels}")
        check_affine_augmentation(self.rotate, self.scale)
        if not 0 < self.val_fraction < 1:
            raise DlforgeError(f"val_fraction must be in (0, 1), got {self.val_fraction}")


_COMMON = dict(eval_interval=500, log_interval=20)
# family -> preset -> settings (model, data and training fields). `mnist` presets are the recipes measured in
# benchmarks/RESULTS.md on the 2-core CPU; `tiny` ones are for smoke tests.
PRESETS: dict[str, dict[str, dict]] = {
    "ae": {
        "tiny": dict(architecture="conv", latent_dim=8, base_channels=8, batch_size=32, lr=2e-3, max_steps=100,
                     warmup_steps=10, eval_interval=50, log_interval=10, eval_images=256, weight_decay=0.0),
        "mnist": dict(architecture="conv", latent_dim=32, batch_size=128, lr=1e-3, max_steps=3000, warmup_steps=100,
                      weight_decay=0.0, **_COMMON),
    },
    "vae": {
        "tiny": dict(architecture="mlp", latent_dim=8, hidden_sizes=[64], likelihood="bernoulli", batch_size=32,
                     lr=2e-3, max_steps=100, warmup_steps=10, eval_interval=50, log_interval=10, eval_images=256,
                     weight_decay=0.0),
        "mnist": dict(architecture="mlp", latent_dim=50, likelihood="bernoulli", binarize="dynamic",
                      batch_size=128, lr=1e-3, max_steps=30000, warmup_steps=200, weight_decay=0.0,
                      eval_interval=1000, log_interval=50),
    },
    "gan": {  # the published DCGAN optimiser settings (Adam 2e-4, β1 0.5, constant LR, batch 128)
        "tiny": dict(DCGAN_TRAIN_SETTINGS, latent_dim=16, batch_size=32, max_steps=60, eval_interval=30,
                     log_interval=10, eval_images=64),
        "mnist": dict(DCGAN_TRAIN_SETTINGS, max_steps=20000, eval_interval=500, log_interval=20, eval_images=512),
    },
    "diffusion": {
        "tiny": dict(base_channels=16, batch_size=32, lr=1e-3, max_steps=100, warmup_steps=10, eval_interval=50,
                     log_interval=10, eval_images=128, preview_images=16, weight_decay=0.0),
        # widths 32/64/64 (1.7 M parameters): about 1 s per batch of 128 on 2 cores, so ~2,800 steps in 45 minutes;
        # a short run, hence no dropout and a short EMA (half-life ~140 steps)
        "mnist": dict(base_channels=32, dropout=0.0, batch_size=128, lr=1e-3, min_lr=1e-4, max_steps=20000,
                      warmup_steps=200, weight_decay=0.0, ema_decay=0.995, eval_interval=500, log_interval=20,
                      eval_images=1000),
    },
    # backbones for transfer learning (benchmarks/bench_vision_transfer.py pretrains them on digits 0-4)
    "resnet": {
        "tiny": dict(block="basic", depths=[1, 1], widths=[8, 16], stem="small", batch_size=32, lr=2e-3,
                     max_steps=60, warmup_steps=10, eval_interval=30, log_interval=10, eval_images=128),
        "mnist": dict(block="basic", depths=[1, 1, 1], widths=[32, 64, 128], stem="small", batch_size=128, lr=2e-3,
                      min_lr=1e-5, max_steps=2000, warmup_steps=100, weight_decay=0.05, crop_padding=2, **_COMMON),
    },
    "vit": {  # 4×4 patches of 28×28 digits: 49 tokens + [CLS]; dropout and translations: a ViT lacks a CNN's prior
        "tiny": dict(patch_size=7, hidden_size=32, n_layer=2, n_head=2, intermediate_size=64, batch_size=32,
                     lr=2e-3, max_steps=60, warmup_steps=10, eval_interval=30, log_interval=10, eval_images=128),
        "mnist": dict(patch_size=4, hidden_size=128, n_layer=6, n_head=4, intermediate_size=256, norm_eps=1e-6,
                      dropout=0.1, batch_size=128, lr=1e-3, min_lr=1e-5, max_steps=4000, warmup_steps=200,
                      weight_decay=0.05, crop_padding=2, **_COMMON),
    },
    "classifier": {
        "tiny": dict(batch_size=32, lr=2e-3, max_steps=100, warmup_steps=10, eval_interval=50, log_interval=10,
                     eval_images=256),
        "mnist": dict(batch_size=128, lr=2e-3, min_lr=1e-5, max_steps=2500, warmup_steps=100, weight_decay=0.05,
                      crop_padding=2, **_COMMON),
    },
}


def family_classes(kind: str) -> tuple[type, type]:
    """(model class, config class) of a family name."""
    if kind not in FAMILIES:
        raise DlforgeError(f"unknown image model kind {kind!r}: choose one of {', '.join(FAMILIES)}")
    module_name, model_name, config_name = FAMILIES[kind]
    module = importlib.import_module(f"dlforge.models.{module_name}")
    return getattr(module, model_name), getattr(module, config_name)


def field_types(kind: str) -> dict[str, type]:
    """The keys `--set` accepts for a family (its model config, the data settings, the Trainer's), with types."""
    _, config_class = family_classes(kind)
    return setting_types(config_class, ImageDataConfig, TrainConfig, exclude={"num_classes", "num_labels", "labels"})


def resolve_settings(kind: str, preset: str, overrides: dict) -> tuple[dict, dict, dict]:
    """preset + overrides -> (model config kwargs, ImageDataConfig kwargs, TrainConfig kwargs)."""
    presets = PRESETS[kind]
    if preset not in presets:
        raise DlforgeError(f"unknown {kind} preset {preset!r}: choose one of {', '.join(presets)}")
    _, config_class = family_classes(kind)
    settings = {**presets[preset], **overrides}
    data_fields = {f.name for f in fields(ImageDataConfig)}
    model, train = split_settings({k: v for k, v in settings.items() if k not in data_fields}, config_class)
    data = {k: v for k, v in settings.items() if k in data_fields}
    return model, data, train


def load_run_data(run: dict) -> ImageSet:
    """The training images of a run (all classes), at the run's resolution and channels."""
    data = ImageDataConfig(**run["data_settings"])
    return load_image_set(run["data"], "train", data.image_size, data.channels)


def run_batches(run: dict, train_set: ImageSet, use_labels: bool) -> ImageBatches:
    """The run's batch source: its classes, validation split and augmentation, from run.json alone."""
    data, train = ImageDataConfig(**run["data_settings"]), TrainConfig(**run["train"])
    train_set = select_classes(train_set, data.only_classes)
    if not use_labels:
        train_set = ImageSet(train_set.images, None, None, train_set.source)
    return ImageBatches(train_set, train.batch_size, seed=train.seed, grad_accum=train.grad_accum,
                        val_fraction=data.val_fraction, flip=data.flip, crop_padding=data.crop_padding,
                        rotate=data.rotate, scale=data.scale,
                        eval_images=data.eval_images)


def _model_config(kind: str, run: dict, train_set: ImageSet):
    """The family's config with the data's resolution, channels and (when conditional) number of classes."""
    _, config_class = family_classes(kind)
    data = ImageDataConfig(**run["data_settings"])
    classifier = kind == "classifier" or kind in VISION_FAMILIES
    num_classes = train_set.num_classes if (classifier or (kind in CONDITIONAL_FAMILIES and data.conditional)) else 0
    if classifier and not num_classes:
        raise DlforgeError(f"{run['data']} has no class labels: a classifier needs one sub-folder per class")
    if kind in VISION_FAMILIES:
        return config_class(**run["model"], image_size=train_set.image_size, channels=train_set.channels,
                            num_labels=num_classes, labels=list(train_set.classes))
    return config_class(**run["model"], image_size=train_set.image_size, channels=train_set.channels,
                        num_classes=num_classes)


def _accuracy(output, batch) -> tuple[float, float]:
    correct = (output.logits.argmax(-1) == batch["labels"]).sum().item()
    return correct, batch["labels"].numel()


def write_preview(trainer: Trainer, images: torch.Tensor, labels: torch.Tensor | None, path: Path, seed: int) -> None:
    """The model's preview (EMA weights when the run keeps them) as a PNG grid (none for vision backbones)."""
    model = trainer.model
    if not hasattr(model, "preview"):
        return
    was_training = model.training
    model.eval()
    if trainer.ema is not None:
        trainer.ema.swap(model)
    try:
        grid = model.preview(images.to(trainer.device), None if labels is None else labels.to(trainer.device), seed)
    finally:
        if trainer.ema is not None:
            trainer.ema.swap(model)
        model.train(was_training)
    if grid is not None:
        nrow = getattr(model, "preview_nrow", None) or (8 if len(grid) % 8 == 0 else None)  # GAN: a class per column
        save_grid(grid, path, nrow=nrow, scale=max(1, 128 // grid.shape[-1]))


def load_teacher(teacher: dict, config):
    """The teacher network of run.json's {"path", "weight"}, checked against the ViT's config."""
    if not Path(teacher["path"]).exists():
        raise DlforgeError(f"teacher {teacher['path']} not found: give a `dlforge train resnet` run or model folder")
    network, _ = load_pretrained(teacher["path"])
    size = getattr(network.config, "image_size", None)
    if size is not None and size != config.image_size:
        raise DlforgeError(f"the teacher was trained on {size}×{size} images, this ViT trains on "
                           f"{config.image_size}×{config.image_size}: train both at the same size")
    return network


def train_image_model(kind: str, data: str | Path | None, out: str | Path, preset: str = "mnist",
                      overrides: dict | None = None, resume: bool = False, seed: int | None = None,
                      overwrite: bool = False,
                      on_eval: Callable | None = None, progress: bool = True, teacher: str | Path | None = None,
                      teacher_weight: float | None = None) -> dict:
    """Train (or resume) an image model of family `kind`; returns the Trainer's final metrics.

    `teacher` (a ViT only): a convolutional network whose last feature map the ViT's patch tokens learn to predict
    beside the labels, with `teacher_weight` (default 1.0) on that loss (`dlforge.transfer.FeatureMapDistiller`)."""
    out = Path(out)
    model_class, _ = family_classes(kind)
    if teacher_weight is not None and teacher is None:
        raise DlforgeError("--teacher-weight needs --teacher: the network whose feature map the ViT learns")
    if teacher is not None and kind != "vit":
        raise DlforgeError(f"--teacher is for `dlforge train vit`, not {kind}: a ViT's patch tokens learn the "
                           "teacher's feature map")
    run = open_run(out, resume, what=f"{kind} run", overrides=overrides, overwrite=overwrite,
                   required={"data": str, "model": dict, "data_settings": dict, "train": dict})
    if run is not None and teacher is not None:
        raise DlforgeError("--resume continues with the run's own teacher (in run.json): leave --teacher out")
    if run is None:
        if data is None:
            raise DlforgeError("--data is required: an MNIST IDX folder, a folder of images, or sklearn-digits")
        model_kwargs, data_kwargs, train_kwargs = resolve_settings(kind, preset, overrides or {})
        if seed is not None:
            train_kwargs["seed"] = seed
        ImageDataConfig(**data_kwargs)
        TrainConfig(**train_kwargs)
        data_path = str(data) if str(data) == "sklearn-digits" else str(Path(data).resolve())
        run = {"kind": kind, "data": data_path, "preset": preset, "model": model_kwargs,
               "data_settings": data_kwargs, "train": train_kwargs}
        if teacher is not None:
            run["teacher"] = {"path": str(Path(teacher).resolve()),
                              "weight": 1.0 if teacher_weight is None else teacher_weight}
    elif run.get("kind") != kind:
        raise DlforgeError(f"{out} holds a {run.get('kind')} run, not a {kind} run: resume it with "
                           f"`dlforge train {run.get('kind')} --out {out} --resume`")
    train_config = TrainConfig(**run["train"])
    data_config = ImageDataConfig(**run["data_settings"])
    train_set = load_run_data(run)
    if not resume:  # the size chosen from the data is kept, so a resume never depends on the default again
        chosen = "set" if run["data_settings"].get("image_size") else "the data's own size"
        run["data_settings"]["image_size"] = train_set.image_size
        log.info(f"images: {train_set.image_size}x{train_set.image_size}, {train_set.channels} channel(s), "
                 f"{len(train_set)} for training ({chosen}; --set image_size=N for another)")
    if kind in VISION_FAMILIES:  # a backbone pretrained on some classes knows just those
        train_set = select_classes(train_set, data_config.only_classes, relabel=True)
    config = _model_config(kind, run, train_set)
    if not resume:  # the model these settings make (at the data's size) must fit in memory
        check_model_fits(lambda: model_class(config), f"this {kind} model",
                         "choose smaller sizes with --set (widths, channels, layers, image_size)")
    use_labels = kind in VISION_FAMILIES or config.num_classes > 0
    batches = run_batches(run, train_set, use_labels)
    if kind in VISION_FAMILIES:
        batches.input_name = "pixel_values"
    teacher_network = load_teacher(run["teacher"], config) if "teacher" in run else None  # before any file is written
    dist = init_distributed(resolve_device(train_config.device).type)
    if dist.is_main and not resume:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "run.json", run)
    torch.manual_seed(train_config.seed)
    model = model_class(config)
    # with a teacher the Trainer trains the ViT inside the distiller; checkpoints hold the ViT alone
    trainable = model if teacher_network is None else FeatureMapDistiller(model, teacher_network,
                                                                          run["teacher"]["weight"])
    n_preview = min(data_config.preview_images, len(batches.validation))
    preview_images = batches._batch(batches.validation, torch.arange(n_preview))
    preview_labels = preview_images.get("labels")

    def after_eval(trainer: Trainer, metrics: dict) -> None:
        path = out / "samples" / f"step-{metrics['step']:07d}.png"
        write_preview(trainer, preview_images[batches.input_name], preview_labels, path, train_config.seed)
        if path.is_file():
            atomic_write_with(out / "samples.png", lambda tmp: shutil.copyfile(path, tmp))
        if on_eval is not None:
            on_eval(trainer, metrics)

    eval_metric = EvalMetric("accuracy", _accuracy) if kind == "classifier" or kind in VISION_FAMILIES else None
    # saved beside every checkpoint: a backbone's preprocessor_config.json (its labels are in its config), or
    # the class names of the other families
    beside = (ImageProcessor.from_config(config) if kind in VISION_FAMILIES
              else ClassNames(train_set.classes if use_labels else None))
    trainer = Trainer(trainable, train_config, batches, out, tokenizer=beside,
                      on_eval=after_eval, progress=progress, eval_metric=eval_metric,
                      latest_is_best=kind in LATEST_IS_BEST)
    return trainer.fit(resume=resume)
