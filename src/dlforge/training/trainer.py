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
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ..errors import DlforgeError
from ..hub.checkpoint import write_model_files
from ..hub.weights import load_into, load_state_dict
from ..io import atomic_directory, atomic_write_text
from ..transfer.finetune import layerwise_lr_scales
from .distributed import init_distributed
from .metrics_log import MetricsLog
from .optim import DECAYS, EMA, adam_beta1, learning_rate, make_adamw

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class TrainConfig:
    max_steps: int = 1000  # optimizer steps (the LR schedule ends here)
    max_minutes: float | None = None  # wall-clock budget; fixes max_steps after timing the first steps
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

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise DlforgeError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.decay not in DECAYS:
            raise DlforgeError(f"decay must be one of {', '.join(DECAYS)}, got {self.decay!r}")
        for name in ("max_steps", "batch_size", "grad_accum", "eval_interval", "log_interval"):
            if getattr(self, name) < 1:
                raise DlforgeError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise DlforgeError(f"lr must be > 0, got {self.lr}")

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in fields(cls)}


def open_run(out: Path, resume: bool, what: str = "run", overrides: dict | None = None) -> dict | None:
    """The settings saved in OUT/run.json when resuming; None for a new run (after checking `out` holds none).

    Every command that trains (train gpt/bert/seq2seq, finetune) keeps what it was started with in run.json, so
    `--resume` rebuilds the same run from the folder alone. Of `overrides`, a resumed run takes only a new length
    (max_steps, max_minutes) for its training settings.
    """
    run_file = out / "run.json"
    if resume:
        if not run_file.is_file():
            raise DlforgeError(f"nothing to resume in {out}: it has no run.json (start it without --resume)")
        run = json.loads(run_file.read_text(encoding="utf-8"))
        if overrides:  # the recipes' run.json keep the TrainConfig fields under "train"
            run["train"].update({k: v for k, v in overrides.items() if k in ("max_steps", "max_minutes")})
        return run
    if run_file.exists() or (out / "checkpoints").exists():
        raise DlforgeError(f"{out} already holds a {what}: pass --resume to continue it, or choose another --out")
    return None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DlforgeError(f"device {name!r} was asked for but no CUDA GPU is available: use the CPU (device cpu)")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    if precision == "fp32":
        return torch.float32
    if precision == "fp16":
        return torch.float16
    if precision == "bf16" or device.type == "cpu":
        return torch.bfloat16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


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
        self.log = MetricsLog(self.run_dir, enabled=self.dist.is_main,
                              extra_columns=((f"val_{eval_metric.name}",) if eval_metric else ()) + self.log_names)
        self.progress = progress and self.dist.is_main
        # state that a checkpoint carries
        self.step = 0
        self.best_val = math.inf
        self.best_score = -math.inf  # what chooses checkpoints/best: eval_metric, else minus the val loss
        self.last_metric: float | None = None
        self.evals_without_improvement = 0
        self.total_steps = config.max_steps
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

    def _train_step(self) -> tuple[float, int, dict[str, float]]:
        """One optimizer step over grad_accum micro-batches; returns (mean loss, items processed, mean logs)."""
        c, model = self.config, self.ddp or self.model
        lr = learning_rate(self.step, c.lr, c.min_lr if c.min_lr is not None else c.lr / 10, c.warmup_steps,
                           self.total_steps, c.decay)
        self.current_lr = lr
        beta1 = adam_beta1(self.step, c.beta1, c.warmup_steps, self.total_steps, c.decay)
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
        if c.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
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

    def fit(self, resume: bool = False) -> dict:
        """Train until max_steps, the time budget, or early stopping; return the final metrics."""
        c = self.config
        if resume:
            self.load_checkpoint()
        elif self.dist.is_main and (self.run_dir / "checkpoints").exists():
            raise DlforgeError(f"{self.run_dir} already holds a training run: pass --resume to continue it, "
                               "or choose another --out folder")
        self.model.train()
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not self.progress, unit="step",
                   dynamic_ncols=True)
        timed_steps, window_loss, window_items, window_start = 0, [], 0, time.perf_counter()
        window_logs = {name: [] for name in self.log_names}
        refine_at = None  # the step at which the time-budget estimate is refined
        start = time.perf_counter() - self.elapsed
        val_loss = None
        while self.step < self.total_steps:
            loss, items, logs = self._train_step()
            window_loss.append(loss)
            for name, value in logs.items():
                window_logs[name].append(value)
            window_items += items
            self.elapsed = time.perf_counter() - start
            timed_steps += 1
            if c.max_minutes and not resume:
                if timed_steps == 5:  # the first steps are slower (allocation, warm caches): time later ones
                    budget_mark = (self.elapsed, self.step)
                elif timed_steps == 25:
                    self._fit_schedule_to_budget(bar, *budget_mark)
                    # 20 steps under-represent variable-length batches and kernels built for new shapes (a
                    # 30-minute SST-2 run stopped after 20): refine from the next tenth of the steps, and again
                    refine_at = self.step + max(1, (self.total_steps - self.step) // 10)
                    budget_mark = (self.elapsed, self.step)
                elif self.step == refine_at:
                    self._fit_schedule_to_budget(bar, *budget_mark)
                    budget_mark = (self.elapsed, self.step)
                    # keep following the pace (other jobs on the machine come and go) until the last third,
                    # where a new length would bend the learning-rate decay too late
                    refine_at = (self.step + max(1, (self.total_steps - self.step) // 4)
                                 if self.step < 2 * self.total_steps // 3 else None)
            out_of_time = self.dist.any(bool(c.max_minutes) and self.elapsed > 60 * c.max_minutes, self.device)
            evaluate_now = self.step % c.eval_interval == 0 or self.step == self.total_steps or out_of_time
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
            bar.update(1)
            if out_of_time:
                self.stop_reason = f"time budget of {c.max_minutes} min reached"
            if evaluate_now:
                val_loss = self._evaluate_and_save()
                if self.stop_reason:
                    break
        bar.close()
        self.stop_reason = self.stop_reason or f"reached max_steps={self.total_steps}"
        return {"step": self.step, "val_loss": val_loss, "best_val_loss": self.best_val,
                "elapsed_s": self.elapsed, "stop_reason": self.stop_reason}

    def _fit_schedule_to_budget(self, bar, mark_elapsed: float, mark_step: int) -> None:
        """Set the schedule length so the run ends within max_minutes, from the time of recent steps.

        5 % of the remaining time is left for evaluations and checkpoints.
        """
        seconds_per_step = (self.elapsed - mark_elapsed) / (self.step - mark_step)
        remaining = 60 * self.config.max_minutes - self.elapsed
        budget_steps = self.step + int(0.95 * remaining / seconds_per_step)
        self.total_steps = self.dist_min(max(self.step + 1, min(self.config.max_steps, budget_steps)))
        bar.total = self.total_steps
        bar.refresh()

    def dist_min(self, value: int) -> int:
        if not self.dist.enabled:
            return value
        t = torch.tensor([value], device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
        return int(t.item())

    def _evaluate_and_save(self) -> float:
        val_loss = self.evaluate()
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
            tqdm.write(f"step {self.step}: val loss {val_loss:.4f}{metric}" + (" (best)" if improved else ""))
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
            "step": self.step, "total_steps": self.total_steps, "best_val": self.best_val,
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
            self._prune_checkpoints()
        self.dist.barrier()

    def _prune_checkpoints(self) -> None:
        steps = sorted(p for p in self.checkpoint_root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
        for old in steps[: max(0, len(steps) - max(1, self.config.keep_last))]:
            shutil.rmtree(old, ignore_errors=True)

    def latest_checkpoint(self) -> Path:
        pointer = self.checkpoint_root / "LATEST"
        if not pointer.is_file():
            raise DlforgeError(f"nothing to resume in {self.run_dir}: no checkpoint was saved there yet")
        path = self.checkpoint_root / pointer.read_text().strip()
        if not (path / "trainer_state.pt").is_file():
            raise DlforgeError(f"checkpoint {path} is incomplete: delete {pointer} to restart the run")
        return path

    def load_checkpoint(self) -> None:
        path = self.latest_checkpoint()
        load_into(self.model, load_state_dict(path), str(path), allowed_missing=self._tied_names())
        try:
            state = torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=True)
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
        self.step, self.total_steps = state["step"], state["total_steps"]
        self.best_val, self.elapsed = state["best_val"], state["elapsed"]
        self.best_score = state.get("best_score", -state["best_val"])  # checkpoints from before eval metrics
        self.evals_without_improvement = state["evals_without_improvement"]
        self.log.load(self.step)

    def _tied_names(self) -> tuple[str, ...]:
        from ..hub.checkpoint import deduplicated_state_dict

        return tuple(deduplicated_state_dict(self.model)[1])
