"""Transfer learning for images: pretrain a ViT / ResNet backbone on some classes, fine-tune it on others
(full, top-k, LoRA, features), few-label sampling, the one-cycle schedule, and the vision pipelines."""

from __future__ import annotations

import json

import pytest
import torch

import dlforge
from dlforge.errors import DlforgeError
from dlforge.models import load_pretrained
from dlforge.training.images import train_image_model
from dlforge.transfer.recipe import finetune
from dlforge.transfer.tasks.image_classification import ImageClassificationTask


@pytest.fixture(scope="module")
def backbones(pattern_mnist, tmp_path_factory) -> dict:
    """A tiny ResNet and ViT trained on classes 0 and 1 of the pattern images (bars), 60 steps each."""
    runs = {}
    for kind in ("resnet", "vit"):
        out = tmp_path_factory.mktemp(f"{kind}-pretrain")
        train_image_model(kind, pattern_mnist, out, preset="tiny", overrides={"only_classes": "0,1"}, seed=0,
                          progress=False)
        runs[kind] = out
    return runs


def test_pretraining_on_some_classes_makes_a_labelled_backbone(backbones):
    for kind, run in backbones.items():
        model, _ = load_pretrained(run)
        assert model.kind == kind and model.config.labels == ["0", "1"] and model.config.num_labels == 2
        assert (run / "checkpoints" / "best" / "preprocessor_config.json").is_file()
        metrics = [line.split(",") for line in (run / "metrics.csv").read_text().splitlines()]
        accuracy = [float(row[metrics[0].index("val_accuracy")]) for row in metrics[1:]
                    if row[metrics[0].index("val_accuracy")]]
        assert accuracy[-1] > 0.9, f"{kind} did not learn bars apart: {accuracy}"


@pytest.mark.parametrize("kind, method", [("resnet", "full"), ("resnet", "features"), ("resnet", "top-k"),
                                          ("vit", "full"), ("vit", "lora"), ("vit", "features")])
def test_finetune_to_new_classes(backbones, pattern_mnist, tmp_path, kind, method):
    """Classes 2 (squares) and 0 (bars) with a new head; evaluated on the test split of the same IDX folder."""
    settings = dict(max_steps=40, batch_size=16, lr=3e-3, eval_interval=20, seed=0,
                    options={"classes": "2,0"})
    if method == "top-k":
        settings["top_k_layers"] = 1
    if method == "features":  # only a linear head trains, on cached vectors: cheap steps, a larger rate
        settings.update(max_steps=100, lr=3e-2)
    report = finetune(backbones[kind], "image-classification", pattern_mnist, pattern_mnist, out=tmp_path,
                      method=method, progress=False, **settings)
    assert report["accuracy"] >= 0.9, report
    assert report["eval_examples"] == 40  # the test split: 60 images, two of three classes
    assert set(report["per_class"]) == {"0", "2"} and (tmp_path / "confusion_matrix.png").is_file()
    model, _ = load_pretrained(tmp_path / "model")
    assert model.kind == kind and sorted(model.config.labels) == ["0", "2"]
    trainable = report["training"]["trainable_parameters"]
    if method in ("features", "lora", "top-k"):
        assert trainable < report["training"]["parameters"] / 2 or method == "top-k"
    # the exported model predicts what the report says
    clf = dlforge.pipeline("image-classification", model=tmp_path / "model")
    test = ImageClassificationTask(classes="2,0").read_split(pattern_mnist, "evaluation")
    predictions = clf([e["image"] for e in test], top_k=1)
    accuracy = sum(p[0]["label"] == e["label"] for p, e in zip(predictions, test)) / len(test)
    assert accuracy == pytest.approx(report["accuracy"])


def test_frozen_backbone_does_not_change(backbones, pattern_mnist, tmp_path):
    before, _ = load_pretrained(backbones["resnet"])
    finetune(backbones["resnet"], "image-classification", pattern_mnist, out=tmp_path, method="features",
             progress=False, max_steps=10, batch_size=16, options={"classes": "2,0"})
    after, _ = load_pretrained(tmp_path / "model")
    old, new = before.state_dict(), after.state_dict()
    changed = [name for name in new if not name.startswith("head.") and not torch.equal(old[name], new[name])]
    assert not changed, changed  # weights and BatchNorm running statistics alike


def test_per_class_and_class_options(pattern_mnist):
    task = ImageClassificationTask(classes="1,2", per_class=4, sample_seed=3)
    train = task.read_split(pattern_mnist, "training")
    assert sorted(e["label"] for e in train) == ["1"] * 4 + ["2"] * 4
    assert task.read_split(pattern_mnist, "training")[0]["image"].equal(train[0]["image"])  # seeded
    other = ImageClassificationTask(classes="1,2", per_class=4, sample_seed=4).read_split(pattern_mnist, "training")
    assert any(not a["image"].equal(b["image"]) for a, b in zip(train, other))
    assert len(task.read_split(pattern_mnist, "evaluation")) == 40  # per_class never shrinks the evaluation
    with pytest.raises(DlforgeError, match="unknown class 7"):
        ImageClassificationTask(classes="7").read_split(pattern_mnist, "training")
    with pytest.raises(DlforgeError, match="per_class must be"):
        ImageClassificationTask(per_class=0)


