"""`dlforge finetune` end to end on a tiny random-init BERT: train, report, pipeline on OUT/model, resume,
LoRA and distillation from the command line; bad inputs exit 2 with one line and no traceback."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import pytest
import torch

from dlforge.cli.main import main
from dlforge.errors import DlforgeError
from dlforge.models import GPT, Bert, BertConfig, GPTConfig, save_pretrained
from dlforge.text.tokenizers import WordPieceTokenizer
from dlforge.transfer.recipe import parse_task_options

CLUES = {"good": ["great", "superb", "lovely"], "bad": ["awful", "dull", "boring"]}
FILLER = ["the", "film", "was", "a", "story", "plot", "cast", "and", "its", "music"]
FAST = ["--epochs", "5", "--batch-size", "16", "--precision", "fp32", "--seed", "1", "--quiet"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_review_data(tmp_path_factory.mktemp("cli_finetune"))


def make_review_data(root: Path) -> Path:
    """Review files (train.tsv, dev.jsonl) whose label a clue word gives, a tiny random-init BERT (root/tiny) and
    GPT (root/gpt) with their WordPiece tokenizer."""
    rng = random.Random(1)

    def example():
        label = rng.choice(sorted(CLUES))
        words = [rng.choice(CLUES[label])] + [rng.choice(FILLER) for _ in range(rng.randint(3, 6))]
        rng.shuffle(words)
        return " ".join(words), label

    (root / "train.tsv").write_text("review\tlabel\n" + "\n".join("\t".join(example()) for _ in range(160)) + "\n")
    (root / "dev.jsonl").write_text("\n".join(json.dumps(dict(zip(("review", "label"), example())))
                                              for _ in range(40)) + "\n")
    tok = WordPieceTokenizer.train([" ".join(FILLER + [w for ws in CLUES.values() for w in ws])] * 3, vocab_size=90)
    torch.manual_seed(0)
    save_pretrained(Bert(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, n_layer=2, n_head=2,
                                    intermediate_size=64, max_position=64)), root / "tiny", tok)
    save_pretrained(GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16)),
                    root / "gpt", tok)
    return root


def base_args(data: Path, out: Path) -> list[str]:
    return ["finetune", "--model", str(data / "tiny"), "--task", "text-classification", "--train",
            str(data / "train.tsv"), "--eval", str(data / "dev.jsonl"), "--out", str(out), "--option",
            "text_column=review"]


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("cli_runs") / "full"
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main([*base_args(data, out), "--lr", "3e-3", *FAST]) == 0
    return out, buffer.getvalue()


def test_finetune_writes_a_model_the_pipeline_command_uses(trained, capsys):
    out, stdout = trained
    assert "done: reached max_steps=" in stdout and "accuracy" in stdout and str(out / "model") in stdout
    report = json.loads((out / "report.json").read_text())
    assert report["accuracy"] >= 0.9 and report["settings"]["options"] == {"text_column": "review"}
    assert report["settings"]["lr"] == 3e-3 and report["settings"]["warmup_ratio"] == 0.06
    assert (out / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["pipeline", "text-classification", "--model", str(out / "model"), "a superb film",
                 "an awful plot"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["output"]["label"] for r in lines] == ["good", "bad"]


def test_resume_of_a_finished_run_only_exports_again(trained, capsys):
    out, _ = trained
    before = (out / "model" / "model.safetensors").read_bytes()
    assert main(["finetune", "--out", str(out), "--resume", "--lr", "1", "--quiet"]) == 0
    stdout = capsys.readouterr().out
    assert "ignoring --lr" in stdout and "done:" in stdout
    assert (out / "model" / "model.safetensors").read_bytes() == before


def test_lora_and_distill_from_the_command_line(data, trained, tmp_path, capsys):
    assert main([*base_args(data, tmp_path / "lora"), "--method", "lora", "--lora-r", "4", "--lora-alpha", "8",
                 "--lora-dropout", "0", "--max-steps", "4", *FAST]) == 0
    report = json.loads((tmp_path / "lora" / "report.json").read_text())
    assert report["settings"]["lora_r"] == 4 and report["settings"]["lr"] == 2e-4  # the LoRA default
    assert report["settings"]["lora_dropout"] == 0
    assert (tmp_path / "lora" / "adapters.safetensors").is_file()
    teacher = trained[0] / "model"
    args = base_args(data, tmp_path / "distill")
    args[1:3] = []  # no --model: the student starts from the teacher's blocks
    assert main([*args, "--method", "distill", "--teacher", str(teacher), "--student-layers", "1", *FAST]) == 0
    report = json.loads((tmp_path / "distill" / "report.json").read_text())
    assert report["model"] == str(teacher) and report["accuracy"] >= 0.9
    assert json.loads((tmp_path / "distill" / "model" / "config.json").read_text())["config"]["n_layer"] == 1


@pytest.mark.parametrize("change, message", [
    ({"--train": "missing.csv"}, "training file .*missing.csv does not exist"),
    ({"--option": "text_column=body"}, "has no column 'body'"),
    ({"--option": "colour"}, "--option .colour.: write it as KEY=VALUE"),
    ({"--task": "poetry"}, "unknown task 'poetry'"),
    ({"--method": "magic"}, "unknown method 'magic'"),
    ({"--model": "GPT"}, "needs a bert model"),
    ({"--eval": "UNSEEN"}, "label\\(s\\) meh that .* never shows"),
    ({"--model": None}, "--model is required"),
    ({"--lora-r": "4"}, "lora_r is a setting of method lora, not full"),
])
def test_bad_inputs_exit_2_with_one_line(data, tmp_path, capsys, change, message):
    import re

    (tmp_path / "unseen.csv").write_text("review,label\na film,meh\n")
    args = base_args(data, tmp_path / "out") + ["--max-steps", "2", "--quiet"]
    for flag, value in change.items():
        value = {"GPT": str(data / "gpt"), "UNSEEN": str(tmp_path / "unseen.csv"),
                 "missing.csv": str(tmp_path / "missing.csv")}.get(value, value)
        if flag in args:
            i = args.index(flag)
            args[i:i + 2] = [] if value is None else [flag, value]
        else:
            args += [flag, value]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dlforge: error: ") and "Traceback" not in err, err
    assert re.search(message, err), err
    assert not (tmp_path / "out" / "run.json").exists()


def test_a_bad_input_in_a_real_process_prints_one_line(data, tmp_path, dlforge_cmd, subprocess_env):
    result = subprocess.run(dlforge_cmd("finetune", "--model", str(data / "tiny"), "--task", "text-classification",
                                        "--train", str(tmp_path / "nope.tsv"), "--out", str(tmp_path / "o")),
                            capture_output=True, text=True, env=subprocess_env, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "does not exist" in result.stderr


def test_option_values_are_typed_from_the_task():
    assert parse_task_options("question-answering", ["doc_stride=128", "max_answer_len=15"]) == {
        "doc_stride": 128, "max_answer_len": 15}
    assert parse_task_options("text-classification", ["text_column=a=b", "text_pair_column=none"]) == {
        "text_column": "a=b", "text_pair_column": None}
    assert parse_task_options("image-classification", ["classes=5,6", "per_class=10", "flip=true"]) == {
        "classes": "5,6", "per_class": 10, "flip": True}
    with pytest.raises(DlforgeError, match="KEY=VALUE"):
        parse_task_options("question-answering", ["=3"])
    with pytest.raises(DlforgeError, match=r"--option doc_stride=wide: expected a whole number"):
        parse_task_options("question-answering", ["doc_stride=wide"])
    with pytest.raises(DlforgeError, match=r"--option colour: unknown key; valid keys: doc_stride, max_answer_len"):
        parse_task_options("question-answering", ["colour=red"])
