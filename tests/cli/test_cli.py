"""The `dlforge` command line: help, train -> generate -> info, the demo, and one-line errors.

Most commands run in-process through `dlforge.cli.main.main(argv)`; a few run as real processes to
check exit codes, the console script and that no traceback reaches the user.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dlforge.cli.main import build_parser, main
from dlforge.errors import DlforgeError

BLOCK = 16
TRAIN_SETTINGS = ["--preset", "tiny", "--set", f"block_size={BLOCK}", "--set", "n_layer=1", "--set", "n_embd=32",
                  "--set", "eval_interval=10", "--max-steps", "20", "--seed", "5", "--quiet"]




def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code != 0
    assert "Traceback" not in err
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("dlforge: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"


def assert_argparse_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2
    assert "Traceback" not in err
    lines = err.strip("\n").splitlines()
    # one line: the command, the error and where the usage is ("dlforge train gpt: error: ... (see ... --help)")
    assert len(lines) == 1 and lines[0].startswith("dlforge") and "error:" in lines[0], err
    assert lines[0].endswith("--help)")
    for fragment in fragments:
        assert fragment in lines[-1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, synthetic_corpus) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "synthetic.txt"
    path.write_text(synthetic_corpus, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus) -> tuple[Path, str]:
    """A tiny char-level GPT run (context 16) trained through the CLI; returns (run folder, stdout)."""
    run = tmp_path_factory.mktemp("runs") / "run"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["train", "gpt", "--data", str(corpus), "--out", str(run), *TRAIN_SETTINGS]) == 0
    return run, out.getvalue()


@pytest.fixture
def run_dir(trained) -> Path:
    return trained[0]


# ---------------------------------------------------------------------------------- help
def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _commands() -> list[tuple[str, ...]]:
    found, todo = [], [((), build_parser())]
    while todo:
        path, parser = todo.pop()
        found.append(path)
        todo.extend((path + (name,), sub) for name, sub in _subparsers(parser).items())
    return sorted(found)


def _parser_for(path: tuple[str, ...]) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in path:
        parser = _subparsers(parser)[name]
    return parser


def test_every_command_is_covered():
    assert _commands() == [(), ("adapt",), ("anomaly",), ("anomaly", "fit"), ("anomaly", "score"), ("attention",),
                           ("demo",), ("finetune",), ("generate",), ("img2img",), ("info",), ("inpaint",),
                           ("interpolate",), ("latent-plot",), ("lr-find",), ("noise-strip",), ("outpaint",),
                           ("pipeline",), ("sample",), ("train",), ("train", "ae"), ("train", "bert"),
                           ("train", "classifier"), ("train", "diffusion"), ("train", "gan"), ("train", "gpt"),
                           ("train", "resnet"), ("train", "seq2seq"), ("train", "vae"), ("train", "vit")]


@pytest.mark.parametrize("path", _commands(), ids=lambda p: " ".join(p) or "dlforge")
def test_help_lists_every_flag(cli, path):
    code, out, err = cli(*path, "--help")
    assert code == 0 and err == ""
    assert out.startswith(f"usage: dlforge{' ' if path else ''}{' '.join(path)}")
    parser = _parser_for(path)
    documented = 0
    for action in parser._actions:
        if action.help == argparse.SUPPRESS:
            continue
        for flag in action.option_strings:
            assert flag in out, f"{flag} missing from `dlforge {' '.join(path)} --help`"
            documented += 1
        if not action.option_strings and not isinstance(action, argparse._SubParsersAction):
            assert action.dest in out
    assert documented >= 2  # at least --help and one more
    for name in _subparsers(parser):
        assert name in out


def test_help_mentions_choices_and_defaults(cli):
    _, out, _ = cli("train", "gpt", "--help")
    for preset in ("tiny", "baby", "shakespeare", "gpt2"):
        assert preset in out
    assert "char" in out and "bpe" in out
    _, out, _ = cli("generate", "--help")
    assert "0 = greedy" in out


def test_no_command_prints_help_and_fails(cli):
    code, out, _ = cli()
    assert code == 2 and "usage: dlforge" in out and "COMMAND" in out
    code, out, _ = cli("train")
    assert code == 2 and "usage: dlforge" in out


def test_console_script_help(subprocess_env):
    script = Path(sys.executable).parent / "dlforge"
    if not script.is_file():
        pytest.skip(f"console script not installed at {script}")
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, env=subprocess_env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for command in ("train", "generate", "info", "demo", "--version", "--debug"):
        assert command in proc.stdout


def test_version(cli):
    from dlforge import __version__

    code, out, _ = cli("--version")
    assert code == 0 and out.strip() == f"dlforge {__version__}"


# ---------------------------------------------------------------------------------- train / generate / info
def test_train_writes_a_complete_run(trained, corpus):
    run, out = trained
    assert "done: reached max_steps=20; step 20, best val loss" in out
    assert out.strip().endswith(str(run / "checkpoints" / "best"))
    for name in ("run.json", "metrics.csv", "loss.png", "tokenizer.json", "data/tokens.bin",
                 "checkpoints/LATEST", "checkpoints/best/model.safetensors", "checkpoints/best/tokenizer.json",
                 "checkpoints/step-0000020/trainer_state.pt"):
        assert (run / name).is_file(), name
    spec = json.loads((run / "run.json").read_text())
    assert spec["kind"] == "gpt" and spec["preset"] == "tiny" and spec["tokenizer"] == "char"
    assert spec["data"] == str(corpus.resolve())
    assert spec["model"]["block_size"] == BLOCK and spec["model"]["n_layer"] == 1
    assert spec["train"]["seed"] == 5 and spec["train"]["eval_interval"] == 10 and spec["train"]["max_steps"] == 20


def test_generate_with_a_seed_is_reproducible(cli, run_dir):
    args = ("generate", run_dir, "--prompt", "the king", "--seed", "1", "--max-new-tokens", "40")
    code1, out1, err1 = cli(*args)
    code2, out2, _ = cli(*args)
    assert code1 == code2 == 0 and err1 == ""
    assert out1 == out2
    assert out1.startswith("the king") and len(out1.rstrip("\n")) == len("the king") + 40
    _, other, _ = cli("generate", run_dir, "--prompt", "the king", "--seed", "2",
                          "--max-new-tokens", "40")
    assert other != out1  # a different seed samples differently (40 characters at temperature 0.8)


def test_temperature_zero_is_greedy_and_ignores_the_seed(cli, run_dir):
    outs = {cli("generate", run_dir, "--prompt", "my lord", "--temperature", "0", "--seed", s,
                    "--max-new-tokens", "30")[1] for s in ("1", "2", "3")}
    assert len(outs) == 1
    _, no_seed, _ = cli("generate", run_dir, "--prompt", "my lord", "--temperature", "0",
                            "--max-new-tokens", "30")
    assert {no_seed} == outs


def test_stream_prints_the_same_text(cli, run_dir):
    args = ("generate", run_dir, "--prompt", "speak\\nand", "--seed", "7", "--max-new-tokens", "50")
    _, plain, _ = cli(*args)
    _, streamed, _ = cli(*args, "--stream")
    assert streamed == plain
    assert plain.startswith("speak\nand")  # \n in the prompt is a newline
    _, no_cache, _ = cli(*args, "--no-cache")
    assert no_cache == plain


def test_stop_takes_escapes_as_the_readme_writes_them(cli, run_dir):
    """`--stop "\\n\\n"` as a shell passes it (backslash, n) means a newline, as in --prompt."""
    args = ("generate", run_dir, "--prompt", "the", "--seed", "4", "--max-new-tokens", "200")
    _, full, _ = cli(*args)
    assert "\n" in full[3:].rstrip("\n")
    _, escaped, _ = cli(*args, "--stop", "\\n")
    _, real, _ = cli(*args, "--stop", "\n")
    assert escaped == real and len(escaped) < len(full)
    assert escaped.rstrip("\n") == full[: full.index("\n", 3)]


def test_stream_with_several_samples_streams_each(cli, run_dir):
    common = ("generate", run_dir, "--prompt", "love", "--max-new-tokens", "20", "--seed", "10", "--num-samples", "2")
    _, plain, _ = cli(*common)
    _, streamed, _ = cli(*common, "--stream")
    assert streamed == plain and streamed.count("--- sample") == 2


def test_generate_past_the_context_window(cli, run_dir):
    code, out, _ = cli("generate", run_dir, "--prompt", "a", "--seed", "0",
                           "--max-new-tokens", str(3 * BLOCK))
    assert code == 0 and len(out.rstrip("\n")) == 1 + 3 * BLOCK


def test_num_samples_use_consecutive_seeds(cli, run_dir):
    common = ("generate", run_dir, "--prompt", "love", "--max-new-tokens", "20")
    _, two, _ = cli(*common, "--seed", "10", "--num-samples", "2")
    _, eleven, _ = cli(*common, "--seed", "11")
    _, ten, _ = cli(*common, "--seed", "10")
    assert two == f"--- sample 1\n{ten}--- sample 2\n{eleven}"


def test_generate_from_a_checkpoint_folder(cli, run_dir):
    args = ("--prompt", "war", "--seed", "3", "--max-new-tokens", "20")
    _, from_run, _ = cli("generate", run_dir, *args)
    _, from_best, _ = cli("generate", run_dir / "checkpoints" / "best", *args)
    assert from_run == from_best


def test_stop_string(cli, run_dir):
    _, full, _ = cli("generate", run_dir, "--prompt", "the", "--seed", "4", "--max-new-tokens", "60")
    generated = full[len("the"):].rstrip("\n")
    stop = next((c for c in generated if c != " "), None)
    assert stop is not None
    _, cut, _ = cli("generate", run_dir, "--prompt", "the", "--seed", "4", "--max-new-tokens", "60",
                        "--stop", stop)
    assert cut == "the" + generated[: generated.index(stop)] + "\n"


def test_info_text(cli, run_dir, corpus):
    code, out, err = cli("info", run_dir)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == f"gpt model at {run_dir / 'checkpoints' / 'best'}"
    assert lines[1].startswith("  parameters: ")
    assert f"block_size={BLOCK}" in lines[2] and "n_layer=1" in lines[2]
    vocab = len(set(corpus.read_text(encoding="utf-8")))
    assert lines[3] == f"  tokenizer: CharTokenizer, vocab {vocab}"
    assert lines[4].startswith(f"  run: 20 steps on {corpus.resolve()} (preset tiny), best val loss ")


def test_info_json(cli, run_dir):
    code, out, _ = cli("info", run_dir, "--json")
    assert code == 0
    info = json.loads(out)
    assert info["kind"] == "gpt" and info["path"] == str(run_dir / "checkpoints" / "best")
    assert info["config"]["block_size"] == BLOCK and info["config"]["n_embd"] == 32
    with open(run_dir / "metrics.csv", newline="") as f:
        vals = [float(r["val_loss"]) for r in csv.DictReader(f) if r["val_loss"]]
    assert info["run"]["steps"] == 20
    assert info["run"]["best_val_loss"] == pytest.approx(min(vals))
    assert info["run"]["train"]["max_steps"] == 20
    assert info["tokenizer"]["type"] == "CharTokenizer"
    n_embd, vocab = 32, info["tokenizer"]["vocab_size"]
    # one block (12·C² + 13·C) + embeddings (tied head) + final norm
    expected = (12 * n_embd**2 + 13 * n_embd) + vocab * n_embd + BLOCK * n_embd + 2 * n_embd
    assert info["parameters"] == expected
    # a model folder (no run.json) has no "run" section
    _, out, _ = cli("info", run_dir / "checkpoints" / "best", "--json")
    assert "run" not in json.loads(out)


# ---------------------------------------------------------------------------------- errors
def _copy_model(run_dir: Path, dest: Path) -> Path:
    shutil.copytree(run_dir / "checkpoints" / "best", dest)
    return dest


def _other_kind(run_dir, tmp_path):
    model = _copy_model(run_dir, tmp_path / "wavenet_like")
    config = json.loads((model / "config.json").read_text())
    config["dlforge_kind"] = "wavenet"
    (model / "config.json").write_text(json.dumps(config))
    return model


def _truncated(run_dir, tmp_path):
    model = _copy_model(run_dir, tmp_path / "truncated")
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return model


def _bad_json(run_dir, tmp_path):
    model = _copy_model(run_dir, tmp_path / "bad_json")
    (model / "config.json").write_text("{not json")
    return model


def _hf_llama(run_dir, tmp_path):
    model = tmp_path / "hf_llama"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return model


def _no_weights(run_dir, tmp_path):
    model = _copy_model(run_dir, tmp_path / "no_weights")
    (model / "model.safetensors").unlink()
    return model


def _not_a_model(run_dir, tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("hello")
    return tmp_path / "plain"


def _unfinished_run(run_dir, tmp_path):
    (tmp_path / "unfinished" / "checkpoints").mkdir(parents=True)
    return tmp_path / "unfinished"


def _a_file(run_dir, tmp_path):
    return run_dir / "metrics.csv"


def _write(tmp_path, name, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


TRAIN_ERRORS = {
    "missing data file": (lambda t: ["--data", t / "missing.txt"], ["missing.txt does not exist"]),
    "empty file": (lambda t: ["--data", _write(t, "empty.txt", b"")], ["is empty"]),
    "binary file": (lambda t: ["--data", _write(t, "bin.txt", b"abc\x00\x01" * 50)], ["binary", "NUL"]),
    "non-utf8 file": (lambda t: ["--data", _write(t, "latin.txt", "d\u00e9j\u00e0 vu ".encode("latin-1") * 50)],
                      ["not UTF-8", "iconv"]),
    "empty folder": (lambda t: ["--data", (t / "nothing").mkdir() or t / "nothing"], ["holds no files"]),
    "no --data": (lambda t: [], ["--data is required"]),
    "unknown --set key": (lambda t: ["--data", _write(t, "ok.txt", b"x" * 5000), "--set", "n_layers=2"],
                          ["--set n_layers: unknown key", "valid keys:", "n_layer"]),
    "wrong --set type": (lambda t: ["--data", _write(t, "ok.txt", b"x" * 5000), "--set", "n_layer=abc"],
                         ["--set n_layer=abc: expected a whole number, got 'abc'"]),
    "wrong --set float": (lambda t: ["--data", _write(t, "ok.txt", b"x" * 5000), "--set", "lr=fast"],
                          ["--set lr=fast: expected a number, got 'fast'"]),
    "--set without =": (lambda t: ["--data", _write(t, "ok.txt", b"x" * 5000), "--set", "n_layer"],
                        ["--set 'n_layer': write it as KEY=VALUE"]),
    "invalid train value": (lambda t: ["--data", _write(t, "ok.txt", b"x" * 5000), "--set", "batch_size=0"],
                            ["batch_size must be >= 1"]),
    "invalid precision": (lambda t: ["--data", _write(t, "ok.txt", b"x" * 5000), "--set", "precision=fp8"],
                          ["precision must be one of"]),
    "resume an empty folder": (lambda t: ["--resume"] if (t / "out").mkdir() is None else [], ["nothing to resume"]),
    "resume a missing folder": (lambda t: ["--resume", "--data", _write(t, "ok.txt", b"x" * 5000)],
                                ["nothing to resume"]),
}


@pytest.mark.parametrize("case", list(TRAIN_ERRORS))
def test_train_errors_are_one_line(cli, tmp_path, case):
    make_args, fragments = TRAIN_ERRORS[case]
    args = make_args(tmp_path)
    code, out, err = cli("train", "gpt", "--out", tmp_path / "out", "--preset", "tiny", "--quiet", *args)
    assert_one_line_error(code, err, *fragments)
    assert code == 2
    # nothing was started: no run folder content is left behind
    out_dir = tmp_path / "out"
    assert not out_dir.exists() or not any(out_dir.iterdir()), sorted(p.name for p in out_dir.iterdir())


def test_new_run_into_an_existing_run_folder(cli, run_dir, corpus):
    before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    code, _, err = cli("train", "gpt", "--data", corpus, "--out", run_dir, *TRAIN_SETTINGS)
    assert_one_line_error(code, err, "already holds a run", "--resume")
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == before


GENERATE_ERRORS = {
    "negative temperature": (None, ["--temperature", "-0.5"], ["temperature must be >= 0"]),
    "top_p zero": (None, ["--top-p", "0"], ["top_p must be in (0, 1]"]),
    "top_p above one": (None, ["--top-p", "1.5"], ["top_p must be in (0, 1]"]),
    "repetition penalty zero": (None, ["--repetition-penalty", "0"], ["repetition_penalty must be > 0"]),
    "negative max tokens": (None, ["--max-new-tokens", "-3"], ["max_new_tokens must be >= 0"]),
    "prompt longer than context": (None, ["--prompt", "the king and the queen"],
                                   [f"the prompt is 22 tokens but the model's context is {BLOCK}"]),
    "unknown character": (None, ["--prompt", "the \u20ac"], ["'\u20ac' (U+20AC) is not in the tokenizer's vocabulary"]),
    "empty prompt": (None, ["--prompt", ""], ["prompt is empty"]),
    "model of another kind": (_other_kind, [], ["kind 'wavenet'", "does not know"]),
    "truncated weights": (_truncated, [], ["model.safetensors", "corrupt or truncated"]),
    "missing weights": (_no_weights, [], ["no weights in"]),
    "damaged config.json": (_bad_json, [], ["config.json is not valid JSON"]),
    "unsupported HF model": (_hf_llama, [], ["not a model dlforge can load (llama)"]),
    "folder that is not a model": (_not_a_model, [], ["has no config.json"]),
    "run without checkpoints": (_unfinished_run, [], ["no finished checkpoint yet"]),
    "a file": (_a_file, [], ["is a file"]),
    "missing path": (lambda r, t: t / "nowhere", [], ["does not exist"]),
}


@pytest.mark.parametrize("case", list(GENERATE_ERRORS))
def test_generate_errors_are_one_line(cli, run_dir, tmp_path, case):
    make_model, args, fragments = GENERATE_ERRORS[case]
    model = make_model(run_dir, tmp_path) if make_model else run_dir
    code, out, err = cli("generate", model, *args)
    assert_one_line_error(code, err, *fragments)
    assert code == 2


@pytest.mark.parametrize("case", ["model of another kind", "truncated weights", "folder that is not a model"])
def test_info_errors_are_one_line(cli, run_dir, tmp_path, case):
    make_model, _, fragments = GENERATE_ERRORS[case]
    code, _, err = cli("info", make_model(run_dir, tmp_path), "--json")
    assert_one_line_error(code, err, *fragments)


@pytest.mark.parametrize("argv, fragments", [
    (["train", "gpt", "--out", "x", "--preset", "huge"], ["argument --preset: invalid choice: 'huge'"]),
    (["train", "gpt", "--out", "x", "--tokenizer", "words"], ["invalid choice: 'words'"]),
    (["train", "gpt", "--out", "x", "--max-steps", "0"], ["expected a number >= 1, got 0"]),
    (["train", "gpt", "--out", "x", "--minutes", "soon"], ["expected a number, got 'soon'"]),
    (["train", "gpt", "--data", "x"], ["the following arguments are required: --out"]),
    (["generate", "x", "--top-k", "0"], ["expected a number >= 1, got 0"]),
    (["generate", "x", "--num-samples", "two"], ["expected a whole number, got 'two'"]),
    (["demo", "--minutes", "-1"], ["expected a number > 0"]),
    (["fly"], ["invalid choice: 'fly'"]),
])
def test_argparse_errors_give_usage_and_one_error_line(cli, argv, fragments):
    code, _, err = cli(*argv)
    assert_argparse_error(code, err, *fragments)


def test_unknown_preset_from_python_is_a_dlforge_error(tmp_path, corpus):
    from dlforge.training.lm import train_language_model

    with pytest.raises(DlforgeError, match="unknown preset 'huge': choose one of tiny, baby, shakespeare, gpt2"):
        train_language_model(corpus, tmp_path / "out", preset="huge")
    assert not (tmp_path / "out").exists()


def test_demo_into_an_existing_run_is_refused(cli, run_dir):
    code, _, err = cli("demo", "--out", run_dir, "--minutes", "0.1")
    assert_one_line_error(code, err, "already holds a run")


@pytest.mark.parametrize("setting", ["n_head=3", "positional=spiral"])
def test_invalid_model_setting_is_a_user_error(cli, tmp_path, corpus, setting):
    code, _, err = cli("train", "gpt", "--data", corpus, "--out", tmp_path / "out", "--preset", "tiny",
                           "--set", setting, "--quiet")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1  # this part holds today
    assert_one_line_error(code, err)


# ---------------------------------------------------------------------------------- failed runs leave nothing
def test_failed_run_on_a_short_corpus_leaves_no_checkpoints(cli, tmp_path):
    short = _write(tmp_path, "short.txt", b"the king and the queen speak\n" * 20)  # 580 characters
    code, _, err = cli("train", "gpt", "--data", short, "--out", tmp_path / "out", "--preset", "tiny",
                           "--quiet")
    assert_one_line_error(code, err, "validation split has 58 tokens", "smaller block_size")
    assert not (tmp_path / "out" / "checkpoints").exists()
    assert not list((tmp_path / "out").rglob("*.tmp"))


def test_a_failed_run_can_be_retried_in_the_same_folder(cli, tmp_path):
    short = _write(tmp_path, "short.txt", b"the king and the queen speak\n" * 20)
    args = ("train", "gpt", "--data", short, "--out", tmp_path / "out", "--preset", "tiny", "--quiet",
            "--max-steps", "2", "--set", "eval_interval=2")
    code, _, _ = cli(*args)
    assert code == 2
    code, _, err = cli(*args, "--set", "block_size=8")
    assert code == 0, err


# ---------------------------------------------------------------------------------- --debug
def test_debug_flag_after_the_command_raises(tmp_path):
    with pytest.raises(DlforgeError, match="does not exist"):
        main(["generate", str(tmp_path / "nowhere"), "--debug"])


def test_debug_flag_before_the_command_raises(tmp_path):
    with pytest.raises(DlforgeError, match="does not exist"):
        main(["--debug", "generate", str(tmp_path / "nowhere")])


# ---------------------------------------------------------------------------------- real processes
def test_process_errors_exit_nonzero_without_traceback(tmp_path, dlforge_cmd, subprocess_env, run_dir):
    truncated = _truncated(run_dir, tmp_path)
    cases = [
        (["train", "gpt", "--data", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o1")], 2,
         "does not exist"),
        (["generate", str(truncated), "--prompt", "the"], 2, "corrupt or truncated"),
    ]
    for argv, status, fragment in cases:
        proc = subprocess.run(dlforge_cmd(*argv), capture_output=True, text=True, env=subprocess_env, timeout=120)
        assert proc.returncode == status, (argv, proc.stderr)
        assert "Traceback" not in proc.stderr and proc.stdout == ""
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("dlforge: error: ")
        assert fragment in proc.stderr
    # --debug shows the full traceback instead
    proc = subprocess.run(dlforge_cmd("generate", str(truncated), "--prompt", "the", "--debug"),
                          capture_output=True, text=True, env=subprocess_env, timeout=120)
    assert proc.returncode != 0
    assert "Traceback (most recent call last)" in proc.stderr
    assert "DlforgeError: cannot read weights" in proc.stderr


# ---------------------------------------------------------------------------------- demo
def test_demo_trains_samples_and_saves(tmp_path, dlforge_cmd, subprocess_env):
    out = tmp_path / "demo"
    env = {k: v for k, v in subprocess_env.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    proc = subprocess.run(dlforge_cmd("demo", "--minutes", "0.1", "--out", str(out), "--eval-interval", "20",
                                      "--quiet"), capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    stdout = proc.stdout
    assert stdout.startswith(f"Training a character-level GPT on tiny Shakespeare for 0.1 min -> {out}")
    assert "--- sample at step" in stdout
    sample = stdout.split("--- sample at step", 1)[1].split(":", 1)[1].split("\n---", 1)[0]
    assert len(sample) >= 150  # 200 generated characters (newlines included)
    assert "done: " in stdout and "best val loss" in stdout
    assert f"dlforge generate {out}" in stdout
    for name in ("metrics.csv", "loss.png", "run.json", "checkpoints/best/model.safetensors",
                 "checkpoints/best/config.json", "checkpoints/LATEST", "corpus/tinyshakespeare.txt"):
        assert (out / name).is_file(), name
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert any(r["val_loss"] for r in rows)
    assert os.path.getsize(out / "corpus" / "tinyshakespeare.txt") > 1_000_000


def test_generate_with_an_encoder_says_it_needs_a_gpt(cli, tmp_path):
    from dlforge.models import Bert, BertConfig, save_pretrained

    encoder = Bert(BertConfig(vocab_size=30, hidden_size=16, n_layer=1, n_head=2, intermediate_size=32,
                              max_position=16))
    save_pretrained(encoder, tmp_path / "encoder")
    code, _, err = cli("generate", tmp_path / "encoder", "--prompt", "hi")
    assert_one_line_error(code, err, "holds a bert model", "needs a gpt model")
