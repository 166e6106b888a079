"""Masked-language-model pretraining recipe: text corpus -> WordPiece/BPE tokenizer -> BERT -> Trainer.

This is what `dlforge train bert` runs, and what Python users call as `train_masked_lm(...)`.
From scratch, a preset bundles an encoder shape with training hyperparameters. With `init` (a dlforge
or Hugging Face BERT-family model) it is domain-adaptive pretraining (DAPT, Gururangan et al., 2020):
the pretrained encoder and its tokenizer continue the masked-LM objective on the user's unlabelled
text; a checkpoint without masked-LM head weights (a sentence encoder) gets a new head.

The corpus is read line by line. Consecutive non-empty lines are packed into sequences of up to
`max_length` tokens (a longer line is cut into pieces), and the last `val_fraction` of the
sequences is held out for validation. Masking follows Devlin et al. (`dlforge.data.mlm`).

The run folder keeps `run.json` (written last: everything needed to resume), the tokenizer,
`data/texts.json` (the packed sequences) and the Trainer's checkpoints and logs. A checkpoint loads
with `load_pretrained(run)`, in `pipeline("fill-mask", model=run)`, and as the model of fine-tuning,
where a task head replaces the masked-LM head.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch

from ..data.mlm import MaskedLMBatches
from ..data.text import corpus_files, iter_text_chunks
from ..errors import DlforgeError
from ..io import atomic_write_json, undo_on_failure
from ..models import load_pretrained
from ..models.bert import Bert, BertConfig
from ..models.converters.bert import load_bert_weights, with_task
from ..settings import setting_types
from ..text.tokenizers import (
    BPETokenizer,
    HFTokenizer,
    WordPieceTokenizer,
    add_roberta_special_handling,
    load_tokenizer,
)
from .distributed import init_distributed
from .lm import split_settings
from .trainer import TrainConfig, Trainer, check_model_fits, check_training_memory, open_run, resolve_device

log = logging.getLogger(__name__)


@dataclass
class MLMDataConfig:
    max_length: int = 128  # tokens per training sequence, special tokens included
    mask_probability: float = 0.15  # share of tokens chosen for prediction (80 % [MASK], 10 % random, 10 % kept)
    val_fraction: float = 0.05  # last share of the packed sequences held out for validation
    max_val_sequences: int = 1000  # caps the held-out set, so evaluation stays cheap on a large corpus

    def __post_init__(self):
        if self.max_length < 4:
            raise DlforgeError(f"max_length must be >= 4, got {self.max_length}")
        if not 0 < self.mask_probability < 1:
            raise DlforgeError(f"mask_probability must be in (0, 1), got {self.mask_probability}")
        if not 0 < self.val_fraction < 1:
            raise DlforgeError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.max_val_sequences < 1:
            raise DlforgeError(f"max_val_sequences must be >= 1, got {self.max_val_sequences}")


# BERT's optimizer settings (Devlin et al.: AdamW, beta2 0.999, weight decay 0.01) for every preset.
_BERT_OPTIM = dict(weight_decay=0.01, beta2=0.999)
# Each preset: encoder shape + data + training fields + the tokenizer's vocab_size. `small` is BERT-Mini
# (Turc et al., 2019); `base` is BERT-base with phase 1 of the original recipe (128-token sequences).
PRESETS: dict[str, dict] = {
    "tiny": dict(hidden_size=64, n_layer=2, n_head=2, intermediate_size=256, max_position=64, max_length=64,
                 vocab_size=2000, batch_size=32, lr=1e-3, max_steps=200, warmup_steps=20, eval_interval=50,
                 log_interval=10, **_BERT_OPTIM),
    "small": dict(hidden_size=256, n_layer=4, n_head=4, intermediate_size=1024, max_position=128, max_length=128,
                  vocab_size=8000, batch_size=64, lr=5e-4, max_steps=10000, warmup_steps=500, eval_interval=500,
                  **_BERT_OPTIM),
    "base": dict(hidden_size=768, n_layer=12, n_head=12, intermediate_size=3072, max_position=512, max_length=128,
                 vocab_size=30522, batch_size=256, lr=1e-4, max_steps=100000, warmup_steps=10000,
                 eval_interval=2000, **_BERT_OPTIM),
}
# DAPT continues a pretrained model: a small learning rate (as Hugging Face's run_mlm) and a short schedule.
DAPT_SETTINGS = dict(max_length=128, batch_size=32, lr=5e-5, max_steps=1000, warmup_steps=60, eval_interval=100,
                     **_BERT_OPTIM)
TOKENIZERS = ("wordpiece", "bpe")
ROBERTA_SPECIAL_TOKENS = {"bos": "<s>", "pad": "<pad>", "eos": "</s>", "unk": "<unk>", "mask": "<mask>",
                          "cls": "<s>", "sep": "</s>"}  # ids 0-4 in this order, as RoBERTa's
# set by the tokenizer or the recipe, not by --set (vocab size: --vocab-size)
_NOT_SETTABLE = {"vocab_size", "task", "num_labels", "problem_type", "labels", "pad_token_id"}
_DAPT_MODEL_KEYS = {"dropout"}  # the only encoder field that --init leaves free: the rest is the checkpoint's


def field_types() -> dict[str, type]:
    """Every key `--set` accepts for `train bert`, with its type."""
    return setting_types(BertConfig, MLMDataConfig, TrainConfig, exclude=_NOT_SETTABLE)


def resolve_settings(preset: str | None, overrides: dict, init: str | None) -> tuple[dict, dict, dict, int | None]:
    """Preset (or the DAPT defaults) + overrides -> (BertConfig kwargs, MLMDataConfig kwargs, TrainConfig
    kwargs, vocab_size)."""
    if init is not None:
        if preset is not None:
            raise DlforgeError("--preset sets the model size for training from scratch; with --init the model is "
                               "the pretrained one: leave --preset out")
        fixed = sorted(k for k in overrides if k in {f.name for f in fields(BertConfig)} - _DAPT_MODEL_KEYS)
        if fixed:
            raise DlforgeError(f"--set {fixed[0]}: with --init the encoder's shape is the checkpoint's; only "
                               f"{', '.join(sorted(_DAPT_MODEL_KEYS))} and training settings can be changed")
        settings = {**DAPT_SETTINGS, **overrides}
    else:
        preset = preset or "small"
        if preset not in PRESETS:
            raise DlforgeError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
        settings = {**PRESETS[preset], **overrides}
    vocab_size = settings.pop("vocab_size", None)
    model, data, train = split_settings(settings, BertConfig, MLMDataConfig)
    return model, data, train, vocab_size


def train_tokenizer(kind: str, files: list[Path], vocab_size: int) -> HFTokenizer:
    """A WordPiece (BERT: lower-cased, [CLS] A [SEP]) or byte-level BPE (RoBERTa: <s> A </s>) tokenizer."""
    paths = [str(p) for p in files]
    if kind == "wordpiece":
        return WordPieceTokenizer.train(paths, vocab_size=vocab_size)
    if kind == "bpe":
        tokenizer = BPETokenizer.train(paths, vocab_size=vocab_size, special_tokens=ROBERTA_SPECIAL_TOKENS)
        add_roberta_special_handling(tokenizer)
        return tokenizer
    raise DlforgeError(f"unknown tokenizer {kind!r}: choose one of {', '.join(TOKENIZERS)}")


def pack_lines(files: list[Path], tokenizer: HFTokenizer, max_length: int) -> list[str]:
    """The corpus as texts of at most `max_length` tokens once [CLS]/[SEP] are added.

    Consecutive non-empty lines are joined with newlines while they fit (as RoBERTa's full-sentence
    inputs, so short lines do not waste the sequence on padding); a line longer than a sequence is cut
    at token boundaries, using the tokenizer's character offsets.
    """
    budget = max_length - len(tokenizer.encode("", add_special_tokens=True))
    joiner = len(tokenizer.encode("a\na")) - 2 * len(tokenizer.encode("a"))  # tokens a newline costs (BPE: 1)
    if budget < 1:
        raise DlforgeError(f"max_length {max_length} leaves no room for text beside the special tokens")
    texts, current, used = [], [], 0
    for chunk in iter_text_chunks(files):
        lines = [line for line in chunk.splitlines() if line.strip()]
        for line, windows in zip(lines, tokenizer.encode_windows(lines, max_length=max_length)):
            for window in windows:
                spans = [o for o, s in zip(window["offsets"], window["sequence_ids"]) if s is not None]
                if not spans:
                    continue
                piece, n = line[spans[0][0]:spans[-1][1]], len(spans)
                if current and used + joiner + n > budget:
                    texts.append("\n".join(current))
                    current, used = [], 0
                used += (joiner if current else 0) + n
                current.append(piece)
    if current:
        texts.append("\n".join(current))
    return texts


def split_texts(texts: list[str], data: MLMDataConfig) -> tuple[list[str], list[str]]:
    """(train, validation): the last val_fraction of the sequences (at most max_val_sequences) is held out."""
    n_val = min(data.max_val_sequences, max(1, round(len(texts) * data.val_fraction)))
    if len(texts) - n_val < 1:
        raise DlforgeError(f"the corpus packs into only {len(texts)} sequence(s) of {data.max_length} tokens: "
                           "give more text (it needs a training and a validation part)")
    return texts[:-n_val], texts[-n_val:]


def load_init_model(init: str | Path, model_overrides: dict) -> tuple[Bert, HFTokenizer, bool]:
    """A pretrained BERT-family encoder with a masked-LM head, its tokenizer, and whether the head is new."""
    model, tokenizer = load_pretrained(init, expected_kind="bert")
    if tokenizer is None:
        raise DlforgeError(f"{init} has no tokenizer files (tokenizer.json, vocab.txt, or vocab.json + merges.txt): "
                           "DAPT continues with the model's own tokenizer")
    if not isinstance(tokenizer, HFTokenizer):
        raise DlforgeError(f"{init} has a {type(tokenizer).__name__}; masked-LM training needs a subword tokenizer")
    if tokenizer.vocab_size > model.config.vocab_size:
        raise DlforgeError(f"{init}: the tokenizer has {tokenizer.vocab_size} tokens but the model only "
                           f"{model.config.vocab_size} embeddings; the tokenizer files do not belong to this model")
    config, new_head = with_task(model.config, "masked-lm")
    state = model.state_dict()
    if new_head:  # e.g. a sentence encoder: keep the encoder, start the masked-LM head afresh
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    model = load_bert_weights(replace(config, **model_overrides), state, str(init), new_head)
    check_training_memory(model, str(init), "continue a smaller model")
    return model, tokenizer, new_head


@torch.no_grad()
def masked_lm_loss(model: Bert, tokenizer, texts: list[str], max_length: int = 128, batch_size: int = 32,
                   seed: int = 0, probability: float = 0.15) -> float:
    """Mean masked-LM loss per predicted token over `texts`, with masking drawn from `seed`.

    The same texts and seed mask the same positions, so losses of two models (before and after DAPT)
    are directly comparable.
    """
    batches = MaskedLMBatches(texts, texts, tokenizer, max_length, batch_size, seed=seed, probability=probability)
    was_training, device = model.training, next(model.parameters()).device
    model.eval()
    total, count = 0.0, 0
    try:
        for batch in batches.eval_batches():
            n = int((batch["labels"] != -100).sum())
            if n:
                total += model(**{k: v.to(device) for k, v in batch.items()}).loss.item() * n
                count += n
    finally:
        model.train(was_training)
    if not count:
        raise DlforgeError("no token was masked in these texts: give more (or longer) texts")
    return total / count


def train_masked_lm(data: str | Path | None, out: str | Path, preset: str | None = None,
                    overrides: dict | None = None, tokenizer: str | None = None, vocab_size: int | None = None,
                    init: str | Path | None = None, resume: bool = False, seed: int | None = None,
                    overwrite: bool = False,
                    on_eval: Callable | None = None, progress: bool = True) -> dict:
    """Pretrain a BERT encoder with masked-LM (or continue `init` on `data`); returns the Trainer's final
    metrics plus `initial_val_loss` (the held-out loss before the first step; None when resuming).

    Under torchrun every process calls this; rank 0 alone prepares the tokenizer and the packed texts,
    the others wait for it and then read the same files.
    """
    out = Path(out)
    run_file = out / "run.json"
    run = open_run(out, resume, overrides=overrides, overwrite=overwrite,
                   required={"model": dict, "train": dict, "data_config": dict})
    if run is None:
        if init is not None and (tokenizer is not None or vocab_size is not None):
            raise DlforgeError("with --init the model's own tokenizer is used: leave out --tokenizer and --vocab-size")
        model_kwargs, data_kwargs, train_kwargs, preset_vocab = resolve_settings(preset, overrides or {}, init)
        if seed is not None:
            train_kwargs["seed"] = seed
        TrainConfig(**train_kwargs)  # validate before the slow setup
        data_config = MLMDataConfig(**data_kwargs)
        if init is None:  # the model these settings make (at the tokenizer's planned size) must fit in memory
            shape = BertConfig(vocab_size=vocab_size or preset_vocab or 1, task="masked-lm", **model_kwargs)
            if data_config.max_length > shape.max_position:
                raise DlforgeError(f"max_length {data_config.max_length} exceeds the model's max_position "
                                   f"{shape.max_position}: lower max_length or raise max_position with --set")
            check_model_fits(lambda: Bert(shape), "this BERT",
                             "choose smaller sizes (--set n_layer/hidden_size/intermediate_size/...)")
        if data is None:
            raise DlforgeError("--data is required: give a UTF-8 text file (one text per line) or a folder of them")
        corpus_files(data)
        run = {"kind": "bert", "data": str(Path(data).resolve()), "preset": None if init else (preset or "small"),
               "init": None if init is None else str(init), "tokenizer": None if init else (tokenizer or "wordpiece"),
               "vocab_size": vocab_size or preset_vocab, "model": model_kwargs, "data_config": asdict(data_config),
               "train": train_kwargs}
    train_config = TrainConfig(**run["train"])
    data_config = MLMDataConfig(**run["data_config"])
    dist = init_distributed(resolve_device(train_config.device).type)
    dist.barrier()  # every process has checked the folder before rank 0 writes to it
    texts_file = out / "data" / "texts.json"
    model = new_head = None
    if dist.is_main and not resume:  # run.json is written last, and a failed setup takes back what it wrote
        with undo_on_failure(out):
            files = corpus_files(run["data"])
            if init is not None:
                model, tok, new_head = load_init_model(init, run["model"])
                if data_config.max_length > model.config.max_position:
                    raise DlforgeError(f"max_length {data_config.max_length} exceeds {init}'s "
                                       f"{model.config.max_position} positions: lower it with --set max_length=N")
                if new_head:
                    log.warning(f"{init} has no masked-LM head weights; training a new head (its decoder is tied "
                                "to the pretrained word embeddings)")
            else:
                tok = train_tokenizer(run["tokenizer"], files, run["vocab_size"])
            tok.save(out)
            train_texts, val_texts = split_texts(pack_lines(files, load_tokenizer(out), data_config.max_length),
                                                 data_config)
            atomic_write_json(texts_file, {"train": train_texts, "val": val_texts})
            if model is not None:
                run["model"] = asdict(model.config)
            else:
                run["model"] = asdict(BertConfig(vocab_size=tok.vocab_size, pad_token_id=tok.pad_token_id or 0,
                                                 task="masked-lm", **run["model"]))
            atomic_write_json(run_file, run)
    dist.barrier()
    run = json.loads(run_file.read_text())  # the other ranks need the model config rank 0 completed
    tok = load_tokenizer(out)
    model_config = BertConfig.from_dict(run["model"])
    if model is None:
        if run["init"] is not None and not resume:
            model, _, _ = load_init_model(run["init"], {k: v for k, v in run["model"].items() if k == "dropout"})
        else:  # from scratch, or resuming (the checkpoint's weights replace these)
            torch.manual_seed(train_config.seed)
            model = Bert(model_config)
    texts = json.loads(texts_file.read_text(encoding="utf-8"))
    batches = MaskedLMBatches(texts["train"], texts["val"], tok, data_config.max_length, train_config.batch_size,
                              seed=train_config.seed, probability=data_config.mask_probability)
    trainer = Trainer(model, train_config, batches, out, tokenizer=tok, on_eval=on_eval, progress=progress)
    initial = None
    if not resume:  # the starting point of the loss curve (for DAPT: the pretrained model's loss on this text)
        initial = trainer.evaluate()
        trainer.log.log(step=0, val_loss=initial, elapsed_s=0.0)
    result = trainer.fit(resume=resume)
    return {**result, "initial_val_loss": initial, "new_head": new_head}
