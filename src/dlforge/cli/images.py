"""Image commands: `dlforge train ae|vae|gan|diffusion|classifier`, `sample`, `img2img`, `inpaint`, `outpaint`,
`noise-strip`, `anomaly fit|score`, `latent-plot` and `interpolate`. Each is a thin layer over the library
functions Python users call:
  train ...   -> dlforge.training.images.train_image_model
  sample      -> dlforge.pipelines.image_generation.sample_images (diffusion, GAN or VAE)
  img2img, inpaint, outpaint, noise-strip -> dlforge.diffusion.sampling
  anomaly     -> dlforge.training.anomaly (fit_anomaly_detector, score_anomalies)
  latent-plot, interpolate -> dlforge.models.autoencoder_tools (latent_scatter, interpolate)
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DlforgeError
from ..paths import safe_filename
from .common import (
    add_budget_flags,
    add_deprecated_alias,
    add_output_flags,
    add_run_flags,
    add_tensorboard_flag,
    number,
    positive_float,
    positive_int,
    print_result,
    run_budget,
    seed,
)
from .names import IMAGE_FAMILIES, IMAGE_PRESETS, SCHEDULERS

FAMILY_HELP = {
    "ae": "an autoencoder (MLP or convolutional; denoising with --set noise=gaussian|masking)",
    "vae": "a variational autoencoder (β-VAE, Bernoulli or Gaussian likelihood)",
    "gan": "a DCGAN (class-conditional when the data has labels)",
    "diffusion": "a diffusion model (UNet; class-conditional with classifier-free guidance when labelled)",
    "classifier": "a CNN image classifier (the evaluation classifier for generated digits)",
    "vit": "a Vision Transformer classifier, e.g. a backbone to fine-tune (--set only_classes=0,1,2,3,4)",
    "resnet": "a ResNet classifier, e.g. a backbone to fine-tune (--set only_classes=0,1,2,3,4)",
}


# ------------------------------------------------------------------------------------------ train
def cmd_train_images(args) -> int:
    from ..settings import parse_overrides
    from ..training.images import field_types, train_image_model

    overrides = parse_overrides(args.set, field_types(args.family))
    overrides.update(run_budget(args))
    teacher = {} if args.family != "vit" else {"teacher": args.teacher, "teacher_weight": args.teacher_weight}
    result = train_image_model(args.family, args.data, args.out, preset=args.preset, overrides=overrides,
                               resume=args.resume, seed=args.seed, progress=not args.quiet,
                               overwrite=args.overwrite, **teacher)
    print_result(result, args.out)
    print(f"Samples: {Path(args.out) / 'samples.png'}   loss curve: {Path(args.out) / 'loss.png'}")
    return 0


def add_train_parsers(families) -> None:
    for family in IMAGE_FAMILIES:
        parser = families.add_parser(
            family, help=FAMILY_HELP[family],
            description=f"Train {FAMILY_HELP[family]} on images: an MNIST IDX folder, a folder of PNG/JPEG images "
                        "(one sub-folder per class, or unlabelled), or sklearn-digits. A sample grid is written "
                        "to OUT/samples.png at every evaluation.")
        parser.add_argument("--data", help="MNIST IDX folder, image folder, or sklearn-digits")
        parser.add_argument("--out", required=True, help="run folder for checkpoints, samples/, metrics.csv, loss.png")
        parser.add_argument("--preset", default="mnist", choices=IMAGE_PRESETS,
                            help="model size + hyperparameters (default: mnist)")
        parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                            help="override a model, data or training field, e.g. --set latent_dim=2 --set "
                                 "image_size=32 --set lr=3e-4 (repeatable)")
        if family == "vit":
            parser.add_argument("--teacher", help="a convolutional network (a `dlforge train resnet` run or model "
                                "folder) whose last feature map the patch tokens learn to predict beside the labels: "
                                "features that transfer to new classes (see dlforge.training.distill)")
            parser.add_argument("--teacher-weight", type=positive_float,
                                help="weight of the feature-map loss beside the cross-entropy (default 1.0)")
        add_run_flags(parser)
        parser.set_defaults(func=cmd_train_images)


# ----------------------------------------------------------------------------------------- sample
def cmd_sample(args) -> int:
    from ..data.images import save_grid, write_image
    from ..pipelines.image_generation import GENERATIVE_KINDS, load_image_model, resolve_labels, sample_images

    model, class_names = load_image_model(args.run, GENERATIVE_KINDS, "dlforge sample")
    labels = resolve_labels(model, args.label, args.n, class_names)
    images = sample_images(model, args.n, labels=labels, steps=args.num_inference_steps, scheduler=args.scheduler,
                           guidance_scale=args.guidance, eta=args.eta, seed=args.seed, precision=args.precision)
    path = save_grid(images, args.out, nrow=args.nrow, scale=args.scale)
    print(f"{args.n} images: {path}")
    if args.each:
        folder = Path(args.each)
        for i, image in enumerate(images):
            name = f"{i:04d}" + ("" if labels is None else f"-{_label_name(int(labels[i]), class_names)}")
            write_image(image, folder / f"{name}.png")
        print(f"one PNG per image: {folder}")
    return 0


def _label_name(index: int, class_names: list[str] | None) -> str:
    """A class as part of a file name: its name in the run's labels.json is data, and may hold `/` or `..`."""
    return safe_filename(class_names[index] if class_names and index < len(class_names) else str(index))


