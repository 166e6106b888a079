"""Parity of dlforge's BERT / RoBERTa / DistilBERT loader against Hugging Face transformers.

Tiny random HF models with non-default configs are saved with `save_pretrained`, loaded with
`dlforge.models.load_pretrained`, and both are run on the same right-padded batch: hidden states,
logits and losses must agree. Damaged checkpoints must fail with a `DlforgeError` naming the problem.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")

transformers = pytest.importorskip("transformers")

from dlforge.errors import DlforgeError  # noqa: E402
from dlforge.models import load_pretrained  # noqa: E402
from dlforge.models.converters.bert import config_from_hf  # noqa: E402
from dlforge.nn.positional import sinusoidal_table  # noqa: E402

VOCAB = 50
TOL = 1e-4
HEADS = ("Model", "ForMaskedLM", "ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering")
PREFIX = {"bert": "Bert", "roberta": "Roberta", "distilbert": "DistilBert"}
TASK_OF = {"Model": "none", "ForMaskedLM": "masked-lm", "ForSequenceClassification": "sequence-classification",
           "ForTokenClassification": "token-classification", "ForQuestionAnswering": "question-answering"}
PAD_ID = {"bert": 0, "roberta": 1, "distilbert": 0}


def hf_config(family: str, head: str = "Model", **overrides):
    """A small, deliberately non-default config of `family` (num_labels 3, or 2 for QA)."""
    num_labels = 2 if head == "ForQuestionAnswering" else 3
    if family == "bert":
        kw = dict(vocab_size=VOCAB, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=70, hidden_act="gelu_new", layer_norm_eps=1e-7, type_vocab_size=3,
                  max_position_embeddings=40, pad_token_id=0)
        cls = transformers.BertConfig
    elif family == "roberta":
        kw = dict(vocab_size=VOCAB, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=70, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                  max_position_embeddings=42, layer_norm_eps=1e-6, type_vocab_size=1)
        cls = transformers.RobertaConfig
    else:
        kw = dict(vocab_size=VOCAB, dim=48, n_layers=2, n_heads=4, hidden_dim=70, sinusoidal_pos_embds=True,
                  activation="relu", max_position_embeddings=40, pad_token_id=0)
        cls = transformers.DistilBertConfig
    kw.update(num_labels=num_labels)
    kw.update(overrides)
    return cls(**kw)


def make_hf(family: str, head: str, seed: int = 0, perturb: bool = True, **overrides):
    """An HF model in eval mode whose weights (LN and biases included) are away from their init values."""
    torch.manual_seed(seed)
    model = getattr(transformers, PREFIX[family] + head)(hf_config(family, head, **overrides)).eval()
    if perturb:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if family == "distilbert" and "position_embeddings" in name:
                    continue  # keep the sinusoidal table
                p.add_(torch.randn_like(p) * 0.05)
    return model


def save_hf(model, directory: Path) -> Path:
    model.save_pretrained(str(directory))
    return directory


def batch(family: str, seed: int = 1):
    """Two rows of 9 tokens; the second is right-padded (3 pads, mask 0). BERT also gets token types."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (2, 9), generator=g)
    mask = torch.ones(2, 9, dtype=torch.long)
    ids[1, 6:] = PAD_ID[family]
    mask[1, 6:] = 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    if family == "bert":
        types = torch.zeros(2, 9, dtype=torch.long)
        types[0, 4:] = 1
        types[0, 7:] = 2
        types[1, 3:6] = 1
        inputs["token_type_ids"] = types
    return inputs




