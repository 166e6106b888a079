"""The image commands: train (image families), sample, img2img, inpaint, outpaint, noise-strip, anomaly; and their
one-line errors."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from dlforge.cli.main import main
from dlforge.errors import DlforgeError

QUICK = ["--preset", "tiny", "--max-steps", "4", "--set", "eval_interval=4", "--set", "eval_images=32",
         "--set", "batch_size=16", "--seed", "3", "--quiet"]


@pytest.fixture(scope="module")
def runs(pattern_mnist, tmp_path_factory):
    """Tiny diffusion, GAN, classifier and VAE runs on the pattern digits, trained through the CLI."""
    root = tmp_path_factory.mktemp("image-runs")
    extra = {"diffusion": ["--set", "base_channels=8"], "gan": ["--set", "latent_dim=8"],
             "classifier": ["--set", "width=4"], "vae": ["--set", "latent_dim=3"]}
    for kind, settings in extra.items():
        assert main(["train", kind, "--data", str(pattern_mnist), "--out", str(root / kind), *QUICK, *settings]) == 0
    return root


@pytest.fixture(scope="module")
def digit_png(pattern_mnist, tmp_path_factory) -> str:
    from dlforge.data.images import load_image_set, to_signed_unit, write_image

    path = tmp_path_factory.mktemp("inputs") / "digit.png"
    write_image(to_signed_unit(load_image_set(pattern_mnist, "test").images[0]), path)
    return str(path)


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_sample_grid_is_seeded_and_labelled(runs, tmp_path, cli):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        code, out, _ = cli("sample", runs / "diffusion", "--n", 6, "--num-inference-steps", 3, "--label", "2",
                               "--guidance", 2, "--seed", seed, "--out", tmp_path / f"{name}.png",
                               "--each", tmp_path / name)
        assert code == 0 and "6 images" in out
    assert np.array_equal(_pixels(tmp_path / "a.png"), _pixels(tmp_path / "b.png"))
    assert not np.array_equal(_pixels(tmp_path / "a.png"), _pixels(tmp_path / "c.png"))
    assert sorted(p.name for p in (tmp_path / "a").iterdir())[0] == "0000-2.png"
    code, _, _ = cli("sample", runs / "gan", "--n", 9, "--out", tmp_path / "gan.png")
    assert code == 0 and Image.open(tmp_path / "gan.png").size == (3 * 30 + 2, 3 * 30 + 2)


@pytest.mark.parametrize("argv, message", [
    (["sample", "{classifier}", "--n", "2"], "needs a diffusion or gan or vae model"),
    (["sample", "{gan}", "--num-inference-steps", "5"], "options of diffusion models only"),
    (["sample", "{diffusion}", "--label", "cat"], "unknown label 'cat': this model knows 0, 1, 2"),
    (["img2img", "{gan}", "--image", "{digit}"], "needs a diffusion model"),
    (["anomaly", "score", "{diffusion}", "--data", "{data}"], "anomaly scoring needs an ae or vae run"),
])
def test_wrong_model_or_option_is_one_line(runs, digit_png, pattern_mnist, tmp_path, cli, argv, message):
    fill = {"classifier": runs / "classifier", "gan": runs / "gan", "diffusion": runs / "diffusion",
            "digit": digit_png, "data": pattern_mnist}
    code, _, err = cli(*[a.format(**fill) for a in argv], "--out", tmp_path / "x.png")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_image_tasks_write_model_size_images(runs, digit_png, tmp_path, cli):
    mask = np.zeros((28, 28), dtype=np.uint8)
    mask[14:] = 255  # fill the lower half
    Image.fromarray(mask).save(tmp_path / "mask.png")
    common = ["--num-inference-steps", "4", "--seed", "0"]
    assert cli("img2img", runs / "diffusion", "--image", digit_png, "--strength", 0.5,
                   "--out", tmp_path / "i2i.png", *common)[0] == 0
    assert cli("inpaint", runs / "diffusion", "--image", digit_png, "--mask", tmp_path / "mask.png",
                   "--resample", 2, "--label", 1, "--guidance", 2, "--out", tmp_path / "fill.png", *common)[0] == 0
    assert cli("outpaint", runs / "diffusion", "--image", digit_png, "--pad", 4,
                   "--out", tmp_path / "wide.png", *common)[0] == 0
    assert cli("noise-strip", runs / "diffusion", "--image", digit_png,
                   "--out", tmp_path / "strip.png", *common)[0] == 0
    for name in ("i2i", "fill", "wide"):
        assert _pixels(tmp_path / f"{name}.png").shape == (28, 28)
    original, filled = _pixels(digit_png), _pixels(tmp_path / "fill.png")
    assert np.array_equal(filled[:14], original[:14])  # the known half is kept exactly
    assert not np.array_equal(filled[14:], original[14:])
    strip = Image.open(tmp_path / "strip.png")
    assert strip.size[0] > 4 * 28 and strip.size[1] >= 2 * 28


def test_image_tasks_return_the_inputs_size(runs, digit_png, tmp_path, cli):
    """A picture larger than the 28x28 model, and not square, comes back at its own size: the model's result over
    the centre square it was cropped to, the pixels outside that square untouched."""
    digit = Image.open(digit_png).resize((56, 56), Image.Resampling.NEAREST)
    wide = Image.new("L", (80, 56), 90)
    wide.paste(digit, (12, 0))
    wide.save(tmp_path / "wide.png")
    mask = Image.new("L", (80, 56), 0)
    mask.paste(255, (12, 28, 68, 56))  # fill the lower half of the digit
    mask.save(tmp_path / "mask.png")
    common = ["--image", tmp_path / "wide.png", "--num-inference-steps", "3", "--seed", "0"]
    assert cli("img2img", runs / "diffusion", "--out", tmp_path / "i2i.png", *common)[0] == 0
    assert cli("inpaint", runs / "diffusion", "--mask", tmp_path / "mask.png", "--out", tmp_path / "fill.png",
               *common)[0] == 0
    assert cli("outpaint", runs / "diffusion", "--pad", 4, "--out", tmp_path / "out.png", *common)[0] == 0
    original = _pixels(tmp_path / "wide.png")
    for name in ("i2i", "fill", "out"):
        result = _pixels(tmp_path / f"{name}.png")
        assert result.shape == (56, 80)
        assert np.array_equal(result[:, :12], original[:, :12]) and np.array_equal(result[:, 68:], original[:, 68:])
    filled = _pixels(tmp_path / "fill.png")
    assert np.array_equal(filled[:28], original[:28])  # inpaint changes the white of the mask alone
    assert not np.array_equal(filled[28:, 12:68], original[28:, 12:68])


def test_bad_images_and_masks(runs, digit_png, tmp_path, cli):
    Image.new("L", (10, 10)).save(tmp_path / "small-mask.png")
    code, _, err = cli("inpaint", runs / "diffusion", "--image", digit_png, "--mask",
                           tmp_path / "small-mask.png", "--out", tmp_path / "o.png")
    assert code == 2 and "the mask is 10x10 but the image is 28x28" in err
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    code, _, err = cli("img2img", runs / "diffusion", "--image", tmp_path / "broken.png",
                           "--out", tmp_path / "o.png")
    assert code == 2 and "cannot read image" in err and "broken.png" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = cli("train", "gan", "--data", empty, "--out", tmp_path / "r", "--quiet")
    assert code == 2 and "holds no images" in err
    assert not (tmp_path / "r" / "run.json").exists()


def test_anomaly_commands(pattern_mnist, tmp_path, cli):
    run = tmp_path / "normal-1"
    code, out, _ = cli("anomaly", "fit", "--data", pattern_mnist, "--normal", "1", "--out", run,
                           "--preset", "tiny", "--max-steps", 30, "--set", "architecture=mlp", "--quiet")
    assert code == 0 and "95th percentile" in out
    code, out, _ = cli("anomaly", "score", run, "--data", pattern_mnist, "--out", tmp_path / "rep")
    assert code == 0 and "roc_auc" in out and (tmp_path / "rep" / "report.json").is_file()
    code, out, _ = cli("anomaly", "fit", "--out", run, "--refit", "--threshold", "f1")
    assert code == 0 and "best F1" in out


def test_no_traceback_from_a_real_process(dlforge_cmd, subprocess_env, tmp_path):
    done = subprocess.run(dlforge_cmd("train", "vae", "--data", str(tmp_path / "nowhere"), "--out",
                                      str(tmp_path / "r")), capture_output=True, text=True, env=subprocess_env)
    assert done.returncode == 2 and "Traceback" not in done.stderr and "does not exist" in done.stderr


def test_image_generation_pipeline_matches_the_cli(runs, tmp_path, cli):
    import dlforge
    from dlforge.data.images import to_uint8

    gen = dlforge.pipeline("image-generation", model=runs / "diffusion")
    images = gen(3, label="1", steps=3, seed=4)
    assert images.shape == (3, 1, 28, 28) and torch.equal(images, gen(3, label="1", steps=3, seed=4))
    exact = gen(3, label="1", steps=3, seed=4, precision="fp32")
    assert 0 < (exact - images).abs().max() < 0.2  # bf16 autocast (the CPU default) stays close to fp32
    assert cli("sample", runs / "diffusion", "--n", 3, "--label", 1, "--num-inference-steps", 3, "--seed", 4,
               "--nrow", 3, "--out", tmp_path / "g.png", "--each", tmp_path / "each")[0] == 0
    assert np.array_equal(_pixels(tmp_path / "each" / "0002-1.png"), to_uint8(images[2, 0]).numpy())
    with pytest.raises(DlforgeError, match="needs a diffusion or gan or vae model"):
        dlforge.pipeline("image-generation", model=runs / "classifier")


def test_autoencoder_tools(runs, digit_png, pattern_mnist, tmp_path, cli):
    code, out, _ = cli("latent-plot", runs / "vae", "--data", pattern_mnist, "--n", 40, "--out", tmp_path / "z.png")
    assert code == 0 and "40 images" in out and Image.open(tmp_path / "z.png").size[0] > 300
    code, _, _ = cli("interpolate", runs / "vae", "--image", digit_png, "--image", digit_png, "--nrow", 5,
                     "--scale", 1, "--out", tmp_path / "walk.png")
    walk = _pixels(tmp_path / "walk.png")
    assert code == 0 and walk.shape == (28 + 4, 5 * 30 + 2)
    assert np.array_equal(walk[2:30, 2:30], walk[2:30, 122:150])  # same image at both ends: same decode
    code, _, err = cli("interpolate", runs / "vae", "--image", digit_png, "--out", tmp_path / "w.png")
    assert code == 2 and "exactly twice" in err
    code, _, err = cli("latent-plot", runs / "diffusion", "--data", pattern_mnist, "--out", tmp_path / "x.png")
    assert code == 2 and "needs a ae or vae model" in err



@pytest.fixture
def crafted_run(runs, tmp_path):
    """write_labels(content) -> a copy of the GAN run whose labels.json files hold `content`."""
    run = tmp_path / "crafted-run"
    shutil.copytree(runs / "gan", run)

    def write_labels(content):
        for labels in run.rglob("labels.json"):
            labels.write_text(json.dumps(content))
        return run

    return write_labels


def _files(root) -> set:
    return {p for p in root.rglob("*") if p.is_file()}


def test_class_names_from_labels_json_stay_inside_each_folder(crafted_run, tmp_path, cli):
    deep = "/.." * (len(tmp_path.parts) + 4)  # up to / from inside --each, then down to tmp_path again
    run = crafted_run(["/../../x", f"{deep}{tmp_path}/y", ".."])
    before = _files(tmp_path)
    code, _, err = cli("sample", run, "--n", 3, "--out", tmp_path / "grid.png", "--each", tmp_path / "each")
    assert code == 0, err
    written = sorted(p.name for p in (tmp_path / "each").iterdir())
    assert len(written) == 3 and written[0] == "0000-x.png" and written[2] == "0002-_.png"
    assert written[1].startswith("0001-") and written[1].endswith("_y.png") and "/" not in written[1]
    # nothing else anywhere: the old code wrote tmp_path/x.png and tmp_path/y.png
    assert _files(tmp_path) - before == {tmp_path / "grid.png", *((tmp_path / "each" / name) for name in written)}


def test_labels_json_that_is_not_a_list_of_names(crafted_run, tmp_path, cli):
    for content in ({"0": "zero"}, [1, 2, 3]):
        code, _, err = cli("sample", crafted_run(content), "--n", 2, "--out", tmp_path / "grid.png",
                           "--each", tmp_path / "each")
        assert code == 2 and "labels.json must hold a list of class names" in err
        assert len(err.strip().splitlines()) == 1


def _image_folder(root, sizes_by_class: dict[str, list[tuple[int, int]]]):
    rng = np.random.default_rng(0)
    for name, sizes in sizes_by_class.items():
        (root / name).mkdir(parents=True)
        for i, (width, height) in enumerate(sizes):
            Image.fromarray(rng.integers(0, 255, (height, width), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def test_training_on_a_folder_uses_the_images_own_size(tmp_path, cli):
    from dlforge.data.images import FOLDER_IMAGE_SIZE, load_image_set

    folder = _image_folder(tmp_path / "digits", {"a": [(16, 16)] * 20, "b": [(16, 16)] * 20})
    code, out, err = cli("train", "ae", "--data", folder, "--out", tmp_path / "run", "--preset", "tiny",
                         "--max-steps", 2, "--set", "eval_interval=2", "--seed", 0)
    assert code == 0, err
    assert "images: 16x16, 1 channel(s), 40 for training (the data's own size; --set image_size=N for another)" in out
    assert json.loads((tmp_path / "run" / "run.json").read_text())["data_settings"]["image_size"] == 16
    saved = json.loads((tmp_path / "run" / "checkpoints" / "best" / "config.json").read_text())
    assert saved["config"]["image_size"] == 16
    code, out, err = cli("train", "ae", "--data", folder, "--out", tmp_path / "set", "--preset", "tiny",
                         "--max-steps", 1, "--set", "image_size=24", "--quiet")
    assert code == 0 and json.loads((tmp_path / "set" / "run.json").read_text())["data_settings"]["image_size"] == 24
    assert load_image_set(_image_folder(tmp_path / "mixed", {"a": [(16, 16), (20, 20)]})).image_size == \
        FOLDER_IMAGE_SIZE  # sizes differ: the default
    assert load_image_set(_image_folder(tmp_path / "wide", {"a": [(20, 12)] * 2})).images.shape[-2:] == (12, 12)