# ---------------------------------------------------------------- img2img / inpaint / outpaint / strip
def _diffusion_inputs(args, command: str):
    """(model, image at the model's resolution, labels or None) for the diffusion image tasks."""
    from ..data.images import load_image
    from ..pipelines.image_generation import load_image_model, resolve_labels

    model, class_names = load_image_model(args.run, ("diffusion",), f"dlforge {command}")
    image = load_image(args.image, size=model.config.image_size, channels=model.config.channels)
    labels = resolve_labels(model, args.label, 1, class_names) if args.label is not None else None
    return model, image, labels


def write_at_input_size(result, args, fill=None) -> str:
    """Write a model-size result (C, S, S) in [-1, 1] at the size of the input picture `args.image`: resized to the
    centre square the input was cropped to and put back over it, so a 28x28 picture gives a 28x28 one and a
    larger or non-square picture keeps its size (and, outside that square, its pixels). `fill` (inpaint's mask at
    the picture's size, (1, H, W) in {0, 1}): only those pixels change, the rest stays exactly the input's."""
    import torch
    import torch.nn.functional as F

    from ..data.images import load_image, write_image

    picture = load_image(args.image, channels=result.shape[0])  # (C, H, W) in [-1, 1], as it is on disk
    height, width = picture.shape[-2:]
    side = min(height, width)
    if result.shape[-1] != side:
        result = F.interpolate(result[None].float(), size=(side, side), mode="bicubic", antialias=True,
                               align_corners=False)[0].clamp(-1, 1)
    top, left = (height - side) // 2, (width - side) // 2
    square = picture[:, top:top + side, left:left + side]  # a view: writing it writes the picture
    if fill is None:
        square[:] = result
    else:
        square[:] = torch.where(fill[:, top:top + side, left:left + side] > 0, result, square)
    return write_image(picture, args.out)


def _diffusion_options(args) -> dict:
    return dict(steps=args.num_inference_steps, scheduler=args.scheduler, guidance_scale=args.guidance, seed=args.seed)


def _precision(model, args):
    from ..pipelines.image_generation import inference_precision

    return inference_precision(model, args.precision)


def cmd_img2img(args) -> int:
    from ..diffusion.sampling import img2img

    model, image, labels = _diffusion_inputs(args, "img2img")
    with _precision(model, args):
        result = img2img(model, image.unsqueeze(0), strength=args.strength, labels=labels,
                         **_diffusion_options(args))
    print(f"output: {write_at_input_size(result[0], args)}")
    return 0


def read_mask(path: str | Path, image_path: str | Path, size: int | None):
    """A mask image (white = fill) of the same size as the image -> (1, size, size) float in {0, 1} (size None: the
    mask's own size)."""
    from PIL import Image

    from ..data.images import load_image

    with Image.open(image_path) as image:
        image_size = image.size
    try:
        with Image.open(path) as mask:
            mask_size = mask.size
    except Exception as e:
        raise DlforgeError(f"cannot read mask {path} ({type(e).__name__}): give a PNG, white where to fill") from e
    if mask_size != image_size:
        raise DlforgeError(f"the mask is {mask_size[0]}x{mask_size[1]} but the image is {image_size[0]}x"
                           f"{image_size[1]}: draw the mask at the image's size")
    return (load_image(path, size=size, channels=1) > 0).float()


