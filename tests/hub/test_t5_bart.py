"""Parity of dlforge's T5 and BART loaders (and its seq2seq decoding) against Hugging Face transformers.

Tiny random HF models with non-default configs are saved with `save_pretrained`, loaded with
`dlforge.models.load_pretrained`, and both are run on the same padded batch of sources: teacher-forced
logits must agree, and `generate` (greedy and beam search under several options) must return the same
ids. Random models give flat next-token distributions and rarely end, so the weights are rescaled to
make logits peaked and EOS's output row is copied from the most predicted token (plus noise), so that
outputs end at different steps. Damaged checkpoints must fail with a `DlforgeError` naming the problem.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

transformers = pytest.importorskip("transformers", reason="the parity tests compare against transformers")

from dlforge.errors import DlforgeError  # noqa: E402
from dlforge.models import load_pretrained, save_pretrained  # noqa: E402
from dlforge.models.converters import t5 as hub_t5  # noqa: E402
from dlforge.text.seq2seq_generation import generate_text2text  # noqa: E402
from dlforge.text.tokenizers import load_tokenizer  # noqa: E402

VOCAB = 100
TOL = 1e-4
MAX_NEW = 12

# name -> (HF config class, model class, config kwargs, randomize kwargs); generation_config.json: GENERATION
CASES = {
    "t5-v1.0": ("T5Config", "T5ForConditionalGeneration",
                dict(d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4, feed_forward_proj="relu",
                     relative_attention_num_buckets=8, relative_attention_max_distance=20, layer_norm_epsilon=1e-5,
                     decoder_start_token_id=0),
                dict(emb_std=0.15, logit_gain=25.0)),  # tied: small embeddings, a large final norm weight
    "t5-v1.1": ("T5Config", "T5ForConditionalGeneration",
                dict(d_model=32, d_kv=12, d_ff=40, num_layers=2, num_decoder_layers=3, num_heads=4,
                     feed_forward_proj="gated-gelu", relative_attention_num_buckets=10,
                     relative_attention_max_distance=16, tie_word_embeddings=False, decoder_start_token_id=0),
                dict()),
    "bart": ("BartConfig", "BartForConditionalGeneration",
             dict(d_model=32, encoder_layers=2, decoder_layers=3, encoder_attention_heads=4, decoder_attention_heads=4,
                  encoder_ffn_dim=40, decoder_ffn_dim=40, max_position_embeddings=40),
             dict()),
    "bart-scaled": ("BartConfig", "BartForConditionalGeneration",  # stacks of different depths, heads and widths
                    dict(d_model=32, encoder_layers=3, decoder_layers=2, encoder_attention_heads=2,
                         decoder_attention_heads=4, encoder_ffn_dim=56, decoder_ffn_dim=40, max_position_embeddings=30,
                         scale_embedding=True, activation_function="relu"),
                    dict()),
}
GENERATION = {"bart-scaled": dict(forced_bos_token_id=0)}  # as bart-large and mBART force the first token
GENERATION_OPTIONS = {
    "greedy": dict(num_beams=1),
    "beam": dict(num_beams=4),
    "beam-early": dict(num_beams=4, length_penalty=0.5, no_repeat_ngram_size=2, num_return_sequences=2,
                       early_stopping=True),
    "beam-late": dict(num_beams=4, length_penalty=2.0, no_repeat_ngram_size=2, num_return_sequences=2,
                      early_stopping=False),
    "beam-never-min": dict(num_beams=3, length_penalty=1.5, min_new_tokens=4, early_stopping="never"),
}


def randomize(model, seed: int, emb_std: float = 1.0, logit_gain: float = 1.0) -> None:
    """Weights at scales where every part matters: linears N(0, 1/fan_in), embeddings N(0, emb_std²),
    T5 relative biases N(0, 1), norms and biases near their init, BART's logits bias N(0, 0.25)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name:
                p.add_(noise * 0.1)
            elif name.endswith(("shared.weight", "lm_head.weight")):
                p.copy_(noise * emb_std)
            elif "relative_attention_bias" in name:
                p.copy_(noise)
            elif "embed_positions" in name:
                p.copy_(noise * 0.5)
            elif p.dim() == 2:
                p.copy_(noise / math.sqrt(p.shape[1]))
            else:
                p.copy_(noise * 0.1)
            if name == "decoder.final_layer_norm.weight":
                p.mul_(logit_gain)  # T5 v1.0: peaked logits without embeddings that drown the blocks
        for name, b in model.named_buffers():
            if name == "final_logits_bias":
                b.copy_(torch.randn(b.shape, generator=g) * 0.5)


