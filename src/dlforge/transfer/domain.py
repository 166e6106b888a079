"""Unsupervised domain adaptation by backpropagation: DANN (Ganin & Lempitsky, 2015; Ganin et al., JMLR 2016).

A classifier trained on labelled *source* images often fails on a shifted *target* domain (another scanner, font,
resolution) of which there are images but no labels. DANN trains the feature extractor G_f so that its features
predict the source labels and do not tell the domains apart:

    E(θ_f, θ_y, θ_d) = L_y(G_y(G_f(x_s)), y_s) + L_d(G_d(R_λ(G_f(x))), d),    x ∈ source ∪ target

L_y is the task head's cross-entropy on source images; L_d the binary cross-entropy of a domain classifier G_d (an
MLP: features → hidden → hidden → 1 logit; d = 0 for source, 1 for target). R_λ is the gradient reversal layer:
the identity forward, −λ·grad backward, so one optimizer step descends L_y + L_d in θ_y, θ_d and L_y − λ·L_d in θ_f
(features good for the task and domain-invariant). λ rises from 0 to 1 as

    λ_p = 2 / (1 + exp(−γ·p)) − 1,    γ = 10,  p = training progress in [0, 1],

which keeps the domain classifier's early noise away from the features.

Any vision model of dlforge's protocol can be adapted: it needs `features(pixel_values) -> (B, hidden)` and `head`.
`DomainAdversarial` wraps it. Its state dict is the wrapped model's alone, so every checkpoint of a run (and
OUT/model) is the plain classifier; the domain classifier is training state that `DomainTrainer` keeps in
trainer_state.pt, and p is set from the Trainer's step before every step, so a resumed run continues exactly.
`adapt_domain` is the recipe: images → `DomainBatches` → Trainer → OUT/model + OUT/report.json.
The paper's learning-rate annealing μ_p = μ_0 / (1 + 10p)^0.75 is not used: the Trainer's warmup + cosine decay
serves the same purpose.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, is_dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data.class_names import ClassNames
from ..data.images import ImageBatches, ImageSet, is_mnist_folder, load_image_set, resize_image_set, to_signed_unit
from ..errors import DlforgeError
from ..io import atomic_write_json
from ..models import load_pretrained, save_pretrained
from ..models.outputs import ModelOutput
from ..training.trainer import EvalMetric, TrainConfig, Trainer, check_model_fits, open_run
from ..training.wrapper import TrainingWrapper

METHODS = ("dann", "source-only")
SOURCE, TARGET = 0.0, 1.0  # domain labels d


# ------------------------------------------------------------------------------------------- the layer
class GradientReversal(torch.autograd.Function):
    """R_λ: forward is the identity, backward multiplies the incoming gradient by −λ."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, lambda_: float) -> torch.Tensor:
        ctx.lambda_ = float(lambda_)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        return grad_output * -ctx.lambda_, None


def reverse_gradient(x: torch.Tensor, lambda_: float = 1.0) -> torch.Tensor:
    return GradientReversal.apply(x, lambda_)


def dann_lambda(progress: float, gamma: float = 10.0) -> float:
    """λ_p = 2 / (1 + exp(−γp)) − 1: 0 at the start, 0.96 at p = 0.4 for γ = 10, → 1 at the end."""
    p = min(1.0, max(0.0, progress))
    return 2.0 / (1.0 + math.exp(-gamma * p)) - 1.0


# ------------------------------------------------------------------------------------------- the model
def feature_size(model: nn.Module) -> int:
    """Width of `model.features(x)`: `feature_dim`, else the input of the head's first Linear, else
    config.hidden_size."""
    dim = getattr(model, "feature_dim", None)
    if dim is None and getattr(model, "head", None) is not None:
        linear = next((m for m in model.head.modules() if isinstance(m, nn.Linear)), None)
        dim = linear.in_features if linear is not None else None
    if dim is None:
        dim = getattr(getattr(model, "config", None), "hidden_size", None)
    if dim is None:
        raise DlforgeError(f"cannot tell the feature width of {type(model).__name__}: give feature_dim=...")
    return int(dim)


