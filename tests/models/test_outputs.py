"""ModelOutput as Hugging Face users know it: field access, and hidden states / attentions equal to transformers'.

Tiny random Hugging Face models (eager attention, so that they return attention probabilities) are saved with
`save_pretrained` and loaded with dlforge's loader; both run on the same batch with `output_hidden_states=True`
and `output_attentions=True`, and every field must agree in count, shape and value. GPT's `labels=` must give
transformers' causal-LM loss on the same weights.
"""

from __future__ import annotations

import os

import pytest
import torch

from dlforge.errors import DlforgeError
from dlforge.models import GPT, Bert, BertConfig, GPTConfig, ModelOutput, Seq2Seq, Seq2SeqConfig, ViT, ViTConfig
from dlforge.nn import attention as attention_module

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TOL = 1e-4
VOCAB = 60


# ----------------------------------------------------------------------------- the ModelOutput object


def test_fields_by_attribute_name_and_position():
    loss, logits, states = torch.tensor(1.5), torch.randn(2, 3), (torch.randn(2, 4, 8), torch.randn(2, 4, 8))
    out = ModelOutput(loss=loss, logits=logits, hidden_states=states)
    assert out["logits"] is out.logits is logits
    assert out.keys() == ["loss", "logits", "hidden_states"]
    assert "hidden_states" in out and "attentions" not in out
    assert out.to_tuple() == (loss, logits, states)
    assert out[0] is loss and out[1] is logits and out[-1] is states
    assert out[1:] == (logits, states)
    assert dict(out.items())["loss"] is loss
    # without a loss, position 0 is the logits, as in Hugging Face
    assert ModelOutput(logits=logits)[0] is logits


def test_missing_field_by_name_is_a_key_error_that_says_how_to_get_it():
    out = ModelOutput(logits=torch.zeros(1))
    with pytest.raises(KeyError, match="output_attentions=True") as caught:
        out["attentions"]
    assert isinstance(caught.value, DlforgeError)
    assert str(caught.value).startswith("this model output has no 'attentions': it has logits")
    with pytest.raises(DlforgeError, match="by field name or position"):
        out[1.0]


# ----------------------------------------------------------------------------- our own models


def tiny_gpt(**overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**dict(vocab_size=VOCAB, block_size=16, n_layer=3, n_head=2, n_embd=16), **overrides}))


def test_gpt_hidden_states_and_attentions_have_hf_shapes_and_meanings():
    model = tiny_gpt().eval()
    ids = torch.randint(0, VOCAB, (2, 7))
    with torch.no_grad():
        out = model(ids, output_hidden_states=True, output_attentions=True)
        plain = model(ids)
    assert plain.hidden_states is None and plain.attentions is None
    torch.testing.assert_close(out.logits, plain.logits, rtol=0, atol=1e-5)  # same numbers as the fast path
    assert len(out.hidden_states) == 4 and all(h.shape == (2, 7, 16) for h in out.hidden_states)
    wte, wpe = model.transformer.wte.weight, model.transformer.wpe.weight
    torch.testing.assert_close(out.hidden_states[0], wte[ids] + wpe[:7])  # the embeddings' output
    torch.testing.assert_close(out.logits, model.lm_head(out.hidden_states[-1]))  # the last one is after ln_f
    assert len(out.attentions) == 3 and all(a.shape == (2, 2, 7, 7) for a in out.attentions)
    seen = torch.ones(7, 7).tril().bool()  # query i sees keys 0..i
    for weights in out.attentions:
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 7))
        assert torch.all(weights[..., ~seen] == 0) and weights[..., seen].min() > 0


def test_attention_probabilities_are_only_computed_when_asked(monkeypatch):
    """Without output_attentions the layers keep the fused path; the written-out one runs once per layer with it."""
    calls = []
    written_out = attention_module.attention_with_weights
    monkeypatch.setattr(attention_module, "attention_with_weights",
                        lambda *a, **k: calls.append(1) or written_out(*a, **k))
    model = tiny_gpt().eval()
    ids = torch.randint(0, VOCAB, (1, 5))
    with torch.no_grad():
        model(ids, output_hidden_states=True)
        assert calls == []
        model(ids, output_attentions=True)
    assert len(calls) == 3


