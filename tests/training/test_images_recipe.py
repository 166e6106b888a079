"""The image training recipe (`train_image_model`) and the anomaly recipe, on small synthetic IDX data."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from PIL import Image

from dlforge.errors import DlforgeError
from dlforge.hub.weights import load_state_dict
from dlforge.models import load_pretrained
from dlforge.settings import parse_overrides
from dlforge.training.anomaly import fit_anomaly_detector, score_anomalies
from dlforge.training.images import field_types, train_image_model

# the smallest settings that still exercise evaluation, previews and checkpoints
QUICK = {"max_steps": 4, "eval_interval": 2, "log_interval": 1, "batch_size": 16, "eval_images": 32,
         "preview_images": 8}
SMALL_MODELS = {"ae": {}, "vae": {}, "gan": {"latent_dim": 8}, "classifier": {"width": 4, "hidden": 16},
                "diffusion": {"base_channels": 8}}


def _metrics(run) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("kind", ["ae", "vae", "gan", "classifier", "diffusion"])
def test_every_family_trains_and_writes_a_run(kind, pattern_mnist, tmp_path):
    run = tmp_path / kind
    result = train_image_model(kind, pattern_mnist, run, preset="tiny", overrides={**QUICK, **SMALL_MODELS[kind]},
                               progress=False)
    assert result["step"] == 4
    model, _ = load_pretrained(run)
    assert model.kind == {"classifier": "image-classifier"}.get(kind, kind)
    assert model.config.image_size == 28 and model.config.channels == 1
    conditional = kind in ("gan", "diffusion", "classifier")
    assert model.config.num_classes == (3 if conditional else 0)
    labels_file = run / "checkpoints" / "best" / "labels.json"
    assert json.loads(labels_file.read_text()) == ["0", "1", "2"] if conditional else not labels_file.exists()
    assert Image.open(run / "samples.png").size[0] >= 28 and (run / "samples" / "step-0000004.png").is_file()
    rows = _metrics(run)
    for name in getattr(model, "log_names", ()):  # e.g. a GAN's d_loss, g_loss, D(x), D(G(z))
        assert any(row[name] for row in rows), name


def test_gan_keeps_latest_weights_as_best_and_resumes_exactly(pattern_mnist, tmp_path):
    settings = {**QUICK, "max_steps": 6, "eval_interval": 3, "latent_dim": 8}
    train_image_model("gan", pattern_mnist, tmp_path / "straight", preset="tiny", overrides=settings, progress=False)
    best = load_state_dict(tmp_path / "straight" / "checkpoints" / "best")
    last = load_state_dict(tmp_path / "straight" / "checkpoints" / "step-0000006")
    assert all(torch.equal(best[k], last[k]) for k in best)

    def stop_at_3(trainer, metrics):
        if metrics["step"] == 3:
            raise KeyboardInterrupt  # as Ctrl-C after the checkpoint of step 3

    with pytest.raises(KeyboardInterrupt):
        train_image_model("gan", pattern_mnist, tmp_path / "split", preset="tiny", overrides=settings,
                          on_eval=stop_at_3, progress=False)
    assert train_image_model("gan", None, tmp_path / "split", resume=True, progress=False)["step"] == 6
    resumed = load_state_dict(tmp_path / "split" / "checkpoints" / "step-0000006")
    assert all(torch.equal(resumed[k], last[k]) for k in last)


def test_run_errors(pattern_mnist, tmp_path):
    train_image_model("ae", pattern_mnist, tmp_path / "ae", preset="tiny", overrides=QUICK, progress=False)
    with pytest.raises(DlforgeError, match="holds a ae run, not a vae run"):
        train_image_model("vae", None, tmp_path / "ae", resume=True, progress=False)
    with pytest.raises(DlforgeError, match="already holds"):
        train_image_model("ae", pattern_mnist, tmp_path / "ae", preset="tiny", progress=False)
    with pytest.raises(DlforgeError, match="unknown class 7"):
        train_image_model("ae", pattern_mnist, tmp_path / "x", preset="tiny", overrides={"only_classes": "7"},
                          progress=False)
    with pytest.raises(DlforgeError, match="unknown key"):
        parse_overrides(["n_layer=3"], field_types("gan"))
    assert parse_overrides(["hidden_sizes=64,32", "image_size=32"], field_types("ae")) == {"hidden_sizes": [64, 32],
                                                                                          "image_size": 32}
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    for i in range(4):
        Image.new("L", (12, 12), 40 * i).save(folder / f"{i}.png")
    with pytest.raises(DlforgeError, match="no class labels"):
        train_image_model("classifier", folder, tmp_path / "clf", preset="tiny", progress=False)


@pytest.mark.parametrize("kind", ["ae", "vae", "gan", "classifier", "diffusion"])
def test_every_family_trains_on_an_image_folder_at_another_resolution(kind, tmp_path):
    folder = tmp_path / "pictures"
    for name, colour in (("red", (220, 20, 20)), ("blue", (20, 20, 220))):
        (folder / name).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (40 + i, 30), colour).save(folder / name / f"{i}.jpg")
    run = tmp_path / "run"
    train_image_model(kind, folder, run, preset="tiny", overrides={**QUICK, **SMALL_MODELS[kind], "image_size": 32,
                                                                    "val_fraction": 0.2}, progress=False)
    model, _ = load_pretrained(run)
    conditional = kind in ("gan", "diffusion", "classifier")
    assert (model.config.image_size, model.config.channels, model.config.num_classes) == (32, 3, 2 * conditional)
    assert Image.open(run / "samples.png").mode == "RGB"
    if kind == "gan":
        assert model.generate(2, labels=torch.tensor([0, 1]), seed=0).shape == (2, 3, 32, 32)


def test_anomaly_fit_and_score(pattern_mnist, tmp_path):
    run = tmp_path / "normal-0"
    detector = fit_anomaly_detector(pattern_mnist, run, normal="0", preset="tiny",
                                    overrides={**QUICK, "max_steps": 30, "architecture": "mlp"}, progress=False)
    assert detector.threshold > 0 and (run / "anomaly_detector.json").is_file()
    assert json.loads((run / "run.json").read_text())["data_settings"]["only_classes"] == "0"
    report = score_anomalies(run, pattern_mnist, tmp_path / "report", split="test")
    assert report["n"] == 60 and report["n_anomalies"] == 40
    assert report["roc_auc"] > 0.9  # bars of another orientation, or squares, reconstruct badly
    assert (tmp_path / "report" / "pr_curve.png").is_file()
    rows = list(csv.DictReader(open(tmp_path / "report" / "scores.csv")))
    assert len(rows) == 60 and {row["is_anomaly"] for row in rows} == {"0", "1"}
    f1 = fit_anomaly_detector(pattern_mnist, tmp_path / "f1", normal="0", preset="tiny", method="f1",
                              overrides={**QUICK, "max_steps": 30, "architecture": "mlp"}, progress=False)
    assert f1.method == "f1" and f1.validation is not None