def domain_classifier(in_features: int, hidden: int = 256, layers: int = 2, dropout: float = 0.0) -> nn.Sequential:
    """G_d: `layers` × (Linear → ReLU → Dropout) of width `hidden`, then one logit (target vs source)."""
    modules, width = [], in_features
    for _ in range(layers):
        modules += [nn.Linear(width, hidden), nn.ReLU()] + ([nn.Dropout(dropout)] if dropout else [])
        width = hidden
    modules.append(nn.Linear(width, 1))
    return nn.Sequential(*modules)


def check_protocol(model: nn.Module) -> None:
    missing = [name for name in ("features", "head") if not hasattr(model, name)]
    if missing:
        raise DlforgeError(f"{type(model).__name__} has no {' / '.join(missing)}: domain adaptation needs a vision "
                           "model with features(pixel_values) -> (B, hidden) and a classification head")
    if model.head is None:
        raise DlforgeError(f"{type(model).__name__} has no classification head: put one on it first "
                           "(model.with_head(num_labels))")


class TaskModelWrapper(TrainingWrapper):
    """A training wrapper around a vision model (checkpoints load as the plain model)."""

    def __init__(self, model: nn.Module):
        check_protocol(model)
        super().__init__(model)

    def export(self) -> nn.Module:
        """The adapted task model itself: an ordinary classifier."""
        return self.model


class SourceOnly(TaskModelWrapper):
    """The baseline: the task model trained on the labelled source batches alone (target images are ignored)."""

    log_names: tuple[str, ...] = ()

    def forward(self, pixel_values, labels=None, target_pixel_values=None) -> ModelOutput:
        return self.model(pixel_values, labels)


class DomainAdversarial(TaskModelWrapper):
    """DANN around a vision model: forward(pixel_values, labels, target_pixel_values) -> ModelOutput with
    loss = L_y(source) + L_d(source ∪ target) and logits (B_source, K).

    λ follows the paper's schedule from `progress` (set it with `set_progress(step, total_steps)` before each step;
    `DomainTrainer` does) unless `lambda_` fixes it. Without target images (evaluation) the forward is the
    task model's own. The head reads `features` directly, so a dropout that a model applies in its forward before
    the head is skipped on the DANN training path.
    """

    log_names = ("class_loss", "domain_loss", "domain_accuracy", "lambda")

    def __init__(self, model: nn.Module, hidden: int = 256, layers: int = 2, dropout: float = 0.0,
                 gamma: float = 10.0, lambda_: float | None = None, feature_dim: int | None = None):
        super().__init__(model)
        self.domain_classifier = domain_classifier(feature_dim or feature_size(model), hidden, layers, dropout)
        self.gamma, self.fixed_lambda = gamma, lambda_
        self.progress = 0.0

    def set_progress(self, step: int, total_steps: int) -> None:
        self.progress = min(1.0, step / max(1, total_steps))

    @property
    def grl_lambda(self) -> float:
        return self.fixed_lambda if self.fixed_lambda is not None else dann_lambda(self.progress, self.gamma)

    def forward(self, pixel_values, labels=None, target_pixel_values=None) -> ModelOutput:
        if target_pixel_values is None:
            if self.training:
                raise DlforgeError("DomainAdversarial trains on source and target images: give target_pixel_values")
            return self.model(pixel_values, labels)
        if labels is None:
            raise DlforgeError("DomainAdversarial trains on labelled source images: give labels")
        if pixel_values.shape[1:] != target_pixel_values.shape[1:]:
            raise DlforgeError(f"source images {tuple(pixel_values.shape[1:])} and target images "
                               f"{tuple(target_pixel_values.shape[1:])} differ: resize both to the model's size")
        n_source, n_target = pixel_values.shape[0], target_pixel_values.shape[0]
        # one pass over both domains: batch-norm layers see (and keep running statistics of) the mixture
        features = self.model.features(torch.cat([pixel_values, target_pixel_values]))  # (Bs + Bt, hidden)
        logits = self.model.head(features[:n_source])  # (Bs, K)
        class_loss = F.cross_entropy(logits.float(), labels)
        lambda_ = self.grl_lambda
        domain_logits = self.domain_classifier(reverse_gradient(features, lambda_)).squeeze(-1).float()  # (Bs + Bt,)
        domains = torch.cat([domain_logits.new_full((n_source,), SOURCE), domain_logits.new_full((n_target,), TARGET)])
        domain_loss = F.binary_cross_entropy_with_logits(domain_logits, domains)
        domain_accuracy = ((domain_logits > 0).float() == domains).float().mean()
        return ModelOutput(loss=class_loss + domain_loss, logits=logits,
                           logs={"class_loss": class_loss.detach(), "domain_loss": domain_loss.detach(),
                                 "domain_accuracy": domain_accuracy.detach(), "lambda": lambda_})


