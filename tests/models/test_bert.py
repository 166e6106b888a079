"""Tests for dlforge.models.bert: the real all-MiniLM-L6-v2 against sentence-transformers, dlforge's
own format round trip, the task heads' losses, pooling, validation and a tiny training run."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before sentence_transformers / huggingface_hub are imported

from dlforge.errors import DlforgeError  # noqa: E402
from dlforge.models import MODEL_CLASSES, Bert, BertConfig, load_pretrained, save_pretrained  # noqa: E402
from dlforge.models.bert import PROBLEM_TYPES, TASKS  # noqa: E402

SST2_REL = Path("sst2") / "dev.tsv"
N_SENTENCES = 300
SEP_ID = 102  # [SEP] in the MiniLM (bert-base-uncased) vocabulary


def tiny_bert(task: str = "none", seed: int = 0, perturb: bool = True, **overrides) -> Bert:
    torch.manual_seed(seed)
    cfg = dict(vocab_size=40, hidden_size=32, n_layer=2, n_head=4, intermediate_size=48, max_position=16,
               task=task, num_labels=3)
    cfg.update(overrides)
    model = Bert(BertConfig(**cfg)).eval()
    if perturb:
        with torch.no_grad():  # LN affine and biases away from their init values
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
    return model


def padded_batch(pad_id: int = 0):
    g = torch.Generator().manual_seed(11)
    ids = torch.randint(3, 40, (3, 10), generator=g)
    mask = torch.ones(3, 10, dtype=torch.long)
    ids[1, 7:], mask[1, 7:] = pad_id, 0
    ids[2, 4:], mask[2, 4:] = pad_id, 0
    return ids, mask


# ----------------------------------------------------------------------------- real all-MiniLM-L6-v2


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    model, tokenizer = load_pretrained(minilm_dir)
    return model, tokenizer


@pytest.fixture(scope="module")
def sst2_sentences(shared_data) -> list[str]:
    path = shared_data / SST2_REL
    if not path.is_file():
        pytest.skip(f"SST-2 dev set not found at {path}")
    lines = path.read_text(encoding="utf-8").splitlines()[1:]  # skip the header
    return [line.split("\t")[0] for line in lines if line.strip()][:N_SENTENCES]


def dlforge_embed(model, tokenizer, texts: list[str], batch_size: int = 32) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            enc = tokenizer.encode_batch(texts[i:i + batch_size], padding="longest", truncation=True,
                                         max_length=256, add_special_tokens=True)
            out.append(model.embed(enc["input_ids"], enc["attention_mask"]))
    return torch.cat(out)


def st_embed(minilm_dir: str, texts: list[str]) -> torch.Tensor:
    st = pytest.importorskip("sentence_transformers")
    reference = st.SentenceTransformer(minilm_dir, device="cpu")
    return torch.as_tensor(reference.encode(texts, batch_size=32, convert_to_numpy=True))


def test_minilm_embeddings_match_sentence_transformers(minilm, minilm_dir, sst2_sentences):
    model, tokenizer = minilm
    assert tokenizer is not None and model.config.task == "none" and not model.training
    assert (model.config.hidden_size, model.config.n_layer) == (384, 6)
    # one text longer than the 128 tokens that tokenizer.json would truncate to (but within 256)
    long_text = " ".join(sst2_sentences[:12])
    n_long = len(tokenizer.encode(long_text, add_special_tokens=True))
    assert 128 < n_long <= 256
    texts = sst2_sentences + [long_text]
    assert len(sst2_sentences) == N_SENTENCES
    ours = dlforge_embed(model, tokenizer, texts)
    ref = st_embed(minilm_dir, texts)
    assert ours.shape == ref.shape == (len(texts), 384)
    assert torch.allclose(ours.norm(dim=-1), torch.ones(len(texts)), atol=1e-5)
    cos = F.cosine_similarity(ours, ref, dim=-1)
    worst = int(cos.argmin())
    assert cos.min() >= 0.9999, f"cosine {cos.min():.6f} for {texts[worst]!r}"
    assert (ours @ ours.T).std() > 0.05  # the embeddings are not all alike


def test_minilm_truncated_text_keeps_sep_like_sentence_transformers(minilm, minilm_dir, sst2_sentences):
    model, tokenizer = minilm
    long_text = " ".join(sst2_sentences[:30])  # > 256 tokens
    enc = tokenizer.encode_batch([long_text], padding="longest", truncation=True, max_length=256,
                                 add_special_tokens=True)
    assert enc["input_ids"].shape == (1, 256)
    cos = F.cosine_similarity(dlforge_embed(model, tokenizer, [long_text]), st_embed(minilm_dir, [long_text]))
    assert int(enc["input_ids"][0, -1]) == SEP_ID and cos.item() >= 0.9999


def test_minilm_tokenizer_pads_to_longest_not_to_its_fixed_128(minilm, minilm_dir):
    import json

    with open(os.path.join(minilm_dir, "tokenizer.json"), encoding="utf-8") as f:
        raw = json.load(f)
    assert raw["padding"]["strategy"] == {"Fixed": 128}  # the premise of this regression test
    _, tokenizer = minilm
    enc = tokenizer.encode_batch(["a short sentence .", "hi"], padding="longest", truncation=True,
                                 max_length=256, add_special_tokens=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    lengths = [len(tokenizer.encode(t, add_special_tokens=True)) for t in ("a short sentence .", "hi")]
    width = max(lengths)
    assert ids.shape == (2, width) and width < 128 and lengths[1] < width
    assert mask.tolist() == [[1] * n + [0] * (width - n) for n in lengths]
    assert (ids[1, lengths[1]:] == tokenizer.pad_token_id).all()
    assert int(ids[0, 0]) == 101 and int(ids[0, lengths[0] - 1]) == SEP_ID  # [CLS] ... [SEP]
    # the tokenizer.json's own truncation to 128 is off as well
    long = tokenizer.encode_batch(["word " * 200], truncation=True, max_length=256, add_special_tokens=True)
    assert long["input_ids"].shape == (1, 202)


def test_minilm_round_trips_through_dlforge_format(minilm, tmp_path):
    model, tokenizer = minilm
    texts = ["a gorgeous , witty , seductive movie .", "the film is strictly routine ."]
    save_pretrained(model, tmp_path / "m", tokenizer)
    model2, tokenizer2 = load_pretrained(tmp_path / "m")
    assert tokenizer2 is not None
    enc = tokenizer.encode_batch(texts, add_special_tokens=True)
    enc2 = tokenizer2.encode_batch(texts, add_special_tokens=True)
    assert torch.equal(enc["input_ids"], enc2["input_ids"])
    with torch.no_grad():
        assert torch.equal(model.embed(**enc), model2.embed(**enc2))


# ----------------------------------------------------------------------------- dlforge format round trip


@pytest.mark.parametrize("task", TASKS)
def test_round_trip_gives_identical_outputs(task, tmp_path):
    model = tiny_bert(task)
    ids, mask = padded_batch()
    directory = save_pretrained(model, tmp_path / task)
    loaded, tokenizer = load_pretrained(directory)
    assert tokenizer is None and isinstance(loaded, Bert) and loaded.config == model.config
    with torch.no_grad():
        a, b = model(ids, mask), loaded(ids, mask)
    field = "last_hidden_state" if task == "none" else "logits"  # a bare encoder has no logits, as in HF
    assert a[field].std() > 1e-3
    assert torch.equal(a[field], b[field])
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name


@pytest.mark.parametrize("variant", [dict(positional="sinusoidal", type_vocab_size=0),
                                     dict(position_offset=2, pad_token_id=1, type_vocab_size=1)],
                         ids=["sinusoidal", "roberta-offset"])
def test_round_trip_of_config_variants(variant, tmp_path):
    model = tiny_bert("masked-lm", **variant)
    ids, mask = padded_batch(pad_id=model.config.pad_token_id)
    loaded, _ = load_pretrained(save_pretrained(model, tmp_path / "m"))
    assert loaded.config == model.config
    with torch.no_grad():
        assert torch.equal(model(ids, mask).logits, loaded(ids, mask).logits)


def test_mlm_decoder_stays_tied_after_load(tmp_path):
    from safetensors import safe_open

    model = tiny_bert("masked-lm")
    directory = save_pretrained(model, tmp_path / "mlm")
    with safe_open(str(directory / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert "embeddings.word_embeddings.weight" in keys and "head.decoder.weight" not in keys
    loaded, _ = load_pretrained(directory)
    decoder, words = loaded.head.decoder.weight, loaded.embeddings.word_embeddings.weight
    assert decoder is words and decoder.data_ptr() == words.data_ptr()
    with torch.no_grad():
        words[5, 0] += 1.0
    assert decoder[5, 0] == words[5, 0]


def test_bert_is_registered():
    assert MODEL_CLASSES["bert"] is Bert and Bert.config_class is BertConfig
    cfg = BertConfig(hidden_size=32, n_head=4, task="token-classification", labels=["O", "B-PER", "I-PER"])
    assert BertConfig.from_dict(asdict(cfg)) == cfg


# ----------------------------------------------------------------------------- heads, losses, pooling


def test_regression_loss_is_mse():
    model = tiny_bert("sequence-classification", num_labels=1, problem_type="regression")
    ids, mask = padded_batch()
    target = torch.tensor([0.5, -1.0, 2.0])
    out = model(ids, mask, labels=target)
    assert out.logits.shape == (3, 1)
    torch.testing.assert_close(out.loss, F.mse_loss(out.logits.squeeze(-1), target))
    assert out.loss > 0


def test_multi_label_loss_is_bce_with_logits():
    model = tiny_bert("sequence-classification", problem_type="multi_label")
    ids, mask = padded_batch()
    target = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    out = model(ids, mask, labels=target)
    assert out.logits.shape == (3, 3)
    torch.testing.assert_close(out.loss, F.binary_cross_entropy_with_logits(out.logits, target))


def test_single_label_and_token_losses_are_cross_entropy():
    model = tiny_bert("sequence-classification")
    ids, mask = padded_batch()
    out = model(ids, mask, labels=torch.tensor([0, 2, 1]))
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, torch.tensor([0, 2, 1])))
    tok = tiny_bert("token-classification")
    labels = torch.randint(0, 3, (3, 10))
    labels[mask == 0] = -100
    out = tok(ids, mask, labels=labels)
    real = labels != -100
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits[real], labels[real]))


def test_question_answering_logits_and_loss():
    model = tiny_bert("question-answering")
    ids, mask = padded_batch()
    start, end = torch.tensor([1, 2, 0]), torch.tensor([4, 5, 3])
    out = model(ids, mask, start_positions=start, end_positions=end)
    assert out.logits.shape == (3, 10, 2)
    expected = (F.cross_entropy(out.logits[..., 0], start) + F.cross_entropy(out.logits[..., 1], end)) / 2
    torch.testing.assert_close(out.loss, expected)
    assert model(ids, mask).loss is None


def test_cls_pooling_is_normalized_first_hidden_state():
    model = tiny_bert()
    ids, mask = padded_batch()
    with torch.no_grad():
        hidden = model.encode(ids, mask)
        cls = model.embed(ids, mask, pooling="cls")
        raw = model.embed(ids, mask, pooling="cls", normalize=False)
    torch.testing.assert_close(cls, F.normalize(hidden[:, 0], dim=-1))
    torch.testing.assert_close(raw, hidden[:, 0])
    torch.testing.assert_close(cls.norm(dim=-1), torch.ones(3))


@pytest.mark.parametrize("variant", [{}, dict(position_offset=2, pad_token_id=1, type_vocab_size=1)],
                         ids=["bert", "roberta-offset"])
def test_mean_pooling_ignores_padding(variant):
    model = tiny_bert(**variant)
    pad = model.config.pad_token_id
    ids, mask = padded_batch(pad_id=pad)
    with torch.no_grad():
        batched = model.embed(ids, mask)
        for row, n in ((1, 7), (2, 4)):
            alone = model.embed(ids[row:row + 1, :n], mask[row:row + 1, :n])
            torch.testing.assert_close(batched[row:row + 1], alone, atol=1e-5, rtol=0)
        # mean pooling of the unnormalized hidden states is the mean over real positions only
        hidden = model.encode(ids, mask)
        pooled = model.embed(ids, mask, normalize=False)
        torch.testing.assert_close(pooled[2], hidden[2, :4].mean(0))


def test_max_and_mean_sqrt_len_pooling_over_real_tokens_only():
    """As sentence-transformers' Pooling: max per channel over real tokens; sum / sqrt(real tokens)."""
    model = tiny_bert()
    ids, mask = padded_batch()
    with torch.no_grad():
        hidden = model.encode(ids, mask)  # (3, 10, 32)
        largest = model.embed(ids, mask, pooling="max", normalize=False)
        sqrt_len = model.embed(ids, mask, pooling="mean_sqrt_len", normalize=False)
        for row, n in ((0, 10), (1, 7), (2, 4)):
            torch.testing.assert_close(largest[row], hidden[row, :n].amax(0))
            torch.testing.assert_close(sqrt_len[row], hidden[row, :n].sum(0) / n ** 0.5)
            for pooling in ("max", "mean_sqrt_len"):  # the padding of a batch changes nothing
                alone = model.embed(ids[row:row + 1, :n], mask[row:row + 1, :n], pooling=pooling)
                batched = model.embed(ids[row:row + 1], mask[row:row + 1], pooling=pooling)
                torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("pooling", ["cls", "mean", "max", "mean_sqrt_len"])
