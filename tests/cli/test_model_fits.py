"""Every training recipe checks the model its settings make against the machine's memory before it writes a file
(issue 18): absurd sizes through `--set` stop with one line naming the parameter count and the GiB needed, and
--out is not created; a loaded model to fine-tune or continue is held to the same rule; every preset passes."""

from __future__ import annotations

import functools
import re

import pytest
import torch
from test_finetune_cli import make_review_data

from dlforge.errors import DlforgeError
from dlforge.models import GPT, Bert, BertConfig, GPTConfig, save_pretrained
from dlforge.models.resnet import ResNet, ResNetConfig
from dlforge.models.seq2seq import Seq2Seq, Seq2SeqConfig
from dlforge.training import images, lm, mlm, seq2seq
from dlforge.training.trainer import check_model_fits, check_training_memory

HUGE = "2000000"  # a width that makes trillions of parameters: no machine has the memory to train them


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, pattern_mnist) -> dict:
    root = tmp_path_factory.mktemp("model-fits")
    text = root / "corpus.txt"
    text.write_text("\n".join(f"line {i} of a small corpus about cats and dogs" for i in range(200)) + "\n")
    (root / "src.txt").write_text("\n".join(f"ein kleiner satz {i}" for i in range(50)) + "\n")
    (root / "tgt.txt").write_text("\n".join(f"a small sentence {i}" for i in range(50)) + "\n")
    torch.manual_seed(0)
    save_pretrained(ResNet(ResNetConfig(depths=[1], widths=[4], stem="small", image_size=28, channels=1)),
                    root / "resnet")
    return {"text": str(text), "src": str(root / "src.txt"), "tgt": str(root / "tgt.txt"),
            "images": str(pattern_mnist), "resnet": str(root / "resnet")}


ABSURD = {  # recipe -> its command with an absurd size of that recipe's own settings
    "gpt": ["train", "gpt", "--data", "{text}", "--preset", "tiny", "--set", f"n_embd={HUGE}"],
    "bert": ["train", "bert", "--data", "{text}", "--preset", "tiny", "--set", f"hidden_size={HUGE}"],
    "seq2seq": ["train", "seq2seq", "--source", "{src}", "--target", "{tgt}", "--preset", "tiny",
                "--set", f"d_model={HUGE}"],
    "ae": ["train", "ae", "--data", "{images}", "--preset", "tiny", "--set", f"base_channels={HUGE}"],
    "vae": ["train", "vae", "--data", "{images}", "--preset", "tiny", "--set", f"hidden_sizes={HUGE}000"],
    "gan": ["train", "gan", "--data", "{images}", "--preset", "tiny", "--set", f"g_width={HUGE}"],
    "diffusion": ["train", "diffusion", "--data", "{images}", "--preset", "tiny", "--set", f"base_channels={HUGE}"],
    "classifier": ["train", "classifier", "--data", "{images}", "--preset", "tiny", "--set", f"width={HUGE}"],
    "vit": ["train", "vit", "--data", "{images}", "--preset", "tiny", "--set", f"hidden_size={HUGE}"],
    "resnet": ["train", "resnet", "--data", "{images}", "--preset", "tiny", "--set", f"widths={HUGE},{HUGE}"],
    "anomaly": ["anomaly", "fit", "--data", "{images}", "--normal", "1", "--preset", "tiny",
                "--set", f"base_channels={HUGE}"],
    "adapt": ["adapt", "--model", "{resnet}", "--source", "{images}", "--target", "{images}",
              "--set", f"domain_hidden={HUGE}"],
}


def assert_refused_before_writing(code: int, err: str, out) -> None:
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "parameters" in err and "GiB" in err and "this machine has" in err, err
    assert not out.exists(), sorted(p.name for p in out.rglob("*"))


@pytest.mark.parametrize("recipe", list(ABSURD))
def test_an_absurd_size_is_refused_before_any_file(cli, inputs, tmp_path, recipe):
    out = tmp_path / "run"
    code, _, err = cli(*[a.format(**inputs) for a in ABSURD[recipe]], "--out", out, "--quiet")
    assert_refused_before_writing(code, err, out)


@pytest.fixture(scope="module")
def reviews(tmp_path_factory):
    return make_review_data(tmp_path_factory.mktemp("reviews"))  # train.tsv, dev.jsonl and a tiny BERT (tiny/)


