"""Sequence-to-sequence training recipe: parallel text -> BPE tokenizer -> Transformer -> Trainer.

This is what `dlforge train seq2seq` runs, and what Python users call as `train_seq2seq(...)`.
Sources and targets are line-aligned files (plain or gzip). One byte-level BPE tokenizer is trained on
both sides (a joint vocabulary, whose embedding table the encoder, decoder and output layer share,
as Vaswani et al. did for En–De), or with `joint_vocabulary=False` one per side (the encoder gets its
own embedding table; the decoder's stays tied to the output layer). Without validation files, the last
`val_fraction` of the pairs is held out. Sources are encoded as `<s> x </s>`; the decoder starts from
`<s>` and learns to emit `y </s>`.

At every evaluation, besides the validation loss, `eval_samples` validation sources are decoded
(greedy, or beam search with `eval_beams`) and scored with BLEU and chrF (and ROUGE for
`task=summarization`); the scores go to eval_scores.json and a few sample outputs are printed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch

from ..data.parallel import ParallelBatches, read_parallel
from ..errors import DlforgeError
from ..io import atomic_write_json, undo_on_failure
from ..metrics.generation import bleu_chrf, rouge
from ..models import load_pretrained
from ..models.seq2seq import Seq2Seq, Seq2SeqConfig
from ..settings import setting_types
from ..text.seq2seq_generation import generate_text2text
from ..text.tokenizers import BPETokenizer, SourceTargetTokenizer, load_tokenizer
from .distributed import init_distributed
from .lm import split_settings
from .trainer import TrainConfig, Trainer, check_model_fits, check_training_memory, open_run, resolve_device

log = logging.getLogger(__name__)

SPECIAL_TOKENS = {"pad": "<pad>", "bos": "<s>", "eos": "</s>", "unk": "<unk>"}  # ids 0–3 in this order
TASKS = ("translation", "summarization")


@dataclass
class Seq2SeqDataConfig:
    task: str = "translation"  # translation | summarization (adds ROUGE to the evaluation)
    joint_vocabulary: bool = True  # one BPE for both sides (shared embeddings); False: one per side
    max_source_length: int = 128  # tokens, special tokens included; longer sources are cut
    max_target_length: int = 128
    max_tokens: int = 4096  # padded source + target tokens per batch
    val_fraction: float = 0.02  # held out when no validation files are given
    eval_samples: int = 200  # validation sources decoded at each evaluation (0 = loss only)
    eval_beams: int = 1  # beam size for those decodes
    eval_max_new_tokens: int = 64

    def __post_init__(self):
        if self.task not in TASKS:
            raise DlforgeError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if min(self.max_source_length, self.max_target_length) < 3:
            raise DlforgeError("max_source_length and max_target_length must be >= 3")
        if self.max_tokens < 2 * 3:
            raise DlforgeError(f"max_tokens must be at least a few tokens, got {self.max_tokens}")


# Each preset: model shape + data + training fields + the tokenizer's vocab_size.
# `multi30k` is the recipe measured in benchmarks/RESULTS.md (German→English in 45 CPU minutes);
# `base` is the paper's Transformer-base; `tiny` is for smoke tests.
PRESETS: dict[str, dict] = {
    "tiny": dict(d_model=64, n_encoder_layers=2, n_decoder_layers=2, n_head=2, d_ff=128, max_position=128,
                 dropout=0.0, vocab_size=600, max_tokens=1024, lr=2e-3, max_steps=200, warmup_steps=20,
                 eval_interval=100, log_interval=10, eval_samples=20),
    "multi30k": dict(d_model=256, n_encoder_layers=3, n_decoder_layers=3, n_head=4, d_ff=1024, dropout=0.1,
                     max_position=128, vocab_size=8000, max_tokens=6000, lr=1e-3, min_lr=5e-5, max_steps=6000,
                     warmup_steps=400, beta2=0.98, weight_decay=0.01, eval_interval=500, eval_samples=300),
    "base": dict(d_model=512, n_encoder_layers=6, n_decoder_layers=6, n_head=8, d_ff=2048, dropout=0.1,
                 max_position=256, vocab_size=32000, max_tokens=25000, lr=7e-4, max_steps=100000,
                 warmup_steps=4000, beta2=0.98, weight_decay=0.0, eval_interval=2000),
}
# fine-tuning a pretrained model (--init): a small learning rate and a short schedule, as for T5/BART fine-tuning
FINETUNE_SETTINGS = dict(label_smoothing=0.1, max_tokens=4096, lr=1e-4, min_lr=1e-5, max_steps=2000,
                         warmup_steps=100, weight_decay=0.01, eval_interval=200, vocab_size=None)
# set by the tokenizer, not by --set
_NOT_SETTABLE = {"vocab_size", "source_vocab_size", "pad_token_id", "bos_token_id", "eos_token_id",
                 "decoder_start_token_id", "forced_bos_token_id", "forced_eos_token_id"}


def field_types() -> dict[str, type]:
    """Every key `--set` accepts for `train seq2seq`, with its type."""
    return setting_types(Seq2SeqConfig, Seq2SeqDataConfig, TrainConfig, exclude=_NOT_SETTABLE)


def resolve_settings(preset: str | None, overrides: dict) -> tuple[dict, dict, dict, int]:
    """Preset (None: FINETUNE_SETTINGS) + overrides -> (Seq2SeqConfig kwargs, Seq2SeqDataConfig kwargs,
    TrainConfig kwargs, vocab_size)."""
    if preset is not None and preset not in PRESETS:
        raise DlforgeError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
    settings = {**(PRESETS[preset] if preset is not None else FINETUNE_SETTINGS), **overrides}
    vocab_size = settings.pop("vocab_size")
    model, data, train = split_settings(settings, Seq2SeqConfig, Seq2SeqDataConfig)
    return model, data, train, vocab_size


def encode_pairs(tokenizer, sources: list[str], targets: list[str], data: Seq2SeqDataConfig):
    """Source ids `<s> x </s>` and label ids `y </s>`, cut to the configured lengths (EOS kept last)."""
    src = tokenizer.encode_batch(sources, padding=False, truncation=True, max_length=data.max_source_length,
                                 add_special_tokens=True, return_tensors=None)["input_ids"]
    target_side = getattr(tokenizer, "target", tokenizer)  # separate vocabularies: the target's
    tgt = target_side.encode_batch(targets, padding=False, return_tensors=None)["input_ids"]
    eos = target_side.eos_token_id
    tgt = [t[:data.max_target_length - 1] + [eos] for t in tgt]
    return src, tgt


class TranslationEvaluator:
    """The `on_eval` hook: decode some validation sources, score them, log the scores, print samples."""

    def __init__(self, sources: list[str], references: list[str], data: Seq2SeqDataConfig, progress: bool):
        self.sources, self.references, self.data, self.progress = sources, references, data, progress
        self.history: list[dict] = []

    def __call__(self, trainer: Trainer, metrics: dict) -> None:
        if not self.sources:
            return
        model = trainer.model
        start = time.perf_counter()
        outputs = generate_text2text(model, trainer.tokenizer, self.sources, num_beams=self.data.eval_beams,
                                     max_new_tokens=self.data.eval_max_new_tokens,
                                     max_source_length=self.data.max_source_length)
        scores = bleu_chrf(outputs, self.references)
        if self.data.task == "summarization":
            scores.update(rouge(outputs, self.references))
        scores = {k: round(v, 2) for k, v in scores.items()}
        row = {"step": metrics["step"], "elapsed_s": round(trainer.elapsed, 1), **scores,
               "decode_s": round(time.perf_counter() - start, 1)}
        self.history.append(row)
        atomic_write_json(trainer.run_dir / "eval_scores.json", self.history)
        if self.progress:
            shown = ", ".join(f"{k} {v:.2f}" for k, v in scores.items())
            lines = [f"step {metrics['step']}: val loss {metrics['val_loss']:.3f}, {shown}"]
            for source, output, reference in list(zip(self.sources, outputs, self.references))[:3]:
                lines += [f"  source: {source}", f"  output: {output}", f"  reference: {reference}"]
            log.info("\n".join(lines))


def check_lengths(config: Seq2SeqConfig, data: Seq2SeqDataConfig) -> None:
    longest = max(data.max_source_length, data.max_target_length)
    if config.positional != "relative" and longest > config.max_position:
        raise DlforgeError(f"max_source_length/max_target_length ({longest}) exceed the model's max_position "
                           f"({config.max_position}): lower them (--set max_source_length=N) or raise max_position")


def load_init_model(init: str | Path, data: Seq2SeqDataConfig):
    """The pretrained encoder–decoder to fine-tune and its tokenizer, checked against the data settings."""
    model, tokenizer = load_pretrained(init, expected_kind="seq2seq")
    if tokenizer is None:
        raise DlforgeError(f"{init} has no tokenizer files (tokenizer.json): fine-tuning uses the model's own")
    check_lengths(model.config, data)
    check_training_memory(model, str(init), "fine-tune a smaller model")
    return model, tokenizer


def train_seq2seq(source: str | Path | None, target: str | Path | None, out: str | Path,
                  valid_source: str | Path | None = None, valid_target: str | Path | None = None,
                  preset: str = "multi30k", overrides: dict | None = None, vocab_size: int | None = None,
                  init: str | Path | None = None, resume: bool = False, seed: int | None = None,
                  overwrite: bool = False,
                  on_eval: Callable | None = None, progress: bool = True) -> dict:
    """Train (or resume) an encoder–decoder Transformer on line-aligned parallel text; returns the Trainer's
    final metrics plus the last evaluation's scores (`scores`).

    With `init` (a dlforge seq2seq run or model, or a Hugging Face T5/BART folder) the pretrained model and its
    tokenizer are fine-tuned instead: `preset` is not used, `FINETUNE_SETTINGS` are the defaults, and only
    dropout and label_smoothing of the model may be changed.
    """
    out = Path(out)
    run_file = out / "run.json"
    run = open_run(out, resume, overrides=overrides, overwrite=overwrite,
                   required={"model": dict, "train": dict, "data_config": dict, "files": list})
    if run is None:
        if source is None or target is None:
            raise DlforgeError("--source and --target are required: two line-aligned UTF-8 files (plain or .gz)")
        if (valid_source is None) != (valid_target is None):
            raise DlforgeError("give both --valid-source and --valid-target, or neither (then part of the "
                               "training pairs is held out)")
        if init is not None:
            fixed = sorted(k for k in overrides or {} if k in {f.name for f in fields(Seq2SeqConfig)}
                           and k not in ("dropout", "label_smoothing"))
            if fixed:
                raise DlforgeError(f"--set {fixed[0]}: with --init the model's shape is the checkpoint's; only "
                                   "dropout, label_smoothing and training settings can be changed")
            preset, vocab_size = None, None
        model_kwargs, data_kwargs, train_kwargs, preset_vocab = resolve_settings(preset, overrides or {})
        if seed is not None:
            train_kwargs["seed"] = seed
        TrainConfig(**train_kwargs)  # validate before the slow setup
        data_config = Seq2SeqDataConfig(**data_kwargs)
        if init is None:  # the model these settings make (at the tokenizers' planned size) must fit in memory
            planned = vocab_size or preset_vocab
            shape = Seq2SeqConfig(vocab_size=planned, source_vocab_size=None if data_config.joint_vocabulary
                                  else planned, **model_kwargs)
            check_lengths(shape, data_config)
            check_model_fits(lambda: Seq2Seq(shape), "this encoder-decoder",
                             "choose smaller sizes (--set d_model/d_ff/n_encoder_layers/n_decoder_layers/...)")
        files = [source, target] + ([valid_source, valid_target] if valid_source else [])
        run = {"kind": "seq2seq", "files": [str(Path(f).resolve()) for f in files], "preset": preset,
               "init": None if init is None else str(init),
               "vocab_size": vocab_size or preset_vocab, "model": model_kwargs,
               "data_config": asdict(data_config), "train": train_kwargs}
    train_config = TrainConfig(**run["train"])
    data_config = Seq2SeqDataConfig(**run["data_config"])
    dist = init_distributed(resolve_device(train_config.device).type)
    dist.barrier()
    sources, targets = read_parallel(*run["files"][:2])
    if len(run["files"]) == 4:
        val_sources, val_targets = read_parallel(*run["files"][2:])
    else:
        n_val = max(1, round(len(sources) * data_config.val_fraction))
        if len(sources) - n_val < 1:
            raise DlforgeError(f"only {len(sources)} pair(s): give more, or validation files")
        sources, val_sources = sources[:-n_val], sources[-n_val:]
        targets, val_targets = targets[:-n_val], targets[-n_val:]
    pretrained = None
    if dist.is_main and not resume:  # run.json is written last, and a failed setup takes back what it wrote
        with undo_on_failure(out):
            source_vocab = None
            if run.get("init"):
                pretrained, tok = load_init_model(run["init"], data_config)
            elif data_config.joint_vocabulary:
                tok = BPETokenizer.train(sources + targets, vocab_size=run["vocab_size"], special_tokens=SPECIAL_TOKENS)
            else:
                tok = SourceTargetTokenizer(
                    BPETokenizer.train(sources, vocab_size=run["vocab_size"], special_tokens=SPECIAL_TOKENS),
                    BPETokenizer.train(targets, vocab_size=run["vocab_size"], special_tokens=SPECIAL_TOKENS))
                source_vocab = tok.source.vocab_size
            tok.save(out)
            if pretrained is not None:
                run["model"] = asdict(replace(pretrained.config, **run["model"]))  # dropout / label_smoothing
            else:
                ids = {name: tok.token_to_id(token) for name, token in SPECIAL_TOKENS.items()}
                run["model"] = asdict(Seq2SeqConfig(
                    vocab_size=tok.vocab_size, source_vocab_size=source_vocab, pad_token_id=ids["pad"],
                    bos_token_id=ids["bos"], eos_token_id=ids["eos"], decoder_start_token_id=ids["bos"],
                    **run["model"]))
            atomic_write_json(run_file, run)
    dist.barrier()
    run = json.loads(run_file.read_text(encoding="utf-8"))
    tok = load_tokenizer(out)
    model_config = Seq2SeqConfig.from_dict(run["model"])
    src_ids, tgt_ids = encode_pairs(tok, sources, targets, data_config)
    val_src_ids, val_tgt_ids = encode_pairs(tok, val_sources, val_targets, data_config)
    batches = ParallelBatches(src_ids, tgt_ids, val_src_ids, val_tgt_ids, model_config.pad_token_id,
                              data_config.max_tokens, seed=train_config.seed, grad_accum=train_config.grad_accum)
    torch.manual_seed(train_config.seed)
    model = Seq2Seq(model_config)
    if run.get("init") and not resume:  # start from the pretrained weights (resuming: the checkpoint's replace them)
        if pretrained is None:  # the other processes load it too
            pretrained, _ = load_init_model(run["init"], data_config)
        model.load_state_dict(pretrained.state_dict())
    n_eval = min(data_config.eval_samples, len(val_sources))
    evaluator = TranslationEvaluator(val_sources[:n_eval], val_targets[:n_eval], data_config, progress)

    def after_eval(trainer, metrics):
        evaluator(trainer, metrics)
        if on_eval is not None:
            on_eval(trainer, metrics)

    trainer = Trainer(model, train_config, batches, out, tokenizer=tok, on_eval=after_eval, progress=progress)
    result = trainer.fit(resume=resume)
    return {**result, "scores": evaluator.history[-1] if evaluator.history else None}