def make_eos_compete(model, batch: dict, noise: float = 0.6, seed: int = 5) -> None:
    """EOS's output row := the row of the most predicted token plus noise, so that EOS wins at some steps."""
    eos = model.config.eos_token_id
    with torch.no_grad():
        top = model(**batch).logits.argmax(-1).flatten()
        favourite = top[top != eos].mode().values.item()
        weight = model.get_output_embeddings().weight
        g = torch.Generator().manual_seed(seed)
        weight[eos] = weight[favourite] + noise * weight.std() * torch.randn(weight.shape[1], generator=g)


def sources(config, lengths=(8, 5, 3), seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded sources ([BOS] tokens EOS) of different lengths, and their attention mask."""
    g = torch.Generator().manual_seed(seed)
    bos = [config.bos_token_id] if config.model_type == "bart" else []
    rows = [bos + torch.randint(3, VOCAB, (n,), generator=g).tolist() + [config.eos_token_id] for n in lengths]
    width = max(map(len, rows))
    ids = torch.tensor([r + [config.pad_token_id] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return ids, mask


def make_hf(case: str, seed: int = 0, randomized: bool = True):
    config_class, model_class, kwargs, scales = CASES[case]
    torch.manual_seed(seed)
    config = getattr(transformers, config_class)(vocab_size=VOCAB, **kwargs)
    model = getattr(transformers, model_class)(config)
    if not config.tie_word_embeddings or getattr(config, "scale_decoder_outputs", True) is False:
        if model.lm_head.weight is model.get_input_embeddings().weight:  # transformers >= 5 always ties T5
            model.lm_head.weight = torch.nn.Parameter(torch.empty(VOCAB, config.d_model))
    for name, value in GENERATION.get(case, {}).items():
        setattr(model.generation_config, name, value)
    if randomized:
        randomize(model, seed, **scales)
    return model.eval()


def decoder_inputs(config, batch_size: int = 3, length: int = 7, seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    start = torch.full((batch_size, 1), config.decoder_start_token_id)
    return torch.cat([start, torch.randint(3, VOCAB, (batch_size, length - 1), generator=g)], dim=1)


@pytest.fixture(scope="module", params=list(CASES))
def pair(request, tmp_path_factory, edit_config):
    """(HF model, dlforge model loaded from its save_pretrained directory, sources, mask, case name)."""
    case = request.param
    hf = make_hf(case)
    ids, mask = sources(hf.config)
    make_eos_compete(hf, dict(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_inputs(hf.config)))
    directory = tmp_path_factory.mktemp(case)
    hf.save_pretrained(str(directory))
    if case == "t5-v1.1":  # as on the Hub: untied and unscaled said by tie_word_embeddings alone
        edit_config(directory, lambda c: (c.pop("scale_decoder_outputs", None), c.update(tie_word_embeddings=False)))
    model, tokenizer = load_pretrained(directory, expected_kind="seq2seq")
    assert tokenizer is None and not model.training
    return hf, model, ids, mask, case


# case -> dlforge config fields the loader must have derived
EXPECTED = {
    "t5-v1.0": dict(tie_embeddings=True, output_scale=32 ** -0.5, activation="relu", n_decoder_layers=2,
                    attn_inner_dim=None, norm_eps=1e-5, relative_buckets=8, relative_max_distance=20),
    "t5-v1.1": dict(tie_embeddings=False, output_scale=1.0, activation="geglu", n_encoder_layers=2,
                    n_decoder_layers=3, attn_inner_dim=48, d_ff=40),
    "bart": dict(tie_embeddings=True, scale_embedding=False, activation="gelu", max_position=40, position_offset=2,
                 pre_ln=False, forced_eos_token_id=2, forced_bos_token_id=None, decoder_start_token_id=2),
    "bart-scaled": dict(scale_embedding=True, activation="relu", n_head=2, d_ff=56, n_encoder_layers=3,
                        n_decoder_layers=2, decoder_n_head=4, decoder_d_ff=40, forced_bos_token_id=0, bos_token_id=0,
                        pad_token_id=1),
}


def test_loaded_config(pair):
    _, model, _, _, case = pair
    found = {name: getattr(model.config, name) for name in EXPECTED[case]}
    assert found == EXPECTED[case]
    assert (model.lm_head.weight is model.shared.weight) == model.config.tie_embeddings


def test_logits_match_transformers(pair):
    hf, model, ids, mask, _ = pair
    decoder_ids = decoder_inputs(hf.config, seed=7)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits
        out = model(ids, mask, decoder_input_ids=decoder_ids).logits
    assert out.shape == ref.shape == (3, 7, VOCAB)
    assert ref.std() > 1.0, "reference logits are (near) flat: the test would prove nothing"
    diff = (out - ref).abs().max().item()
    assert diff <= TOL, f"max abs diff {diff:.3g} > {TOL}"


def hf_generate(hf, ids, mask, **options) -> torch.Tensor:
    # transformers 5 sizes T5's decoder cache by num_layers, which fails when num_decoder_layers is larger
    use_cache = hf.config.model_type != "t5" or hf.config.num_decoder_layers <= hf.config.num_layers
    options = {"min_new_tokens": 0, **options}
    return hf.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=MAX_NEW, use_cache=use_cache,
                       **options)


@pytest.mark.parametrize("name", list(GENERATION_OPTIONS))
def test_generate_matches_transformers(pair, name):
    hf, model, ids, mask, _ = pair
    options = GENERATION_OPTIONS[name]
    ref = hf_generate(hf, ids, mask, **options)
    out = model.generate(ids, mask, max_new_tokens=MAX_NEW, **options)
    assert out.tolist() == ref.tolist()
    assert (out[:, 0] == hf.config.decoder_start_token_id).all()
    if name == "greedy":  # the same without the self-attention cache
        assert model.generate(ids, mask, max_new_tokens=MAX_NEW, use_cache=False, **options).tolist() == ref.tolist()


def test_outputs_are_not_trivial(pair):
    """Across the option sets some outputs end early with EOS and not all sources get the same output."""
    hf, model, ids, mask, _ = pair
    eos = hf.config.eos_token_id
    ended_early, distinct = False, set()
    for options in GENERATION_OPTIONS.values():
        out = model.generate(ids, mask, max_new_tokens=MAX_NEW, **options)
        ended_early |= bool((out[:, 1:-1] == eos).any())
        distinct.update(tuple(row) for row in out.tolist())
    assert ended_early and len(distinct) >= 6


# ----------------------------------------------------------------------------- configs and key layouts


def test_t5_config_mapping():
    base = dict(vocab_size=VOCAB, d_model=32, d_kv=12, d_ff=40, num_heads=4, num_layers=2, layer_norm_epsilon=1e-5,
                relative_attention_num_buckets=10, relative_attention_max_distance=16)
    v10 = hub_t5.config_from_hf(base)
    assert (v10.activation, v10.output_scale, v10.attn_inner_dim, v10.n_decoder_layers) == ("relu", 32 ** -0.5, 48, 2)
    assert (v10.norm, v10.norm_eps, v10.bias, v10.attn_scale, v10.positional) == ("rmsnorm", 1e-5, False, 1.0,
                                                                                    "relative")
    assert (v10.pad_token_id, v10.eos_token_id, v10.decoder_start_token_id, v10.bos_token_id) == (0, 1, 0, None)
    assert v10.label_smoothing == 0.0 and (v10.relative_buckets, v10.relative_max_distance) == (10, 16)
    legacy = hub_t5.config_from_hf({**base, "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False})
    assert (legacy.activation, legacy.output_scale) == ("geglu", 1.0)
    # transformers >= 5 writes tie_word_embeddings: true and says "unscaled" with scale_decoder_outputs
    v5 = hub_t5.config_from_hf({**base, "tie_word_embeddings": True, "scale_decoder_outputs": False})
    assert v5.output_scale == 1.0


def test_bart_model_without_head_loads(tmp_path):
    """A bare BartModel: keys without "model.", no logits bias (zeros), output tied to the embedding."""
    torch.manual_seed(0)
    _, _, kwargs, _ = CASES["bart"]
    hf = transformers.BartModel(transformers.BartConfig(vocab_size=VOCAB, **kwargs)).eval()
    randomize(hf, 0)
    hf.save_pretrained(str(tmp_path))
    model, _ = load_pretrained(tmp_path)
    ids, mask = sources(hf.config)
    decoder_ids = decoder_inputs(hf.config)
    with torch.no_grad():
        hidden = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).last_hidden_state
        logits = model(ids, mask, decoder_input_ids=decoder_ids).logits
    assert torch.equal(model.final_logits_bias, torch.zeros(VOCAB))
    assert (logits - hidden @ hf.shared.weight.T).abs().max().item() <= TOL
    assert model.config.max_position == 40 and model.encoder.embed_positions.weight.shape == (42, 32)


# ----------------------------------------------------------------------------- tokenizers


T5_TEXTS = ["the quick brown fox jumps over the lazy dog", "hello world", "a dog"]


def t5_tokenizer(size: int = VOCAB):
    """A T5-style Unigram tokenizer (<pad> 0, </s> 1, <unk> 2) of exactly `size` pieces."""
    words = "the quick brown fox jumps over lazy dog hello world a".split()
    letters = "abcdefghijklmnopqrstuvwxyz"
    pieces = [("▁" + w, -1.0 - 0.1 * i) for i, w in enumerate(words)] + [(c, -5.0) for c in letters]
    pieces += [(f"▁{a}{b}", -8.0) for a in "xyz" for b in letters][: size - 4 - len(pieces)]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)] + pieces
    assert len(vocab) == size
    return transformers.T5Tokenizer(vocab=vocab, extra_ids=0)


def test_t5_tokenizer_appends_eos(tmp_path):
    hf_tok = t5_tokenizer()
    hf_tok.save_pretrained(str(tmp_path))
    tok = load_tokenizer(tmp_path)
    assert (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id) == (0, 1, None)
    ref = hf_tok(T5_TEXTS, padding="longest", truncation=True, max_length=8)
    enc = tok.encode_batch(T5_TEXTS, padding="longest", truncation=True, max_length=8, add_special_tokens=True,
                           return_tensors="pt")
    assert enc["input_ids"].tolist() == ref["input_ids"] and enc["attention_mask"].tolist() == ref["attention_mask"]
    for row, real in zip(enc["input_ids"], enc["attention_mask"].bool()):
        assert row[real][-1] == 1  # every source ends with </s>, truncated ones included


def test_bart_tokenizer_wraps_in_bos_eos(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train_from_iterator(T5_TEXTS * 5, vocab_size=300, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(tmp_path))
    hf_tok = transformers.BartTokenizer(vocab=str(tmp_path / "vocab.json"), merges=str(tmp_path / "merges.txt"))
    directory = tmp_path / "bart"
    hf_tok.save_pretrained(str(directory))
    tok = load_tokenizer(directory)
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id) == (0, 1, 2)
    ref = hf_tok(T5_TEXTS, padding="longest", truncation=True, max_length=8)
    enc = tok.encode_batch(T5_TEXTS, padding="longest", truncation=True, max_length=8, add_special_tokens=True,
                           return_tensors="pt")
    assert enc["input_ids"].tolist() == ref["input_ids"] and enc["attention_mask"].tolist() == ref["attention_mask"]
    first, last = enc["input_ids"][0].tolist(), enc["input_ids"][1][enc["attention_mask"][1].bool()].tolist()
    assert first[0] == 0 and first[-1] == 2 and last[0] == 0 and last[-1] == 2


def test_text_to_text_matches_transformers(tmp_path):
    """Text in, text out, through the tokenizer saved beside a T5 v1.1 checkpoint."""
    hf = make_hf("t5-v1.1")
    hf_tok = t5_tokenizer()
    batch = hf_tok(T5_TEXTS, return_tensors="pt", padding=True)
    make_eos_compete(hf, dict(**batch, decoder_input_ids=decoder_inputs(hf.config)))
    hf.save_pretrained(str(tmp_path))
    hf_tok.save_pretrained(str(tmp_path))
    model, tokenizer = load_pretrained(tmp_path)
    options = dict(num_beams=4, length_penalty=0.8, no_repeat_ngram_size=2)
    ref = hf_generate(hf, batch["input_ids"], batch["attention_mask"], **options)
    expected = [t.strip() for t in hf_tok.batch_decode(ref, skip_special_tokens=True)]
    assert generate_text2text(model, tokenizer, T5_TEXTS, max_new_tokens=MAX_NEW, **options) == expected
    assert any(expected)


# ----------------------------------------------------------------------------- errors



@pytest.fixture
def t5_dir(tmp_path) -> Path:
    make_hf("t5-v1.0", randomized=False).save_pretrained(str(tmp_path / "t5"))
    return tmp_path / "t5"


@pytest.fixture
def bart_dir(tmp_path) -> Path:
    make_hf("bart", randomized=False).save_pretrained(str(tmp_path / "bart"))
    return tmp_path / "bart"


def test_wrong_shape_is_named(t5_dir, edit_weights):
    edit_weights(t5_dir, lambda s: s.update({"encoder.block.1.layer.1.DenseReluDense.wi.weight": torch.zeros(49, 32)}))
    with pytest.raises(DlforgeError) as info:
        load_pretrained(t5_dir)
    msg = str(info.value)
    assert "encoder.layers.1.mlp.c_fc.weight" in msg and "(49, 32)" in msg and "(48, 32)" in msg


def test_unexpected_weight_is_named(t5_dir, edit_weights):
    edit_weights(t5_dir, lambda s: s.update({"decoder.block.0.layer.0.SelfAttention.extra.weight": torch.zeros(2)}))
    with pytest.raises(DlforgeError, match=r"unexpected 1 weight.*decoder\.block\.0\.layer\.0\.SelfAttention\.extra"):
        load_pretrained(t5_dir)


def test_missing_part_of_a_fused_matrix_is_named(t5_dir, edit_weights):
    edit_weights(t5_dir, lambda s: s.pop("decoder.block.1.layer.1.EncDecAttention.v.weight"))
    with pytest.raises(DlforgeError, match=r"decoder\.layers\.1\.cross_attn\.kv_proj\.weight.*missing \['v'\]"):
        load_pretrained(t5_dir)


def test_missing_bart_weight_is_named(bart_dir, edit_weights):
    edit_weights(bart_dir, lambda s: s.pop("model.decoder.layers.2.fc2.bias"))
    with pytest.raises(DlforgeError, match=r"missing 1 weight.*decoder\.layers\.2\.mlp\.c_proj\.bias"):
        load_pretrained(bart_dir)


def test_unknown_feed_forward_is_named(t5_dir, edit_config):
    edit_config(t5_dir, lambda c: c.update(feed_forward_proj="gated-relu"))
    with pytest.raises(DlforgeError, match="gated-relu"):
        load_pretrained(t5_dir)


@pytest.mark.parametrize("pair", ["bart-scaled", "t5-v1.1"], indirect=True)
def test_stacks_of_different_sizes_keep_them_when_saved_and_loaded_again(pair, tmp_path):
    """BART with its own decoder heads and widths, T5 v1.1 with a deeper decoder: dlforge's own directory
    holds the per-stack sizes, and the model loaded back from it gives the same logits."""
    hf, model, ids, mask, _ = pair
    save_pretrained(model, tmp_path)
    again, _ = load_pretrained(tmp_path)
    assert again.config == model.config
    assert again.config.stack_shape(decoder=True) != again.config.stack_shape(decoder=False)
    decoder_ids = decoder_inputs(hf.config, seed=3)
    with torch.no_grad():
        assert torch.equal(again(ids, mask, decoder_input_ids=decoder_ids).logits,
                           model(ids, mask, decoder_input_ids=decoder_ids).logits)


def test_wrong_kind_is_refused(t5_dir, bart_dir):
    with pytest.raises(DlforgeError, match="T5 model.*needs a gpt model"):
        load_pretrained(t5_dir, expected_kind="gpt")
    with pytest.raises(DlforgeError, match="BART model.*needs a bert model"):
        load_pretrained(bart_dir, expected_kind="bert")


# ----------------------------------------------------------------------------- saving in the HF format


def load_exported(directory: Path):
    """transformers' seq2seq Auto class on a folder dlforge wrote, which must hold every weight it needs."""
    exported, info = transformers.AutoModelForSeq2SeqLM.from_pretrained(directory, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    return exported.eval()


def test_hf_export_loads_in_transformers(pair, tmp_path):
    """dlforge's T5 / BART written with format="hf": transformers' Auto class builds the same architecture from
    it with every weight in place, gives the original's logits and greedy outputs, and dlforge reads it back."""
    hf, model, ids, mask, _ = pair
    model.save_pretrained(tmp_path, format="hf")
    exported = load_exported(tmp_path)
    assert type(exported) is type(hf)
    decoder_ids = decoder_inputs(hf.config, seed=11)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits
        out = exported(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits
    assert ref.std() > 1.0 and (out - ref).abs().max().item() <= TOL
    assert hf_generate(exported, ids, mask, num_beams=1).tolist() == hf_generate(hf, ids, mask, num_beams=1).tolist()
    back, _ = load_pretrained(tmp_path)
    assert back.config == model.config
    theirs, ours = back.state_dict(), model.state_dict()
    assert theirs.keys() == ours.keys() and all(torch.equal(theirs[k], ours[k]) for k in ours)


def test_hf_export_writes_the_tokenizer(tmp_path):
    """The tokenizer given to save_pretrained lands beside the weights, and transformers encodes with it as with
    the original."""
    hf_tok = t5_tokenizer()
    make_hf("t5-v1.0", randomized=False).save_pretrained(str(tmp_path / "hf"))
    hf_tok.save_pretrained(str(tmp_path / "hf"))
    model, tokenizer = load_pretrained(tmp_path / "hf")
    model.save_pretrained(tmp_path / "out", tokenizer, format="hf")
    again = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    assert again(T5_TEXTS)["input_ids"] == hf_tok(T5_TEXTS)["input_ids"]


T5_SHAPE = dict(positional="relative", norm="rmsnorm", pre_ln=True, bias=False, scale_embedding=False, attn_scale=1.0,
                relative_buckets=8, relative_max_distance=12)
BART_SHAPE = dict(positional="learned", position_offset=2, max_position=24, embedding_norm=True, pre_ln=False)
# Seq2Seq configs made in dlforge (not loaded from HF) in the combinations the HF-made cases above do not cover
DLFORGE_MADE = {
    "t5-tied-unscaled-swiglu": dict(T5_SHAPE, activation="swiglu", tie_embeddings=True, output_scale=1.0,
                                    n_decoder_layers=1, forced_eos_token_id=2),
    "t5-untied-scaled-relu": dict(T5_SHAPE, activation="relu", tie_embeddings=False, output_scale=16 ** -0.5,
                                  attn_inner_dim=24, n_head=4),
    "bart-untied-no-logits-bias": dict(BART_SHAPE, activation="gelu_new", tie_embeddings=False, scale_embedding=True,
                                       decoder_n_head=4, decoder_d_ff=20, n_decoder_layers=3, forced_eos_token_id=None),
}


@pytest.mark.parametrize("case", list(DLFORGE_MADE))
def test_dlforge_made_seq2seq_exports_to_transformers(case, tmp_path):
    """A T5- or BART-shaped Seq2Seq trained in dlforge: transformers runs the exported folder as dlforge does."""
    from dlforge.models import Seq2Seq, Seq2SeqConfig

    torch.manual_seed(0)
    sizes = dict(vocab_size=VOCAB, d_model=16, n_encoder_layers=2, n_decoder_layers=2, n_head=2, d_ff=24)
    model = Seq2Seq(Seq2SeqConfig(**{**sizes, **DLFORGE_MADE[case]})).eval()
    with torch.no_grad():  # weights at scales where every part shows in the logits
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.copy_(torch.randn_like(p) * (1.0 if name.endswith(("shared.weight", "lm_head.weight"))
                                               else p.shape[1] ** -0.5))
            else:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn_like(p))
    model.save_pretrained(tmp_path, format="hf")
    exported = load_exported(tmp_path)
    ids = torch.randint(3, VOCAB, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    decoder_ids = torch.cat([torch.full((2, 1), model.config.decoder_start_token_id),
                             torch.randint(3, VOCAB, (2, 5))], dim=1)
    with torch.no_grad():
        ours = model(ids, mask, decoder_input_ids=decoder_ids).logits
        theirs = exported(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits
    assert ours.std() > 0.5 and (ours - theirs).abs().max().item() <= TOL
    generated = model.generate(ids, mask, max_new_tokens=MAX_NEW, num_beams=1)
    assert generated.tolist() == hf_generate(exported, ids, mask, num_beams=1).tolist()
    back, _ = load_pretrained(tmp_path)
    with torch.no_grad():
        assert (back(ids, mask, decoder_input_ids=decoder_ids).logits - ours).abs().max().item() <= 1e-5


# dlforge-made seq2seq configs no HF family has -> the setting the error must name
UNREPRESENTABLE = {
    "sinusoidal": (dict(positional="sinusoidal"), "positional='sinusoidal'.*neither Hugging Face T5"),
    "t5-layernorm": (dict(positional="relative", norm="layernorm", pre_ln=True, bias=False, scale_embedding=False),
                     "norm='layernorm', which Hugging Face T5 cannot represent"),
    "t5-decoder-heads": (dict(positional="relative", norm="rmsnorm", pre_ln=True, bias=False, scale_embedding=False,
                              attn_scale=1.0, decoder_n_head=2), "decoder_n_head=2, .*T5"),
    "bart-pre-ln": (dict(positional="learned", position_offset=2, embedding_norm=True, pre_ln=True),
                    "pre_ln=True, which Hugging Face BART cannot represent"),
    "bart-offset": (dict(positional="learned", position_offset=0), "position_offset=0, .*BART .*needs 2"),
}


@pytest.mark.parametrize("case", list(UNREPRESENTABLE))
def test_unrepresentable_seq2seq_is_refused_in_one_line(case, tmp_path):
    from dlforge.models import Seq2Seq, Seq2SeqConfig

    settings, expected = UNREPRESENTABLE[case]
    model = Seq2Seq(Seq2SeqConfig(vocab_size=VOCAB, d_model=16, n_encoder_layers=1, n_decoder_layers=1, n_head=4,
                                  d_ff=32, **settings))
    with pytest.raises(DlforgeError, match=expected) as info:
        model.save_pretrained(tmp_path / "out", format="hf")
    assert "\n" not in str(info.value) and "format='dlforge'" in str(info.value)
    assert not (tmp_path / "out").exists()