def test_gpt_labels_are_shifted_inside_and_targets_are_not():
    model = tiny_gpt()
    ids = torch.randint(0, VOCAB, (2, 9))
    labels = ids.clone()
    labels[0, :3] = -100  # a prompt that is not scored
    out = model(ids, labels=labels)
    logp = out.logits[:, :-1].log_softmax(-1)  # position i predicts token i + 1
    next_tokens = labels[:, 1:]
    keep = next_tokens != -100
    expected = -logp[keep].gather(-1, next_tokens[keep][:, None]).mean()
    torch.testing.assert_close(out.loss, expected)
    shifted = torch.cat([labels[:, 1:], torch.full((2, 1), -100)], dim=1)
    torch.testing.assert_close(model(ids, targets=shifted).loss, out.loss)
    assert abs(model(ids, targets=labels).loss.item() - out.loss.item()) > 1e-3  # targets are not shifted again


def test_gpt_label_mistakes_are_one_line_errors():
    model = tiny_gpt()
    ids = torch.randint(0, VOCAB, (2, 5))
    with pytest.raises(DlforgeError, match="not both"):
        model(ids, labels=ids, targets=ids)
    with pytest.raises(DlforgeError, match=r"labels must have the shape of input_ids \(2, 5\), got \(2, 4\)"):
        model(ids, labels=ids[:, :4])


def test_bare_encoders_return_last_hidden_state_and_no_logits():
    torch.manual_seed(0)
    bert = Bert(BertConfig(vocab_size=VOCAB, hidden_size=16, n_layer=2, n_head=2, intermediate_size=32)).eval()
    ids = torch.randint(1, VOCAB, (2, 6))
    with torch.no_grad():
        out = bert(ids, output_hidden_states=True)
    assert out.logits is None and out.keys() == ["last_hidden_state", "hidden_states"]
    torch.testing.assert_close(out.last_hidden_state, bert.encode(ids))
    assert len(out.hidden_states) == 3 and out.hidden_states[-1] is out.last_hidden_state
    with pytest.raises(DlforgeError, match="no task head"):
        bert(ids, labels=torch.zeros(2, dtype=torch.long))
    vit = ViT(ViTConfig(image_size=8, patch_size=4, channels=1, hidden_size=16, n_layer=2, n_head=2,
                        intermediate_size=32, pooler=True)).eval()
    pixels = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        out = vit(pixels)
    assert out.keys() == ["last_hidden_state", "pooler_output"] and out.last_hidden_state.shape == (2, 5, 16)
    torch.testing.assert_close(out.pooler_output, vit.pool(pixels))


def test_seq2seq_returns_each_stacks_fields():
    torch.manual_seed(0)
    model = Seq2Seq(Seq2SeqConfig(vocab_size=VOCAB, d_model=16, n_encoder_layers=2, n_decoder_layers=3, n_head=2,
                                  d_ff=32, max_position=16)).eval()
    src, tgt = torch.randint(3, VOCAB, (2, 5)), torch.randint(3, VOCAB, (2, 4))
    with torch.no_grad():
        out = model(src, labels=tgt, output_hidden_states=True, output_attentions=True)
    assert out.keys() == ["loss", "logits", "decoder_hidden_states", "decoder_attentions", "cross_attentions",
                          "encoder_last_hidden_state", "encoder_hidden_states", "encoder_attentions"]
    assert [len(out[k]) for k in out.keys() if k.endswith(("_states", "attentions"))] == [4, 3, 3, 3, 2]
    assert out.cross_attentions[0].shape == (2, 2, 4, 5) and out.encoder_attentions[0].shape == (2, 2, 5, 5)
    torch.testing.assert_close(out.encoder_last_hidden_state, model.encode(src))


# ----------------------------------------------------------------------------- parity with transformers


transformers = pytest.importorskip("transformers")