def assert_close_nontrivial(dl: torch.Tensor, hf: torch.Tensor, tol: float = TOL) -> None:
    assert dl.shape == hf.shape
    assert hf.float().std() > 1e-3, "reference output is (near) constant: the test would prove nothing"
    diff = (dl.float() - hf.float()).abs().max().item()
    assert diff <= tol, f"max abs diff {diff:.3g} > {tol}"


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("family", ("bert", "roberta", "distilbert"))
def test_outputs_match_transformers(family, head, tmp_path):
    hf = make_hf(family, head)
    model, tokenizer = load_pretrained(save_hf(hf, tmp_path))
    assert tokenizer is None and not model.training
    assert model.config.task == TASK_OF[head]
    inputs = batch(family)
    real = inputs["attention_mask"].bool()
    with torch.no_grad():
        ref = hf(**inputs)
        out = model(**inputs)
    if head == "Model":  # a bare encoder: its states, and no logits, as HF's
        assert out.logits is None
        assert_close_nontrivial(out.last_hidden_state[real], ref.last_hidden_state[real])
    elif head == "ForSequenceClassification":
        assert out.logits.shape == (2, 3)
        assert_close_nontrivial(out.logits, ref.logits)
    elif head == "ForQuestionAnswering":
        assert out.logits.shape == (2, 9, 2)
        assert_close_nontrivial(out.logits[..., 0][real], ref.start_logits[real])
        assert_close_nontrivial(out.logits[..., 1][real], ref.end_logits[real])
    else:  # masked LM / token classification: per-token logits at real positions
        assert out.logits.shape == (2, 9, VOCAB if head == "ForMaskedLM" else 3)
        assert_close_nontrivial(out.logits[real], ref.logits[real])


def _labels_for(head: str, inputs: dict) -> dict:
    g = torch.Generator().manual_seed(7)
    pad = inputs["attention_mask"] == 0
    if head == "ForSequenceClassification":
        return {"labels": torch.tensor([2, 0])}
    if head == "ForTokenClassification":
        labels = torch.randint(0, 3, (2, 9), generator=g)
        labels[pad] = -100
        labels[0, 0] = -100
        return {"labels": labels}
    if head == "ForMaskedLM":
        labels = torch.full((2, 9), -100)
        labels[0, [1, 4, 6]] = torch.randint(0, VOCAB, (3,), generator=g)
        labels[1, [2, 5]] = torch.randint(0, VOCAB, (2,), generator=g)
        return {"labels": labels}
    return {"start_positions": torch.tensor([1, 3]), "end_positions": torch.tensor([5, 4])}


@pytest.mark.parametrize("head", ("ForMaskedLM", "ForSequenceClassification", "ForTokenClassification",
                                  "ForQuestionAnswering"))
@pytest.mark.parametrize("family", ("bert", "roberta", "distilbert"))
def test_loss_matches_transformers(family, head, tmp_path):
    hf = make_hf(family, head, seed=3)
    model, _ = load_pretrained(save_hf(hf, tmp_path))
    inputs = batch(family, seed=4)
    targets = _labels_for(head, inputs)
    with torch.no_grad():
        ref = hf(**inputs, **targets).loss
        loss = model(**inputs, **targets).loss
    assert loss is not None and torch.isfinite(loss) and ref.item() > 1e-3
    assert abs(loss.item() - ref.item()) <= TOL, (loss.item(), ref.item())


@pytest.mark.parametrize("family", ("bert", "roberta", "distilbert"))
def test_qa_loss_of_padded_batch_matches_transformers(family, tmp_path):
    hf = make_hf(family, "ForQuestionAnswering", seed=3)
    model, _ = load_pretrained(save_hf(hf, tmp_path))
    inputs = batch(family, seed=4)
    targets = _labels_for("ForQuestionAnswering", inputs)
    with torch.no_grad():
        ref = hf(**inputs, **targets).loss
        loss = model(**inputs, **targets).loss
    assert abs(loss.item() - ref.item()) <= TOL, (loss.item(), ref.item())


@pytest.mark.parametrize("family", ("bert", "roberta", "distilbert"))
def test_multi_label_config_and_loss(family, tmp_path):
    labels = {0: "anger", 1: "joy", 2: "surprise"}
    hf = make_hf(family, "ForSequenceClassification", seed=5, problem_type="multi_label_classification",
                 id2label=labels, label2id={v: k for k, v in labels.items()})
    model, _ = load_pretrained(save_hf(hf, tmp_path))
    assert model.config.problem_type == "multi_label"
    assert model.config.labels == ["anger", "joy", "surprise"]
    assert model.config.num_labels == 3
    inputs = batch(family)
    target = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    with torch.no_grad():
        ref = hf(**inputs, labels=target)
        out = model(**inputs, labels=target)
    assert_close_nontrivial(out.logits, ref.logits)
    assert abs(out.loss.item() - ref.loss.item()) <= TOL


