"""`text.seq2seq_generation`: greedy, sampling and beam search for encoder–decoder models.

Parity with Hugging Face's `generate()` on T5 and BART is in tests/hub/test_t5_bart.py; here the algorithm is
checked on its own terms: cache or not, one beam or greedy, enough beams or exhaustive search.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from dlforge.errors import DlforgeError
from dlforge.models import Seq2Seq, Seq2SeqConfig
from dlforge.text.seq2seq_generation import Seq2SeqGenerationConfig, banned_ngram_tokens, beam_search, generate_seq2seq

EOS = 2


def peaked_model(vocab=12, seed=0, positional="sinusoidal") -> Seq2Seq:
    """A random model whose next-token distributions are peaked (a trained model's are; a fresh one's are flat)."""
    torch.manual_seed(seed)
    config = Seq2SeqConfig(vocab_size=vocab, d_model=32, n_encoder_layers=1, n_decoder_layers=2, n_head=4, d_ff=48,
                           dropout=0.0, positional=positional, max_position=40, eos_token_id=EOS,
                           decoder_start_token_id=1, pad_token_id=0, tie_embeddings=False, final_logits_bias=True)
    model = Seq2Seq(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(4.0)
        model.final_logits_bias[EOS] = 2.5  # so that outputs end at different lengths
    return model


def sources(n=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 12, (n, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[-1, 4:] = 0
    return ids, mask


@pytest.mark.parametrize("positional", ["sinusoidal", "relative"])
@pytest.mark.parametrize("options", [dict(), dict(num_beams=3, num_return_sequences=2),
                                     dict(num_beams=4, no_repeat_ngram_size=2, length_penalty=0.5)])
def test_cached_and_uncached_decoding_give_the_same_outputs(positional, options):
    model, (ids, mask) = peaked_model(positional=positional), sources()
    cached = generate_seq2seq(model, ids, mask, max_new_tokens=10, **options)
    uncached = generate_seq2seq(model, ids, mask, max_new_tokens=10, use_cache=False, **options)
    assert torch.equal(cached, uncached)
    assert cached[:, 0].eq(1).all()  # outputs start with the decoder start token, as in transformers


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beam_search_with_one_beam_is_greedy(seed):
    model, (ids, mask) = peaked_model(seed=seed), sources(seed=seed)
    greedy = generate_seq2seq(model, ids, mask, max_new_tokens=12)
    for early_stopping in (True, False):
        config = Seq2SeqGenerationConfig.from_kwargs(model.config, max_new_tokens=12, num_beams=1,
                                                     early_stopping=early_stopping, length_penalty=0.0)
        with torch.no_grad():
            beam = beam_search(model, ids, mask, config)
        assert [until_eos(row) for row in beam.tolist()] == [until_eos(row) for row in greedy.tolist()]


def until_eos(row: list[int]) -> list[int]:
    """The output up to its first EOS (what follows is filler: transformers pads beams with EOS when pad id is 0)."""
    return row[:row.index(EOS) + 1] if EOS in row else row


def sequence_log_prob(model, ids, mask, output: list[int]) -> float:
    with torch.no_grad():
        logits = model(ids, mask, decoder_input_ids=torch.tensor([output[:-1]])).logits[0]
    return logits.log_softmax(-1).gather(1, torch.tensor(output[1:])[:, None]).sum().item()


@pytest.mark.parametrize("length_penalty", [1.0, 0.0, 2.0])
def test_beam_search_with_enough_beams_finds_the_exhaustive_best(length_penalty):
    """vocab 5, up to 3 new tokens: 25 beams keep every prefix, so the best hypothesis is the global optimum."""
    model = peaked_model(vocab=5, seed=3)
    ids, mask = torch.tensor([[3, 4, 3, 3]]), torch.ones(1, 4, dtype=torch.long)
    best, best_score = None, -float("inf")
    for length in (1, 2, 3):
        for tokens in itertools.product(range(5), repeat=length):
            if EOS in tokens[:-1] or (length < 3 and tokens[-1] != EOS):
                continue  # a hypothesis ends at its first EOS, or at the length limit
            output = [1, *tokens]
            score = sequence_log_prob(model, ids[:1], mask[:1], output) / length ** length_penalty
            if score > best_score:
                best, best_score = output, score
    found = generate_seq2seq(model, ids, mask, max_new_tokens=3, num_beams=25, length_penalty=length_penalty,
                             early_stopping="never")
    assert found[0, :len(best)].tolist() == best


def test_length_and_ngram_rules_hold_in_every_mode():
    model, (ids, mask) = peaked_model(), sources()
    for options in (dict(), dict(num_beams=4), dict(do_sample=True, top_k=5)):
        out = generate_seq2seq(model, ids, mask, max_new_tokens=15, min_new_tokens=6, no_repeat_ngram_size=2,
                               generator=torch.Generator().manual_seed(0), **options)
        for row in out.tolist():
            generated = row[1:]
            assert EOS not in generated[:6]  # min_new_tokens
            real = generated[:generated.index(EOS) + 1] if EOS in generated else generated
            bigrams = list(zip(real, real[1:]))
            assert len(bigrams) == len(set(bigrams)), row  # no bigram twice
    forced = generate_seq2seq(model, ids, mask, max_new_tokens=5, forced_bos_token_id=7, forced_eos_token_id=EOS,
                              num_beams=2)
    assert (forced[:, 1] == 7).all() and (forced[:, -1] == EOS).all()


def test_banned_ngrams_are_those_that_would_repeat():
    seq = torch.tensor([[1, 5, 6, 5, 7, 5]])
    assert sorted(banned_ngram_tokens(seq, 2)[0]) == [6, 7]  # "5 6" and "5 7" were seen; the row ends in 5
    assert banned_ngram_tokens(seq, 3)[0] == []  # "7 5" was never followed
    assert banned_ngram_tokens(torch.tensor([[1, 5]]), 3) == [[]]  # too short for a 3-gram


def test_sampling_is_reproducible_with_a_seed_and_returns_several_sequences():
    model, (ids, mask) = peaked_model(), sources()
    draw = lambda seed: generate_seq2seq(model, ids, mask, max_new_tokens=8, do_sample=True, temperature=1.5,  # noqa: E731
                                         num_return_sequences=3, generator=torch.Generator().manual_seed(seed))
    first, again, other = draw(0), draw(0), draw(1)
    assert first.shape[0] == 9 and torch.equal(first, again) and not torch.equal(first, other)


def test_beam_search_returns_distinct_hypotheses_best_first():
    model, (ids, mask) = peaked_model(), sources(n=1)
    out = generate_seq2seq(model, ids, mask, max_new_tokens=8, num_beams=4, num_return_sequences=4,
                           length_penalty=0.0, early_stopping=True)
    rows = [until_eos(r) for r in out.tolist()]
    assert len({tuple(r) for r in rows}) == 4
    scores = [sequence_log_prob(model, ids, mask, r) for r in rows]  # length_penalty 0: the plain sums
    assert scores == sorted(scores, reverse=True)


def test_bad_options_are_named():
    model, (ids, mask) = peaked_model(), sources()
    with pytest.raises(DlforgeError, match="unknown generation option"):
        generate_seq2seq(model, ids, mask, num_beam=4)
    with pytest.raises(DlforgeError, match="num_return_sequences"):
        generate_seq2seq(model, ids, mask, num_beams=2, num_return_sequences=3)
    with pytest.raises(DlforgeError, match="beam sampling"):
        generate_seq2seq(model, ids, mask, num_beams=2, do_sample=True)
    with pytest.raises(DlforgeError, match="early_stopping"):
        generate_seq2seq(model, ids, mask, num_beams=2, early_stopping="sometimes")
