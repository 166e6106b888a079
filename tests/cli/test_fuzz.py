"""Fuzzing the command line with bad input: every command, a few hundred generated cases.

Each case must end with a non-zero exit, exactly one line on stderr that is not an internal error and has no
traceback, and no file written anywhere but under its --out folder. The cases are generated from lists of bad
numbers, bad paths, damaged files and crafted model/run folders, crossed with the flags and commands that take
them. `test_fuzz_summary` prints the counts that benchmarks/RESULTS.md quotes.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from dlforge.cli.main import main

BAD_NUMBERS = ["nan", "inf", "-inf", "abc", "", "1e400", "0x1g"]
BAD_COUNTS = ["-1", "0", "1.5", "1e30"]  # for flags that take a whole number >= 1
BAD_SETTINGS_GPT = ["n_embd=0", "n_embd=-8", "n_embd=2000000", "n_layer=abc", "lr=nan", "lr=inf", "lr=-1",
                    "dropout=5", "dropout=nan", "batch_size=0", "block_size=0", "seed=-1", "seed=1e23",
                    "no_such_key=1", "positional=diagonal", "novalue", "bias=maybe", "warmup_steps=-3",
                    "grad_clip=0", "beta2=1", "n_head=3", "keep_last=0", "on_nan=ignore", "max_minutes=nan"]
BAD_SETTINGS_IMAGES = ["latent_dim=0", "image_size=-4", "lr=nan", "batch_size=0", "dropout=2", "no_such_key=1",
                       "base_channels=abc"]


def _crafted_model_folders(root: Path) -> dict[str, Path]:
    """Model/run folders that are damaged or made to attack: each must be refused with one line."""
    folders = {}

    def folder(name: str) -> Path:
        path = root / "crafted" / name
        path.mkdir(parents=True)
        folders[name] = path
        return path

    folder("empty")
    folder("garbage-config").joinpath("config.json").write_text("{not json")
    folder("list-config").joinpath("config.json").write_text("[1, 2]")
    wrong = folder("wrong-types")
    wrong.joinpath("config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": "wide", "n_layer": -1}))
    escaping = folder("escaping-shards")
    escaping.joinpath("config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 8, "n_layer": 1,
                                                            "n_head": 2, "vocab_size": 10, "n_positions": 8}))
    escaping.joinpath("model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"wte.weight": "../../../outside.safetensors"}}))
    absolute = folder("absolute-shards")
    absolute.joinpath("config.json").write_text(escaping.joinpath("config.json").read_text())
    absolute.joinpath("model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"wte.weight": "/etc/passwd"}}))
    truncated = folder("truncated-weights")
    truncated.joinpath("config.json").write_text(escaping.joinpath("config.json").read_text())
    truncated.joinpath("model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")
    pickled = folder("pickle-with-code")
    pickled.joinpath("config.json").write_text(escaping.joinpath("config.json").read_text())

    class Payload:  # a pickle that would call a function when loaded without weights_only
        def __reduce__(self):
            return (os.getcwd, ())

    with open(pickled / "pytorch_model.bin", "wb") as f:
        pickle.dump({"w": Payload()}, f)
    binary = folder("binary-config")
    binary.joinpath("config.json").write_bytes(bytes(range(256)) * 4)
    latest = folder("escaping-latest")
    (latest / "checkpoints").mkdir()
    (latest / "checkpoints" / "LATEST").write_text("../../../../etc\n")
    latest.joinpath("run.json").write_text(json.dumps({"kind": "gpt", "train": {}, "model": {}}))
    folder("garbage-run").joinpath("run.json").write_text("\x00\x01garbage")
    return folders


def _cases(tmp: Path, data: dict[str, Path]) -> list[tuple[str, list[str]]]:
    """(name, argv) for every bad input; argv may name OUT (a fresh folder under tmp/outs)."""
    cases: list[tuple[str, list[str]]] = []
    out = "OUT"
    text = str(data["text"])
    run, diffusion = str(data["run"]), str(data["diffusion"])

    def add(name, *argv):
        cases.append((name, [str(a) for a in argv]))

    # numbers: every numeric flag of the training commands, and of generate / sample / pipeline
    for family in ("gpt", "bert", "ae", "vae", "gan", "diffusion", "classifier", "vit", "resnet"):
        source = ["--data", text] if family in ("gpt", "bert") else ["--data", str(data["images"])]
        for value in BAD_NUMBERS + BAD_COUNTS:
            add(f"train {family} --max-steps {value}", "train", family, *source, "--out", out, "--max-steps", value)
        for value in BAD_NUMBERS + ["-1", "0"]:
            add(f"train {family} --minutes {value}", "train", family, *source, "--out", out, "--minutes", value)
        for value in ["-1", "1e23", "abc", "nan", str(2**64)]:
            add(f"train {family} --seed {value}", "train", family, *source, "--out", out, "--seed", value)
    for setting in BAD_SETTINGS_GPT:
        add(f"train gpt --set {setting}", "train", "gpt", "--data", text, "--out", out, "--preset", "tiny",
            "--set", setting)
    for family in ("ae", "vae", "diffusion", "classifier"):
        for setting in BAD_SETTINGS_IMAGES:
            add(f"train {family} --set {setting}", "train", family, "--data", str(data["images"]), "--out", out,
                "--preset", "tiny", "--set", setting)
    for flag, values in {"--max-new-tokens": ["-5", "abc", "nan"], "--temperature": BAD_NUMBERS + ["-1"],
                         "--top-k": BAD_COUNTS, "--top-p": BAD_NUMBERS + ["0", "1.5", "-0.1"],
                         "--repetition-penalty": BAD_NUMBERS + ["0", "-2"], "--num-samples": BAD_COUNTS}.items():
        for value in values:
            add(f"generate {flag} {value}", "generate", run, flag, value)
    for flag, values in {"--n": BAD_COUNTS, "--num-inference-steps": BAD_COUNTS, "--guidance": BAD_NUMBERS,
                         "--eta": BAD_NUMBERS + ["-1"], "--seed": ["-1", "nan"]}.items():
        for value in values:
            add(f"sample {flag} {value}", "sample", diffusion, "--out", f"{out}/grid.png", flag, value)
    for value in BAD_NUMBERS + ["-0.5", "1.5"]:
        add(f"img2img --strength {value}", "img2img", diffusion, "--image", str(data["png"]), "--out",
            f"{out}/x.png", "--strength", value)
    for value in BAD_NUMBERS + ["-1", "0", "100", "500"]:
        add(f"anomaly fit --percentile {value}", "anomaly", "fit", "--data", str(data["images"]), "--out", out,
            "--preset", "tiny", "--percentile", value)
    for flag, values in {"--batch-size": BAD_COUNTS, "--max-length": BAD_COUNTS, "--top-k": ["abc", "nan"],
                         "--num-beams": BAD_COUNTS}.items():
        for value in values:
            add(f"pipeline {flag} {value}", "pipeline", "text-classification", "--model", run, "x", flag, value)
    for flag, values in {"--lr": BAD_NUMBERS + ["-1", "0"], "--epochs": BAD_NUMBERS + ["0"],
                         "--warmup-ratio": BAD_NUMBERS + ["-0.1", "1", "2"], "--batch-size": BAD_COUNTS,
                         "--lora-dropout": BAD_NUMBERS + ["-1", "1"]}.items():
        for value in values:
            add(f"finetune {flag} {value}", "finetune", "--model", run, "--task", "text-classification",
                "--train", str(data["tsv"]), "--out", out, flag, value)
    for value in BAD_NUMBERS + ["-1", "0"]:
        add(f"demo --minutes {value}", "demo", "--out", out, "--minutes", value)
        add(f"adapt --lr {value}", "adapt", "--model", run, "--source", str(data["images"]), "--target",
            str(data["images"]), "--out", out, "--lr", value)

    # paths: missing, folder for a file, file for a folder, escaping, binary and empty files
    missing, folder_path = tmp / "no" / "such" / "thing.txt", tmp / "a-folder"
    escaping = "../../../../../../nonexistent-dlforge-fuzz/x.txt"
    for label, path in {"missing": missing, "folder": folder_path, "escaping": escaping, "empty": data["empty"],
                        "binary": data["binary"], "latin1": data["latin1"]}.items():
        add(f"train gpt --data {label}", "train", "gpt", "--data", path, "--out", out, "--preset", "tiny")
        add(f"train bert --data {label}", "train", "bert", "--data", path, "--out", out, "--preset", "tiny")
        add(f"pipeline --file {label}", "pipeline", "text-classification", "--model", run, "--file", path)
        add(f"finetune --train {label}", "finetune", "--model", run, "--task", "text-classification", "--train",
            path, "--out", out)
        add(f"train seq2seq --source {label}", "train", "seq2seq", "--source", path, "--target", path, "--out", out)
        add(f"train ae --data {label}", "train", "ae", "--data", path, "--out", out, "--preset", "tiny")
        add(f"img2img --image {label}", "img2img", diffusion, "--image", path, "--out", f"{out}/x.png")
        add(f"inpaint --mask {label}", "inpaint", diffusion, "--image", data["png"], "--mask", path, "--out",
            f"{out}/x.png")
    for label, path in {"missing": missing, "file": data["text"], "escaping": escaping}.items():
        for command in (["generate"], ["info"], ["sample"], ["attention"], ["anomaly", "score"],
                        ["noise-strip"], ["latent-plot"], ["interpolate"]):
            extra = {"sample": ["--out", f"{out}/g.png"], "attention": ["--source", "hi"],
                     "anomaly": ["--data", str(data["images"]), "--out", out],
                     "noise-strip": ["--image", str(data["png"]), "--out", f"{out}/s.png"],
                     "latent-plot": ["--data", str(data["images"]), "--out", f"{out}/p.png"],
                     "interpolate": ["--image", str(data["png"]), "--image", str(data["png"]), "--out",
                                     f"{out}/i.png"]}
            add(f"{' '.join(command)} on {label}", *command, path, *extra.get(command[0], []))
        add(f"pipeline --model {label}", "pipeline", "fill-mask", "--model", path, "a [MASK]")
        add(f"finetune --model {label}", "finetune", "--model", path, "--task", "text-classification",
            "--train", str(data["tsv"]), "--out", out)
    add("resume with nothing to resume", "train", "gpt", "--out", out, "--resume")
    add("--out is a file", "train", "gpt", "--data", text, "--out", data["text"], "--preset", "tiny")
    add("--out holds another model", "train", "gpt", "--data", text, "--out", data["foreign"], "--preset", "tiny")
    add("unknown task", "pipeline", "no-such-task", "--model", run, "x")
    add("hub revision escaping", "generate", "org/name@../../../x")
    add("hub id in offline cache", "generate", "nobody/nothing")

    # crafted folders, against every command that loads a model
    for name, path in data["crafted"].items():
        add(f"generate crafted {name}", "generate", path, "--max-new-tokens", "2")
        add(f"info crafted {name}", "info", path)
        add(f"pipeline crafted {name}", "pipeline", "text-classification", "--model", path, "x")
        add(f"sample crafted {name}", "sample", path, "--out", f"{out}/g.png")
        add(f"finetune crafted {name}", "finetune", "--model", path, "--task", "text-classification",
            "--train", str(data["tsv"]), "--out", out)
        add(f"resume crafted {name}", "train", "gpt", "--out", path, "--resume")
    return cases


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synthetic_corpus) -> Path:
    """A tiny char-level GPT run trained through the CLI."""
    root = tmp_path_factory.mktemp("fuzz-run")
    (root / "corpus.txt").write_text(synthetic_corpus, encoding="utf-8")
    assert main(["train", "gpt", "--data", str(root / "corpus.txt"), "--out", str(root / "run"), "--preset", "tiny",
                 "--set", "block_size=16", "--set", "n_layer=1", "--set", "n_embd=32", "--max-steps", "10",
                 "--seed", "5", "--quiet"]) == 0
    return root / "run"


@pytest.fixture(scope="module")
def diffusion_run(tmp_path_factory, pattern_mnist) -> Path:
    """A tiny diffusion run (4 steps) for the image commands' flags."""
    run = tmp_path_factory.mktemp("fuzz-diffusion") / "run"
    assert main(["train", "diffusion", "--data", str(pattern_mnist), "--out", str(run), "--preset", "tiny",
                 "--max-steps", "4", "--set", "eval_interval=4", "--set", "eval_images=32", "--set", "batch_size=16",
                 "--set", "base_channels=8", "--seed", "3", "--quiet"]) == 0
    return run


