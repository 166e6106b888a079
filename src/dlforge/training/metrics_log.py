"""Run-folder logging: metrics CSV, loss-curve PNG and, when asked for (`--tensorboard`), TensorBoard.

The CSV and PNG are rewritten atomically from the in-memory history, so after a crash they match
the last write, and a resumed run drops the rows logged after its checkpoint.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ..errors import DlforgeError
from ..io import atomic_save_figure, atomic_write_text, can_plot, pyplot

COLUMNS = ("step", "train_loss", "val_loss", "lr", "throughput", "elapsed_s")


def tensorboard_writer_class():
    """torch's SummaryWriter, or a one-line error saying how to install TensorBoard."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise DlforgeError("--tensorboard needs the tensorboard package: pip install 'dlforge[tensorboard]'") from None
    return SummaryWriter


class MetricsLog:
    def __init__(self, run_dir: Path, enabled: bool = True, tensorboard: bool = False,
                 extra_columns: tuple[str, ...] = ()):
        self.run_dir, self.enabled = run_dir, enabled
        self.columns = COLUMNS[:3] + tuple(extra_columns) + COLUMNS[3:]  # e.g. val_accuracy beside val_loss
        self.rows: list[dict] = []
        self.writer = None
        if enabled and tensorboard:  # asked for: a missing package or an unwritable folder is said, not skipped
            writer_class = tensorboard_writer_class()
            try:
                self.writer = writer_class(str(run_dir / "tensorboard"))
            except OSError as e:
                raise DlforgeError(f"cannot write TensorBoard logs to {run_dir / 'tensorboard'}: "
                                   f"{e.strerror or e}") from None

    @property
    def csv_path(self) -> Path:
        return self.run_dir / "metrics.csv"

    def load(self, up_to_step: int) -> None:
        """Reload the history of a resumed run, dropping rows after its checkpoint."""
        if not self.csv_path.is_file():
            return
        with open(self.csv_path, newline="") as f:
            self.rows = [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()}
                         for row in csv.DictReader(f) if int(float(row["step"])) <= up_to_step]
        for row in self.rows:
            row["step"] = int(row["step"])

    def log(self, **values) -> None:
        row = {k: values.get(k) for k in self.columns}
        self.rows.append(row)
        if self.writer is not None:
            for k, v in row.items():
                if k != "step" and v is not None:
                    self.writer.add_scalar(k, v, row["step"])

    def write(self) -> None:
        if not self.enabled:
            return
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=self.columns, lineterminator="\n")
        w.writeheader()
        for row in self.rows:
            w.writerow({k: ("" if v is None else (f"{v:.6g}" if isinstance(v, float) else v)) for k, v in row.items()})
        atomic_write_text(self.csv_path, buf.getvalue())
        self.plot()
        if self.writer is not None:
            self.writer.flush()

    def plot(self) -> None:
        if not can_plot("loss.png"):  # the CSV has the numbers; training goes on without the picture
            return
        plt = pyplot()

        train = [(r["step"], r["train_loss"]) for r in self.rows if r["train_loss"] is not None]
        val = [(r["step"], r["val_loss"]) for r in self.rows if r["val_loss"] is not None]
        if not train and not val:
            return
        fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
        if train:
            ax.plot(*zip(*train), label="train", linewidth=1)
        if val:
            ax.plot(*zip(*val), label="validation", marker="o", markersize=3)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend()
        atomic_save_figure(fig, self.run_dir / "loss.png")
