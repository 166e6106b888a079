"""The names the parsers offer as choices (presets, model families, tasks, methods, samplers), written out here so
that building a parser imports no torch: the library modules that own them import torch at their top.

tests/cli/test_startup.py checks that every list here equals the library's own, so they cannot drift apart.
"""

GPT_PRESETS = ("tiny", "baby", "shakespeare", "gpt2")  # dlforge.training.lm.PRESETS
GPT_TOKENIZERS = ("char", "bpe")  # dlforge.training.lm.TOKENIZERS
BERT_PRESETS = ("tiny", "small", "base")  # dlforge.training.mlm.PRESETS
BERT_TOKENIZERS = ("wordpiece", "bpe")  # dlforge.training.mlm.TOKENIZERS
SEQ2SEQ_PRESETS = ("tiny", "multi30k", "base")  # dlforge.training.seq2seq.PRESETS
IMAGE_FAMILIES = ("ae", "vae", "gan", "diffusion", "classifier", "vit", "resnet")  # dlforge.training.images.FAMILIES
IMAGE_PRESETS = ("tiny", "mnist")  # every family's presets in dlforge.training.images.PRESETS
SCHEDULERS = ("ddpm", "ddim", "dpm++")  # dlforge.diffusion.schedulers.SCHEDULERS
FINETUNE_METHODS = ("full", "top-k", "lora", "features", "distill")  # dlforge.transfer.recipe.METHODS
FINETUNE_TASKS = ("image-classification", "question-answering", "text-classification",  # ...transfer.tasks
                  "token-classification")
# dlforge.pipelines.tasks: PIPELINES and ALIASES, but image-generation (that one is `dlforge sample`)
PIPELINE_TASKS = ("feature-extraction", "fill-mask", "image-classification", "image-feature-extraction", "ner",
                  "question-answering", "sentence-similarity", "sentiment-analysis", "summarization",
                  "text-classification", "text-generation", "text2text-generation", "token-classification",
                  "translation", "zero-shot-classification")