def test_regression_config_and_loss(tmp_path):
    hf = make_hf("bert", "ForSequenceClassification", seed=6, num_labels=1, problem_type="regression")
    model, _ = load_pretrained(save_hf(hf, tmp_path))
    assert model.config.problem_type == "regression" and model.config.num_labels == 1
    inputs = batch("bert")
    target = torch.tensor([0.7, -1.2])
    with torch.no_grad():
        ref = hf(**inputs, labels=target)
        out = model(**inputs, labels=target)
    assert_close_nontrivial(out.logits, ref.logits)
    assert abs(out.loss.item() - ref.loss.item()) <= TOL


def test_one_label_without_problem_type_is_regression(tmp_path):
    hf = make_hf("bert", "ForSequenceClassification", seed=6, num_labels=1)  # config.json: no problem_type
    model, _ = load_pretrained(save_hf(hf, tmp_path))
    inputs = batch("bert")
    target = torch.tensor([0.7, -1.2])
    with torch.no_grad():
        ref = hf(**inputs, labels=target).loss
        loss = model(**inputs, labels=target).loss
    assert model.config.problem_type == "regression"
    assert abs(loss.item() - ref.item()) <= TOL


def test_roberta_mlm_head_activation_is_always_gelu(tmp_path):
    hf = make_hf("roberta", "ForMaskedLM", hidden_act="relu")
    model, _ = load_pretrained(save_hf(hf, tmp_path))
    inputs = batch("roberta")
    real = inputs["attention_mask"].bool()
    with torch.no_grad():
        assert_close_nontrivial(model(**inputs).logits[real], hf(**inputs).logits[real])


def test_roberta_positions_start_after_padding_id(tmp_path):
    """RoBERTa counts positions from pad_token_id + 1 and has max_position_embeddings - 2 usable ones."""
    hf = make_hf("roberta", "Model")
    model, _ = load_pretrained(save_hf(hf, tmp_path))
    assert model.config.position_offset == 2 and model.config.max_position == 40
    assert model.embeddings.position_embeddings.weight.shape == (42, 48)
    ids = torch.randint(3, VOCAB, (1, 40))  # the longest sequence the checkpoint allows
    with torch.no_grad():
        assert_close_nontrivial(model(ids).last_hidden_state, hf(input_ids=ids).last_hidden_state)


def test_distilbert_sinusoidal_table_comes_through(tmp_path):
    hf = make_hf("distilbert", "Model", perturb=False)
    model, _ = load_pretrained(save_hf(hf, tmp_path))
    table = model.embeddings.position_embeddings(torch.arange(40))
    assert torch.allclose(table, sinusoidal_table(40, 48), atol=1e-5)
    assert model.config.type_vocab_size == 0 and model.embeddings.token_type_embeddings is None


def test_config_mapping_of_non_default_fields():
    c = config_from_hf({**hf_config("bert", "ForTokenClassification").to_dict(),
                        "architectures": ["BertForTokenClassification"]})
    assert (c.hidden_size, c.n_layer, c.n_head, c.intermediate_size) == (48, 2, 4, 70)
    assert (c.activation, c.norm_eps, c.type_vocab_size, c.max_position) == ("gelu_new", 1e-7, 3, 40)
    assert c.task == "token-classification" and c.num_labels == 3
    d = config_from_hf({**hf_config("distilbert", "ForSequenceClassification").to_dict(),
                        "architectures": ["DistilBertForSequenceClassification"]})
    assert (d.activation, d.intermediate_size, d.classifier_activation, d.pooler) == ("relu", 70, "relu", False)


# ----------------------------------------------------------------------------- errors


@pytest.fixture
def bert_dir(tmp_path) -> Path:
    return save_hf(make_hf("bert", "Model"), tmp_path / "bert")