def test_classifier_head_reads_the_configured_pooling(pooling, tmp_path):
    model = tiny_bert("sequence-classification", classifier_pooling=pooling)
    ids, mask = padded_batch()
    with torch.no_grad():
        logits = model(ids, mask).logits  # (3, 3)
        expected = model.head(model.embed(ids, mask, pooling=pooling, normalize=False))
        other = "mean" if pooling == "cls" else "cls"
        elsewhere = model.head(model.embed(ids, mask, pooling=other, normalize=False))
        torch.testing.assert_close(logits, expected)
        assert (logits - elsewhere).abs().max() > 1e-3  # the setting decides what the head reads
        loaded, _ = load_pretrained(save_pretrained(model, tmp_path / "m"))  # kept in config.json
        assert loaded.config.classifier_pooling == pooling
        torch.testing.assert_close(loaded(ids, mask).logits, logits)


def test_config_without_classifier_pooling_reads_cls(tmp_path):
    """config.json files written before the setting existed load as the [CLS] classifiers they were."""
    import json

    model = tiny_bert("sequence-classification")
    directory = save_pretrained(model, tmp_path / "m")
    raw = json.loads((directory / "config.json").read_text())
    del raw["config"]["classifier_pooling"]
    (directory / "config.json").write_text(json.dumps(raw))
    loaded, _ = load_pretrained(directory)
    ids, mask = padded_batch()
    assert loaded.config.classifier_pooling == "cls"
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, mask).logits, model.head(model.encode(ids, mask)[:, 0]))


