"""One Trainer for every dlforge model family.

The Trainer knows nothing about GPT, BERT or diffusion. It needs:
- a model whose `forward(**batch)` returns an object with `.loss`;
- a batch source with `train_batch(step, micro_step, rank, world_size) -> dict of tensors` and
  `eval_batches(rank, world_size) -> iterable of dicts` (see `dlforge.data.TextBatches`).

Batches are a function of the step, and the checkpoint holds weights, optimizer, RNG, EMA and
schedule state, so `fit(resume=True)` after a kill continues exactly: on CPU the final weights
are bit-identical to an uninterrupted run.

Run folder layout (only rank 0 writes):
    metrics.csv, loss.png              history, rewritten atomically
    checkpoints/step-000500/           config.json, model.safetensors, tokenizer, trainer_state.pt
    checkpoints/LATEST                 name of the newest complete checkpoint
    checkpoints/best/                  the checkpoint with the lowest validation loss (or best `eval_metric`)
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ..devices import resolve_device, resolve_precision
from ..errors import DlforgeError
from ..hub.json_files import read_json_object
from ..hub.model_files import write_model_files
from ..hub.weights import deduplicated_state_dict, load_into, load_state_dict
from ..io import (
    atomic_directory,
    atomic_write_json,
    atomic_write_text,
    claim_folder,
    release_folder,
    remove_stale_temporaries,
    remove_tree,
)
from ..paths import model_file, resolve_inside
from ..settings import check_fields, check_range
from .distributed import init_distributed
from .layerwise import layerwise_lr_scales
from .metrics_log import MetricsLog, tensorboard_writer_class
from .optim import DECAYS, EMA, adam_beta1, learning_rate, make_adamw

log = logging.getLogger(__name__)  # progress lines and warnings; the CLI sets the level (--quiet, --verbose)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
ON_NAN = ("stop", "skip")
MAX_SKIPPED_IN_A_ROW = 10  # with on_nan=skip: this many non-finite steps in a row stop the run all the same
EVAL_MARKS = 3  # every run evaluates at least at 1/3, 2/3 and the end of its schedule


@dataclass
class TrainConfig:
    max_steps: int = 1000  # optimizer steps at most (the LR schedule ends here unless the time budget ends first)
    max_minutes: float | None = None  # wall-clock budget: the schedule follows the share of it used (see fit)
    batch_size: int = 32  # global micro-batch, split across processes
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-3
    min_lr: float | None = None  # default lr / 10
    warmup_steps: int = 100
    decay: str = "cosine"  # cosine | constant | one-cycle (LR up over the warmup steps, then down; β1 mirrors it)
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float | None = 1.0
    precision: str = "auto"  # auto = bf16 where supported, else fp16 on CUDA, else fp32
    eval_interval: int = 250
    log_interval: int = 10
    keep_last: int = 2  # step checkpoints kept besides best
    early_stopping_patience: int | None = None  # evaluations without improvement before stopping
    ema_decay: float | None = None
    layer_lr_decay: float | None = None  # layer-wise LR decay for fine-tuning (e.g. 0.8); None = off
    seed: int = 1337
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    on_nan: str = "stop"  # a non-finite loss or gradient: stop (keeping the last good checkpoint) | skip the batch
    tensorboard: bool = False  # also log the metrics to OUT/tensorboard (needs the tensorboard package)

    def __post_init__(self):
        check_fields(self)
        if self.precision not in PRECISIONS:
            raise DlforgeError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.decay not in DECAYS:
            raise DlforgeError(f"decay must be one of {', '.join(DECAYS)}, got {self.decay!r}")
        if self.on_nan not in ON_NAN:
            raise DlforgeError(f"on_nan must be one of {', '.join(ON_NAN)}, got {self.on_nan!r}")
        check_range(self, at_least={"max_steps": 1, "batch_size": 1, "grad_accum": 1, "eval_interval": 1,
                                    "log_interval": 1, "keep_last": 1, "early_stopping_patience": 1,
                                    "warmup_steps": 0, "weight_decay": 0, "min_lr": 0, "seed": 0},
                    above={"lr": 0, "max_minutes": 0, "grad_clip": 0, "ema_decay": 0, "layer_lr_decay": 0},
                    below={"beta1": 1, "beta2": 1, "ema_decay": 1, "seed": 2**63}, at_most={"layer_lr_decay": 1})
        check_range(self, at_least={"beta1": 0, "beta2": 0})
        if self.tensorboard:  # asked for: a missing package is said now, before the run writes anything
            tensorboard_writer_class()

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in fields(cls)}


def open_run(out: Path, resume: bool, what: str = "run", overrides: dict | None = None,
             overwrite: bool = False, required: dict[str, type] | None = None) -> dict | None:
    """The settings saved in OUT/run.json when resuming; None for a new run (after checking `out` may hold one).

    Every command that trains (train gpt/bert/seq2seq, finetune) keeps what it was started with in run.json, so
    `--resume` rebuilds the same run from the folder alone. Of `overrides`, a resumed run takes only
    RESUMABLE_SETTINGS: a new length (max_steps, max_minutes, see `Trainer.schedule_progress`), on_nan, and a new
    peak learning rate (lr, min_lr: what a run that diverged needs to go on from its last good checkpoint).

    The folder is locked for this process's life (a second process gets a one-line error). A new run may not go
    into a folder that already holds a run with a checkpoint (resume it instead), nor into a non-empty folder
    that is not a dlforge run unless `overwrite` (its files of the same names are then replaced). A run that
    never saved a checkpoint (it failed during setup, or was killed before its first evaluation) may simply be
    started again. `required`: the keys (and their JSON types) the recipe reads from a resumed run.json.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DlforgeError(f"--out {out} is a file: give a folder for the run (a new one, or one to --resume)")
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 writes (and locks) for all
        claim_folder(out, what)
    run_file = out / "run.json"
    if resume:
        if not run_file.is_file():
            raise DlforgeError(f"nothing to resume in {out}: it has no run.json (start it without --resume)")
        run = read_json_object(run_file, "the run folder is damaged; start the run again in a new folder")
        for key, kind in (required or {}).items():
            if not isinstance(run.get(key), kind):
                raise DlforgeError(f"{run_file} is not a {what}'s settings (its {key!r} is missing or of the wrong "
                                   "type): resume it with the command that started it, or start again elsewhere")
        changes = {k: v for k, v in (overrides or {}).items() if k in RESUMABLE_SETTINGS}
        if changes and isinstance(run.get("train"), dict):  # the recipes keep TrainConfig's fields in "train"
            run["train"].update(changes)
            TrainConfig(**run["train"])  # checked before it is kept: a later --resume goes on with the new values
            if os.environ.get("RANK", "0") == "0":
                atomic_write_json(run_file, run)
        return run
    if (out / "checkpoints" / "LATEST").exists():
        raise DlforgeError(f"{out} already holds a {what}: pass --resume to continue it, or choose another --out")
    others = [p.name for p in out.iterdir() if p.name not in RUN_FILES] if out.is_dir() else []
    if others and not run_file.exists() and not overwrite:
        raise DlforgeError(f"{out} is not empty and holds no dlforge run ({', '.join(sorted(others)[:3])}"
                           f"{' ...' if len(others) > 3 else ''}): choose a new or empty --out, or pass --overwrite "
                           "to write the run into it (files of the same names are replaced)")
    return None


