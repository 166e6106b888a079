"""Model families (each file holds one: a dataclass config and the module, a `PretrainedModel`), and loading and
saving them: `load_pretrained`, `save_pretrained`, `Model.from_pretrained`, `model.save_pretrained` (see
`models.pretrained`), through the table of formats in `models.formats` and the converters in `models.converters`."""

from .autoencoder import VAE, Autoencoder, AutoencoderConfig
from .bert import Bert, BertConfig
from .formats import MODEL_CLASSES
from .gan import GAN, GANConfig
from .gpt import GPT, GPTConfig
from .outputs import ModelOutput
from .pretrained import PretrainedModel, load_pretrained, resolve_model_dir, save_pretrained
from .resnet import RESNET_PRESETS, ResNet, ResNetConfig
from .seq2seq import Seq2Seq, Seq2SeqConfig
from .small_cnn import ImageClassifier, ImageClassifierConfig
from .unet import DiffusionConfig, DiffusionModel
from .vit import VIT_PRESETS, ViT, ViTConfig

__all__ = ["MODEL_CLASSES", "RESNET_PRESETS", "ResNet", "ResNetConfig", "VAE", "Autoencoder", "AutoencoderConfig",
           "Bert", "BertConfig", "DiffusionConfig",
           "DiffusionModel", "GAN", "GANConfig", "GPT",
           "GPTConfig", "ImageClassifier", "ImageClassifierConfig", "ModelOutput", "PretrainedModel", "Seq2Seq",
           "Seq2SeqConfig", "VIT_PRESETS", "ViT", "ViTConfig", "load_pretrained", "resolve_model_dir",
           "save_pretrained"]
