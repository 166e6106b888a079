"""`models.seq2seq`: the encoder–decoder Transformer's masks, positions, caches and loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dlforge.errors import DlforgeError
from dlforge.models import Seq2Seq, Seq2SeqConfig
from dlforge.models.seq2seq import relative_position_bucket

POSITIONAL = ["sinusoidal", "learned", "relative"]


def small(positional="sinusoidal", **kw) -> Seq2Seq:
    torch.manual_seed(0)
    config = Seq2SeqConfig(vocab_size=40, d_model=32, n_encoder_layers=2, n_decoder_layers=3, n_head=4, d_ff=48,
                           dropout=0.0, positional=positional, max_position=32, **kw)
    return Seq2Seq(config).eval()


@pytest.mark.parametrize("positional", POSITIONAL)
@pytest.mark.parametrize("pre_ln", [True, False])
def test_incremental_decoding_with_the_cache_equals_the_full_decoder(positional, pre_ln):
    model = small(positional, pre_ln=pre_ln)
    src = torch.randint(3, 40, (2, 9))
    mask = torch.ones_like(src)
    mask[1, 6:] = 0
    tgt = torch.randint(3, 40, (2, 7))
    with torch.no_grad():
        enc = model.encode(src, mask)
        cross_mask = model.cross_attention_mask(mask)
        full = model.decode(tgt, enc, cross_mask)  # (2, 7, V)
        cache, cross_kv = model.new_kv_cache(2, 10), model.project_context(enc)
        steps = [model.decode(tgt[:, t:t + 1], encoder_mask=cross_mask, kv_cache=cache, cross_kv=cross_kv)
                 for t in range(tgt.size(1))]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("positional", POSITIONAL)
def test_decoder_is_causal_and_source_padding_is_invisible(positional):
    model = small(positional)
    src = torch.randint(3, 40, (1, 6))
    tgt = torch.randint(3, 40, (1, 5))
    with torch.no_grad():
        base = model(src, decoder_input_ids=tgt).logits
        changed_future = tgt.clone()
        changed_future[0, 3:] = (changed_future[0, 3:] + 1) % 40
        later = model(src, decoder_input_ids=changed_future).logits
        # padding the source with junk tokens that the mask hides changes nothing
        padded = torch.cat([src, torch.randint(3, 40, (1, 4))], dim=1)
        pad_mask = torch.cat([torch.ones(1, 6), torch.zeros(1, 4)], dim=1).long()
        masked = model(padded, pad_mask, decoder_input_ids=tgt).logits
    torch.testing.assert_close(later[:, :3], base[:, :3])  # positions before the change are unaffected
    assert not torch.allclose(later[:, 3:], base[:, 3:])
    torch.testing.assert_close(masked, base, atol=1e-5, rtol=1e-5)


def test_loss_is_label_smoothed_cross_entropy_over_real_labels_with_teacher_forcing():
    model = small(label_smoothing=0.1)
    src = torch.randint(3, 40, (2, 5))
    labels = torch.tensor([[5, 6, 7, 2], [8, 2, -100, -100]])
    out = model(src, labels=labels)
    decoder_inputs = torch.tensor([[1, 5, 6, 7], [1, 8, 2, 0]])  # start token, labels delayed; -100 -> pad
    torch.testing.assert_close(model.shift_right(labels), decoder_inputs)
    logits = model(src, decoder_input_ids=decoder_inputs).logits
    expected = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100, label_smoothing=0.1)
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    assert model.shared.weight.grad is not None and model.shared.weight.grad.abs().sum() > 0


def test_shared_vocabulary_ties_embeddings_and_output_and_separate_vocabularies_do_not():
    shared = small()
    assert shared.encoder.embed_tokens is shared.decoder.embed_tokens
    assert shared.lm_head.weight is shared.shared.weight
    separate = small(source_vocab_size=55)
    assert separate.encoder.embed_tokens.num_embeddings == 55 and separate.shared.num_embeddings == 40
    with torch.no_grad():
        out = separate(torch.randint(0, 55, (2, 4)), labels=torch.randint(3, 40, (2, 3)))
    assert out.logits.shape == (2, 3, 40)


def test_relative_position_buckets_follow_t5s_rule():
    offsets = torch.arange(-200, 201)
    causal = relative_position_bucket(offsets, bidirectional=False, n_buckets=32, max_distance=128)
    assert (causal[offsets >= 0] == 0).all()  # keys at or after the query share bucket 0
    assert causal[offsets == -5].item() == 5 and causal[offsets == -15].item() == 15  # exact below 16
    assert causal[offsets == -16].item() == 16 and causal[offsets == -200].item() == 31  # log-spaced, then capped
    assert (causal[:-1] >= causal[1:]).all()  # farther back never maps to a nearer bucket
    both = relative_position_bucket(offsets, bidirectional=True, n_buckets=32, max_distance=128)
    assert both[offsets == 0].item() == 0 and both[offsets == 3].item() == 16 + 3 and both[offsets == -3].item() == 3
    assert both.max().item() == 31


def test_the_decoder_may_have_its_own_heads_and_width():
    """decoder_n_head / decoder_d_ff shape the decoder's blocks (self- and cross-attention, MLP) and its cache;
    unset, the decoder takes the encoder's sizes, as every config written before these fields existed."""
    same = small()
    assert same.config.stack_shape(decoder=True) == (3, 4, 48) and same.config.stack_shape(decoder=False) == (2, 4, 48)
    model = small(decoder_n_head=2, decoder_d_ff=24)
    encoder_block, decoder_block = model.encoder.layers[0], model.decoder.layers[0]
    assert (encoder_block.attn.n_heads, encoder_block.mlp.c_fc.weight.shape[0]) == (4, 48)
    assert (decoder_block.attn.n_heads, decoder_block.cross_attn.n_heads) == (2, 2)
    assert decoder_block.mlp.c_fc.weight.shape[0] == 24
    cache = model.new_kv_cache(1, 8)
    assert len(cache.keys) == 3 and cache.keys[0].shape == (1, 2, 8, 16)  # (B, decoder heads, positions, head_dim)
    ids = torch.randint(3, 40, (2, 6))
    cached = model.generate(ids, max_new_tokens=5)
    assert cached.tolist() == model.generate(ids, max_new_tokens=5, use_cache=False).tolist()


def test_bad_configs_and_inputs_say_what_to_fix():
    with pytest.raises(DlforgeError, match="positional"):
        Seq2SeqConfig(positional="rotary")
    with pytest.raises(DlforgeError, match="divisible"):
        Seq2SeqConfig(d_model=30, n_head=4)
    with pytest.raises(DlforgeError, match="decoder_n_head"):
        Seq2SeqConfig(d_model=32, n_head=4, decoder_n_head=3)
    with pytest.raises(DlforgeError, match="decoder_d_ff"):
        Seq2SeqConfig(decoder_d_ff=0)
    model = small()
    with pytest.raises(DlforgeError, match="max_position"):
        model(torch.randint(3, 40, (1, 40)), labels=torch.randint(3, 40, (1, 3)))
    with pytest.raises(DlforgeError, match="labels"):
        model(torch.randint(3, 40, (1, 4)))
