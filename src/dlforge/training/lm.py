"""Language-model training recipe: text corpus -> tokenizer -> GPT -> Trainer.

This is what `dlforge train gpt` and `dlforge demo` run, and what Python users call as
`train_language_model(...)`. Presets bundle a model shape with training hyperparameters;
`overrides` ({"n_layer": 6, "lr": 3e-4}) change any field of `GPTConfig` or `TrainConfig`.

The run folder keeps `run.json` (everything needed to resume), `data/tokens.bin` (the tokenized
corpus, memory-mapped) and the Trainer's checkpoints and logs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import torch

from ..data.text import TextBatches, build_token_file, corpus_files, iter_text_chunks, open_token_file
from ..errors import DlforgeError
from ..io import atomic_write_json, undo_on_failure
from ..models.gpt import GPT, GPTConfig
from ..settings import setting_types
from ..text.tokenizers import BPETokenizer, CharTokenizer, load_tokenizer
from .distributed import init_distributed
from .trainer import TrainConfig, Trainer, check_model_fits, open_run, resolve_device

# Each preset: model fields + training fields. `shakespeare` is the 5-minute CPU recipe measured in
# benchmarks/RESULTS.md; `baby` is nanoGPT's documented CPU recipe; `tiny` is for smoke tests.
PRESETS: dict[str, dict] = {
    "tiny": dict(n_layer=2, n_head=2, n_embd=64, block_size=64, batch_size=16, lr=2e-3, max_steps=200,
                 warmup_steps=20, eval_interval=100, log_interval=10),
    "baby": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, lr=1e-3, max_steps=2000,
                 warmup_steps=100, min_lr=1e-4, eval_interval=250, dropout=0.0),
    "shakespeare": dict(n_layer=4, n_head=4, n_embd=192, block_size=128, batch_size=32, lr=2e-3,
                        max_steps=5000, warmup_steps=50, min_lr=2e-4, eval_interval=200, dropout=0.0,
                        beta2=0.99),
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, batch_size=8, grad_accum=4, lr=6e-4,
                 min_lr=6e-5, max_steps=10000, warmup_steps=500, eval_interval=500, dropout=0.0,
                 activation="gelu_new"),
}
TOKENIZERS = ("char", "bpe")


def split_settings(settings: dict, *config_classes) -> list[dict]:
    """Settings -> one kwargs dict per config class, in order, and a last one with the rest (TrainConfig's)."""
    parts, taken = [], set()
    for cls in config_classes:
        names = {f.name for f in fields(cls)}
        parts.append({k: v for k, v in settings.items() if k in names})
        taken |= names
    return parts + [{k: v for k, v in settings.items() if k not in taken}]


def field_types() -> dict[str, type]:
    """Every key `--set` accepts for `train gpt`, with its type (vocab_size is the tokenizer's: --vocab-size)."""
    return setting_types(GPTConfig, TrainConfig, exclude={"vocab_size"})


def resolve_settings(preset: str, overrides: dict) -> tuple[dict, dict]:
    """Split preset + overrides into (GPTConfig kwargs without vocab_size, TrainConfig kwargs)."""
    if preset not in PRESETS:
        raise DlforgeError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
    model, train = split_settings({**PRESETS[preset], **overrides}, GPTConfig)
    return model, train


def train_tokenizer(kind: str, source, vocab_size: int | None):
    if kind == "char":
        return CharTokenizer.train(iter_text_chunks(corpus_files(source)))
    if kind == "bpe":
        return BPETokenizer.train(iter_text_chunks(corpus_files(source)), vocab_size=vocab_size or 4096)
    raise DlforgeError(f"unknown tokenizer {kind!r}: choose one of {', '.join(TOKENIZERS)}")


def train_language_model(data: str | Path, out: str | Path, preset: str = "shakespeare",
                         overrides: dict | None = None, tokenizer: str = "char", vocab_size: int | None = None,
                         resume: bool = False, seed: int | None = None,
                         on_eval: Callable | None = None, progress: bool = True, overwrite: bool = False) -> dict:
    """Train (or resume) a GPT on a text corpus; returns the Trainer's final metrics.

    Under torchrun every process calls this; rank 0 alone trains the tokenizer and tokenizes the
    corpus, the others wait for it and then read the same files.
    """
    out = Path(out)
    run_file = out / "run.json"
    run = open_run(out, resume, overrides=overrides, overwrite=overwrite,
                   required={"data": str, "model": dict, "train": dict})
    if run is None:
        model_kwargs, train_kwargs = resolve_settings(preset, overrides or {})
        if seed is not None:
            train_kwargs["seed"] = seed
        # everything is checked before the slow tokenization and the first file: settings, the model they make
        # (a BPE vocabulary's size, or 256 characters) and the memory its training needs
        TrainConfig(**train_kwargs)
        estimate = GPTConfig(vocab_size=(vocab_size or 4096) if tokenizer == "bpe" else 256, **model_kwargs)
        check_model_fits(lambda: GPT(estimate), "this GPT")
        corpus_files(data)
        run = {"kind": "gpt", "data": str(Path(data).resolve()), "preset": preset, "tokenizer": tokenizer,
               "vocab_size": vocab_size, "model": model_kwargs, "train": train_kwargs}
    train_config = TrainConfig(**run["train"])
    dist = init_distributed(resolve_device(train_config.device).type)
    dist.barrier()  # every process has checked the folder before rank 0 writes to it
    token_file = out / "data" / "tokens.bin"
    block_size = GPTConfig(vocab_size=1, **run["model"]).block_size

    def open_batches() -> TextBatches:
        return TextBatches(open_token_file(token_file), block_size, train_config.batch_size, seed=train_config.seed)

    if dist.is_main:
        if not resume:  # run.json is written last, and a failed setup takes back what it wrote
            with undo_on_failure(out):
                train_tokenizer(tokenizer, data, vocab_size).save(out)
                build_token_file(run["data"], load_tokenizer(out), token_file)
                open_batches()  # raises if the corpus is shorter than a context window
                atomic_write_json(run_file, run)
        elif not token_file.is_file():
            build_token_file(run["data"], load_tokenizer(out), token_file)
    dist.barrier()
    tok = load_tokenizer(out)
    model_config = GPTConfig(vocab_size=tok.vocab_size, **run["model"])
    torch.manual_seed(train_config.seed)
    model = GPT(model_config)
    batches = open_batches()
    trainer = Trainer(model, train_config, batches, out, tokenizer=tok, on_eval=on_eval, progress=progress)
    return trainer.fit(resume=resume)