class DomainTrainer(Trainer):
    """The Trainer, extended for DomainAdversarial: p = the schedule's progress is set before every optimizer step (the
    domain classifier's weights travel in trainer_state.pt as every training wrapper's own modules do)."""

    def _train_step(self):
        if isinstance(self.model, DomainAdversarial):
            self.model.progress = self.schedule_progress()  # follows a time budget too
        return super()._train_step()


# ------------------------------------------------------------------------------------------- the data
class Normalize:
    """[-1, 1] pixels -> what the model's weights expect: ((x + 1) / 2 − mean) / std, or unchanged without
    mean/std (dlforge's own models take [-1, 1])."""

    def __init__(self, mean: list[float] | None = None, std: list[float] | None = None):
        if (mean is None) != (std is None):
            raise DlforgeError("give both image_mean and image_std, or neither")
        self.mean = None if mean is None else torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = None if std is None else torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.mean is None:
            return images
        return ((images + 1.0) / 2.0 - self.mean) / self.std


class DomainBatches:
    """The Trainer's batch source for domain adaptation: labelled source batches paired with unlabelled target ones.

    Training batch k is {"pixel_values": (B, C, H, W) source images, "labels": (B,), "target_pixel_values":
    (B, C, H, W) target images}; each side walks its own seeded epoch shuffles (`ImageBatches`, target seed + 1), so
    batch k is a function of (seed, k) alone. Target labels, if any, are never used. Without `target` (the
    source-only baseline) the batches hold the source side alone. Evaluation batches are `validation` (labelled: the
    source's validation images, or labelled target images) or else a held-out `val_fraction` of the source.
    """

    def __init__(self, source: ImageSet, target: ImageSet | None, batch_size: int, seed: int = 0,
                 grad_accum: int = 1, validation: ImageSet | None = None, val_fraction: float = 0.1,
                 image_mean: list[float] | None = None, image_std: list[float] | None = None, flip: bool = False,
                 crop_padding: int = 0, eval_images: int = 2000):
        if source.labels is None:
            raise DlforgeError(f"the source images ({source.source}) have no labels: domain adaptation learns the "
                               "task from labelled source images")
        if target is not None and target.images.shape[1:] != source.images.shape[1:]:
            raise DlforgeError(f"source images {tuple(source.images.shape[1:])} and target images "
                               f"{tuple(target.images.shape[1:])} differ: resize both to the model's size "
                               "(dlforge.data.images.resize_image_set)")
        self.normalize = Normalize(image_mean, image_std)
        augment = dict(flip=flip, crop_padding=crop_padding, eval_images=eval_images)
        self.source = ImageBatches(source, batch_size, seed, grad_accum, val_fraction, validation, **augment)
        self.target = None
        if target is not None:
            unlabelled = ImageSet(target.images, None, None, target.source)
            self.target = ImageBatches(unlabelled, batch_size, seed + 1, grad_accum, validation=unlabelled, **augment)

    @property
    def validation(self) -> ImageSet:
        return self.source.validation

    def train_batch(self, step: int, micro_step: int = 0, rank: int = 0, world_size: int = 1) -> dict:
        source = self.source.train_batch(step, micro_step, rank, world_size)
        batch = {"pixel_values": self.normalize(source["images"]), "labels": source["labels"]}
        if self.target is not None:
            target = self.target.train_batch(step, micro_step, rank, world_size)
            batch["target_pixel_values"] = self.normalize(target["images"])
        return batch

    def eval_batches(self, rank: int = 0, world_size: int = 1):
        for batch in self.source.eval_batches(rank, world_size):
            yield {"pixel_values": self.normalize(batch["images"]), "labels": batch["labels"]}


