"""Method features of text classification pools as the model does: the real all-MiniLM-L6-v2 (a mean-pooling
sentence-transformers folder) gives mean vectors equal to sentence-transformers' own; the `pooling` option
overrides it; the exported OUT/model pools the same way at prediction time, so the text-classification
pipeline answers what the head computed on the cached training vectors. Also the extraction cache's key and
its progress output. A handful of texts each: a few seconds per test.
"""

from __future__ import annotations

import copy
import os
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before sentence_transformers / huggingface_hub are imported

import dlforge  # noqa: E402
from dlforge.errors import DlforgeError  # noqa: E402
from dlforge.models import load_pretrained  # noqa: E402
from dlforge.transfer import finetune  # noqa: E402
from dlforge.transfer.features import extract_features  # noqa: E402
from dlforge.transfer.recipe import make_task  # noqa: E402

TEXTS = ["a gorgeous , witty , seductive movie .", "the film is strictly routine .",
         "it 's a charming and often affecting journey .", "unflinchingly bleak and desperate",
         "an utterly incompetent , boring mess", "one of the year 's best films , warm and funny",
         "hi", "a dull , lifeless and predictable story that goes on far too long for what it has to say ."]
LABELS = ["1", "0", "1", "0", "0", "1", "1", "0"]


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    return load_pretrained(minilm_dir)


def st_reference(minilm_dir: str, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """sentence-transformers' vectors of `texts`: after its Pooling module alone (unnormalized) and after the
    whole model (Transformer → Pooling → Normalize)."""
    st = pytest.importorskip("sentence_transformers")
    full = st.SentenceTransformer(minilm_dir, device="cpu")
    assert [type(m).__name__ for m in full] == ["Transformer", "Pooling", "Normalize"]
    pooled = st.SentenceTransformer(modules=[full[0], full[1]], device="cpu")
    return (torch.as_tensor(pooled.encode(texts, convert_to_numpy=True)),
            torch.as_tensor(full.encode(texts, convert_to_numpy=True)))


def test_mean_features_equal_sentence_transformers(minilm, minilm_dir):
    model, tokenizer = minilm
    ours = torch.from_numpy(extract_features(model, tokenizer, TEXTS, batch_size=3, pooling="mean",
                                             progress=False))  # (8, 384), fp32, unnormalized
    unnormalized, normalized = st_reference(minilm_dir, TEXTS)
    assert ours.norm(dim=-1).min() > 2  # not unit vectors: the Normalize module is not applied
    torch.testing.assert_close(ours, unnormalized, atol=1e-4, rtol=0)
    torch.testing.assert_close(F.normalize(ours, dim=-1), normalized, atol=1e-4, rtol=0)


def load_task(minilm_dir, **options):
    task = make_task("text-classification", options)
    model, tokenizer = task.load_model(minilm_dir, ["0", "1"], seed=0)
    examples = [{"text": t, "pair": None, "label": y} for t, y in zip(TEXTS, LABELS)]
    return task, model, tokenizer, examples


@pytest.mark.parametrize("options, expected", [({}, "mean"), ({"pooling": "cls"}, "cls"),
                                               ({"pooling": "max"}, "max")])
def test_task_pools_as_the_folder_says_unless_the_option_overrides(minilm, minilm_dir, tmp_path, options,
                                                                   expected):
    encoder, tokenizer = minilm
    task, model, tokenizer, examples = load_task(minilm_dir, **options)
    vectors = task.vectors(model, tokenizer, examples, 128, tmp_path, dtype=None, progress=False)
    assert model.config.classifier_pooling == expected  # what the exported classifier will read
    direct = extract_features(encoder, tokenizer, TEXTS, pooling=expected, progress=False)
    np.testing.assert_allclose(vectors, direct, atol=1e-5, rtol=0)


def test_option_pooling_sets_the_classifier_for_every_method(minilm_dir):
    _, model, _, _ = load_task(minilm_dir, pooling="mean_sqrt_len")
    assert model.config.classifier_pooling == "mean_sqrt_len"  # set when loading, not only by `vectors`
    _, model, _, _ = load_task(minilm_dir)
    assert model.config.classifier_pooling == "cls"  # full / top-k / lora keep BERT's [CLS] by default


def test_invalid_pooling_option_names_the_choices():
    with pytest.raises(DlforgeError, match=r"--option pooling=avg is not a pooling: choose one of cls, mean, max, "
                                           r"mean_sqrt_len$"):
        make_task("text-classification", {"pooling": "avg"})


def test_cache_is_keyed_by_pooling_dtype_and_weights(minilm, tmp_path, monkeypatch):
    model, tokenizer = minilm
    texts = TEXTS[:4]
    mean = extract_features(model, tokenizer, texts, pooling="mean", cache_dir=tmp_path, progress=False)
    cls = extract_features(model, tokenizer, texts, pooling="cls", cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("features-*.npy"))) == 2 and not np.allclose(mean, cls)
    extract_features(model, tokenizer, texts, pooling="mean", cache_dir=tmp_path, dtype=torch.bfloat16,
                     progress=False)
    assert len(list(tmp_path.glob("features-*.npy"))) == 3
    with monkeypatch.context() as m:  # a hit reads the file and never runs the encoder
        m.setattr(type(model), "embed", lambda *a, **k: pytest.fail("the cache was not used"))
        assert np.array_equal(extract_features(model, tokenizer, texts, pooling="mean", cache_dir=tmp_path,
                                               progress=False), mean)
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.layers[-1].ln_2.bias.add_(0.1)  # the same config, other weights: other vectors
    extract_features(changed, tokenizer, texts, pooling="mean", cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("features-*.npy"))) == 4


