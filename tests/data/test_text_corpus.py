"""Text corpora (dlforge.data.text): token files, the train/val split, batches and input errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dlforge.data import TextBatches, build_token_file, corpus_files, open_token_file, read_corpus_text
from dlforge.errors import DlforgeError
from dlforge.text import BPETokenizer, CharTokenizer

DOC_A = "hello world, this is the first document.\nwith two lines\n"
DOC_B = "second file: the quick brown fox\n"
DOC_C = "third, in a subfolder\n"


@pytest.fixture
def corpus_dir(tmp_path):
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text(DOC_A, encoding="utf-8")
    (root / "b.txt").write_text(DOC_B, encoding="utf-8")
    (root / "sub" / "c.txt").write_text(DOC_C, encoding="utf-8")
    (root / ".hidden.txt").write_text("SKIPPED", encoding="utf-8")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ALSO SKIPPED", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer.train([DOC_A, DOC_B, DOC_C] * 5, vocab_size=300)


# ---------------------------------------------------------------------------------- token files
def test_build_token_file_on_a_file_round_trips(synthetic_text_file, tmp_path):
    text = synthetic_text_file.read_text(encoding="utf-8")
    tok = CharTokenizer.train(text)
    out = build_token_file(synthetic_text_file, tok, tmp_path / "data" / "tokens.bin")
    assert out == tmp_path / "data" / "tokens.bin"
    ids = open_token_file(out)
    assert isinstance(ids, np.memmap) and ids.dtype == np.uint16
    assert ids.tolist() == tok.encode(text)
    assert tok.decode(np.asarray(ids)) == text
    meta = json.loads((tmp_path / "data" / "tokens.json").read_text())
    assert meta == {"dtype": "uint16", "tokens": len(text), "sources": [str(synthetic_text_file)]}
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["tokens.bin", "tokens.json"]


def test_build_token_file_on_real_text(shakespeare_small, tmp_path):
    text = shakespeare_small.read_text(encoding="utf-8")
    tok = CharTokenizer.train(text)
    assert 50 < tok.vocab_size <= 65  # the full text has nanoGPT's 65 characters
    ids = open_token_file(build_token_file(shakespeare_small, tok, tmp_path / "tokens.bin"))
    assert len(ids) == len(text)
    assert ids.tolist() == tok.encode(text)


def test_folder_without_eos_concatenates_documents(corpus_dir, tmp_path):
    assert [p.relative_to(corpus_dir).as_posix() for p in corpus_files(corpus_dir)] == \
        ["a.txt", "b.txt", "sub/c.txt"]
    assert read_corpus_text(corpus_dir) == DOC_A + DOC_B + DOC_C
    tok = CharTokenizer.train(DOC_A + DOC_B + DOC_C)
    assert tok.eos_token_id is None
    ids = open_token_file(build_token_file(corpus_dir, tok, tmp_path / "tokens.bin"))
    assert ids.tolist() == tok.encode(DOC_A + DOC_B + DOC_C)


def test_folder_with_eos_separates_documents(corpus_dir, tmp_path, bpe):
    eos = bpe.eos_token_id
    assert eos is not None
    ids = open_token_file(build_token_file(corpus_dir, bpe, tmp_path / "tokens.bin")).tolist()
    expected = bpe.encode(DOC_A) + [eos] + bpe.encode(DOC_B) + [eos] + bpe.encode(DOC_C)
    assert ids == expected
    assert ids.count(eos) == 2 and ids[0] != eos and ids[-1] != eos
    meta = json.loads((tmp_path / "tokens.json").read_text())
    assert meta["tokens"] == len(expected)
    assert [p.split("/")[-1] for p in meta["sources"]] == ["a.txt", "b.txt", "c.txt"]


def test_single_file_with_eos_tokenizer_has_no_separator(tmp_path, bpe):
    path = tmp_path / "one.txt"
    path.write_text(DOC_A, encoding="utf-8")
    ids = open_token_file(build_token_file(path, bpe, tmp_path / "tokens.bin")).tolist()
    assert ids == bpe.encode(DOC_A)


def test_char_tokenizer_with_eos_also_separates(corpus_dir, tmp_path):
    tok = CharTokenizer.train(DOC_A + DOC_B + DOC_C + "\x03", special_tokens={"eos": "\x03"})
    ids = open_token_file(build_token_file(corpus_dir, tok, tmp_path / "tokens.bin")).tolist()
    sep = [tok.eos_token_id]
    assert ids == tok.encode(DOC_A) + sep + tok.encode(DOC_B) + sep + tok.encode(DOC_C)


def test_large_vocab_uses_uint32(tmp_path):
    text = "".join(chr(0x4E00 + i) for i in range(70_000 // 2)) * 2 + "".join(chr(0x10000 + i) for i in range(35_500))
    path = tmp_path / "wide.txt"
    path.write_text(text, encoding="utf-8")
    tok = CharTokenizer.train(text)
    assert tok.vocab_size > 65536
    ids = open_token_file(build_token_file(path, tok, tmp_path / "tokens.bin"))
    assert ids.dtype == np.uint32
    assert int(ids.max()) == tok.vocab_size - 1
    assert ids.tolist() == tok.encode(text)


# ---------------------------------------------------------------------------------- split and batches
def test_split_is_90_10_at_the_end():
    ids = np.arange(1000, dtype=np.int64)
    data = TextBatches(ids, block_size=8, batch_size=4)
    assert data.train_ids.tolist() == list(range(900)) and data.val_ids.tolist() == list(range(900, 1000))
    odd = TextBatches(np.arange(1005), block_size=8, batch_size=4)
    assert len(odd.train_ids) == 905 and len(odd.val_ids) == 100  # int(100.5) tokens of validation
    custom = TextBatches(ids, block_size=8, batch_size=4, val_fraction=0.25)
    assert custom.val_ids[0] == 750
    # training windows never cross into the validation split, and validation windows stay in it
    for step in range(20):
        assert int(data.train_batch(step)["targets"].max()) < 900
    for batch in data.eval_batches():
        assert int(batch["input_ids"].min()) >= 900


def test_targets_are_inputs_shifted_by_one():
    data = TextBatches(np.arange(5000), block_size=16, batch_size=6, seed=1)
    batch = data.train_batch(3, 1)
    x, y = batch["input_ids"], batch["targets"]
    assert x.shape == y.shape == (6, 16)
    assert x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(y, x + 1)  # with ids = arange, every window is consecutive numbers


def test_train_batch_is_a_function_of_seed_step_and_micro_step():
    ids = np.random.default_rng(0).integers(0, 50, 3000)
    a = TextBatches(ids, 8, 4, seed=5)
    b = TextBatches(ids, 8, 4, seed=5)
    for step, micro in [(0, 0), (7, 0), (7, 1), (123, 3)]:
        assert torch.equal(a.train_batch(step, micro)["input_ids"], b.train_batch(step, micro)["input_ids"])
    later = a.train_batch(7, 1)["input_ids"]
    a.train_batch(0)  # no hidden state: the order of calls does not matter
    assert torch.equal(a.train_batch(7, 1)["input_ids"], later)
    distinct = {a.train_batch(s, m)["input_ids"].numpy().tobytes() for s in range(3) for m in range(2)}
    assert len(distinct) == 6
    other_seed = TextBatches(ids, 8, 4, seed=6)
    assert not torch.equal(other_seed.train_batch(7, 1)["input_ids"], later)


def test_rank_slices_concatenate_to_the_single_process_batch():
    data = TextBatches(np.arange(4000), block_size=8, batch_size=6, seed=2)
    for step in (0, 9):
        whole = data.train_batch(step, 1)
        parts = [data.train_batch(step, 1, rank=r, world_size=2) for r in (0, 1)]
        assert all(p["input_ids"].shape == (3, 8) for p in parts)
        for key in ("input_ids", "targets"):
            assert torch.equal(torch.cat([p[key] for p in parts]), whole[key])
        thirds = [data.train_batch(step, 1, rank=r, world_size=3)["input_ids"] for r in range(3)]
        assert torch.equal(torch.cat(thirds), whole["input_ids"])
    evals_1 = list(data.eval_batches())
    evals_2 = list(zip(data.eval_batches(0, 2), data.eval_batches(1, 2)))
    for whole, (p0, p1) in zip(evals_1, evals_2):
        assert torch.equal(torch.cat([p0["input_ids"], p1["input_ids"]]), whole["input_ids"])
    with pytest.raises(DlforgeError, match="not divisible"):
        data.train_batch(0, rank=0, world_size=4)


def test_eval_batches_are_the_same_at_every_call():
    data = TextBatches(np.random.default_rng(1).integers(0, 30, 5000), 8, 4, seed=3, eval_batches=5)
    first, second = list(data.eval_batches()), list(data.eval_batches())
    assert len(first) == 5
    for a, b in zip(first, second):
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["targets"], b["targets"])
    assert len({b["input_ids"].numpy().tobytes() for b in first}) == 5


def test_memmapped_token_file_feeds_batches(synthetic_text_file, tmp_path):
    tok = CharTokenizer.train(synthetic_text_file.read_text(encoding="utf-8"))
    ids = open_token_file(build_token_file(synthetic_text_file, tok, tmp_path / "tokens.bin"))
    batch = TextBatches(ids, 32, 4).train_batch(0)
    text = tok.decode(batch["input_ids"][0])
    assert len(text) == 32 and text in synthetic_text_file.read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------- errors
def _write(tmp_path, name: str, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("name, data, message", [
    ("empty.txt", b"", "is empty"),
    ("binary.bin", b"some text\x00\x01\x02 and more" * 10, "binary file .*NUL bytes"),
    ("latin1.txt", "caf\u00e9 na\u00efve ".encode("latin-1") * 20, "not UTF-8 .*byte 0xe9 at offset 3.*iconv"),
])
def test_bad_files_are_rejected_with_a_helpful_message(tmp_path, name, data, message):
    path = _write(tmp_path, name, data)
    with pytest.raises(DlforgeError, match=message) as info:
        corpus_files(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)
    with pytest.raises(DlforgeError, match=message):  # the same check guards tokenization
        build_token_file(path, CharTokenizer.train("abc"), tmp_path / "tokens.bin")
    assert not (tmp_path / "tokens.bin").exists()


def test_bad_file_inside_a_folder_is_named(tmp_path):
    root = tmp_path / "corpus"
    root.mkdir()
    (root / "good.txt").write_text("fine text\n", encoding="utf-8")
    bad = _write(root, "zz.dat", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(DlforgeError, match="binary") as info:
        corpus_files(root)
    assert str(bad) in str(info.value)


def test_non_utf8_byte_at_the_very_end_is_still_an_error(tmp_path):
    path = _write(tmp_path, "tail.txt", b"plain ascii then a latin-1 e: \xe9")
    with pytest.raises(DlforgeError, match="not UTF-8"):
        read_corpus_text(path)
    with pytest.raises(DlforgeError, match="not UTF-8"):
        build_token_file(path, CharTokenizer.train("plain ascii then a latin-1 e: "), tmp_path / "tokens.bin")


def test_utf8_character_cut_at_the_64k_boundary_is_accepted(tmp_path):
    text = "a" * (65536 - 1) + "\u00e9" + "tail\n"  # é straddles the 64 KB head that is checked
    path = tmp_path / "boundary.txt"
    path.write_text(text, encoding="utf-8")
    assert corpus_files(path) == [path]
    assert read_corpus_text(path) == text


def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(DlforgeError, match="does not exist: give a UTF-8 text file or a folder"):
        corpus_files(tmp_path / "nope.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DlforgeError, match="holds no files"):
        corpus_files(tmp_path / "empty")
    (tmp_path / "only_hidden").mkdir()
    (tmp_path / "only_hidden" / ".secret").write_text("x")
    with pytest.raises(DlforgeError, match="holds no files"):
        corpus_files(tmp_path / "only_hidden")


def test_corpus_shorter_than_one_window(tmp_path):
    with pytest.raises(DlforgeError, match=r"training split has 90 tokens.*\(96\).*smaller block_size"):
        TextBatches(np.arange(100), block_size=95, batch_size=2)
    with pytest.raises(DlforgeError, match=r"validation split has 10 tokens.*\(17\)"):
        TextBatches(np.arange(100), block_size=16, batch_size=2)
    TextBatches(np.arange(100), block_size=8, batch_size=2)  # 10 validation tokens: one window of 9 fits
