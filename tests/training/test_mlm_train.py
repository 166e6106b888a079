"""Masked-LM pretraining (`dlforge train bert`): from scratch on tiny Shakespeare, exact resume, and
domain-adaptive pretraining of the real all-MiniLM-L6-v2 on SST-2 sentences."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import dlforge
from dlforge.cli.main import main
from dlforge.errors import DlforgeError
from dlforge.models import load_pretrained
from dlforge.training.mlm import load_init_model, masked_lm_loss, pack_lines, train_masked_lm

SCRATCH = dict(max_steps=40, eval_interval=20, log_interval=10, lr=2e-3, dropout=0.1)  # tiny preset: ~5 s on one core


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shakespeare_text) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "shakespeare_small.txt"
    path.write_text(shakespeare_text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def scratch_run(tmp_path_factory, corpus) -> tuple[Path, dict]:
    run = tmp_path_factory.mktemp("scratch") / "run"
    return run, train_masked_lm(corpus, run, preset="tiny", overrides=dict(SCRATCH), seed=3, progress=False)


def test_tiny_bert_from_scratch_learns_and_fills_masks(scratch_run):
    run, result = scratch_run
    assert result["step"] == 40 and result["new_head"] is None
    assert result["initial_val_loss"] > 7.0  # about ln(vocab): nothing learnt yet
    assert result["best_val_loss"] < result["initial_val_loss"] - 1.0, result
    model, tok = load_pretrained(run)
    assert model.config.task == "masked-lm" and model.config.vocab_size == tok.vocab_size <= 2000
    assert [tok.pad_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id] == [0, 2, 3, 4]
    fill = dlforge.pipeline("fill-mask", model=run)
    out = fill("to be or not to [MASK], that is the question", top_k=3)
    assert len(out) == 3 and [set(o) for o in out] == [{"score", "token", "token_str", "sequence"}] * 3
    assert out[0]["score"] >= out[1]["score"] >= out[2]["score"] > 0
    assert all(o["token_str"] in o["sequence"] for o in out)


def test_packing_fills_sequences_without_exceeding_them(scratch_run, corpus):
    run, _ = scratch_run
    tok = load_pretrained(run)[1]
    texts = pack_lines([corpus], tok, max_length=64)
    lengths = [len(tok.encode(t, add_special_tokens=True)) for t in texts]
    assert max(lengths) <= 64 and sum(lengths) / len(lengths) > 50  # packed lines, not one short line each
    words = lambda s: s.split()
    assert sum(map(len, map(words, texts))) == len(words(corpus.read_text(encoding="utf-8")))  # nothing lost


def test_resume_after_interruption_is_bit_identical(scratch_run, corpus, tmp_path):
    reference, _ = scratch_run
    cut = tmp_path / "cut"

    def stop_at_20(trainer, metrics):
        if metrics["step"] == 20:
            raise Interrupted

    with pytest.raises(Interrupted):
        train_masked_lm(corpus, cut, preset="tiny", overrides=dict(SCRATCH), seed=3, on_eval=stop_at_20,
                        progress=False)
    assert (cut / "checkpoints" / "LATEST").read_text().strip() == "step-0000020"
    result = train_masked_lm(None, cut, resume=True, progress=False)
    assert result["step"] == 40 and result["initial_val_loss"] is None
    for name in ("step-0000040", "best"):
        a = load_file(str(cut / "checkpoints" / name / "model.safetensors"))
        b = load_file(str(reference / "checkpoints" / name / "model.safetensors"))
        assert a.keys() == b.keys() and len(a) > 10
        assert not [k for k in a if not torch.equal(a[k], b[k])], name


# ---------------------------------------------------------------- domain-adaptive pretraining


def sst2_sentences(shared_data: Path, split: str, n: int) -> list[str]:
    path = shared_data / "sst2" / f"{split}.tsv"
    if not path.is_file():
        pytest.skip(f"SST-2 not found at {path}")
    lines = path.read_text(encoding="utf-8").splitlines()[1:n + 1]
    return [line.split("\t")[0].strip() for line in lines]


def test_dapt_of_minilm_lowers_in_domain_loss_and_fine_tunes(tmp_path, minilm_dir, shared_data, caplog):
    train_file = tmp_path / "sst2_train.txt"
    train_file.write_text("\n".join(sst2_sentences(shared_data, "train", 2000)) + "\n", encoding="utf-8")
    held_out = sst2_sentences(shared_data, "dev", 96)  # in-domain text the run never sees
    run = tmp_path / "dapt"
    settings = dict(max_steps=12, eval_interval=12, batch_size=8, max_length=32, lr=2e-4, warmup_steps=2,
                    max_val_sequences=16)
    with caplog.at_level(logging.WARNING, logger="dlforge"):
        result = train_masked_lm(train_file, run, init=minilm_dir, overrides=settings, seed=0, progress=False)
    assert result["new_head"] is True and "has no masked-LM head weights" in caplog.text

    before, tok = load_init_model(minilm_dir, {})[:2]
    after = load_pretrained(run)[0]
    loss_before = masked_lm_loss(before, tok, held_out, max_length=32, seed=0)
    loss_after = masked_lm_loss(after, tok, held_out, max_length=32, seed=0)
    assert loss_after < loss_before - 1.0, (loss_before, loss_after)  # same texts, same masked positions
    assert result["best_val_loss"] < result["initial_val_loss"]
    out = dlforge.pipeline("fill-mask", model=run)("this movie is [MASK] .", top_k=2)
    assert len(out) == 2 and out[0]["sequence"].startswith("this movie is")

    # the DAPT encoder under a new classification head, as fine-tuning loads it
    classifier, ctok = load_pretrained(run, task="sequence-classification", num_labels=2)
    assert classifier.config.task == "sequence-classification" and ctok.mask_token_id == 103
    encoder = {k: v for k, v in after.state_dict().items() if not k.startswith("head.")}
    assert all(torch.equal(classifier.state_dict()[k], v) for k, v in encoder.items())
    assert not torch.equal(classifier.head.dense.weight, after.head.dense.weight)  # not the MLM transform
    enc = ctok.encode_batch(held_out[:4], padding=True, add_special_tokens=True)
    assert classifier(**enc).logits.shape == (4, 2)


# ---------------------------------------------------------------- command line


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_train_bert_and_one_line_errors(tmp_path, synthetic_text_file, capsys):
    run = tmp_path / "run"
    tiny = ["--preset", "tiny", "--set", "hidden_size=32", "--set", "n_layer=1", "--set", "eval_interval=4",
            "--max-steps", "4", "--vocab-size", "200", "--quiet"]
    code, out, err = run_cli(capsys, "train", "bert", "--data", synthetic_text_file, "--out", run, *tiny)
    assert code == 0, err
    assert "val loss before training" in out and "reached max_steps=4" in out
    model, tok = load_pretrained(run)
    assert model.config.hidden_size == 32 and model.config.task == "masked-lm" and tok.vocab_size <= 200

    bad = [
        (["--data", tmp_path / "missing.txt", "--out", tmp_path / "a", *tiny], "does not exist"),
        (["--data", synthetic_text_file, "--out", run, *tiny], "already holds a run"),
        (["--data", synthetic_text_file, "--out", tmp_path / "b", "--set", "max_length=999", *tiny], "max_position"),
        (["--data", synthetic_text_file, "--out", tmp_path / "c", "--set", "n_layers=2"], "unknown key"),
        (["--data", synthetic_text_file, "--out", tmp_path / "d", "--init", run, "--preset", "tiny"], "--preset"),
        (["--data", synthetic_text_file, "--out", tmp_path / "e", "--init", run, "--set", "n_layer=3"], "shape"),
        (["--data", synthetic_text_file, "--out", tmp_path / "f", "--init", run, "--tokenizer", "bpe"],
         "own tokenizer"),
        (["--out", tmp_path / "g"], "--data is required"),
    ]
    for argv, fragment in bad:
        code, out, err = run_cli(capsys, "train", "bert", *argv)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("dlforge: error: "), (argv, err)
        assert fragment in lines[0], (fragment, lines[0])
    assert not (tmp_path / "b").exists() and not (tmp_path / "a").exists()


def test_bpe_tokenizer_run_is_roberta_style(tmp_path, synthetic_text_file):
    run = tmp_path / "bpe"
    train_masked_lm(synthetic_text_file, run, preset="tiny", tokenizer="bpe", vocab_size=300,
                    overrides=dict(max_steps=2, eval_interval=2, hidden_size=32, n_layer=1), progress=False)
    model, tok = load_pretrained(run)
    assert [tok.cls_token_id, tok.pad_token_id, tok.sep_token_id, tok.mask_token_id] == [0, 1, 2, 4]
    assert model.config.pad_token_id == 1
    ids = tok.encode("the king <mask>.", add_special_tokens=True)
    assert ids[0] == 0 and ids[-1] == 2 and ids[-3] == 4 and ids[:-3] == tok.encode("the king", True)[:-1]
    with pytest.raises(DlforgeError, match="already holds a run"):
        train_masked_lm(synthetic_text_file, run, preset="tiny", progress=False)