@torch.no_grad()
def image_accuracy(model: nn.Module, data: ImageSet, batch_size: int = 256, normalize: Normalize | None = None,
                   device: torch.device | str = "cpu") -> float:
    """Share of `data`'s labelled images that `model` (in eval mode) classifies correctly."""
    if data.labels is None or len(data) == 0:
        raise DlforgeError(f"{data.source} has no labelled images to score")
    normalize = normalize or Normalize()
    was_training = model.training
    model.eval()
    correct = 0
    try:
        for start in range(0, len(data), batch_size):
            images = normalize(to_signed_unit(data.images[start:start + batch_size])).to(device)
            predicted = model(images).logits.argmax(-1).cpu()
            correct += int((predicted == data.labels[start:start + batch_size]).sum())
    finally:
        model.train(was_training)
    return correct / len(data)


# ------------------------------------------------------------------------------------------- the recipe
@dataclass
class AdaptSettings:
    method: str = "dann"  # dann | source-only
    steps: int = 1000  # optimizer steps
    minutes: float | None = None  # wall-clock budget; the schedule (and λ's) is fitted to it
    lr: float = 1e-3
    min_lr: float | None = None  # end of the cosine decay; None: lr / 10
    batch_size: int = 64  # source images per step, and as many target images
    warmup_steps: int | None = None  # None: 5 % of the steps
    weight_decay: float = 0.01
    eval_interval: int | None = None  # None: 5 evaluations per run
    val_fraction: float = 0.1  # of the source images, held out to score the source domain
    flip: bool = False
    crop_padding: int = 0
    domain_hidden: int = 256  # width of the domain classifier's two hidden layers
    domain_layers: int = 2
    domain_dropout: float = 0.0
    gamma: float = 10.0  # λ schedule
    precision: str = "auto"
    device: str = "auto"
    seed: int = 0
    tensorboard: bool = False  # also log the metrics to OUT/tensorboard (the tensorboard package)

    def check(self) -> None:
        if self.method not in METHODS:
            raise DlforgeError(f"unknown method {self.method!r}: choose one of {', '.join(METHODS)}")
        for name in ("steps", "lr", "batch_size", "domain_hidden", "gamma", "minutes", "eval_interval"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise DlforgeError(f"{name} must be > 0, got {value}")
        if self.domain_layers < 0:
            raise DlforgeError(f"domain_layers must be >= 0, got {self.domain_layers}")
        if not 0 < self.val_fraction < 1:
            raise DlforgeError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if not 0 <= self.domain_dropout < 1:
            raise DlforgeError(f"domain_dropout must be in [0, 1), got {self.domain_dropout}")


def _has_test_split(spec) -> bool:
    if str(spec) == "sklearn-digits":
        return True
    path = Path(spec)
    return is_mnist_folder(path) or (path / "test").is_dir()


def _images(spec, split: str, image_size: int | None, channels: int | None) -> ImageSet:
    """An ImageSet (resized to the model) or a path / sklearn-digits loaded at the model's size."""
    if isinstance(spec, ImageSet):
        return resize_image_set(spec, image_size, channels)
    return load_image_set(spec, split, image_size, channels)


def _relabel(data: ImageSet, classes: list[str]) -> ImageSet:
    """`data`'s labels as indices into the source's `classes` (the same names may be numbered otherwise)."""
    if data.labels is None:
        raise DlforgeError(f"{data.source} has no labels: target_eval must be labelled target images")
    if data.classes == classes:
        return data
    unknown = sorted(set(data.classes or []) - set(classes))
    if unknown:
        raise DlforgeError(f"{data.source} has class(es) {', '.join(unknown[:5])} that the source never shows")
    mapping = torch.tensor([classes.index(name) for name in data.classes])
    return ImageSet(data.images, mapping[data.labels], list(classes), data.source)


def _num_outputs(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    for name in ("num_labels", "num_classes"):
        if getattr(config, name, None):
            return int(getattr(config, name))
    linears = [m for m in model.head.modules() if isinstance(m, nn.Linear)] if model.head is not None else []
    return linears[-1].out_features if linears else None


def _fit_head(model: nn.Module, classes: list[str], seed: int) -> nn.Module:
    """A head for the source's classes: the model's own when it has that many outputs, else a new one."""
    if getattr(model, "head", None) is not None and _num_outputs(model) == len(classes):
        config = getattr(model, "config", None)
        if is_dataclass(config) and "labels" in {f.name for f in fields(config)} and not config.labels:
            model.config = replace(config, labels=list(classes))
        return model
    if not hasattr(model, "with_head"):
        raise DlforgeError(f"the model classifies {_num_outputs(model)} classes but the source has {len(classes)}, "
                           f"and {type(model).__name__} has no with_head() to put a new head on it")
    torch.manual_seed(seed)  # the new head starts from the same weights every time
    return model.with_head(len(classes), labels=list(classes))


def _describe(spec) -> str | None:
    """How run.json and the report name a model / data argument (a path, or what an in-memory one is)."""
    if spec is None:
        return None
    if isinstance(spec, ImageSet):
        return f"<ImageSet: {spec.source}>"
    if not isinstance(spec, (str, Path)):
        return f"<{type(spec).__name__}>"
    return str(Path(spec).resolve()) if str(spec) != "sklearn-digits" and Path(spec).exists() else str(spec)


def _accuracy(output, batch) -> tuple[float, float]:
    return (output.logits.argmax(-1) == batch["labels"]).sum().item(), batch["labels"].numel()


def adapt_domain(model: str | Path | nn.Module | None, source: str | Path | ImageSet | None,
                 target: str | Path | ImageSet | None, out: str | Path,
                 target_eval: str | Path | ImageSet | None = None,
                 method: str = "dann", steps: int = 1000, minutes: float | None = None, lr: float = 1e-3,
                 batch_size: int = 64, seed: int = 0, resume: bool = False, progress: bool = True,
                 overwrite: bool = False,
                 on_eval: Callable | None = None, **settings) -> dict:
    """Adapt `model` (a model folder, run folder or hub id, or an nn.Module of the vision protocol) from labelled
    `source` images to unlabelled `target` images (MNIST IDX folder, image folder, `sklearn-digits` or ImageSet;
    both are resized to the model's image_size and channels). Returns the report, also written to OUT/report.json.

    `method`: "dann" or "source-only" (the baseline, the same batches without the domain classifier). The Trainer
    evaluates on a held-out share of the source every `eval_interval` steps; OUT/model is the final adapted
    classifier (saved with save_pretrained, with labels.json). `target_eval`: labelled target images to report
    the target accuracy on; by default the target's test split when it has one (MNIST, sklearn-digits, a folder
    with test/). `settings`: the other fields of `AdaptSettings`. `resume=True` continues the run in `out` with the
    settings it was started with; arguments given as objects (nn.Module, ImageSet) must be given again.
    """
    start = time.perf_counter()
    out = Path(out)
    unknown = sorted(set(settings) - {f.name for f in fields(AdaptSettings)})
    if unknown:
        raise DlforgeError(f"unknown setting {unknown[0]!r}; known: {', '.join(f.name for f in fields(AdaptSettings))}")
    run = open_run(out, resume, "domain-adaptation run", overwrite=overwrite, required={"settings": dict})
    if run is None:
        s = AdaptSettings(**{**settings, "method": method, "steps": steps, "minutes": minutes, "lr": lr,
                             "batch_size": batch_size, "seed": seed})
    else:  # the run's own settings and data; objects (nn.Module, ImageSet) cannot be recorded: they come again
        if not {"settings", "model", "source", "target", "target_eval"} <= set(run):
            raise DlforgeError(f"{out / 'run.json'} is not a domain-adaptation run's: resume it with the command "
                               "that started it")
        s = AdaptSettings(**run["settings"])
        given = {"model": model, "source": source, "target": target, "target_eval": target_eval}
        for name, value in given.items():
            recorded = run[name]
            if value is None and isinstance(recorded, str) and recorded.startswith("<"):
                raise DlforgeError(f"the run in {out} was started with {name} given as an object ({recorded}): "
                                   "pass it again to resume")
            given[name] = value if value is not None else recorded
        model, source, target, target_eval = given.values()
    s.check()
    if model is None or source is None or (target is None and s.method == "dann"):
        raise DlforgeError("model, source and target are required (the classifier, labelled source images and "
                           "unlabelled target images)")

    # ---- model and data
    net = load_pretrained(model)[0] if isinstance(model, (str, Path)) else model
    if not hasattr(net, "features"):
        raise DlforgeError(f"{type(net).__name__} has no features(pixel_values): domain adaptation needs a vision "
                           "model of dlforge's protocol")
    config = getattr(net, "config", None)
    image_size, channels = getattr(config, "image_size", None), getattr(config, "channels", None)
    source_set = _images(source, "train", image_size, channels)
    if source_set.labels is None or not source_set.classes:
        raise DlforgeError(f"the source images ({source_set.source}) have no labels: give one sub-folder per class")
    target_set = _images(target, "train", image_size, channels) if target is not None else None
    if target_eval is None and isinstance(target, (str, Path)) and _has_test_split(target):
        target_eval = target
    eval_set = None
    if target_eval is not None:
        split = "test" if not isinstance(target_eval, ImageSet) and _has_test_split(target_eval) else "train"
        eval_set = _relabel(_images(target_eval, split, image_size, channels), source_set.classes)
    net = _fit_head(net, source_set.classes, s.seed)
    batches = DomainBatches(source_set, target_set if s.method == "dann" else None, s.batch_size, s.seed,
                            val_fraction=s.val_fraction, image_mean=getattr(config, "image_mean", None),
                            image_std=getattr(config, "image_std", None), flip=s.flip, crop_padding=s.crop_padding)

    def make_wrapper() -> TaskModelWrapper:
        return (DomainAdversarial(net, s.domain_hidden, s.domain_layers, s.domain_dropout, s.gamma)
                if s.method == "dann" else SourceOnly(net))

    if not resume:  # the model with its domain classifier (built on the meta device first) must fit in memory
        check_model_fits(make_wrapper, "this domain-adaptation model", "choose a smaller model or domain "
                         "classifier (--set domain_hidden=N, domain_layers=N)")
    torch.manual_seed(s.seed)  # the domain classifier starts from the same weights every time
    wrapper = make_wrapper()

    # ---- training
    interval = s.eval_interval or max(1, math.ceil(s.steps / 5))
    train_config = TrainConfig(max_steps=s.steps, max_minutes=s.minutes, batch_size=s.batch_size, lr=s.lr,
                               min_lr=s.min_lr, warmup_steps=(s.warmup_steps if s.warmup_steps is not None
                                                              else round(0.05 * s.steps)),
                               weight_decay=s.weight_decay, beta1=0.9, beta2=0.999, grad_clip=1.0,
                               precision=s.precision, eval_interval=interval, log_interval=min(10, interval),
                               keep_last=1, seed=s.seed, device=s.device, tensorboard=s.tensorboard)
    if not resume:  # written before training: what a resume needs to rebuild this run
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "run.json", {"model": _describe(model), "source": _describe(source),
                                             "target": _describe(target), "target_eval": _describe(target_eval),
                                             "settings": asdict(s)})
    class_names = ClassNames(list(source_set.classes))
    trainer = DomainTrainer(wrapper, train_config, batches, out, tokenizer=class_names, on_eval=on_eval,
                                     progress=progress, eval_metric=EvalMetric("accuracy", _accuracy))
    setup_s = time.perf_counter() - start
    result = trainer.fit(resume=resume)
    train_s = time.perf_counter() - start - setup_s

    # ---- export and scores
    adapted = wrapper.export().eval()
    save_pretrained(adapted, out / "model", class_names)
    source_accuracy = image_accuracy(adapted, batches.validation, normalize=batches.normalize, device=trainer.device)
    target_accuracy = (image_accuracy(adapted, eval_set, normalize=batches.normalize, device=trainer.device)
                       if eval_set is not None else None)
    report = {"method": s.method, "source_accuracy": source_accuracy, "target_accuracy": target_accuracy,
              "source_eval_images": len(batches.validation), "target_eval_images": len(eval_set) if eval_set else 0,
              "model": _describe(model), "source": _describe(source), "target": _describe(target),
              "target_eval": _describe(target_eval), "output": str(out / "model"),
              "training": {**result, "source_images": len(batches.source.train),
                           "target_images": len(target_set) if target_set is not None else 0},
              "settings": {**asdict(s), "steps": trainer.total_steps, "eval_interval": interval},
              "timing": {"setup_s": round(setup_s, 2), "train_s": round(train_s, 2),
                         "total_s": round(time.perf_counter() - start, 2)}}
    atomic_write_json(out / "report.json", report)
    return report