def cmd_inpaint(args) -> int:
    from ..diffusion.sampling import inpaint

    model, image, labels = _diffusion_inputs(args, "inpaint")
    mask = read_mask(args.mask, args.image, model.config.image_size)
    with _precision(model, args):
        result = inpaint(model, image.unsqueeze(0), mask.unsqueeze(0), resample=args.resample, labels=labels,
                         **_diffusion_options(args))
    print(f"output: {write_at_input_size(result[0], args, fill=read_mask(args.mask, args.image, None))}")
    return 0


def cmd_outpaint(args) -> int:
    from ..diffusion.sampling import outpaint

    model, image, labels = _diffusion_inputs(args, "outpaint")
    with _precision(model, args):
        result = outpaint(model, image.unsqueeze(0), pad=args.pad, resample=args.resample, labels=labels,
                          **_diffusion_options(args))
    print(f"output: {write_at_input_size(result[0], args)}")
    return 0


def cmd_noise_strip(args) -> int:
    from ..diffusion.sampling import process_strip

    model, image, labels = _diffusion_inputs(args, "noise-strip")
    with _precision(model, args):
        process_strip(model, image, args.out, steps=args.num_inference_steps, scheduler=args.scheduler, labels=labels,
                      guidance_scale=args.guidance, seed=args.seed)
    path = args.out
    print(f"forward noising (top) and reverse denoising (bottom): {path}")
    return 0


# ------------------------------------------------------------------------------ autoencoder tools
def cmd_latent_plot(args) -> int:
    import torch

    from ..data.images import load_image_set
    from ..models.autoencoder_tools import latent_scatter
    from ..pipelines.image_generation import load_image_model

    model, class_names = load_image_model(args.run, ("ae", "vae"), "dlforge latent-plot")
    data = load_image_set(args.data, args.split, model.config.image_size, model.config.channels)
    pick = torch.randperm(len(data), generator=torch.Generator().manual_seed(args.seed))[:args.n]
    path = latent_scatter(model, data.images[pick], None if data.labels is None else data.labels[pick], args.out,
                          class_names=data.classes or class_names)
    print(f"latent codes of {len(pick)} images: {path}")
    return 0


def cmd_interpolate(args) -> int:
    from ..data.images import load_image, save_grid
    from ..models.autoencoder_tools import interpolate
    from ..pipelines.image_generation import load_image_model

    model, _ = load_image_model(args.run, ("ae", "vae"), "dlforge interpolate")
    if len(args.image) != 2:
        raise DlforgeError(f"give --image exactly twice (the first and the last picture), got {len(args.image)}")
    a, b = (load_image(path, model.config.image_size, model.config.channels) for path in args.image)
    path = save_grid(interpolate(model, a, b, steps=args.nrow), args.out, nrow=args.nrow, scale=args.scale)
    print(f"{args.nrow} images from the first to the second: {path}")
    return 0


def _add_autoencoder_parsers(sub) -> None:
    plot = sub.add_parser("latent-plot", help="2-D scatter of an autoencoder's latent codes, coloured by class",
                          description="Encode N images with a trained ae/vae and plot their codes in 2-D (the first "
                                      "two principal components when the latent has more dimensions).")
    plot.add_argument("run", help="a `dlforge train ae|vae` run or model folder")
    plot.add_argument("--data", required=True, help="MNIST IDX folder, image folder, or sklearn-digits")
    plot.add_argument("--split", default="test", choices=("train", "test"), help="which split (default test)")
    plot.add_argument("--n", type=positive_int, default=5000, help="images to plot (default 5000)")
    plot.add_argument("--out", required=True, help="PNG to write")
    plot.add_argument("--seed", type=seed, default=0, help="which images are drawn (default 0)")
    add_output_flags(plot)
    plot.set_defaults(func=cmd_latent_plot)
    walk = sub.add_parser("interpolate", help="decode a straight line between two images' latent codes",
                          description="Encode two images with a trained ae/vae and decode evenly spaced points "
                                      "between their codes: one PNG row from the first image to the second.")
    walk.add_argument("run", help="a `dlforge train ae|vae` run or model folder")
    walk.add_argument("--image", required=True, action="append", help="an image; give it twice (first, last)")
    walk.add_argument("--nrow", type=positive_int, default=8, help="images in the row, ends included (default 8)")
    add_deprecated_alias(walk, "--steps", "--nrow", "nrow", positive_int)
    walk.add_argument("--scale", type=positive_int, default=2, help="enlarge the row by this factor (default 2)")
    walk.add_argument("--out", required=True, help="PNG to write")
    add_output_flags(walk)
    walk.set_defaults(func=cmd_interpolate)