def test_invalid_task_problem_type_and_pooling():
    with pytest.raises(DlforgeError, match="task must be one of"):
        BertConfig(task="translation")
    with pytest.raises(DlforgeError, match="problem_type must be one of"):
        BertConfig(problem_type="ordinal")
    with pytest.raises(DlforgeError, match="divisible"):
        BertConfig(hidden_size=30, n_head=4)
    with pytest.raises(DlforgeError, match="positional"):
        BertConfig(positional="rotary")
    with pytest.raises(DlforgeError, match="unknown BERT config keys: bogus"):
        BertConfig.from_dict({"n_layer": 2, "bogus": 1})
    assert set(PROBLEM_TYPES) == {"single_label", "multi_label", "regression"}
    model = tiny_bert(perturb=False)
    ids, mask = padded_batch()
    with pytest.raises(DlforgeError, match="pooling must be one of cls, mean, max, mean_sqrt_len, got 'first'"):
        model.embed(ids, mask, pooling="first")
    with pytest.raises(DlforgeError, match="pooling must be one of cls, mean, max, mean_sqrt_len"):
        BertConfig(classifier_pooling="attention")


# ----------------------------------------------------------------------------- training


def test_tiny_classifier_learns_whether_token_5_appears():
    torch.manual_seed(0)
    n, length, cls_id = 96, 8, 1
    ids = torch.randint(6, 16, (n, length))
    labels = torch.arange(n) % 2
    where = torch.randint(1, length, (n,))
    ids[labels == 1, where[labels == 1]] = 5
    ids[:, 0] = cls_id
    model = Bert(BertConfig(vocab_size=16, hidden_size=32, n_layer=1, n_head=4, intermediate_size=64,
                            max_position=length, task="sequence-classification", num_labels=2, dropout=0.0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(50):
        loss = model(ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(ids).logits.argmax(-1) == labels).float().mean().item()
    assert accuracy >= 0.9, f"training accuracy {accuracy:.2f} after 50 steps"