RESUMABLE_SETTINGS = ("max_steps", "max_minutes", "on_nan", "lr", "min_lr", "tensorboard")
RUN_FILES = ("run.json", "checkpoints", "metrics.csv", "loss.png")  # what a run that never saved may have left


def check_model_fits(build: Callable[[], torch.nn.Module], what: str = "the model",
                     hint: str = "choose smaller sizes (--set n_layer/n_embd/...)") -> int:
    """Build the model on the meta device (no memory), refuse settings that cannot make one or whose training
    state exceeds the machine's memory (`check_training_memory`); return the parameter count. Called by the
    recipes before anything is written. `hint`: what to do instead, in the recipe's own settings."""
    try:
        with torch.device("meta"):
            model = build()
    except DlforgeError:
        raise
    except (RuntimeError, ValueError, TypeError, ZeroDivisionError, OverflowError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DlforgeError(f"these settings do not make {what}: {first}") from None
    return check_training_memory(model, what, hint)


def check_training_memory(model: torch.nn.Module, what: str = "the model",
                          hint: str = "choose a smaller model") -> int:
    """Refuse `model` (built on the meta device, or loaded to be fine-tuned) when its training state exceeds the
    machine's memory: 4 bytes for each weight, and for each trained one (requires_grad) 12 more (its gradient
    and two Adam moments), so a model trained in full needs 16 bytes a parameter. Returns the parameter count."""
    parameters = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    needed, available = 4 * parameters + 12 * trained, memory_bytes()
    if available and needed > available:
        trained_part = "" if trained == parameters else f" ({trained:,} of them trained)"
        raise DlforgeError(f"{what} has {parameters:,} parameters{trained_part}, whose training needs about "
                           f"{needed / 2**30:,.1f} GiB (weights, gradients, optimizer state) where this machine has "
                           f"{available / 2**30:,.1f} GiB: {hint}")
    return parameters


def memory_bytes() -> int:
    """The machine's physical memory in bytes (0 when the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


@dataclass(frozen=True)
class EvalMetric:
    """A score computed in the evaluation pass (higher is better) that chooses checkpoints/best and drives
    early stopping instead of the val loss, as Hugging Face's `metric_for_best_model` (e.g. accuracy).

    `batch_score(output, batch) -> (sum, count)`: the batch's summed score and how many items it covers.
    """

    name: str
    batch_score: Callable[[object, dict], tuple[float, float]]


class Trainer:
    def __init__(self, model: torch.nn.Module, config: TrainConfig, data, run_dir: str | Path,
                 tokenizer=None, on_eval: Callable[[Trainer, dict], None] | None = None, progress: bool = True,
                 on_step: Callable[[Trainer], None] | None = None, eval_metric: EvalMetric | None = None,
                 latest_is_best: bool = False):
        self.config, self.data, self.tokenizer, self.on_eval = config, data, tokenizer, on_eval
        self.on_step = on_step  # called after every optimizer step (e.g. gradual unfreezing)
        self.eval_metric = eval_metric  # None: the lowest val loss is the best checkpoint
        # GANs and diffusion models: the validation loss does not rank sample quality, so checkpoints/best is
        # simply the latest evaluated (EMA) weights
        self.latest_is_best = latest_is_best
        self.run_dir = Path(run_dir)
        self.device = resolve_device(config.device)
        self.dist = init_distributed(self.device.type)
        if self.device.type == "cuda" and self.dist.enabled:
            self.device = torch.device("cuda", self.dist.local_rank)
        torch.manual_seed(config.seed)
        self.model = model.to(self.device)
        self.ddp = (DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda"
                                            else None) if self.dist.enabled else None)
        self.amp_dtype = resolve_precision(config.precision, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.amp_dtype == torch.float16 else None
        lr_scales = layerwise_lr_scales(self.model, config.layer_lr_decay) if config.layer_lr_decay else None
        self.optimizer = make_adamw(self.model, config.lr, config.weight_decay, (config.beta1, config.beta2),
                                    lr_scales)
        self.ema = EMA(self.model, config.ema_decay) if config.ema_decay else None
        # extra training scalars the model reports in output.logs (a GAN's d_loss, g_loss, D(x), D(G(z)))
        self.log_names = tuple(getattr(model, "log_names", ()))
        self.log = MetricsLog(self.run_dir, enabled=self.dist.is_main, tensorboard=config.tensorboard,
                              extra_columns=((f"val_{eval_metric.name}",) if eval_metric else ()) + self.log_names)
        self.progress = progress and self.dist.is_main
        # state that a checkpoint carries
        self.step = 0
        self.best_val = math.inf
        self.best_score = -math.inf  # what chooses checkpoints/best: eval_metric, else minus the val loss
        self.last_metric: float | None = None
        self.evals_without_improvement = 0
        self.total_steps = config.max_steps  # after fit: the steps the run ended at
        self.schedule_anchor = (0, 0.0, 0.0)  # (step, elapsed, progress) where the schedule's length last changed
        self.schedule_steps = config.max_steps  # the learning-rate curve's length in steps, as first planned
        self.budget_progress = 0.0  # share of a time budget's schedule done since the anchor (see schedule_progress)
        self.step_seconds: float | None = None  # recent seconds per optimizer step (evaluation excluded)
        self.skipped_steps = 0  # non-finite batches skipped (on_nan=skip)
        self.skipped_in_a_row = 0
        self.elapsed = 0.0
        self.stop_reason = ""
        self.throughput_unit = "samples/s"
        self.current_lr = config.lr

    # ---------------------------------------------------------------- training
    def _autocast(self):
        if self.amp_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

    def _train_step(self) -> tuple[float | None, int, dict[str, float]]:
        """One optimizer step over grad_accum micro-batches; returns (mean loss, items processed, mean logs).

        A non-finite loss or gradient norm is caught before the optimizer applies it: on_nan=stop raises a
        DlforgeError (the checkpoints on disk are the last good ones), on_nan=skip drops the batch and returns
        (None, 0, {}).
        """
        c, model = self.config, self.ddp or self.model
        position = self._schedule_step()
        if c.max_minutes:  # every process must use the same rate: the time share differs by microseconds between them
            position = self.dist.mean(position, self.device)
        lr = learning_rate(position, c.lr, c.min_lr if c.min_lr is not None else c.lr / 10, c.warmup_steps,
                           self.schedule_steps, c.decay)
        self.current_lr = lr
        beta1 = adam_beta1(position, c.beta1, c.warmup_steps, self.schedule_steps, c.decay)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
            group["betas"] = (beta1, c.beta2)
        total_loss, items, logs = 0.0, 0, dict.fromkeys(self.log_names, 0.0)
        for micro in range(c.grad_accum):
            batch = self._to_device(self.data.train_batch(self.step, micro, self.dist.rank, self.dist.world_size))
            sync = self.ddp is None or micro == c.grad_accum - 1
            with (contextlib.nullcontext() if sync else self.ddp.no_sync()), self._autocast():
                output = model(**batch)
                loss = output.loss / c.grad_accum
            (self.scaler.scale(loss) if self.scaler else loss).backward()
            total_loss += loss.item()
            for name in self.log_names:
                logs[name] += float(output.logs[name]) / c.grad_accum
            counts_tokens = "input_ids" in batch
            self.throughput_unit = "tok/s" if counts_tokens else "samples/s"
            first = batch["input_ids"] if counts_tokens else next(iter(batch.values()))
            items += first.numel() if counts_tokens else first.shape[0]
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        # the total gradient norm (clipped when grad_clip is set); fp16's scaler skips inf steps by itself
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip or math.inf))
        bad = not math.isfinite(total_loss) or (self.scaler is None and not math.isfinite(grad_norm))
        if self.dist.any(bad, self.device):
            self.optimizer.zero_grad(set_to_none=True)
            return self._non_finite_step(total_loss, grad_norm, lr)
        self.skipped_in_a_row = 0
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        if self.on_step is not None:
            self.on_step(self)
        logs = {name: self.dist.mean(value, self.device) for name, value in logs.items()}
        return self.dist.mean(total_loss, self.device), items * self.dist.world_size, logs

    def _non_finite_step(self, loss: float, grad_norm: float, lr: float) -> tuple[None, int, dict]:
        """A batch whose loss or gradient is NaN/inf, caught before the weights changed: skip it or stop."""
        what = f"the loss is {loss}" if not math.isfinite(loss) else f"the gradient norm is {grad_norm}"
        if self.config.on_nan == "skip" and self.skipped_in_a_row + 1 < MAX_SKIPPED_IN_A_ROW:
            self.skipped_in_a_row += 1
            self.skipped_steps += 1
            log.warning(f"step {self.step + 1}: {what}; batch skipped (on_nan=skip)")
            self.step += 1  # the next batch: batches are a function of the step
            return None, 0, {}
        cause = ("the learning rate is probably too high" if lr >= 1e-2 or self.step > 0
                 else "the data or the model settings produce it from the first batch")
        repeated = (f" ({MAX_SKIPPED_IN_A_ROW} batches in a row)" if self.config.on_nan == "skip" else "")
        raise DlforgeError(f"training stopped at step {self.step + 1}: {what}{repeated}, so {cause} (lr {lr:.3g}); "
                           + self._how_to_go_on(" or skip bad batches (--on-nan skip)"))

    def _how_to_go_on(self, alternative: str = "") -> str:
        """After a divergence: which checkpoint is kept and the command that goes on from it."""
        pointer = self.checkpoint_root / "LATEST"
        lower = f"--set lr={self.config.lr / 10:.2g}"
        if not pointer.is_file():
            return f"no checkpoint was saved: start again with a lower rate ({lower}),{alternative}".rstrip(",")
        return (f"the last good checkpoint ({pointer.read_text().strip()}) is kept: go on from it with a lower rate "
                f"(--resume {lower}),{alternative}").rstrip(",")

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss over the source's fixed evaluation batches (EMA weights when enabled)."""
        was_training = self.model.training
        self.model.eval()
        if self.ema is not None:
            self.ema.swap(self.model)
        try:
            losses, score, counted = [], 0.0, 0.0
            for batch in self.data.eval_batches(self.dist.rank, self.dist.world_size):
                batch = self._to_device(batch)
                with self._autocast():
                    output = self.model(**batch)
                losses.append(output.loss.item())
                if self.eval_metric is not None:  # from the same forward pass: no second evaluation
                    batch_sum, batch_count = self.eval_metric.batch_score(output, batch)
                    score, counted = score + float(batch_sum), counted + float(batch_count)
        finally:
            if self.ema is not None:
                self.ema.swap(self.model)
            self.model.train(was_training)
        if self.eval_metric is not None:
            self.last_metric = self.dist.mean(score / max(1.0, counted), self.device)
        return self.dist.mean(sum(losses) / max(1, len(losses)), self.device)

    # ---------------------------------------------------------------- schedule
    def schedule_progress(self) -> float:
        """How far through its schedule the run is, in [0, 1]: the larger of the share of max_steps done and the
        progress through the time budget (95 % of max_minutes: the rest is left for the final evaluation).

        Through a time budget, progress moves by steps at the current pace (`_advance_budget_progress`): each step
        takes its share of what is left, shared among the steps the remaining time allows at the recent seconds
        per step. At a steady pace this is the share of the time used; when the first steps are slow (another
        job on the machine, kernels being built) they no longer spend the schedule the faster steps after them
        need, and when the pace falls, what is left is squeezed into the fewer steps: the decay still ends with
        the budget.

        The learning rate, warmup included, is a function of this progress, so a time-budgeted run always warms
        up and always finishes its decay, however fast or loaded the machine is. When `--resume` changes the
        length, the part of the schedule not yet run is stretched (or squeezed) over the new remaining length
        from an anchor (step, elapsed, progress) taken at the resume: the learning rate goes on from where it
        was and still ends at min_lr.
        """
        c = self.config
        anchor_step, _, anchor_progress = self.schedule_anchor
        shares = [(self.step - anchor_step) / max(1, c.max_steps - anchor_step)]
        if c.max_minutes:
            shares.append(self.budget_progress)
        return min(1.0, anchor_progress + (1.0 - anchor_progress) * max(0.0, max(shares)))

    def _schedule_step(self) -> float:
        """The schedule position as a (fractional) step of the run as first planned (schedule_steps = its
        max_steps): what `learning_rate` and `adam_beta1` take. A time budget keeps the planned warmup share
        (warmup_steps / max_steps), and a new length on resume keeps the curve's shape."""
        return round(self.schedule_progress() * self.schedule_steps, 9)  # 9 places: no 49.999999 for 50

    def _advance_budget_progress(self, step_seconds: float) -> None:
        """After a step that took `step_seconds`: move the time budget's progress on by this step's share of what
        is left (see schedule_progress); all of it once the budget is used."""
        self.step_seconds = step_seconds if self.step_seconds is None else 0.7 * self.step_seconds + 0.3 * step_seconds
        remaining = 0.95 * 60 * self.config.max_minutes - self.elapsed
        steps_left = max(0.0, remaining) / max(self.step_seconds, 1e-9)  # at the recent pace
        self.budget_progress = 1.0 if remaining <= 0 else min(
            1.0, self.budget_progress + (1.0 - self.budget_progress) / (1.0 + steps_left))

    def _out_of_time(self) -> bool:
        c = self.config
        return bool(c.max_minutes) and self.elapsed >= 0.95 * 60 * c.max_minutes

    def fit(self, resume: bool = False) -> dict:
        """Train until max_steps, the time budget, or early stopping; return the final metrics.

        Evaluation (and a checkpoint) comes every eval_interval steps and at least at a third, two thirds and
        the end of the schedule. A non-finite loss or gradient norm stops the run (or skips the batch, with
        on_nan=skip) before the optimizer applies it; the last good checkpoint stays LATEST and best.
        """
        if not self.dist.is_main:
            return self._fit(resume)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        claim_folder(self.run_dir)  # one process per run folder (re-entrant: the recipe may hold it already)
        try:
            remove_stale_temporaries(self.run_dir, locked=True, recursive=True)
            return self._fit(resume)
        finally:
            release_folder(self.run_dir)  # (the OS frees it too if the process dies)

    def _fit(self, resume: bool) -> dict:
        c = self.config
        if resume:
            self.load_checkpoint()
        elif self.dist.is_main and (self.checkpoint_root / "LATEST").exists():
            raise DlforgeError(f"{self.run_dir} already holds a training run: pass --resume to continue it, "
                               "or choose another --out folder")
        self.model.train()
        bar = tqdm(total=c.max_steps, initial=self.step, disable=not self.progress, unit="step", dynamic_ncols=True)
        window_loss, window_items, window_start = [], 0, time.perf_counter()
        window_logs = {name: [] for name in self.log_names}
        start = time.perf_counter() - self.elapsed
        # an evaluation at each third of the schedule unless one already came since the previous third
        part, evaluated_in_part = int(self.schedule_progress() * EVAL_MARKS), resume
        val_loss = None
        exhausted = self.dist.any(self._out_of_time(), self.device)  # a resumed run whose budget is used up
        while self.step < c.max_steps and not exhausted:
            step_start = time.perf_counter()
            loss, items, logs = self._train_step()
            self.elapsed = time.perf_counter() - start
            if c.max_minutes:
                self._advance_budget_progress(time.perf_counter() - step_start)
            if loss is None:  # a skipped non-finite batch (on_nan=skip)
                bar.update(1)
                continue
            window_loss.append(loss)
            for name, value in logs.items():
                window_logs[name].append(value)
            window_items += items
            progress = self.schedule_progress()
            out_of_time = self.dist.any(self._out_of_time(), self.device)
            finished = self.step >= c.max_steps or out_of_time
            crossed = int(progress * EVAL_MARKS) > part
            evaluate_now = self.step % c.eval_interval == 0 or finished or (crossed and not evaluated_in_part)
            if crossed:
                part, evaluated_in_part = int(progress * EVAL_MARKS), False
            else:
                evaluated_in_part = evaluated_in_part or evaluate_now
            if self.step % c.log_interval == 0 or evaluate_now:
                rate = window_items / max(1e-9, time.perf_counter() - window_start)
                mean_loss = sum(window_loss) / len(window_loss)
                means = {name: sum(values) / len(values) for name, values in window_logs.items()}
                self.log.log(step=self.step, train_loss=mean_loss, lr=self.current_lr,
                             throughput=rate, elapsed_s=self.elapsed, **means)
                bar.set_postfix({"loss": f"{mean_loss:.4f}", **{k: f"{v:.3f}" for k, v in means.items()},
                                 self.throughput_unit: f"{rate:,.0f}"})
                window_loss, window_items, window_start = [], 0, time.perf_counter()
                window_logs = {name: [] for name in self.log_names}
                if c.max_minutes and progress > 0:  # the step count the budget will allow, at this pace
                    bar.total = min(c.max_steps, max(self.step, round(self.step / progress)))
            bar.update(1)
            if out_of_time:
                self.stop_reason = f"time budget of {c.max_minutes} min reached"
            if evaluate_now:
                val_loss = self._evaluate_and_save()
                if self.stop_reason:
                    break
        bar.close()
        self.total_steps = self.step
        if not self.stop_reason:
            self.stop_reason = (f"time budget of {c.max_minutes} min reached" if self._out_of_time()
                                else f"reached max_steps={c.max_steps}")
        return {"step": self.step, "val_loss": val_loss, "best_val_loss": self.best_val,
                "elapsed_s": self.elapsed, "stop_reason": self.stop_reason, "skipped_steps": self.skipped_steps}

    def _evaluate_and_save(self) -> float:
        val_loss = self.evaluate()
        if not math.isfinite(val_loss) or not all(torch.isfinite(p).all() for p in self.model.parameters()):
            # weights that went non-finite are never saved: LATEST and best keep pointing at good ones
            raise DlforgeError(f"training stopped at step {self.step}: the validation loss is {val_loss} (the "
                               f"weights diverged; the learning rate is probably too high, lr {self.current_lr:.3g})"
                               "; " + self._how_to_go_on())
        score = -val_loss if self.eval_metric is None else self.last_metric
        improved = score > self.best_score or self.latest_is_best
        self.best_val = min(self.best_val, val_loss)
        if improved:
            self.best_score, self.evals_without_improvement = score, 0
        else:
            self.evals_without_improvement += 1
        extra = {} if self.eval_metric is None else {f"val_{self.eval_metric.name}": self.last_metric}
        self.log.log(step=self.step, val_loss=val_loss, elapsed_s=self.elapsed, **extra)
        patience = self.config.early_stopping_patience
        if patience is not None and self.evals_without_improvement >= patience:
            self.stop_reason = f"early stopping: no improvement in {patience} evaluations"
        self.save_checkpoint(best=improved)
        if self.progress:
            metric = "" if self.eval_metric is None else f", {self.eval_metric.name} {self.last_metric:.4f}"
            log.info(f"step {self.step}: val loss {val_loss:.4f}{metric}" + (" (best)" if improved else ""))
        if self.on_eval is not None and self.dist.is_main:
            extra = {} if self.eval_metric is None else {self.eval_metric.name: self.last_metric}
            self.on_eval(self, {"step": self.step, "val_loss": val_loss, **extra})
        return val_loss

    # ---------------------------------------------------------------- checkpoints
    @property
    def checkpoint_root(self) -> Path:
        return self.run_dir / "checkpoints"

    def _trainer_state(self) -> dict:
        return {
            "step": self.step, "best_val": self.best_val, "schedule_anchor": list(self.schedule_anchor),
            "schedule_steps": self.schedule_steps, "budget_progress": self.budget_progress,
            "skipped_steps": self.skipped_steps,
            "best_score": self.best_score,
            "evals_without_improvement": self.evals_without_improvement, "elapsed": self.elapsed,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "ema": self.ema.state_dict() if self.ema else None,
            # a training wrapper's own modules (e.g. DANN's domain classifier): not part of the exported model
            "training_modules": (self.model.training_state_dict() if hasattr(self.model, "training_state_dict")
                                 else {}),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "train_config": asdict(self.config),
        }

    def save_checkpoint(self, best: bool = False) -> None:
        if self.dist.is_main:
            try:
                self._write_checkpoint(best)
            except (OSError, RuntimeError) as e:  # disk full, read-only folder; torch.save wraps them in RuntimeError
                reason = (e.strerror if isinstance(e, OSError) and e.strerror else str(e).strip().splitlines()[0]
                          if str(e).strip() else type(e).__name__)
                pointer = self.checkpoint_root / "LATEST"
                kept = (f"the last good checkpoint ({pointer.read_text().strip()}) is intact" if pointer.is_file()
                        else "no checkpoint was saved yet")
                raise DlforgeError(f"cannot write the checkpoint of step {self.step} in {self.checkpoint_root} "
                                   f"({reason}); {kept}: free disk space or fix the folder's permissions, then "
                                   "continue with --resume") from e
        self.dist.barrier()

    def _write_checkpoint(self, best: bool) -> None:
        self.log.write()  # before LATEST moves: a resume drops rows past its checkpoint, never misses any
        name = f"step-{self.step:07d}"
        with atomic_directory(self.checkpoint_root / name) as tmp:
            write_model_files(self.model, tmp, self.tokenizer)
            torch.save(self._trainer_state(), tmp / "trainer_state.pt")
        atomic_write_text(self.checkpoint_root / "LATEST", name + "\n")
        if best:
            with atomic_directory(self.checkpoint_root / "best") as tmp:
                if self.ema is not None:  # the best model is the averaged one that was evaluated
                    self.ema.swap(self.model)
                try:
                    write_model_files(self.model, tmp, self.tokenizer)
                finally:
                    if self.ema is not None:
                        self.ema.swap(self.model)
        self._prune_checkpoints(keep=name)

    def _prune_checkpoints(self, keep: str) -> None:
        """Delete step checkpoints beyond keep_last (never `keep`, the one LATEST names); each is renamed away
        before it is deleted, so a kill midway never leaves a half-deleted step-N folder."""
        steps = sorted(p for p in self.checkpoint_root.glob("step-*") if p.is_dir() and p.name != keep)
        for old in steps[: max(0, len(steps) + 1 - max(1, self.config.keep_last))]:
            remove_tree(old)

    def latest_checkpoint(self) -> Path:
        pointer = self.checkpoint_root / "LATEST"
        if not pointer.is_file():
            raise DlforgeError(f"nothing to resume in {self.run_dir}: no checkpoint was saved there yet (start it "
                               "again without --resume)")
        name = pointer.read_text(encoding="utf-8", errors="replace").strip()
        path = resolve_inside(self.checkpoint_root, name, "the checkpoint named by LATEST")
        if not re.fullmatch(r"step-\d+", name) or not (path / "trainer_state.pt").is_file():
            raise DlforgeError(f"checkpoint {name!r} named by {pointer} is missing or incomplete: write the name of "
                               "an intact step-N folder into LATEST, or start the run again in a new folder")
        return path

    def load_checkpoint(self) -> None:
        path = self.latest_checkpoint()
        load_into(self.model, load_state_dict(path), str(path), allowed_missing=self._tied_names())
        state_file = model_file(path / "trainer_state.pt")  # not a link out of the checkpoint
        try:
            state = torch.load(state_file, map_location="cpu", weights_only=True)
        except Exception as e:
            raise DlforgeError(f"cannot read {path / 'trainer_state.pt'} ({type(e).__name__}): the checkpoint is "
                               "damaged; delete it and point LATEST at an earlier one") from e
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state["ema"]:
            self.ema.load_state_dict(state["ema"])
        if hasattr(self.model, "load_training_state_dict"):
            try:
                self.model.load_training_state_dict(state.get("training_modules", {}))
            except ValueError as e:
                raise DlforgeError(f"{path / 'trainer_state.pt'} does not fit this run: {e}") from e
        torch.set_rng_state(state["rng_cpu"])
        if state["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        self.step, self.best_val, self.elapsed = state["step"], state["best_val"], state["elapsed"]
        self.skipped_steps = state.get("skipped_steps", 0)
        self.schedule_anchor = tuple(state.get("schedule_anchor", (0, 0.0, 0.0)))
        saved_minutes = state.get("train_config", {}).get("max_minutes")
        if "budget_progress" in state:
            self.budget_progress = state["budget_progress"]
        elif saved_minutes:  # a checkpoint from before pace-aware progress: the share of the time used
            budget = 0.95 * 60 * saved_minutes
            self.budget_progress = min(1.0, (self.elapsed - self.schedule_anchor[1]) /
                                       max(1e-9, budget - self.schedule_anchor[1]))
        saved = state.get("train_config", {})
        self.schedule_steps = state.get("schedule_steps", saved.get("max_steps", self.config.max_steps))
        if (saved.get("max_steps"), saved.get("max_minutes")) != (self.config.max_steps, self.config.max_minutes):
            # a new length (--resume --max-steps/--minutes): the schedule's remaining part is stretched over it
            length = self.config
            self.config = type(self.config)(**{**asdict(self.config), "max_steps": saved["max_steps"],
                                               "max_minutes": saved["max_minutes"]})
            progress = self.schedule_progress()
            self.config = length
            self.schedule_anchor = (self.step, self.elapsed, progress)
            self.budget_progress = 0.0  # the new budget's progress counts from the anchor
        self.best_score = state.get("best_score", -state["best_val"])  # checkpoints from before eval metrics
        self.evals_without_improvement = state["evals_without_improvement"]
        self.log.load(self.step)

    def _tied_names(self) -> tuple[str, ...]:
        return tuple(deduplicated_state_dict(self.model)[1])