# ---------------------------------------------------------------------------------------- anomaly
def cmd_anomaly_fit(args) -> int:
    from ..settings import parse_overrides
    from ..training.anomaly import fit_anomaly_detector, refit_threshold
    from ..training.images import field_types

    if args.refit:
        detector = refit_threshold(args.out, method=args.threshold, percentile=args.percentile)
    else:
        overrides = parse_overrides(args.set, field_types(args.kind))
        overrides.update(run_budget(args))
        detector = fit_anomaly_detector(args.data, args.out, normal=args.normal, kind=args.kind, preset=args.preset,
                                        overrides=overrides, method=args.threshold, percentile=args.percentile,
                                        seed=args.seed, resume=args.resume, progress=not args.quiet,
                                        overwrite=args.overwrite)
    how = f"{detector.percentile:g}th percentile" if detector.method == "percentile" else "best F1"
    print(f"threshold {detector.threshold:.6g} ({how} of held-out scores): {Path(args.out) / 'anomaly_detector.json'}")
    return 0


def cmd_anomaly_score(args) -> int:
    from ..training.anomaly import score_anomalies

    result = score_anomalies(args.run, args.data, args.out, split=args.split, normal=args.normal)
    if result.get("roc_auc") is not None:
        print(", ".join(f"{k} {result[k]:.4f}" for k in ("precision", "recall", "f1", "roc_auc", "pr_auc")))
        print(f"report: {Path(args.out) / 'report.json'}   PR curve: {Path(args.out) / 'pr_curve.png'}")
    else:
        print(f"{result['flagged']} of {result['n']} images flagged as anomalies")
    print(f"scores: {Path(args.out) / 'scores.csv'}")
    return 0


# ------------------------------------------------------------------------------------------ adapt
def cmd_adapt(args) -> int:
    from ..settings import parse_overrides
    from ..transfer.domain import AdaptSettings, adapt_domain

    flags = {"steps": args.max_steps, "minutes": args.minutes, "lr": args.lr, "batch_size": args.batch_size,
             "seed": args.seed, "tensorboard": args.tensorboard}  # AdaptSettings field -> its flag's value
    settings = parse_overrides(args.set, AdaptSettings, exclude=("method", *flags))
    settings.update({name: value for name, value in flags.items() if value is not None})
    if not args.resume and (args.model is None or args.source is None or args.target is None):
        raise DlforgeError("--model, --source and --target are required (or --resume to continue the run in --out)")
    report = adapt_domain(args.model, args.source, args.target, args.out, target_eval=args.target_eval,
                          method=args.method, resume=args.resume, progress=not args.quiet,
                          overwrite=args.overwrite, **settings)
    target = report.get("target_accuracy")
    print(f"{report['method']}: source accuracy {report['source_accuracy']:.4f}"
          + (f", target accuracy {target:.4f}" if target is not None else " (no labelled target images to score)"))
    print(f"model: {Path(args.out) / 'model'}   report: {Path(args.out) / 'report.json'}")
    return 0


def _add_adapt_parser(sub) -> None:
    adapt = sub.add_parser(
        "adapt", help="domain adaptation: train on labelled source images so it also works on unlabelled target ones",
        description="Train a ViT / ResNet / CNN classifier on labelled --source images with DANN (a domain classifier "
                    "behind a gradient-reversal layer makes the features domain-invariant) using unlabelled --target "
                    "images, or --method source-only for the baseline. Writes OUT/model and OUT/report.json (source "
                    "and target accuracy; the target's test split, or --target-eval, is scored when labelled).")
    adapt.add_argument("--model", help="classifier to adapt: a dlforge run or model folder (e.g. `dlforge train "
                                       "resnet`), or a Hugging Face ViT / ResNet folder")
    adapt.add_argument("--source", help="labelled source images: MNIST IDX folder, image folder or sklearn-digits")
    adapt.add_argument("--target", help="target images (their labels, if any, are not used for training)")
    adapt.add_argument("--target-eval", help="labelled target images to report accuracy on (default: the target's "
                                             "test split when it has one)")
    adapt.add_argument("--out", required=True, help="run folder (OUT/model, OUT/report.json, checkpoints)")
    adapt.add_argument("--method", default="dann", choices=("dann", "source-only"), help="default dann")
    add_budget_flags(adapt, steps_help="optimizer steps (default 1000)")
    add_deprecated_alias(adapt, "--steps", "--max-steps", "max_steps", positive_int)
    adapt.add_argument("--lr", type=positive_float, help="peak learning rate (default 1e-3)")
    adapt.add_argument("--batch-size", type=positive_int, help="source images per step, and as many target images")
    adapt.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="another setting, e.g. --set domain_hidden=512 --set gamma=10 --set crop_padding=2")
    adapt.add_argument("--seed", type=seed, help="random seed (default 0)")
    adapt.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    adapt.add_argument("--overwrite", action="store_true",
                       help="write the run into a non-empty --out that holds no dlforge run "
                            "(same-named files replaced)")
    add_tensorboard_flag(adapt)
    add_output_flags(adapt)
    adapt.set_defaults(func=cmd_adapt)