@pytest.mark.parametrize("method", ["full", "lora", "features"])
def test_finetuning_a_loaded_model_that_cannot_train_here_is_refused(cli, reviews, tmp_path, monkeypatch, method):
    monkeypatch.setattr("dlforge.training.trainer.memory_bytes", lambda: 4096)  # a machine with 4 KiB
    out = tmp_path / "ft"
    code, _, err = cli("finetune", "--model", reviews / "tiny", "--task", "text-classification", "--train",
                       reviews / "train.tsv", "--option", "text_column=review", "--method", method, "--out", out,
                       "--quiet")
    assert_refused_before_writing(code, err, out)
    assert f"fine-tuning {reviews / 'tiny'}" in err and "--method lora" in err
    assert re.search(r"has \d{2,3},\d{3} parameters", err), err  # the tiny BERT with its new head
    assert ("of them trained" in err) == (method != "full"), err  # frozen weights need no gradient nor moments


def test_continuing_a_loaded_model_is_held_to_the_same_rule(cli, reviews, inputs, tmp_path, monkeypatch):
    """train bert --init (DAPT) and train seq2seq --init load the model, then check it as finetune does."""
    from dlforge.text.tokenizers import BPETokenizer
    from dlforge.training.seq2seq import SPECIAL_TOKENS

    texts = [line for name in ("src", "tgt") for line in open(inputs[name], encoding="utf-8")]
    tokenizer = BPETokenizer.train(texts, vocab_size=300, special_tokens=SPECIAL_TOKENS)
    save_pretrained(Seq2Seq(Seq2SeqConfig(vocab_size=tokenizer.vocab_size, d_model=16, n_encoder_layers=1,
                                          n_decoder_layers=1, n_head=2, d_ff=32)), tmp_path / "t2t", tokenizer)
    monkeypatch.setattr("dlforge.training.trainer.memory_bytes", lambda: 4096)
    for argv in (["bert", "--init", reviews / "tiny", "--data", inputs["text"]],
                 ["seq2seq", "--init", tmp_path / "t2t", "--source", inputs["src"], "--target", inputs["tgt"]]):
        out = tmp_path / f"continue-{argv[0]}"
        code, _, err = cli("train", *argv, "--out", out, "--quiet")
        assert_refused_before_writing(code, err, out)
        assert f"{argv[2]} has " in err, err


def test_training_memory_counts_16_bytes_a_trained_weight_and_4_a_frozen_one(monkeypatch):
    model = torch.nn.Linear(1000, 1000)  # 1,001,000 parameters
    monkeypatch.setattr("dlforge.training.trainer.memory_bytes", lambda: 16 * 1_001_000)
    assert check_training_memory(model, "a layer") == 1_001_000  # exactly fits
    monkeypatch.setattr("dlforge.training.trainer.memory_bytes", lambda: 16 * 1_001_000 - 1)
    with pytest.raises(DlforgeError, match=r"a layer has 1,001,000 parameters, whose training needs about 0\.0 GiB"):
        check_training_memory(model, "a layer")
    model.weight.requires_grad_(False)  # only the bias trains: 4 B x 1,001,000 + 12 B x 1,000
    monkeypatch.setattr("dlforge.training.trainer.memory_bytes", lambda: 4 * 1_001_000 + 12 * 1_000)
    assert check_training_memory(model, "a layer") == 1_001_000
    monkeypatch.setattr("dlforge.training.trainer.memory_bytes", lambda: 4 * 1_001_000 + 12 * 1_000 - 1)
    with pytest.raises(DlforgeError, match=r"\(1,000 of them trained\)"):
        check_training_memory(model, "a layer")


def test_every_preset_builds_on_the_meta_device_and_fits():
    """The check must never refuse a recipe's own presets (a model that cannot be built on the meta device would
    be refused as 'these settings do not make ...')."""
    builds = {}  # what -> (model class, its config)
    for name in lm.PRESETS:
        model, _ = lm.resolve_settings(name, {})
        builds[f"gpt {name}"] = (GPT, GPTConfig(vocab_size=256, **model))
    for name in mlm.PRESETS:
        model, _, _, vocab = mlm.resolve_settings(name, {}, None)
        builds[f"bert {name}"] = (Bert, BertConfig(vocab_size=vocab, task="masked-lm", **model))
    for name in seq2seq.PRESETS:
        model, _, _, vocab = seq2seq.resolve_settings(name, {})
        builds[f"seq2seq {name}"] = (Seq2Seq, Seq2SeqConfig(vocab_size=vocab, **model))
    for kind, presets in images.PRESETS.items():
        model_class, config_class = images.family_classes(kind)
        labels = (dict(num_labels=10, labels=[str(i) for i in range(10)]) if kind in images.VISION_FAMILIES
                  else dict(num_classes=10))
        for name in presets:
            model, _, _ = images.resolve_settings(kind, name, {})
            builds[f"{kind} {name}"] = (model_class, config_class(**model, image_size=28, channels=1, **labels))
    assert len(builds) == len(lm.PRESETS) + len(mlm.PRESETS) + len(seq2seq.PRESETS) + 14
    for what, (model_class, config) in builds.items():
        assert check_model_fits(functools.partial(model_class, config), what) > 1000, what