@pytest.fixture(scope="module")
def fuzz_data(tmp_path_factory, trained, diffusion_run) -> dict:
    root = tmp_path_factory.mktemp("fuzz")
    text = root / "corpus.txt"
    text.write_text("the king and the queen speak of war and love\n" * 40, encoding="utf-8")
    images = root / "images"
    from PIL import Image

    for label in ("0", "1"):
        (images / "train" / label).mkdir(parents=True)
        for i in range(3):
            Image.new("L", (8, 8), color=40 * i).save(images / "train" / label / f"{i}.png")
    png = images / "train" / "0" / "0.png"
    empty = root / "empty.txt"
    empty.write_text("")
    binary = root / "binary.txt"
    binary.write_bytes(bytes(range(256)) * 8)
    latin1 = root / "latin1.txt"
    latin1.write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1") * 20)
    tsv = root / "train.tsv"
    tsv.write_text("sentence\tlabel\na good film\t1\na bad film\t0\n", encoding="utf-8")
    foreign = root / "someone-elses-model"
    foreign.mkdir()
    (foreign / "tokenizer.json").write_text("{}")
    (foreign / "config.json").write_text("{}")
    (root / "a-folder").mkdir()
    torch.save({"x": 1}, root / "not-used.pt")
    return {"root": root, "text": text, "images": images, "png": png, "empty": empty, "binary": binary,
            "latin1": latin1, "tsv": tsv, "foreign": foreign, "run": trained, "diffusion": diffusion_run,
            "crafted": _crafted_model_folders(root)}


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file() and "outs" not in p.relative_to(root).parts}