def _add_anomaly_parsers(sub) -> None:
    anomaly = sub.add_parser("anomaly", help="anomaly detection with an autoencoder (fit on normal data, score new)")
    actions = anomaly.add_subparsers(dest="action", metavar="ACTION")
    anomaly.set_defaults(func=lambda args: anomaly.print_help() or 2)  # no action given: show the two
    fit = actions.add_parser("fit", help="train an autoencoder on normal images and pick the threshold",
                             description="Train an autoencoder on the normal images of --data (the --normal classes "
                                         "of labelled data, else all images) and set the anomaly threshold on "
                                         "held-out images.")
    fit.add_argument("--data", help="MNIST IDX folder, image folder, or sklearn-digits")
    fit.add_argument("--out", required=True, help="run folder (the model, anomaly_detector.json)")
    fit.add_argument("--normal", help="the normal class(es), comma-separated names (e.g. 3); default: all images")
    fit.add_argument("--kind", default="ae", choices=("ae", "vae"), help="model (default ae)")
    fit.add_argument("--preset", default="mnist", choices=IMAGE_PRESETS, help="default: mnist")
    fit.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a model/data/training field")
    fit.add_argument("--threshold", default="percentile", choices=("percentile", "f1"),
                     help="percentile of held-out normal scores (default), or best F1 against held-out images of "
                          "the other classes")
    fit.add_argument("--percentile", type=number, default=95.0, help="for --threshold percentile (default 95)")
    fit.add_argument("--refit", action="store_true", help="only re-pick the threshold of the trained run in --out")
    add_run_flags(fit)
    fit.set_defaults(func=cmd_anomaly_fit)
    score = actions.add_parser("score", help="score images with a fitted detector; report when labels are known",
                               description="Score every image of --data; write scores.csv, and for labelled data "
                                           "with known normal classes report.json (precision, recall, F1, ROC-AUC, "
                                           "PR-AUC), pr_curve.png and scores.png.")
    score.add_argument("run", help="a `dlforge anomaly fit` run folder")
    score.add_argument("--data", required=True, help="MNIST IDX folder, image folder, or sklearn-digits")
    score.add_argument("--split", default="test", choices=("train", "test"), help="which split (default test)")
    score.add_argument("--normal", help="normal classes for the report (default: those the run was fitted on)")
    score.add_argument("--out", required=True, help="folder for scores.csv, report.json, pr_curve.png")
    add_output_flags(score)
    score.set_defaults(func=cmd_anomaly_score)


def _add_diffusion_flags(parser, default_scheduler: str = "ddim") -> None:
    add_inference_steps_flag(parser, default=50)
    parser.add_argument("--scheduler", default=default_scheduler, choices=SCHEDULERS,
                        help=f"sampler (default {default_scheduler})")
    parser.add_argument("--label", help="class (name or index) to condition on (class-conditional models)")
    parser.add_argument("--guidance", type=number, default=1.0,
                        help="classifier-free guidance scale; 1 = none (default 1)")
    parser.add_argument("--seed", type=seed, default=0, help="random seed (default 0): the same seed, the same image")
    _add_precision_flag(parser)
    add_output_flags(parser)


def add_inference_steps_flag(parser, default: int | None) -> None:
    """--num-inference-steps (denoising steps, diffusers' name); the old --steps still works, with a warning."""
    parser.add_argument("--num-inference-steps", type=positive_int, default=default,
                        help="diffusion: denoising steps (default 50)")
    add_deprecated_alias(parser, "--steps", "--num-inference-steps", "num_inference_steps", positive_int)


def _add_precision_flag(parser) -> None:
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                        help="auto (default): bf16 autocast on the CPU, about 2.5x faster than fp32; fp32 elsewhere")