def test_extraction_shows_progress_unless_asked_not_to(minilm, minilm_dir, tmp_path, capsys):
    model, tokenizer = minilm
    extract_features(model, tokenizer, TEXTS, batch_size=4, progress=True)
    err = capsys.readouterr().err
    assert "features (mean pooling)" in err and "8/8" in err
    extract_features(model, tokenizer, TEXTS, batch_size=4, progress=False)
    assert capsys.readouterr().err == ""
    task, net, tokenizer, examples = load_task(minilm_dir)
    task.vectors(net, tokenizer, examples, 128, tmp_path, dtype=None, progress=True)
    assert "features: mean pooling (from the model's sentence-transformers Pooling config)" in capsys.readouterr().out


@pytest.fixture(scope="module")
def features_run(minilm_dir, tmp_path_factory):
    """method features on the real MiniLM, 8 texts, 20 steps (~5 s)."""
    root = tmp_path_factory.mktemp("features")
    rows = "\n".join(f"{t}\t{y}" for t, y in zip(TEXTS, LABELS))
    (root / "train.tsv").write_text(f"sentence\tlabel\n{rows}\n")
    (root / "dev.tsv").write_text(f"sentence\tlabel\n{rows}\n")
    report = finetune(minilm_dir, "text-classification", root / "train.tsv", root / "dev.tsv", out=root / "run",
                      method="features", max_steps=20, batch_size=4, lr=1e-2, precision="fp32", seed=1,
                      progress=False)
    return root / "run", report


def pipeline_probabilities(classify) -> torch.Tensor:
    """(8, num_labels) probabilities the pipeline gives TEXTS, columns in the model's label order."""
    names = classify.model.config.labels
    return torch.tensor([[next(a["score"] for a in ranked if a["label"] == name) for name in names]
                         for ranked in classify(TEXTS, top_k=None)])


def test_exported_model_pools_as_its_head_was_trained(features_run):
    out, report = features_run
    assert report["settings"]["pooling"] == "mean" and report["settings"]["features_dtype"] == "None"
    model, tokenizer = load_pretrained(out / "model")
    assert model.config.classifier_pooling == "mean"
    (cached,) = list((out / "features").glob("features-*.npy"))
    vectors = torch.from_numpy(np.load(cached))[:len(TEXTS)]  # (train + eval, 384): what the head trained on
    with torch.no_grad():
        trained = model.head(vectors).softmax(-1)  # (8, 2): the head on the training vectors
    served = pipeline_probabilities(dlforge.pipeline("text-classification", model=out / "model"))
    assert [model.config.labels[i] for i in trained.argmax(-1)] == LABELS  # the head fitted its 8 texts
    assert torch.equal(served.argmax(-1), trained.argmax(-1))
    torch.testing.assert_close(served, trained, atol=1e-4, rtol=0)
    # the same head on [CLS] vectors (what OUT/model would compute without its pooling) answers otherwise
    model.config = replace(model.config, classifier_pooling="cls")
    on_cls = pipeline_probabilities(dlforge.pipeline("text-classification", model=model, tokenizer=tokenizer))
    assert (on_cls - trained).abs().max() > 0.05
