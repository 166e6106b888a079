"""Model families. Each file holds one family: a dataclass config and the nn.Module."""

from .autoencoder import VAE, Autoencoder, AutoencoderConfig
from .bert import Bert, BertConfig
from .gan import GAN, GANConfig
from .gpt import GPT, GPTConfig
from .outputs import ModelOutput
from .resnet import RESNET_PRESETS, ResNet, ResNetConfig
from .seq2seq import Seq2Seq, Seq2SeqConfig
from .small_cnn import ImageClassifier, ImageClassifierConfig
from .unet import DiffusionConfig, DiffusionModel
from .vit import VIT_PRESETS, ViT, ViTConfig

# kind name (stored in checkpoints) -> model class; each class has `config_class` and `kind`
MODEL_CLASSES = {GPT.kind: GPT, Bert.kind: Bert, Seq2Seq.kind: Seq2Seq, GAN.kind: GAN,
                 ImageClassifier.kind: ImageClassifier, Autoencoder.kind: Autoencoder, VAE.kind: VAE,
                 DiffusionModel.kind: DiffusionModel, ResNet.kind: ResNet,
                 ViT.kind: ViT}

__all__ = ["MODEL_CLASSES", "RESNET_PRESETS", "ResNet", "ResNetConfig", "VAE", "Autoencoder", "AutoencoderConfig",
           "Bert", "BertConfig", "DiffusionConfig",
           "DiffusionModel", "GAN", "GANConfig", "GPT",
           "GPTConfig", "ImageClassifier", "ImageClassifierConfig", "ModelOutput", "Seq2Seq", "Seq2SeqConfig",
           "VIT_PRESETS", "ViT", "ViTConfig"]