def test_relative_position_embeddings_are_refused(bert_dir, edit_config):
    edit_config(bert_dir, lambda c: c.update(position_embedding_type="relative_key"))
    with pytest.raises(DlforgeError, match="relative_key"):
        load_pretrained(bert_dir)


def test_missing_weight_is_named(bert_dir, edit_weights):
    edit_weights(bert_dir, lambda s: s.pop("encoder.layer.1.output.dense.weight"))
    with pytest.raises(DlforgeError, match=r"missing 1 weight.*layers\.1\.mlp\.c_proj\.weight"):
        load_pretrained(bert_dir)


def test_unexpected_weight_is_named(bert_dir, edit_weights):
    edit_weights(bert_dir, lambda s: s.update({"mystery_block.weight": torch.zeros(3, 3)}))
    with pytest.raises(DlforgeError, match=r"unexpected 1 weight.*mystery_block\.weight"):
        load_pretrained(bert_dir)


def test_wrong_shape_is_named(bert_dir, edit_weights):
    edit_weights(bert_dir, lambda s: s.update({"encoder.layer.0.intermediate.dense.weight": torch.zeros(71, 48)}))
    with pytest.raises(DlforgeError) as info:
        load_pretrained(bert_dir)
    msg = str(info.value)
    assert "layers.0.mlp.c_fc.weight" in msg and "(71, 48)" in msg and "(70, 48)" in msg


@pytest.mark.parametrize("edit", ("delete", "reshape"))
def test_damaged_query_weight_is_named(bert_dir, edit, edit_weights):
    key = "encoder.layer.0.attention.self.query.weight"
    if edit == "delete":
        edit_weights(bert_dir, lambda s: s.pop(key))
    else:
        edit_weights(bert_dir, lambda s: s.update({key: torch.zeros(48, 47)}))
    with pytest.raises(DlforgeError, match=r"query|c_attn"):
        load_pretrained(bert_dir)


