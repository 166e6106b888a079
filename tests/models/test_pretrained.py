"""`Model.from_pretrained` / `model.save_pretrained` on every family, the registry of formats behind them
(`dlforge.models.formats`), Hugging Face export read back by transformers, and the one-line errors of loading."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import dlforge
from dlforge.errors import DlforgeError
from dlforge.models import (
    GAN,
    GPT,
    MODEL_CLASSES,
    VAE,
    Autoencoder,
    AutoencoderConfig,
    Bert,
    BertConfig,
    DiffusionConfig,
    DiffusionModel,
    GANConfig,
    GPTConfig,
    ImageClassifier,
    ImageClassifierConfig,
    PretrainedModel,
    ResNet,
    ResNetConfig,
    Seq2Seq,
    Seq2SeqConfig,
    ViT,
    ViTConfig,
    load_pretrained,
)
from dlforge.models.converters import save_torchvision_resnet
from dlforge.models.pretrained import FORMATS

TINY = {
    GPT: GPTConfig(vocab_size=37, block_size=16, n_layer=1, n_head=2, n_embd=16),
    Bert: BertConfig(vocab_size=40, hidden_size=16, n_layer=1, n_head=2, intermediate_size=24,
                     task="sequence-classification", num_labels=3),
    Seq2Seq: Seq2SeqConfig(vocab_size=40, d_model=16, n_encoder_layers=1, n_decoder_layers=1, n_head=2, d_ff=24),
    ViT: ViTConfig(image_size=8, patch_size=4, hidden_size=16, n_layer=1, n_head=2, intermediate_size=24,
                   num_labels=3),
    ResNet: ResNetConfig(depths=[1, 1], widths=[4, 8], num_labels=3),
    ImageClassifier: ImageClassifierConfig(width=4, hidden=8),
    Autoencoder: AutoencoderConfig(image_size=8, latent_dim=2, hidden_sizes=[16]),
    VAE: AutoencoderConfig(image_size=8, latent_dim=2, hidden_sizes=[16]),
    GAN: GANConfig(image_size=8, latent_dim=4, g_width=4, d_width=4),
    DiffusionModel: DiffusionConfig(image_size=8, base_channels=8, channel_mults=[1, 2], layers_per_block=1,
                                    attention_resolutions=[], norm_groups=4),
}


def tiny(cls, seed: int = 0, **changes):
    torch.manual_seed(seed)
    model = cls(TINY[cls] if not changes else type(TINY[cls])(**{**TINY[cls].__dict__, **changes}))
    with torch.no_grad():  # non-trivial everywhere (norm affines, biases), so a dropped tensor shows
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_every_family_is_covered():
    assert set(TINY) == set(MODEL_CLASSES.values())
    assert all(issubclass(cls, PretrainedModel) for cls in MODEL_CLASSES.values())


@pytest.mark.parametrize("cls", list(TINY), ids=lambda c: c.__name__)
def test_round_trip_every_family(tmp_path, cls):
    model = tiny(cls)
    assert model.save_pretrained(tmp_path / "m") == tmp_path / "m"
    loaded = cls.from_pretrained(tmp_path / "m")
    assert type(loaded) is cls and loaded.config == model.config and not loaded.training
    assert_same_weights(loaded, model)
    again, tokenizer = dlforge.load_pretrained(str(tmp_path / "m"))  # the same code path, as a pair
    assert type(again) is cls and tokenizer is None
    assert_same_weights(again, model)


def test_round_trip_outputs_and_tokenizer(tmp_path):
    from dlforge.text import CharTokenizer

    tokenizer = CharTokenizer.train("abcdefgh ")
    model = tiny(GPT, vocab_size=tokenizer.vocab_size)
    model.save_pretrained(tmp_path / "gpt", tokenizer)
    loaded, loaded_tokenizer = load_pretrained(tmp_path / "gpt")
    ids = torch.tensor([tokenizer.encode("abc def")])
    assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert loaded_tokenizer.encode("abc def") == tokenizer.encode("abc def")
    pixels = torch.rand(2, 3, 8, 8)
    for cls in (ViT, ResNet):
        model = tiny(cls)
        model.save_pretrained(tmp_path / cls.kind)
        assert torch.equal(cls.from_pretrained(tmp_path / cls.kind)(pixels).logits, model(pixels).logits)


def test_overrides(tmp_path):
    tiny(GPT).save_pretrained(tmp_path / "m")
    model = GPT.from_pretrained(tmp_path / "m", dropout=0.25)
    assert model.config.dropout == 0.25 and not model.training
    assert_same_weights(model, GPT.from_pretrained(tmp_path / "m"))
    _, _ = load_pretrained(tmp_path / "m", dropout=0.1)  # load_pretrained takes them too
    with pytest.raises(DlforgeError) as info:
        GPT.from_pretrained(tmp_path / "m", drop_out=0.1)
    message = str(info.value)
    assert "unknown GPT config field(s) drop_out" in message and "dropout" in message and "n_layer" in message
    with pytest.raises(DlforgeError, match="dropout='high' is not of type float"):
        GPT.from_pretrained(tmp_path / "m", dropout="high")
    with pytest.raises(DlforgeError, match="do not fit the model"):  # a field that changes the weights' shapes
        GPT.from_pretrained(tmp_path / "m", n_embd=32)


def test_kind_is_checked_once_for_every_format(tmp_path):
    tiny(Bert).save_pretrained(tmp_path / "bert")
    tiny(Bert).save_pretrained(tmp_path / "bert-hf", format="hf")
    save_torchvision_resnet(tiny(ResNet), tmp_path / "resnet.pth")
    cases = [(GPT, tmp_path / "bert", "holds a bert model, but GPT.from_pretrained needs a gpt model"),
             (GPT, tmp_path / "bert-hf", "holds a BERT model, but GPT.from_pretrained needs a gpt model"),
             (ViT, tmp_path / "resnet.pth", "holds a ResNet model, but ViT.from_pretrained needs a vit model"),
             (VAE, tmp_path / "bert", "needs a vae model")]
    for cls, path, fragment in cases:
        with pytest.raises(DlforgeError) as info:
            cls.from_pretrained(path)
        assert fragment in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(DlforgeError, match="holds a bert model, but this command needs a seq2seq model"):
        load_pretrained(tmp_path / "bert", expected_kind="seq2seq")


def test_task_heads(tmp_path):
    tiny(Bert).save_pretrained(tmp_path / "bert")
    model = Bert.from_pretrained(tmp_path / "bert", task="token-classification", num_labels=5)
    assert model.config.task == "token-classification" and model.config.num_labels == 5
    relabelled = Bert.from_pretrained(tmp_path / "bert", labels=["neg", "pos"])  # the checkpoint's task, new labels
    assert relabelled.config.task == "sequence-classification" and relabelled.config.labels == ["neg", "pos"]
    assert relabelled.head.out_proj.out_features == 2
    tiny(Bert, task="none").save_pretrained(tmp_path / "encoder")
    with pytest.raises(DlforgeError, match="this none checkpoint has no labels to change: give task="):
        Bert.from_pretrained(tmp_path / "encoder", num_labels=2)
    with pytest.raises(DlforgeError, match="needs num_labels >= 1"):
        Bert.from_pretrained(tmp_path / "encoder", task="sequence-classification", num_labels=0)
    tiny(GPT).save_pretrained(tmp_path / "gpt")
    with pytest.raises(DlforgeError, match="holds a gpt model, whose head cannot be chosen"):
        GPT.from_pretrained(tmp_path / "gpt", num_labels=2)
    save_torchvision_resnet(tiny(ResNet), tmp_path / "resnet.safetensors")
    assert ResNet.from_pretrained(tmp_path / "resnet.safetensors", task="none").config.num_labels == 0


def test_torchvision_weight_file_through_the_registry(tmp_path):
    model = tiny(ResNet)
    save_torchvision_resnet(model, tmp_path / "resnet.pth")
    loaded = ResNet.from_pretrained(tmp_path / "resnet.pth", image_mean=None, image_std=None)
    assert_same_weights(loaded, model)
    pixels = torch.rand(2, 3, 16, 16)
    assert torch.allclose(loaded(pixels).logits, model(pixels).logits, atol=1e-6)


def test_unknown_formats_are_one_line(tmp_path):
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(DlforgeError) as info:
        load_pretrained(tmp_path / "llama")
    message = str(info.value)
    assert "not a model dlforge can load (llama)" in message and "\n" not in message
    for fmt in FORMATS:  # the supported list is the registry itself
        assert fmt.name in message
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DlforgeError, match="notes.txt is a file: give the directory"):
        load_pretrained(tmp_path / "notes.txt")
    with pytest.raises(DlforgeError, match="unknown save format 'onnx'"):
        tiny(GPT).save_pretrained(tmp_path / "x", format="onnx")


def test_fields_only_a_converter_reads_are_one_line(tmp_path):
    import json

    tiny(ResNet).save_pretrained(tmp_path / "hf", format="hf")
    tiny(GPT).save_pretrained(tmp_path / "gpt")
    for folder, edit in ((tmp_path / "hf", lambda c: c.update(id2label=["cat"])),  # read by the converter only
                         (tmp_path / "gpt", lambda c: c["config"].update(activation="tanh"))):  # by the model
        config = json.loads((folder / "config.json").read_text())
        edit(config)
        (folder / "config.json").write_text(json.dumps(config))
        with pytest.raises(DlforgeError) as info:
            load_pretrained(folder)
        message = str(info.value)
        assert f"{folder / 'config.json'} has an invalid model config" in message and "\n" not in message


def test_local_looking_missing_paths_are_no_such_folder(tmp_path, monkeypatch):
    import dlforge.models.pretrained as pretrained

    def no_hub(model_id):
        raise AssertionError(f"{model_id} was looked up on the hub")

    monkeypatch.setattr(pretrained, "hub_snapshot", no_hub)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "existing_parent").mkdir()
    for path in ("./typo", "../typo", str(tmp_path / "typo"), "runs/sst2-typo", "existing_parent/typo", "~/typo",
                 tmp_path / "typo"):
        for load in (load_pretrained, GPT.from_pretrained):
            with pytest.raises(DlforgeError) as info:
                load(path)
            message = str(info.value)
            assert message.startswith("no such folder: ") and "\n" not in message, message
            assert "Hugging Face" not in message, message


@pytest.mark.parametrize("cls", [GPT, Bert, ViT, ResNet], ids=lambda c: c.__name__)
def test_hf_format_loads_in_transformers_with_the_same_logits(tmp_path, cls):
    transformers = pytest.importorskip("transformers")
    model = tiny(cls, vocab_size=40) if cls is GPT else tiny(cls)
    if cls is ResNet:  # BatchNorm statistics other than 0 / 1, so that a misplaced one shows
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                if "running" in name:
                    buffer.uniform_(0.5, 1.5)
    model.save_pretrained(tmp_path / "hf", format="hf")
    reference = {GPT: transformers.GPT2LMHeadModel, Bert: transformers.BertForSequenceClassification,
                 ViT: transformers.ViTForImageClassification, ResNet: transformers.ResNetForImageClassification}[cls]
    hf = reference.from_pretrained(tmp_path / "hf").eval()
    inputs = torch.rand(2, 3, 8, 8) if cls in (ViT, ResNet) else torch.randint(0, 40, (2, 12))
    with torch.no_grad():
        assert (hf(inputs).logits - model(inputs).logits).abs().max() <= 1e-4
    back = cls.from_pretrained(tmp_path / "hf")  # and dlforge reads its own export back
    with torch.no_grad():
        assert (back(inputs).logits - model(inputs).logits).abs().max() <= 1e-5


def test_hf_format_without_an_exporter_names_the_families_that_have_one(tmp_path):
    with pytest.raises(DlforgeError) as info:
        tiny(ImageClassifier).save_pretrained(tmp_path / "s", format="hf")
    message = str(info.value)
    assert "ImageClassifier models have no Hugging Face format" in message
    assert "bert, gpt, resnet, seq2seq, vit" in message
    assert not (tmp_path / "s").exists()
    with pytest.raises(DlforgeError, match="positional='sinusoidal', which neither Hugging Face T5 .* nor BART"):
        tiny(Seq2Seq).save_pretrained(tmp_path / "s", format="hf")  # dlforge's own transformer: no HF family
    with pytest.raises(DlforgeError, match="'small' stem cannot be saved in the Hugging Face format"):
        tiny(ResNet, stem="small").save_pretrained(tmp_path / "r", format="hf")


def test_root_import_stays_light_and_exports_load_pretrained():
    code = "import sys, dlforge; assert 'torch' not in sys.modules; f = dlforge.load_pretrained; print(f.__module__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "dlforge.models.pretrained"
    from dlforge import load_pretrained as from_root

    assert from_root is load_pretrained
