"""WordPiece training, BERT vocab.txt folders and RoBERTa vocab.json + merges.txt folders.

Parity references: the tokenizer.json of the real all-MiniLM-L6-v2, `transformers.BertTokenizer` and
`transformers.RobertaTokenizerFast` built from the same files, on real SST-2 sentences and pairs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import tokenizers as hf

from dlforge.errors import DlforgeError
from dlforge.models import load_pretrained
from dlforge.text import HFTokenizer, WordPieceTokenizer, load_tokenizer

N_SENTENCES = 300
TEXT = ("the king and the queen spoke of the crown. the queen spoke of war, and the king of love.\n"
        "my lord, hear me speak: the night is not the day, and love is not war.\n") * 40


@pytest.fixture(scope="module")
def sst2(shared_data) -> list[str]:
    path = shared_data / "sst2" / "dev.tsv"
    if not path.is_file():
        pytest.skip(f"SST-2 dev set not found at {path}")
    lines = path.read_text(encoding="utf-8").splitlines()[1:]
    return [line.split("\t")[0] for line in lines if line.strip()][:N_SENTENCES]


# ---------------------------------------------------------------- training


def test_trained_wordpiece_round_trips_lowercased_text_with_bert_special_ids(tmp_path):
    tok = WordPieceTokenizer.train([TEXT], vocab_size=120)
    assert [tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id] == \
        [0, 1, 2, 3, 4]
    assert tok.vocab_size <= 120 and tok.id_to_token(5) not in tok.special_tokens.values()
    sentence = "My Lord, the Queen spoke of LOVE and war."
    ids = tok.encode(sentence, add_special_tokens=True)
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id and tok.unk_token_id not in ids
    assert tok.decode(ids) == sentence.lower()  # lower-cased, specials skipped, "," and "." re-attached
    pieces = [tok.id_to_token(i) for i in tok.encode("kings speaking")]
    assert pieces[:3] == ["king", "##s", "speak"] and all(p.startswith("##") for p in pieces[3:]), pieces
    assert tok.decode(tok.encode("the kings speaking")) == "the kings speaking"  # ## pieces join
    assert tok.encode("the [MASK] spoke")[1] == tok.mask_token_id
    pair = tok.encode_windows(["the king"], pairs=["the queen"])[0][0]
    assert pair["input_ids"][0] == 2 and pair["input_ids"].count(3) == 2
    assert pair["token_type_ids"] == [0, 0, 0, 0, 1, 1, 1]
    # saved and loaded back, it encodes the same
    tok.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert again.encode(sentence, add_special_tokens=True) == ids and again.mask_token_id == 4
    cased = WordPieceTokenizer.train([TEXT + "The King\n" * 20], vocab_size=150, lowercase=False)
    assert cased.decode(cased.encode("The King spoke")) == "The King spoke"


def test_wordpiece_training_is_reproducible(tmp_path):
    # the library's trainer alone gives a different vocabulary on each call (hash-map order breaks ties)
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT + "".join(f"word{i} w{i}x{i % 7}\n" for i in range(300)), encoding="utf-8")
    vocabs = [WordPieceTokenizer.train([str(path)], vocab_size=150).tokenizer.get_vocab() for _ in range(4)]
    vocabs.append(WordPieceTokenizer.train(path.read_text(encoding="utf-8").splitlines(), 150).tokenizer.get_vocab())
    assert all(v == vocabs[0] for v in vocabs)


def test_wordpiece_training_errors():
    with pytest.raises(DlforgeError, match="too small"):
        WordPieceTokenizer.train([TEXT], vocab_size=5)
    with pytest.raises(DlforgeError, match="unknown-word token"):
        WordPieceTokenizer.train([TEXT], vocab_size=100, special_tokens={"pad": "[PAD]"})


# ---------------------------------------------------------------- vocab.txt folders


@pytest.fixture(scope="module")
def vocab_txt_dir(tmp_path_factory, minilm_dir) -> Path:
    """A folder holding only a vocab.txt written from MiniLM's tokenizer.json vocabulary."""
    vocab = json.loads(Path(minilm_dir, "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"]
    folder = tmp_path_factory.mktemp("vocab_txt")
    lines = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    (folder / "vocab.txt").write_text("".join(t + "\n" for t in lines), encoding="utf-8")
    return folder


def test_vocab_txt_matches_tokenizer_json_and_bert_tokenizer(vocab_txt_dir, minilm_dir, sst2):
    transformers = pytest.importorskip("transformers")
    ours, reference = load_tokenizer(vocab_txt_dir), load_tokenizer(minilm_dir)
    bert = transformers.BertTokenizer.from_pretrained(str(vocab_txt_dir))  # reads vocab.txt (do_lower_case=True)
    texts = sst2 + ["Naïve CAFÉ in 東京, Héllo [MASK] world!", "x" * 150, "  odd \t spacing\n"]
    assert ours.special_tokens == {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
    assert (ours.mask_token_id, ours.cls_token_id, ours.sep_token_id) == (103, 101, 102)
    mismatches = [t for t in texts if not (ours.encode(t, add_special_tokens=True)
                                           == reference.encode(t, add_special_tokens=True)
                                           == bert(t)["input_ids"])]
    assert not mismatches, mismatches[:3]
    batch = ours.encode_batch(texts, padding=True, add_special_tokens=True)
    assert batch["input_ids"].tolist() == reference.encode_batch(texts, padding=True, add_special_tokens=True)[
        "input_ids"].tolist()
    # pairs: [CLS] A [SEP] B [SEP] with token types
    firsts, seconds = sst2[:100], sst2[100:200]
    ours_pairs = ours.encode_windows(firsts, pairs=seconds)
    ref = bert(firsts, seconds)
    assert [w[0]["input_ids"] for w in ours_pairs] == ref["input_ids"]
    assert [w[0]["token_type_ids"] for w in ours_pairs] == ref["token_type_ids"]
    assert ours.decode(ours.encode(sst2[0])) == reference.decode(reference.encode(sst2[0]))


def test_vocab_txt_honours_do_lower_case(vocab_txt_dir, tmp_path):
    (tmp_path / "vocab.txt").write_bytes((vocab_txt_dir / "vocab.txt").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    cased, uncased = load_tokenizer(tmp_path), load_tokenizer(vocab_txt_dir)
    assert uncased.encode("Paris") == uncased.encode("paris")
    assert cased.encode("Paris") != cased.encode("paris")  # the uncased vocab has no "Paris": pieces or [UNK]


def test_load_pretrained_picks_up_vocab_txt(tmp_path, minilm_dir, vocab_txt_dir):
    for name in ("config.json", "model.safetensors"):  # copies: a link out of the folder would be refused
        shutil.copy(Path(minilm_dir) / name, tmp_path / name)
    (tmp_path / "vocab.txt").write_bytes((vocab_txt_dir / "vocab.txt").read_bytes())
    model, tok = load_pretrained(tmp_path)
    assert tok is not None and tok.mask_token_id == 103
    assert tok.encode("hello world", add_special_tokens=True) == [101, 7592, 2088, 102]


# ---------------------------------------------------------------- RoBERTa vocab.json + merges.txt


@pytest.fixture(scope="module")
def roberta_dir(tmp_path_factory, sst2) -> Path:
    """vocab.json + merges.txt of a byte-level BPE trained with RoBERTa's special tokens (<mask> last)."""
    tokenizer = hf.Tokenizer(hf.models.BPE())
    tokenizer.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = hf.trainers.BpeTrainer(vocab_size=800, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
                                     initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(sst2, trainer)
    folder = tmp_path_factory.mktemp("roberta")
    tokenizer.model.save(str(folder))
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    vocab["<mask>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    return folder


def test_roberta_vocab_merges_matches_roberta_tokenizer(roberta_dir, sst2):
    transformers = pytest.importorskip("transformers")
    ours = load_tokenizer(roberta_dir)
    reference = transformers.RobertaTokenizerFast.from_pretrained(str(roberta_dir))
    assert (ours.cls_token_id, ours.pad_token_id, ours.sep_token_id, ours.mask_token_id) == (0, 1, 2, 800)
    texts = sst2 + ["Naïve café 東京 🌍", "  odd   spacing\n"]
    mismatches = [t for t in texts if ours.encode(t, add_special_tokens=True) != reference(t)["input_ids"]]
    assert not mismatches, mismatches[:3]
    pairs = ours.encode_windows(sst2[:100], pairs=sst2[100:200])
    assert [w[0]["input_ids"] for w in pairs] == reference(sst2[:100], sst2[100:200])["input_ids"]  # <s>A</s></s>B</s>
    for text in sst2[:20]:
        assert ours.decode(ours.encode(text, add_special_tokens=True)) == text
    # <mask> absorbs the space before it, as in roberta-base's tokenizer.json and transformers 4.x
    # (transformers 5 builds the mask without lstrip from these two files, so compare with it set)
    masked = reference.__class__.from_pretrained(str(roberta_dir), mask_token=hf.AddedToken("<mask>", lstrip=True))
    text = "the film is <mask> and funny ."
    assert ours.encode(text, add_special_tokens=True) == masked(text)["input_ids"]
    assert ours.encode(text).index(800) == len(ours.encode("the film is"))
    # saved as tokenizer.json (as a checkpoint does) it keeps all of this
    saved = roberta_dir.parent / (roberta_dir.name + "_saved")
    ours.save(saved)
    again = load_tokenizer(saved)
    assert again.encode(text, add_special_tokens=True) == ours.encode(text, add_special_tokens=True)


def test_gpt2_vocab_merges_keeps_gpt2_behaviour(tmp_path, sst2):
    tokenizer = hf.Tokenizer(hf.models.BPE())
    tokenizer.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = hf.trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"], show_progress=False,
                                     initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(sst2, trainer)
    tokenizer.model.save(str(tmp_path))
    tok = load_tokenizer(tmp_path)
    assert isinstance(tok, HFTokenizer) and tok.tokenizer.post_processor is None
    assert tok.encode("a film", add_special_tokens=True) == tok.encode("a film") + [tok.eos_token_id]