def test_unknown_model_type_lists_supported(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    save_file({"model.embed_tokens.weight": torch.zeros(4, 2)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(DlforgeError) as info:
        load_pretrained(tmp_path)
    msg = str(info.value)
    assert "llama" in msg
    for family in ("bert", "roberta", "distilbert", "gpt2"):
        assert family in msg


def test_load_pretrained_puts_a_new_head_on_a_base_encoder(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=40, max_position_embeddings=24)
    base = transformers.BertModel(cfg).eval()
    base.save_pretrained(tmp_path)
    model, _ = load_pretrained(tmp_path, task="sequence-classification", labels=["neg", "pos", "neutral"])
    assert model.config.task == "sequence-classification" and model.config.num_labels == 3
    assert model.config.labels == ["neg", "pos", "neutral"]
    # the encoder is the pretrained one, and BERT's pooler initialises the classifier's dense layer
    ids = torch.randint(1, 60, (2, 9))
    with torch.no_grad():
        assert (model.encode(ids) - base(input_ids=ids).last_hidden_state).abs().max() <= 1e-5
    assert torch.equal(model.head.dense.weight, base.pooler.dense.weight)
    assert model(ids).logits.shape == (2, 3)
    mlm, _ = load_pretrained(tmp_path, task="masked-lm")
    assert mlm.head.decoder.weight is mlm.embeddings.word_embeddings.weight


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("family", ("bert", "roberta", "distilbert"))
def test_save_hf_bert_round_trips_through_transformers(family, head, tmp_path):
    from dlforge.models.converters import save_hf_bert

    hf = make_hf(family, head, seed=5)
    model, _ = load_pretrained(save_hf(hf, tmp_path / "src"))
    save_hf_bert(model, tmp_path / "out")
    reloaded = type(hf).from_pretrained(str(tmp_path / "out")).eval()
    ids = torch.randint(3, VOCAB, (2, 9), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        a, b = hf(input_ids=ids), reloaded(input_ids=ids)
    key = {"Model": "last_hidden_state", "ForQuestionAnswering": "start_logits"}.get(head, "logits")
    assert a[key].std() > 1e-3
    assert torch.equal(a[key], b[key])
    if head == "ForQuestionAnswering":
        assert torch.equal(a["end_logits"], b["end_logits"])


def test_mean_pooled_classifier_is_refused_in_hugging_face_format(tmp_path):
    """HF's *ForSequenceClassification reads [CLS]: a mean-pooled head saved there would predict otherwise."""
    from dataclasses import replace

    from dlforge.models.converters import save_hf_bert

    model, _ = load_pretrained(save_hf(make_hf("bert", "ForSequenceClassification"), tmp_path / "src"))
    model.config = replace(model.config, classifier_pooling="mean")
    with pytest.raises(DlforgeError, match="reads mean-pooled vectors.*keep it in dlforge's format"):
        save_hf_bert(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- sentence-transformers pooling


def test_real_minilm_folder_declares_mean_pooling(minilm_dir):
    from dlforge.models.converters.bert import sentence_transformers_pooling

    modules = json.loads((Path(minilm_dir) / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Pooling", "Normalize"]
    assert sentence_transformers_pooling(minilm_dir) == "mean"


def st_folder(root: Path, pooling_config: dict | None, pooling_path: str = "1_Pooling") -> Path:
    """A sentence-transformers modules.json with a Transformer and a Pooling module (its config.json
    holding `pooling_config`; None: no config.json)."""
    root.mkdir(parents=True, exist_ok=True)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": pooling_path, "type": "sentence_transformers.models.Pooling"}]
    (root / "modules.json").write_text(json.dumps(modules))
    if pooling_config is not None:
        (root / "1_Pooling").mkdir(exist_ok=True)
        (root / "1_Pooling" / "config.json").write_text(json.dumps(pooling_config))
    return root


@pytest.mark.parametrize("config, expected", [
    ({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}, "cls"),
    ({"pooling_mode_max_tokens": True, "pooling_mode_mean_tokens": False}, "max"),
    ({"pooling_mode_mean_sqrt_len_tokens": True}, "mean_sqrt_len"),
    ({"word_embedding_dimension": 8}, "mean"),  # no mode set: sentence-transformers' default
    ({"pooling_mode": "cls", "include_prompt": True}, "cls"),  # sentence-transformers >= 5
    ({"pooling_mode": ["mean_sqrt_len_tokens"]}, "mean_sqrt_len"),
])
def test_sentence_transformers_pooling_modes(tmp_path, config, expected):
    from dlforge.models.converters.bert import sentence_transformers_pooling

    assert sentence_transformers_pooling(st_folder(tmp_path, config)) == expected


@pytest.mark.parametrize("config, message", [
    ({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": True},
     "pools by pooling_mode_cls_token \\+ pooling_mode_mean_tokens"),
    ({"pooling_mode_weightedmean_tokens": True}, "pools by pooling_mode_weightedmean_tokens"),
    ({"pooling_mode": "lasttoken"}, "pools by lasttoken"),
    (None, "has no config.json"),
])
def test_sentence_transformers_pooling_dlforge_cannot_read_is_refused(tmp_path, config, message):
    from dlforge.models.converters.bert import sentence_transformers_pooling

    with pytest.raises(DlforgeError, match=message) as info:
        sentence_transformers_pooling(st_folder(tmp_path, config))
    assert "--option pooling=" in str(info.value) and "\n" not in str(info.value)


def test_sentence_transformers_pooling_path_must_stay_in_the_folder(tmp_path):
    from dlforge.models.converters.bert import sentence_transformers_pooling

    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    with pytest.raises(DlforgeError, match="points outside that folder"):
        sentence_transformers_pooling(st_folder(tmp_path / "model", None, pooling_path="../outside"))


def test_folders_without_a_pooling_module_declare_none(tmp_path, bert_dir):
    from dlforge.models.converters.bert import sentence_transformers_pooling

    assert sentence_transformers_pooling(bert_dir) is None  # a plain Hugging Face folder
    (bert_dir / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": "",
                                                       "type": "sentence_transformers.models.Transformer"}]))
    assert sentence_transformers_pooling(bert_dir) is None