def test_image_folders_and_one_cycle(backbones, pattern_mnist, tmp_path):
    """A folder of PNGs (one sub-folder per class, train/ and test/) with the one-cycle schedule."""
    from dlforge.data.images import load_image_set, write_image

    for split in ("train", "test"):
        data = load_image_set(pattern_mnist, split)
        for i, (image, label) in enumerate(zip(data.images, data.labels)):
            if label.item() in (0, 2):
                name = {0: "bars", 2: "square"}[label.item()]
                write_image(image.float() / 127.5 - 1, tmp_path / "pics" / split / name / f"{i}.png")
    report = finetune(backbones["resnet"], "image-classification", tmp_path / "pics", tmp_path / "pics",
                      out=tmp_path / "run", progress=False, max_steps=40, batch_size=16, lr=3e-3,
                      decay="one-cycle", warmup_ratio=0.25, options={"load_size": 28})
    assert report["accuracy"] >= 0.9 and set(report["per_class"]) == {"bars", "square"}
    lrs = [float(row.split(",")[-3]) for row in (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1:]
           if row.split(",")[1]]
    assert max(lrs) == pytest.approx(3e-3, rel=0.05) and lrs[-1] < 3e-3 / 10  # logged every 10 steps


def test_pipelines_take_files_folders_and_give_vectors(backbones, pattern_mnist, tmp_path):
    from dlforge.data.images import load_image_set, write_image

    for i, image in enumerate(load_image_set(pattern_mnist, "test").images[:6]):
        write_image(image.float() / 127.5 - 1, tmp_path / "in" / f"{i}.png")
    clf = dlforge.pipeline("image-classification", model=backbones["resnet"])
    single = clf(str(tmp_path / "in" / "0.png"), top_k=2)
    assert [r["label"] for r in single] in (["0", "1"], ["1", "0"]) and single[0]["score"] >= single[1]["score"]
    folder = clf(tmp_path / "in", top_k=1)
    assert len(folder) == 6 and all(len(r) == 1 for r in folder)
    fx = dlforge.pipeline("image-feature-extraction", model=backbones["vit"])
    vectors = fx([str(tmp_path / "in" / "0.png"), str(tmp_path / "in" / "1.png")], pool=True)
    model, _ = load_pretrained(backbones["vit"])
    assert len(vectors) == 2 and len(vectors[0]) == 1 and len(vectors[0][0]) == model.config.hidden_size
    tokens = fx(str(tmp_path / "in" / "0.png"))  # as transformers: every token's state by default, [1, T, hidden]
    assert len(tokens) == 1 and len(tokens[0]) == 1 + (28 // model.config.patch_size) ** 2
    with pytest.raises(DlforgeError, match="needs a ViT or ResNet"):
        dlforge.pipeline("image-classification", model=_gan(tmp_path))


def _gan(tmp_path):
    train_image_model("gan", "sklearn-digits", tmp_path / "gan", preset="tiny", overrides={"max_steps": 2},
                      progress=False)
    return tmp_path / "gan"


def test_errors_name_the_problem(backbones, pattern_mnist, tmp_path):
    with pytest.raises(DlforgeError, match="training source .* does not exist"):
        finetune(backbones["resnet"], "image-classification", tmp_path / "nope", out=tmp_path / "a")
    with pytest.raises(DlforgeError, match="fine-tunes a ViT or ResNet"):
        finetune(_gan(tmp_path), "image-classification", pattern_mnist, out=tmp_path / "b", max_steps=1)
    with pytest.raises(DlforgeError, match="does not fit image-classification|BERT teacher"):
        finetune(backbones["resnet"], "image-classification", pattern_mnist, out=tmp_path / "c", method="distill",
                 teacher=str(backbones["resnet"]), student_layers=1)


def test_cli_finetune_and_pipeline(cli, backbones, pattern_mnist, tmp_path):
    code, out, err = cli("finetune", "--task", "image-classification", "--model", str(backbones["vit"]),
                         "--train", str(pattern_mnist), "--eval", str(pattern_mnist), "--out", str(tmp_path / "ft"),
                         "--method", "full", "--max-steps", "30", "--batch-size", "16", "--lr", "3e-3",
                         "--option", "classes=0,2", "--quiet")
    assert code == 0, err
    report = json.loads((tmp_path / "ft" / "report.json").read_text())
    assert report["task"] == "image-classification" and report["accuracy"] > 0.8
    from dlforge.data.images import write_image

    write_image(torch.zeros(1, 28, 28), tmp_path / "imgs" / "blank.png")
    code, out, err = cli("pipeline", "image-classification", str(tmp_path / "imgs"), "--model",
                         str(tmp_path / "ft" / "model"), "--top-k", "2")
    assert code == 0, err
    line = json.loads(out.strip().splitlines()[0])
    assert line["input"].endswith("blank.png") and {r["label"] for r in line["output"]} == {"0", "2"}


def test_lr_find_for_a_finetuning_run(backbones, pattern_mnist, tmp_path, cli):
    from dlforge.transfer.recipe import find_learning_rate

    before, _ = load_pretrained(backbones["resnet"])
    result = find_learning_rate(backbones["resnet"], "image-classification", pattern_mnist, tmp_path / "find",
                                min_lr=1e-5, max_lr=10, steps=30, batch_size=16, progress=False,
                                options={"classes": "2,0"})
    assert (tmp_path / "find" / "lr_find.png").is_file() and result["steps_run"] >= 10
    assert 1e-5 <= result["suggestion"] <= 10 and result["lrs"][0] == pytest.approx(1e-5)
    json.loads((tmp_path / "find" / "lr_find.json").read_text())
    after, _ = load_pretrained(backbones["resnet"])  # the run folder is untouched
    assert all(torch.equal(a, b) for a, b in zip(before.state_dict().values(), after.state_dict().values()))
    code, out, err = cli("lr-find", "--task", "image-classification", "--model", backbones["vit"], "--train",
                         pattern_mnist, "--out", tmp_path / "cli", "--max-steps", "20", "--min-lr", "1e-5",
                         "--option", "classes=0,2", "--quiet")
    assert code == 0, err
    assert "suggested learning rate" in out or "never fell" in out
    assert (tmp_path / "cli" / "lr_find.png").is_file()


def test_cli_adapt_writes_an_ordinary_classifier(cli, backbones, pattern_mnist, tmp_path):
    code, out, err = cli("adapt", "--model", backbones["resnet"], "--source", pattern_mnist, "--target",
                         pattern_mnist, "--out", tmp_path / "dann", "--max-steps", "20", "--batch-size", "16",
                         "--set", "domain_hidden=32", "--quiet")
    assert code == 0, err
    assert "dann: source accuracy" in out and "target accuracy" in out
    report = json.loads((tmp_path / "dann" / "report.json").read_text())
    assert report["method"] == "dann" and 0 <= report["target_accuracy"] <= 1
    model, _ = load_pretrained(tmp_path / "dann" / "model")
    assert model.kind == "resnet" and model.config.labels == ["0", "1", "2"]
    code, out, err = cli("adapt", "--model", backbones["resnet"], "--source", pattern_mnist, "--target",
                         pattern_mnist, "--out", tmp_path / "bad", "--set", "gamma=-1")
    assert code != 0 and "gamma must be > 0" in err and "Traceback" not in err


def test_augmented_batches_are_seeded_and_keep_the_labels(backbones, pattern_mnist, tmp_path):
    from dlforge.transfer.recipe import FinetuneSettings, prepare_finetune

    settings = FinetuneSettings.build("full", {"options": {"classes": "2,0", "crop_padding": 3}, "batch_size": 8})
    prep = prepare_finetune(backbones["resnet"], "image-classification", pattern_mnist, None, "full", settings,
                            tmp_path)
    first, again = prep.batches.train_batch(0), prep.batches.train_batch(0)
    assert torch.equal(first["pixel_values"], again["pixel_values"])  # batch k depends on (seed, k) alone
    plain = unaugmented_first_batch(prep)
    assert torch.equal(first["labels"], plain["labels"])
    assert not torch.equal(first["pixel_values"], plain["pixel_values"])  # translated
    assert first["pixel_values"].min() >= -1.0 and first["pixel_values"].max() <= 1.0  # black came in, in [-1, 1]
    settings = FinetuneSettings.build("full", {"options": {"classes": "2,0", "rotate": 15, "scale": 0.1},
                                               "batch_size": 8})
    prep = prepare_finetune(backbones["resnet"], "image-classification", pattern_mnist, None, "full", settings,
                            tmp_path / "affine")
    turned = prep.batches.train_batch(0)
    assert torch.equal(turned["labels"], plain["labels"])
    assert not torch.equal(turned["pixel_values"], plain["pixel_values"])  # rotated and zoomed
    assert torch.equal(turned["pixel_values"], prep.batches.train_batch(0)["pixel_values"])
    for bad, message in (({"rotate": -5}, "rotate must be"), ({"scale": 1.5}, "scale must be")):
        with pytest.raises(DlforgeError, match=message):
            ImageClassificationTask(**bad)


def unaugmented_first_batch(prep) -> dict:
    """Batch 0 of the same run without augmentation."""
    from dlforge.transfer.tasks import ExampleBatches

    b = prep.batches
    return ExampleBatches(b.train, b.eval, b.batch_size, b.grad_accum, b.seed).train_batch(0)
