"""Packaging: extras named for what they add, matplotlib optional behind the plotting calls (a one-line install
hint when it is missing, never a traceback), TensorBoard only when asked for and its errors said."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HINT = "pip install 'dlforge[plot]'"

NO_MATPLOTLIB = """
import sys
sys.modules["matplotlib"] = None  # as if it were not installed: `import matplotlib` raises ImportError
from dlforge.cli.main import main
from dlforge.errors import DlforgeError
from dlforge.metrics.classification import plot_confusion_matrix
code = main(["train", "gpt", "--data", {data!r}, "--out", {out!r}, "--preset", "tiny", "--set", "block_size=16",
             "--set", "n_layer=1", "--set", "n_embd=16", "--set", "eval_interval=2", "--max-steps", "2", "--quiet"])
print("code", code)
try:
    plot_confusion_matrix([[1, 0], [0, 1]], ["a", "b"], {png!r})
except DlforgeError as e:
    print("error", e)
"""


def test_without_matplotlib_training_goes_on_and_plots_say_how_to_install_it(synthetic_text_file, tmp_path,
                                                                             subprocess_env):
    out = tmp_path / "run"
    script = NO_MATPLOTLIB.format(data=str(synthetic_text_file), out=str(out), png=str(tmp_path / "cm.png"))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=subprocess_env,
                          timeout=300)
    assert "Traceback" not in done.stderr, done.stderr
    assert "code 0" in done.stdout and (out / "metrics.csv").is_file() and not (out / "loss.png").exists()
    assert done.stderr.count(f"dlforge: warning: loss.png not drawn: matplotlib is not installed ({HINT})") == 1
    assert f"error drawing this plot needs matplotlib, which is not installed: {HINT}" in done.stdout
    assert not (tmp_path / "cm.png").exists()


def test_tensorboard_only_when_asked_and_a_missing_package_is_said(cli, synthetic_text_file, tmp_path, monkeypatch):
    tiny = ["--preset", "tiny", "--set", "block_size=16", "--set", "n_layer=1", "--set", "n_embd=16",
            "--set", "eval_interval=2", "--max-steps", "2", "--quiet"]
    code, _, err = cli("train", "gpt", "--data", synthetic_text_file, "--out", tmp_path / "plain", *tiny)
    assert code == 0, err
    assert not (tmp_path / "plain" / "tensorboard").exists()  # not asked for: no TensorBoard files
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    code, _, err = cli("train", "gpt", "--data", synthetic_text_file, "--out", tmp_path / "tb", *tiny, "--tensorboard")
    assert code == 2
    assert err == "dlforge: error: --tensorboard needs the tensorboard package: pip install 'dlforge[tensorboard]'\n"
    assert not (tmp_path / "tb").exists()  # said before the run wrote anything


def test_extras_match_their_names():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {extra: {requirement.split(">")[0].split("[")[0] for requirement in requirements}
             for extra, requirements in extras.items()}
    assert "matplotlib" in names["plot"] and "diffusers" not in names["seq2seq"]
    assert "sklearn" not in extras and {"scikit-learn", "seqeval"} <= names["eval"]
    assert extras["all"] == ["dlforge[plot,tensorboard,eval,seq2seq,hub]"]
    assert set(extras) == {"plot", "tensorboard", "eval", "seq2seq", "hub", "all", "dev"}
    core = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not any(requirement.startswith("matplotlib") for requirement in core)


@pytest.mark.parametrize("script", ["scripts/test.sh", ".ci/run"])
def test_the_test_entry_points_install_the_dev_extras(script):
    text = (REPO / script).read_text()
    assert "DLFORGE_EXTRAS=dev" in text or "scripts/test.sh" in text