def add_parsers(sub) -> None:
    sample = sub.add_parser("sample", help="generate images with a trained diffusion model, GAN or VAE",
                            description="Draw N images from a trained generative model and write them as one "
                                        "PNG grid. Class-conditional models take --label (default: every class in "
                                        "turn) and, for diffusion, --guidance.")
    sample.add_argument("run", help="a `dlforge train diffusion|gan|vae` run or model folder")
    sample.add_argument("--n", type=positive_int, default=64, help="number of images (default 64)")
    sample.add_argument("--out", required=True, help="PNG grid to write")
    sample.add_argument("--nrow", type=positive_int, help="images per grid row (default: a square)")
    sample.add_argument("--scale", type=positive_int, default=1, help="enlarge the grid by this factor")
    sample.add_argument("--each", metavar="DIR", help="also write one PNG per image into DIR (e.g. to augment a "
                                                      "classifier's training set; names end in the label)")
    add_inference_steps_flag(sample, default=None)
    sample.add_argument("--scheduler", choices=SCHEDULERS, help="diffusion: sampler (default ddim)")
    sample.add_argument("--eta", type=number, help="diffusion, DDIM: 0 = deterministic (default), 1 = DDPM-like")
    sample.add_argument("--label", help="class (name or index) for every image (conditional models)")
    sample.add_argument("--guidance", type=number, help="diffusion: classifier-free guidance scale (default 1 = none)")
    sample.add_argument("--seed", type=seed, default=0, help="random seed (default 0)")
    _add_precision_flag(sample)
    add_output_flags(sample)
    sample.set_defaults(func=cmd_sample)

    img2img = sub.add_parser("img2img", help="re-imagine an image with a diffusion model (SDEdit)",
                             description="Noise the image part of the way (--strength) and denoise it back with a "
                                         "trained diffusion model: low strength keeps the layout, 1 ignores it.")
    img2img.add_argument("run", help="a `dlforge train diffusion` run or model folder")
    img2img.add_argument("--image", required=True, help="input image; the output has its size")
    img2img.add_argument("--strength", type=number, default=0.6, help="how far to noise it, in [0, 1] (default 0.6)")
    img2img.add_argument("--out", required=True, help="output PNG")
    _add_diffusion_flags(img2img)
    img2img.set_defaults(func=cmd_img2img)

    inpaint = sub.add_parser("inpaint", help="fill the masked part of an image with a diffusion model",
                             description="Regenerate the white part of --mask; the rest of the image is kept "
                                         "exactly. --resample > 1 harmonises the fill (RePaint).")
    inpaint.add_argument("run", help="a `dlforge train diffusion` run or model folder")
    inpaint.add_argument("--image", required=True, help="input image; the output has its size")
    inpaint.add_argument("--mask", required=True, help="mask image of the same size: white = fill, black = keep")
    inpaint.add_argument("--out", required=True, help="output PNG")
    inpaint.add_argument("--resample", type=positive_int, default=1,
                         help="RePaint resamplings per step (default 1 = none; 5-10 blends better, slower)")
    _add_diffusion_flags(inpaint, default_scheduler="ddpm")
    inpaint.set_defaults(func=cmd_inpaint)

    outpaint = sub.add_parser("outpaint", help="extend an image beyond its borders with a diffusion model",
                              description="Shrink the image into the centre of a canvas of the model's size, "
                                          "leaving --pad pixels on each side, and inpaint the border.")
    outpaint.add_argument("run", help="a `dlforge train diffusion` run or model folder")
    outpaint.add_argument("--image", required=True, help="input image; the output has its size")
    outpaint.add_argument("--pad", type=positive_int, required=True, help="border to invent, in pixels per side")
    outpaint.add_argument("--out", required=True, help="output PNG")
    outpaint.add_argument("--resample", type=positive_int, default=1, help="RePaint resamplings per step")
    _add_diffusion_flags(outpaint, default_scheduler="ddpm")
    outpaint.set_defaults(func=cmd_outpaint)

    strip = sub.add_parser("noise-strip", help="picture of the forward noising and reverse denoising of an image",
                           description="Write a PNG: the image noised at increasing timesteps (top row) and the "
                                       "model denoising it back (bottom row).")
    strip.add_argument("run", help="a `dlforge train diffusion` run or model folder")
    strip.add_argument("--image", required=True, help="input image")
    strip.add_argument("--out", required=True, help="output PNG")
    _add_diffusion_flags(strip)
    strip.set_defaults(func=cmd_noise_strip)
    _add_anomaly_parsers(sub)
    _add_adapt_parser(sub)
    _add_autoencoder_parsers(sub)
