"""The CLI starts fast: building every parser and printing any --help imports no torch (the library code is
imported when a command runs), and the choices the parsers offer (cli/names.py) are the library's own."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dlforge.cli import names
from dlforge.cli.main import build_parser

PROBE = """
import contextlib, io, sys
from dlforge.cli.main import build_parser, main
build_parser()
for argv in {argvs!r}:
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main(argv)
        except SystemExit:
            pass
heavy = sorted(m for m in ("torch", "numpy", "tokenizers", "safetensors", "PIL", "matplotlib") if m in sys.modules)
print(",".join(heavy) or "none")
"""


def test_help_imports_no_torch(subprocess_env):
    argvs = [["--help"], ["train", "gpt", "--help"], ["train", "diffusion", "--help"], ["pipeline", "--help"],
             ["finetune", "--help"], ["sample", "--help"], ["anomaly", "fit", "--help"], ["--version"]]
    done = subprocess.run([sys.executable, "-c", PROBE.format(argvs=argvs)], capture_output=True, text=True,
                          env=subprocess_env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "none"


def test_cli_modules_do_not_import_each_other_in_a_cycle():
    """main assembles the verb modules; they share cli/common.py and cli/names.py, never main."""
    import ast
    from pathlib import Path

    folder = Path(build_parser.__code__.co_filename).parent
    for path in folder.glob("*.py"):
        if path.name == "main.py":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                assert node.module in ("common", "names"), f"{path.name} imports .{node.module}"


def test_names_are_the_librarys():
    from dlforge.diffusion.schedulers import SCHEDULERS
    from dlforge.pipelines.tasks import ALIASES, PIPELINES
    from dlforge.training import images, lm, mlm, seq2seq
    from dlforge.transfer.recipe import METHODS
    from dlforge.transfer.tasks import FINETUNE_TASKS

    assert names.GPT_PRESETS == tuple(lm.PRESETS) and names.GPT_TOKENIZERS == tuple(lm.TOKENIZERS)
    assert names.BERT_PRESETS == tuple(mlm.PRESETS) and names.BERT_TOKENIZERS == tuple(mlm.TOKENIZERS)
    assert names.SEQ2SEQ_PRESETS == tuple(seq2seq.PRESETS)
    assert names.IMAGE_FAMILIES == tuple(images.FAMILIES)
    assert all(tuple(presets) == names.IMAGE_PRESETS for presets in images.PRESETS.values())
    assert set(names.SCHEDULERS) == set(SCHEDULERS)
    assert names.FINETUNE_METHODS == tuple(METHODS)
    assert names.FINETUNE_TASKS == tuple(sorted(FINETUNE_TASKS))
    assert names.PIPELINE_TASKS == tuple(sorted(t for t in [*PIPELINES, *ALIASES] if t != "image-generation"))


@pytest.mark.parametrize("argv, dest, value, new", [
    (["lr-find", "--out", "o", "--steps", "7"], "max_steps", 7, "--max-steps"),
    (["adapt", "--out", "o", "--steps", "7"], "max_steps", 7, "--max-steps"),
    (["sample", "run", "--out", "g.png", "--steps", "7"], "num_inference_steps", 7, "--num-inference-steps"),
    (["inpaint", "run", "--image", "a.png", "--mask", "m.png", "--out", "b.png", "--steps", "7"],
     "num_inference_steps", 7, "--num-inference-steps"),
    (["interpolate", "run", "--image", "a.png", "--out", "w.png", "--steps", "7"], "nrow", 7, "--nrow"),
])
def test_old_flag_names_still_work_with_a_deprecation_line(capsys, argv, dest, value, new):
    args = build_parser().parse_args(argv)
    assert getattr(args, dest) == value
    assert capsys.readouterr().err == f"dlforge: warning: --steps is deprecated, use {new}\n"
    args = build_parser().parse_args([new if a == "--steps" else a for a in argv])
    assert getattr(args, dest) == value and capsys.readouterr().err == ""
