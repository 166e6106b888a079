"""`dlforge train seq2seq`: a small Transformer learns a synthetic translation, resumes exactly, and its run
works with the translation pipeline and the attention map, from Python and the command line."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import dlforge
from dlforge.cli.main import main
from dlforge.errors import DlforgeError
from dlforge.models import load_pretrained
from dlforge.text.attention_map import cross_attention
from dlforge.text.tokenizers import SourceTargetTokenizer
from dlforge.training.seq2seq import train_seq2seq

pytest.importorskip("sacrebleu", reason="BLEU during training needs sacrebleu: pip install 'dlforge[seq2seq]'")

WORDS = "the king queen sword crown night day love war speak hear my lord and of to a is not be".split()
TRAIN = dict(max_steps=300, eval_interval=150, log_interval=50, lr=3e-3, eval_samples=40)


def reverse_upper(words: list[str]) -> str:
    """The 'translation': the words in reverse order, upper-cased."""
    return " ".join(w.upper() for w in reversed(words))


@pytest.fixture(scope="module")
def parallel_files(tmp_path_factory) -> tuple[Path, Path]:
    rng = random.Random(0)
    folder = tmp_path_factory.mktemp("parallel")
    sentences = [[rng.choice(WORDS) for _ in range(rng.randint(3, 8))] for _ in range(1200)]
    (folder / "src.txt").write_text("\n".join(" ".join(s) for s in sentences) + "\n", encoding="utf-8")
    (folder / "tgt.txt").write_text("\n".join(reverse_upper(s) for s in sentences) + "\n", encoding="utf-8")
    return folder / "src.txt", folder / "tgt.txt"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, parallel_files) -> tuple[Path, dict]:
    run = tmp_path_factory.mktemp("s2s") / "run"
    return run, train_seq2seq(*parallel_files, run, preset="tiny", overrides=dict(TRAIN), seed=5, progress=False)


def test_a_small_transformer_learns_the_task_and_reports_bleu(trained):
    run, result = trained
    assert result["step"] == 300
    scores = json.loads((run / "eval_scores.json").read_text())
    assert [s["step"] for s in scores] == [100, 150, 300]  # every 150 steps, and a third of the way
    assert scores[-1]["bleu"] > 60 and scores[-1]["bleu"] > scores[0]["bleu"], scores  # held-out pairs
    translate = dlforge.pipeline("translation", model=run)
    out = translate(["the king is not my lord", "love and war"], num_beams=4)
    assert out == [{"translation_text": "LORD MY NOT IS KING THE"}, {"translation_text": "WAR AND LOVE"}]
    model, tok = load_pretrained(run)
    assert model.kind == "seq2seq" and [tok.pad_token_id, tok.bos_token_id, tok.eos_token_id] == [0, 1, 2]


def test_the_cross_attention_of_a_reversal_runs_against_the_diagonal(trained):
    run, _ = trained
    model, tok = load_pretrained(run)
    result = cross_attention(model, tok, "the king is not my lord", num_beams=4)
    assert result.translation == "LORD MY NOT IS KING THE"
    grid = result.weights.mean(dim=(0, 1))  # (T_out, S); source tokens: <s> the king is not my lord </s>
    assert torch.allclose(result.weights.sum(-1), torch.ones(result.weights.shape[:-1]), atol=1e-4)
    first_out, last_word = result.output_tokens.index("LORD"), result.source_tokens.index("lord")
    assert grid[first_out].argmax().item() == last_word  # the first output word looks at the last source word


class Interrupted(Exception):
    pass


def test_resume_after_an_interruption_gives_the_same_weights(tmp_path, parallel_files):
    settings = dict(max_steps=30, eval_interval=10, log_interval=10, eval_samples=5)
    train_seq2seq(*parallel_files, tmp_path / "whole", preset="tiny", overrides=dict(settings), seed=1, progress=False)

    def stop_at_20(trainer, metrics):
        if metrics["step"] == 20:
            raise Interrupted

    cut = tmp_path / "cut"
    with pytest.raises(Interrupted):
        train_seq2seq(*parallel_files, cut, preset="tiny", overrides=dict(settings), seed=1, progress=False,
                      on_eval=stop_at_20)
    assert (cut / "checkpoints" / "LATEST").read_text().strip().endswith("20")
    assert train_seq2seq(None, None, cut, resume=True, progress=False)["step"] == 30
    for name in ("LATEST", "best"):
        folder = (tmp_path / "whole" / "checkpoints" / name)
        if name == "LATEST":
            name = folder.read_text().strip()
        a = load_file(str(tmp_path / "whole" / "checkpoints" / name / "model.safetensors"))
        b = load_file(str(cut / "checkpoints" / name / "model.safetensors"))
        assert a.keys() == b.keys() and len(a) > 10
        assert not [k for k in a if not torch.equal(a[k], b[k])], name


def test_cli_trains_translates_and_draws(tmp_path, parallel_files, trained, capsys):
    src, tgt = parallel_files
    assert main(["train", "seq2seq", "--source", str(src), "--target", str(tgt), "--out", str(tmp_path / "run"),
                 "--preset", "tiny", "--max-steps", "20", "--set", "eval_interval=20", "--set", "eval_samples=5",
                 "--quiet", "--seed", "2", "--separate-vocab", "--vocab-size", "400"]) == 0
    assert "last evaluation: step 20" in capsys.readouterr().out
    model, tok = load_pretrained(tmp_path / "run")  # separate vocabularies: upper-case targets, lower-case sources
    assert isinstance(tok, SourceTargetTokenizer) and model.config.source_vocab_size == tok.source.vocab_size
    assert model.encoder.embed_tokens is not model.decoder.embed_tokens
    assert tok.encode("king") != tok.target.encode("king") and tok.decode(tok.target.encode("KING")) == "KING"
    assert main(["pipeline", "translation", "--model", str(tmp_path / "run"), "the king"]) == 0
    assert "translation_text" in capsys.readouterr().out
    run, _ = trained
    assert main(["pipeline", "translation", "--model", str(run), "love and war", "--num-beams", "4"]) == 0
    line = json.loads(capsys.readouterr().out.strip())
    assert line == {"input": "love and war", "output": {"translation_text": "WAR AND LOVE"}}
    assert main(["attention", str(run), "--source", "the king", "--out", str(tmp_path / "map.png"),
                 "--layer", "1", "--head", "0"]) == 0
    assert (tmp_path / "map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_input_gets_a_one_line_error(tmp_path, parallel_files, capsys):
    src, tgt = parallel_files
    (tmp_path / "short.txt").write_text("one line\n")
    with pytest.raises(DlforgeError, match="line-aligned"):
        train_seq2seq(src, tmp_path / "short.txt", tmp_path / "x", preset="tiny", progress=False)
    assert not (tmp_path / "x" / "run.json").exists()
    assert main(["train", "seq2seq", "--source", str(src), "--out", str(tmp_path / "y")]) == 2
    assert "--source and --target are required" in capsys.readouterr().err
    assert main(["train", "seq2seq", "--source", str(src), "--target", str(tgt), "--out", str(tmp_path / "z"),
                 "--set", "max_source_length=500", "--preset", "tiny"]) == 2
    assert "max_position" in capsys.readouterr().err


def test_init_fine_tunes_a_pretrained_model_with_its_own_tokenizer(tmp_path, parallel_files, trained):
    run, _ = trained
    src, tgt = parallel_files
    # a few small steps on the task it learnt: a model that started from the pretrained weights stays good
    result = train_seq2seq(src, tgt, tmp_path / "ft", init=run, overrides=dict(max_steps=20, eval_interval=20,
                           lr=1e-4, warmup_steps=2, eval_samples=40), seed=0, progress=False)
    assert result["scores"]["bleu"] > 60, result["scores"]
    assert json.loads((tmp_path / "ft" / "run.json").read_text())["init"] == str(run)
    before, tok = load_pretrained(run)
    after, tok_after = load_pretrained(tmp_path / "ft")
    assert tok_after.vocab_size == tok.vocab_size and after.config == before.config
    changed = [k for k, v in after.state_dict().items() if not torch.equal(v, before.state_dict()[k])]
    assert changed  # trained further from the pretrained weights
    assert dlforge.pipeline("translation", model=tmp_path / "ft")("love and war", num_beams=4) == \
        [{"translation_text": "WAR AND LOVE"}]
    with pytest.raises(DlforgeError, match="shape is the checkpoint's"):
        train_seq2seq(src, tgt, tmp_path / "bad", init=run, overrides={"d_model": 128}, progress=False)