def _run_case(argv: list[str], out: Path, capsys) -> tuple[int, str]:
    argv = [a.replace("OUT", str(out)) if a.startswith("OUT") else a for a in argv]
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    return code, capsys.readouterr().err


RESULTS: dict[str, list] = {"clean": [], "bad": []}


def test_fuzz_cli_with_bad_input(fuzz_data, trained, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.chdir(fuzz_data["root"])
    root = fuzz_data["root"]
    watched = [root, trained, fuzz_data["diffusion"]]
    before = [_snapshot(w) for w in watched]
    cases = _cases(root, fuzz_data)
    assert len(cases) >= 300
    failures, messages = [], []
    for i, (name, argv) in enumerate(cases):
        out = root / "outs" / f"case-{i:04d}"
        code, err = _run_case(argv, out, capsys)
        lines = [line for line in err.splitlines() if line.strip() and "dlforge: warning:" not in line]
        problems = []
        if code == 0:
            problems.append("exit 0")
        if len(lines) != 1:
            problems.append(f"{len(lines)} lines on stderr")
        if "Traceback" in err or "internal error" in err:
            problems.append("internal error")
        if problems:
            failures.append(f"{name}: {', '.join(problems)}: {err.strip()[:300]!r}")
        (RESULTS["bad"] if problems else RESULTS["clean"]).append(name)
        messages.append(f"{name}\t{code}\t{err.strip()}")
    if os.environ.get("DLFORGE_FUZZ_LOG"):  # every case's message, to read them
        Path(os.environ["DLFORGE_FUZZ_LOG"]).write_text("\n".join(messages) + "\n", encoding="utf-8")
    after = [_snapshot(w) for w in watched]
    assert before == after, "files written outside --out"
    assert not failures, f"{len(failures)} of {len(cases)} cases misbehaved:\n" + "\n".join(failures)


def test_fuzz_summary(capsys):
    """Prints the counts quoted in RESULTS.md (runs after the fuzz test in this module)."""
    total = len(RESULTS["clean"]) + len(RESULTS["bad"])
    if not total:
        pytest.skip("the fuzz test did not run")
    with capsys.disabled():
        print(f"\nCLI fuzz: {total} bad inputs, {len(RESULTS['clean'])} clean one-line errors, "
              f"{len(RESULTS['bad'])} other")
    assert not RESULTS["bad"]