def perturbed(model, seed: int = 0):
    """The model in eval mode, every weight (norms and biases too) moved off its init value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def loaded(hf_model, directory):
    from dlforge.models import load_pretrained

    hf_model.save_pretrained(str(directory))
    model, _ = load_pretrained(directory)
    return model


def at(t: torch.Tensor, rows) -> torch.Tensor:
    """States (B, T, C) or attention (B, H, T, Tk) at the positions / query rows where `rows` (B, T) is True."""
    if rows is None:
        return t
    return t.transpose(1, 2)[rows] if t.dim() == 4 else t[rows]


def assert_all_close(ours, theirs, rows=None):
    """Two tuples of tensors: same count, shapes and values (at `rows`, a (B, T) mask of real positions)."""
    assert ours is not None and theirs is not None
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
        assert (at(a, rows) - at(b, rows)).abs().max().item() <= TOL


def eager(config_class, **kwargs):
    config = getattr(transformers, config_class)(**kwargs)
    config._attn_implementation = "eager"  # SDPA would not return the probabilities
    return config


def test_gpt2_outputs_and_loss_match_transformers(tmp_path):
    torch.manual_seed(0)
    hf = perturbed(transformers.GPT2LMHeadModel(eager("GPT2Config", vocab_size=VOCAB, n_positions=20, n_embd=24,
                                                      n_layer=3, n_head=4, activation_function="gelu_new")))
    model = loaded(hf, tmp_path)
    ids = torch.randint(0, VOCAB, (2, 8))
    labels = ids.clone()
    labels[1, :2] = -100
    with torch.no_grad():
        ref = hf(ids, labels=labels, output_hidden_states=True, output_attentions=True)
        out = model(ids, labels=labels, output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == 4 and len(out.attentions) == 3
    assert_all_close(out.hidden_states, ref.hidden_states)
    assert_all_close(out.attentions, ref.attentions)
    assert (out.logits - ref.logits).abs().max() <= TOL
    assert abs(out.loss.item() - ref.loss.item()) <= TOL and out.loss.item() > 1.0


@pytest.mark.parametrize("head", ["BertModel", "BertForSequenceClassification"])
def test_bert_outputs_match_transformers(head, tmp_path):
    torch.manual_seed(0)
    config = eager("BertConfig", vocab_size=VOCAB, hidden_size=24, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=40, max_position_embeddings=20, num_labels=3)
    hf = perturbed(getattr(transformers, head)(config))
    model = loaded(hf, tmp_path)
    ids = torch.randint(3, VOCAB, (2, 7))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0  # right padding: compared at the real positions
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
        out = model(ids, mask, output_hidden_states=True, output_attentions=True)
    real = mask.bool()
    assert len(out.hidden_states) == 3 and len(out.attentions) == 2
    assert_all_close(out.hidden_states, ref.hidden_states, real)
    assert_all_close(out.attentions, ref.attentions, real)
    if head == "BertModel":
        assert out.logits is None
        assert_all_close((out.last_hidden_state,), (ref.last_hidden_state,), real)
    else:
        assert out.last_hidden_state is None and (out.logits - ref.logits).abs().max() <= TOL


def test_vit_outputs_match_transformers(tmp_path):
    torch.manual_seed(0)
    hf = perturbed(transformers.ViTModel(eager("ViTConfig", hidden_size=24, num_hidden_layers=2,
                                               num_attention_heads=4, intermediate_size=40, image_size=16,
                                               patch_size=4, num_channels=3)))
    model = loaded(hf, tmp_path)
    pixels = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = hf(pixel_values=pixels, output_hidden_states=True, output_attentions=True)
        out = model(pixels, output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == 3 and out.attentions[0].shape == (2, 4, 17, 17)
    assert_all_close(out.hidden_states, ref.hidden_states)  # the last one before the final LayerNorm, as HF's
    assert_all_close(out.attentions, ref.attentions)
    assert_all_close((out.last_hidden_state, out.pooler_output), (ref.last_hidden_state, ref.pooler_output))


SEQ2SEQ = {
    "t5": ("T5ForConditionalGeneration", "T5Config",
           dict(d_model=24, d_kv=6, d_ff=40, num_layers=2, num_decoder_layers=3, num_heads=4,
                relative_attention_num_buckets=8, relative_attention_max_distance=20, decoder_start_token_id=0)),
    "bart": ("BartForConditionalGeneration", "BartConfig",
             dict(d_model=24, encoder_layers=2, decoder_layers=3, encoder_attention_heads=4,
                  decoder_attention_heads=4, encoder_ffn_dim=40, decoder_ffn_dim=40, max_position_embeddings=30)),
}


@pytest.mark.parametrize("family", list(SEQ2SEQ))
def test_seq2seq_outputs_match_transformers(family, tmp_path):
    model_class, config_class, kwargs = SEQ2SEQ[family]
    torch.manual_seed(0)
    hf = perturbed(getattr(transformers, model_class)(eager(config_class, vocab_size=VOCAB, **kwargs)))
    model = loaded(hf, tmp_path)
    src = torch.randint(3, VOCAB, (2, 6))
    mask = torch.ones_like(src)
    mask[1, 4:] = 0  # the source padding is masked in cross-attention and compared at the real positions
    decoder_ids = torch.randint(3, VOCAB, (2, 5))
    with torch.no_grad():
        ref = hf(input_ids=src, attention_mask=mask, decoder_input_ids=decoder_ids, output_hidden_states=True,
                 output_attentions=True)
        out = model(src, mask, decoder_input_ids=decoder_ids, output_hidden_states=True, output_attentions=True)
    real = mask.bool()
    assert (len(out.encoder_hidden_states), len(out.decoder_hidden_states), len(out.cross_attentions)) == (3, 4, 3)
    assert_all_close(out.encoder_hidden_states, ref.encoder_hidden_states, real)
    assert_all_close(out.encoder_attentions, ref.encoder_attentions, real)
    assert_all_close((out.encoder_last_hidden_state,), (ref.encoder_last_hidden_state,), real)
    assert_all_close(out.decoder_hidden_states, ref.decoder_hidden_states)
    assert_all_close(out.decoder_attentions, ref.decoder_attentions)
    assert_all_close(out.cross_attentions, ref.cross_attentions)
    assert (out.logits - ref.logits).abs().max() <= TOL


@pytest.mark.parametrize("head", ["ResNetModel", "ResNetForImageClassification"])
def test_resnet_outputs_match_transformers(head, tmp_path):
    torch.manual_seed(0)
    hf = perturbed(getattr(transformers, head)(transformers.ResNetConfig(
        num_channels=3, embedding_size=8, hidden_sizes=[8, 12, 16], depths=[1, 2, 1], layer_type="basic",
        num_labels=3)))
    model = loaded(hf, tmp_path)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = hf(pixel_values=pixels, output_hidden_states=True)
        out = model(pixels, output_hidden_states=True)
    assert len(out.hidden_states) == 4  # the stem's output, then each of the 3 stages'
    assert_all_close(out.hidden_states, ref.hidden_states)
    if head == "ResNetModel":
        assert out.logits is None
        assert_all_close((out.last_hidden_state, out.pooler_output), (ref.last_hidden_state, ref.pooler_output))
    else:
        assert (out.logits - ref.logits).abs().max() <= TOL


def test_bert_question_answering_loss_ignores_answers_past_the_end_as_transformers(tmp_path):
    torch.manual_seed(0)
    hf = perturbed(transformers.BertForQuestionAnswering(eager(
        "BertConfig", vocab_size=VOCAB, hidden_size=24, num_hidden_layers=1, num_attention_heads=4,
        intermediate_size=40, max_position_embeddings=20)))
    model = loaded(hf, tmp_path)
    ids = torch.randint(3, VOCAB, (3, 8))
    start, end = torch.tensor([2, 30, 5]), torch.tensor([4, 31, 9])  # row 2: cut off by truncation; row 3: end
    with torch.no_grad():
        ref = hf(input_ids=ids, start_positions=start, end_positions=end)
        out = model(ids, start_positions=start, end_positions=end)
        only_first = model(ids[:1], start_positions=start[:1], end_positions=end[:1])
    assert abs(out.loss.item() - ref.loss.item()) <= TOL
    assert abs(out.loss.item() - only_first.loss.item()) > 1e-3  # row 3's start still counts
