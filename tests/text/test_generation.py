"""Tests for dlforge.text.generation: cached vs uncached decoding, padding, sampling filters, text."""

from __future__ import annotations

import pytest
import torch

from dlforge.errors import DlforgeError
from dlforge.models import GPT, GPTConfig
from dlforge.text import CharTokenizer
from dlforge.text.generation import (
    GenerationConfig,
    apply_repetition_penalty,
    choose_next_token,
    generate,
    generate_text,
    iter_generate,
    top_k_filter,
    top_p_filter,
)

VOCAB, BLOCK = 50, 16
POSITIONALS = ["learned", "rotary", "sinusoidal"]


def make_gpt(positional: str = "learned", seed: int = 0, vocab: int = VOCAB, block: int = BLOCK) -> GPT:
    """A tiny GPT whose weights are large enough that logits are well separated (no near-ties)."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=vocab, block_size=block, n_layer=2, n_head=2, n_embd=16,
                          positional=positional))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
    return model.eval()


def gen(model, ids, seed=None, **options):
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return generate(model, ids, generator=generator, **options)


def prompt(n: int, seed: int = 1, vocab: int = VOCAB) -> torch.Tensor:
    return torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- cached == uncached


@pytest.mark.parametrize("positional", POSITIONALS)
def test_cached_equals_uncached_greedy(positional):
    model = make_gpt(positional)
    ids = torch.cat([prompt(5, 1), prompt(5, 2)])
    cached = gen(model, ids, max_new_tokens=10, temperature=0)
    uncached = gen(model, ids, max_new_tokens=10, temperature=0, use_cache=False)
    assert cached.shape == (2, 15)
    assert torch.equal(cached[:, :5], ids)
    assert torch.equal(cached, uncached)
    assert len(set(cached[0, 5:].tolist())) > 1  # not a degenerate constant continuation


@pytest.mark.parametrize("positional", POSITIONALS)
@pytest.mark.parametrize("sampling", [dict(top_k=10), dict(top_p=0.8), dict(top_k=20, top_p=0.9, temperature=0.7),
                                      dict(repetition_penalty=1.3, top_k=15)])
def test_cached_equals_uncached_sampling(positional, sampling):
    model = make_gpt(positional)
    ids = torch.cat([prompt(4, 3), prompt(4, 4)])
    cached = gen(model, ids, seed=123, max_new_tokens=10, **sampling)
    uncached = gen(model, ids, seed=123, max_new_tokens=10, use_cache=False, **sampling)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("positional", POSITIONALS)
@pytest.mark.parametrize("use_cache", [True, False])
def test_left_padded_batch_matches_each_prompt_alone(positional, use_cache):
    model = make_gpt(positional)
    prompts = [prompt(3, 5)[0], prompt(7, 6)[0], prompt(5, 7)[0]]
    width = max(len(p) for p in prompts)
    pad_id = 0
    ids = torch.stack([torch.cat([torch.full((width - len(p),), pad_id), p]) for p in prompts])
    mask = torch.stack([torch.cat([torch.zeros(width - len(p)), torch.ones(len(p))]) for p in prompts]).long()
    batch = gen(model, ids, attention_mask=mask, max_new_tokens=8, temperature=0, use_cache=use_cache)
    assert batch.shape == (3, width + 8)
    for row, p in enumerate(prompts):
        alone = gen(model, p[None], max_new_tokens=8, temperature=0, use_cache=use_cache)
        assert torch.equal(batch[row, width:], alone[0, len(p):]), f"row {row}"


def test_left_padded_batch_with_repetition_penalty_matches_alone():
    model = make_gpt("learned")
    short, long = prompt(2, 8)[0], prompt(6, 9)[0]
    ids = torch.stack([torch.cat([torch.zeros(4, dtype=torch.long), short]), long])
    mask = torch.tensor([[0, 0, 0, 0, 1, 1], [1] * 6])
    batch = gen(model, ids, attention_mask=mask, max_new_tokens=8, temperature=0, repetition_penalty=1.5)
    for row, p in enumerate([short, long]):
        alone = gen(model, p[None], max_new_tokens=8, temperature=0, repetition_penalty=1.5)
        assert torch.equal(batch[row, 6:], alone[0, len(p):])


@pytest.mark.parametrize("positional", POSITIONALS)
def test_generation_past_block_size_slides_window(positional):
    model = make_gpt(positional)
    ids = prompt(6, 10)
    n = 2 * BLOCK  # far past the context
    cached = gen(model, ids, max_new_tokens=n, temperature=0)
    uncached = gen(model, ids, max_new_tokens=n, temperature=0, use_cache=False)
    assert cached.shape == (1, 6 + n)
    assert torch.equal(cached, uncached)
    sampled = gen(model, ids, seed=7, max_new_tokens=n, top_k=10)
    sampled_uncached = gen(model, ids, seed=7, max_new_tokens=n, top_k=10, use_cache=False)
    assert torch.equal(sampled, sampled_uncached)
    # each token past the context is the greedy choice given the last BLOCK tokens
    for t in (BLOCK, BLOCK + 5, 6 + n - 1):
        window = cached[:, t - BLOCK:t]
        assert model(window).logits[0, -1].argmax().item() == cached[0, t].item()


@pytest.mark.parametrize("positional", ["learned", "rotary"])
def test_left_padded_batch_past_block_size_matches_alone(positional):
    model = make_gpt(positional)
    short, long = prompt(3, 17)[0], prompt(9, 18)[0]
    ids = torch.stack([torch.cat([torch.zeros(6, dtype=torch.long), short]), long])
    mask = torch.tensor([[0] * 6 + [1] * 3, [1] * 9])
    n = BLOCK + 6
    batch = gen(model, ids, attention_mask=mask, max_new_tokens=n, temperature=0)
    for row, p in enumerate([short, long]):
        alone = gen(model, p[None], max_new_tokens=n, temperature=0)
        assert torch.equal(batch[row, 9:], alone[0, len(p):]), f"row {row}"


def test_prompt_of_exactly_block_size():
    model = make_gpt()
    ids = prompt(BLOCK, 11)
    cached = gen(model, ids, max_new_tokens=4, temperature=0)
    assert torch.equal(cached, gen(model, ids, max_new_tokens=4, temperature=0, use_cache=False))


# ----------------------------------------------------------------------------- sampling


def test_same_seed_same_tokens_different_seed_different_tokens():
    model = make_gpt(vocab=200)
    with torch.no_grad():  # flatter distributions so that sampling has plenty of choice
        model.lm_head.weight.mul_(0.2)
    ids = prompt(4, 12, vocab=200)
    a = gen(model, ids, seed=1, max_new_tokens=30)
    b = gen(model, ids, seed=1, max_new_tokens=30)
    c = gen(model, ids, seed=2, max_new_tokens=30)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert len(set(a[0, 4:].tolist())) > 5  # really sampling, not greedy


def test_generation_does_not_touch_global_rng_with_generator():
    model = make_gpt()
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    gen(model, prompt(3), seed=5, max_new_tokens=5)
    assert torch.equal(torch.rand(1), expected)


def test_top_k_1_equals_greedy():
    model = make_gpt()
    ids = torch.cat([prompt(5, 13), prompt(5, 14)])
    greedy = gen(model, ids, max_new_tokens=12, temperature=0)
    assert torch.equal(gen(model, ids, seed=3, max_new_tokens=12, top_k=1, temperature=1.5), greedy)
    assert torch.equal(gen(model, ids, seed=4, max_new_tokens=12, top_k=1), greedy)


def test_tiny_top_p_equals_greedy():
    model = make_gpt()
    ids = prompt(5, 15)
    greedy = gen(model, ids, max_new_tokens=12, temperature=0)
    assert torch.equal(gen(model, ids, seed=3, max_new_tokens=12, top_p=1e-6), greedy)


def test_model_generate_method_and_training_mode_restored():
    model = make_gpt().train()
    ids = prompt(5, 16)
    out = model.generate(ids, max_new_tokens=6, temperature=0)
    assert model.training  # restored
    model.eval()
    assert torch.equal(out, gen(model, ids, max_new_tokens=6, temperature=0))


def test_max_new_tokens_zero_returns_prompt():
    model = make_gpt()
    ids = prompt(5)
    assert torch.equal(gen(model, ids, max_new_tokens=0), ids)


def test_streamer_receives_each_step():
    model = make_gpt()
    ids = torch.cat([prompt(5, 1), prompt(5, 2)])
    seen = []
    out = generate(model, ids, streamer=seen.append, max_new_tokens=7, temperature=0)
    assert len(seen) == 7 and all(t.shape == (2,) for t in seen)
    assert torch.equal(torch.stack(seen, 1), out[:, 5:])


# ----------------------------------------------------------------------------- filters (unit)


def test_top_p_filter_keeps_smallest_set_reaching_p():
    probs = torch.tensor([[0.15, 0.5, 0.05, 0.3], [0.25, 0.25, 0.4, 0.1]])
    logits = probs.log()
    ninf = float("-inf")

    out = top_p_filter(logits, 0.7)  # 0.5 + 0.3 = 0.8 >= 0.7 | 0.4 + 0.25 = 0.65 < 0.7, + 0.25 = 0.9
    assert torch.isinf(out[0, 0]) and torch.isinf(out[0, 2])
    assert out[0, 1] == logits[0, 1] and out[0, 3] == logits[0, 3]
    assert torch.isinf(out[1, 3]) and (~torch.isinf(out[1, :3])).all()
    torch.testing.assert_close(out[1, :3], logits[1, :3])

    out = top_p_filter(logits, 0.35)  # only the most likely token (0.5 >= 0.35; 0.4 >= 0.35)
    assert torch.equal(torch.isfinite(out), torch.tensor([[0, 1, 0, 0], [0, 0, 1, 0]], dtype=torch.bool))

    out = top_p_filter(logits, 0.85)  # 0.5+0.3 = 0.8 < 0.85 -> also 0.15; row 1: 0.9 -> three
    assert torch.equal(torch.isfinite(out), torch.tensor([[1, 1, 0, 1], [1, 1, 1, 0]], dtype=torch.bool))

    out = top_p_filter(logits, 1.0)  # everything
    assert torch.equal(out, logits)
    assert out[0, 0] != ninf


def test_top_p_filter_exact_boundary():
    """Equal logits give exactly representable probabilities 0.25: p = 0.5 is reached by two tokens."""
    logits = torch.zeros(1, 4)
    assert torch.isfinite(top_p_filter(logits, 0.5)).sum() == 2
    assert torch.isfinite(top_p_filter(logits, 0.25)).sum() == 1
    assert torch.isfinite(top_p_filter(logits, 0.75)).sum() == 3
    assert torch.isfinite(top_p_filter(logits, 0.76)).sum() == 4


def test_top_p_filter_on_unnormalised_logits():
    logits = torch.tensor([[2.0, 0.0, 1.0, -3.0]])
    probs = logits.softmax(-1)  # ~0.66, 0.09, 0.24, 0.004
    assert probs[0, 0] < 0.8 < probs[0, 0] + probs[0, 2]
    keep = torch.isfinite(top_p_filter(logits, 0.8))
    assert keep.tolist() == [[True, False, True, False]]


def test_top_k_filter():
    logits = torch.tensor([[1.0, 5.0, 3.0, 2.0], [0.0, -1.0, 4.0, 9.0]])
    out = top_k_filter(logits, 2)
    assert torch.isfinite(out).tolist() == [[False, True, True, False], [False, False, True, True]]
    assert out[0, 1] == 5.0 and out[1, 3] == 9.0
    assert torch.equal(top_k_filter(logits, 100), logits)  # k larger than the vocabulary


def test_apply_repetition_penalty():
    logits = torch.tensor([[2.0, -2.0, 3.0, -1.0, 0.5]])
    seen = torch.tensor([[True, True, False, False, True]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -4.0, 3.0, -1.0, 0.25]]
    assert torch.equal(apply_repetition_penalty(logits, seen, 1.0), logits)


def test_choose_next_token_greedy_and_penalty():
    logits = torch.tensor([[1.0, 4.0, 3.0]])
    seen = torch.tensor([[False, True, False]])
    assert choose_next_token(logits, seen, GenerationConfig(temperature=0), None).tolist() == [1]
    # penalty 2: token 1 -> 2.0 < 3.0, so token 2 wins
    cfg = GenerationConfig(temperature=0, repetition_penalty=2.0)
    assert choose_next_token(logits, seen, cfg, None).tolist() == [2]


def test_choose_next_token_sampling_follows_distribution():
    logits = torch.tensor([[0.0, 0.0, -1e9, 0.0]]).expand(4000, 4)
    gen_ = torch.Generator().manual_seed(0)
    draws = choose_next_token(logits, None, GenerationConfig(), gen_)
    counts = torch.bincount(draws, minlength=4)
    assert counts[2] == 0
    assert (counts[[0, 1, 3]] > 1100).all()  # ~1333 each
    with_top_k = choose_next_token(torch.tensor([[3.0, 2.0, 1.0]]).expand(500, 3), None,
                                   GenerationConfig(top_k=2), gen_)
    assert set(with_top_k.tolist()) == {0, 1}


# ----------------------------------------------------------------------------- eos


def _expected_with_eos(free: torch.Tensor, eos: int, pad: int) -> torch.Tensor:
    """What generation with eos must give, from the continuation generated without eos."""
    rows = []
    stop_at = []
    for row in free.tolist():
        k = row.index(eos) if eos in row else None
        stop_at.append(k)
        rows.append(row if k is None else row[:k + 1] + [pad] * (len(row) - k - 1))
    n = len(free[0]) if any(k is None for k in stop_at) else max(stop_at) + 1
    return torch.tensor(rows)[:, :n]


def _token_only_in_row0(free: torch.Tensor) -> int:
    """A token that row 0 produces after its first step and row 1 never produces."""
    row0, row1 = free[0].tolist(), free[1].tolist()
    candidates = [t for t in row0[1:-1] if t not in row1 and t != row0[0]]
    assert candidates, f"test setup: no usable eos in {free.tolist()}"
    return candidates[0]


def test_eos_stops_a_row_and_pads_the_rest():
    model = make_gpt()
    ids = torch.cat([prompt(5, 1), prompt(5, 2)])
    free = gen(model, ids, max_new_tokens=12, temperature=0)[:, 5:]
    eos = _token_only_in_row0(free)
    pad = next(t for t in range(VOCAB) if t not in free[0].tolist())
    out = gen(model, ids, max_new_tokens=12, temperature=0, eos_token_id=eos, pad_token_id=pad)[:, 5:]
    expected = _expected_with_eos(free, eos, pad)
    assert torch.equal(out, expected)
    first = free[0].tolist().index(eos)
    assert out[0, first] == eos and torch.equal(out[1], free[1])  # row 1 never saw eos: unaffected
    assert out.shape[1] > first + 1 and (out[0, first + 1:] == pad).all()  # row 0 stopped early, then pad


def test_eos_in_every_row_ends_generation_early():
    model = make_gpt()
    ids = prompt(5, 1)
    free = gen(model, ids, max_new_tokens=12, temperature=0)[:, 5:]
    eos = free[0, -1].item()
    first = free[0].tolist().index(eos)
    assert first > 0
    out = gen(model, ids, max_new_tokens=12, temperature=0, eos_token_id=eos)
    assert out.shape == (1, 5 + first + 1) and out[0, -1] == eos


def test_finished_rows_filled_with_eos_when_no_pad_id():
    model = make_gpt()
    ids = torch.cat([prompt(5, 1), prompt(5, 2)])
    free = gen(model, ids, max_new_tokens=12, temperature=0)[:, 5:]
    eos = _token_only_in_row0(free)
    out = gen(model, ids, max_new_tokens=12, temperature=0, eos_token_id=eos)[:, 5:]
    assert torch.equal(out, _expected_with_eos(free, eos, eos))
    first = free[0].tolist().index(eos)
    assert (out[0, first:] == eos).all() and not torch.equal(out[0], free[0])


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize("options,match", [
    (dict(temperature=-0.1), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_p=-0.2), "top_p"),
    (dict(top_k=0), "top_k"),
    (dict(top_k=-3), "top_k"),
    (dict(max_new_tokens=-1), "max_new_tokens"),
    (dict(repetition_penalty=0.0), "repetition_penalty"),
])
def test_generation_config_validation(options, match):
    with pytest.raises(DlforgeError, match=match):
        GenerationConfig(**options)
    with pytest.raises(DlforgeError, match=match):
        gen(make_gpt(), prompt(3), **options)


def test_generation_config_accepts_edges_and_rejects_unknown_options():
    GenerationConfig(temperature=0, top_p=1.0, top_k=1)
    with pytest.raises(DlforgeError, match="unknown generation option"):
        GenerationConfig.from_kwargs(temprature=0.5)
    with pytest.raises(DlforgeError, match="unknown generation option"):
        gen(make_gpt(), prompt(3), beams=2)


def test_prompt_longer_than_block_size_raises():
    with pytest.raises(DlforgeError, match="context"):
        gen(make_gpt(), prompt(BLOCK + 1), max_new_tokens=2)


def test_empty_prompt_raises():
    with pytest.raises(DlforgeError, match="empty"):
        list(iter_generate(make_gpt(), torch.zeros(1, 0, dtype=torch.long), max_new_tokens=2))


# ----------------------------------------------------------------------------- text level

TEXT = "the quick brown fox jumps over the lazy dog. "


@pytest.fixture(scope="module")
def char_lm():
    tok = CharTokenizer.train(TEXT)
    model = make_gpt("learned", seed=3, vocab=tok.vocab_size, block=32)
    with torch.no_grad():
        model.lm_head.weight.mul_(0.3)  # flatter distributions for varied samples
    return model, tok


def test_generate_text_returns_continuation(char_lm):
    model, tok = char_lm
    text = generate_text(model, tok, "the ", max_new_tokens=20, seed=0)
    assert isinstance(text, str) and len(text) == 20
    ids = gen(model, torch.tensor([tok.encode("the ")]), seed=0, max_new_tokens=20)
    assert text == tok.decode(ids[0, 4:])
    assert generate_text(model, tok, "the ", max_new_tokens=20, seed=0) == text
    assert generate_text(model, tok, "the ", max_new_tokens=20, seed=1) != text


def test_generate_text_batch_matches_single(char_lm):
    model, tok = char_lm
    prompts = ["a", "the lazy ", "fox"]
    batch = generate_text(model, tok, prompts, max_new_tokens=12, temperature=0)
    assert isinstance(batch, list) and len(batch) == 3
    for p, t in zip(prompts, batch):
        assert t == generate_text(model, tok, p, max_new_tokens=12, temperature=0)


def test_stop_string_single_character(char_lm):
    model, tok = char_lm
    full = generate_text(model, tok, "the ", max_new_tokens=30, seed=0)
    stop = full[10]
    expected = full[: full.index(stop)]
    assert len(expected) <= 10
    assert generate_text(model, tok, "the ", max_new_tokens=30, seed=0, stop=stop) == expected
    assert generate_text(model, tok, "the ", max_new_tokens=30, seed=0, stop=[stop]) == expected
    # a stop string that never appears changes nothing
    absent = next(c for c in TEXT if c not in full) if set(TEXT) - set(full) else None
    if absent is not None:
        assert generate_text(model, tok, "the ", max_new_tokens=30, seed=0, stop=absent) == full


def test_stop_string_multi_character_and_earliest_of_several(char_lm):
    model, tok = char_lm
    full = generate_text(model, tok, "the ", max_new_tokens=30, seed=0)
    two = full[12:14]
    expected = full[: full.find(two)]
    assert generate_text(model, tok, "the ", max_new_tokens=30, seed=0, stop=two) == expected
    one = full[6]
    earliest = min(full.find(two), full.find(one))
    assert generate_text(model, tok, "the ", max_new_tokens=30, seed=0, stop=[two, one]) == full[:earliest]


def test_stop_string_stops_generation_early(char_lm):
    model, tok = char_lm
    full = generate_text(model, tok, "the ", max_new_tokens=30, seed=0)
    stop = full[5]
    calls = []
    gen_ = torch.Generator().manual_seed(0)
    original = model.forward

    def counting_forward(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    model.forward = counting_forward
    try:
        out = generate_text(model, tok, "the ", max_new_tokens=30, generator=gen_, stop=stop)
    finally:
        del model.forward
    assert out == full[: full.index(stop)]
    assert len(calls) <= full.index(stop) + 1  # no steps after the stop string appeared


@pytest.mark.parametrize("stop_at", [None, 9, (9, 11)])
def test_streaming_pieces_concatenate_to_non_streaming(char_lm, stop_at):
    model, tok = char_lm
    full = generate_text(model, tok, "quick ", max_new_tokens=30, seed=4)
    stop = None if stop_at is None else (full[stop_at] if isinstance(stop_at, int) else full[slice(*stop_at)])
    expected = generate_text(model, tok, "quick ", max_new_tokens=30, seed=4, stop=stop)
    pieces = list(generate_text(model, tok, "quick ", max_new_tokens=30, seed=4, stop=stop, stream=True))
    assert "".join(pieces) == expected
    assert len(pieces) > 1 and all(pieces)
    if stop is None:
        assert expected == full
    else:
        assert stop not in expected and len(expected) < len(full)
        assert all(stop not in piece for piece in pieces)


def test_streaming_holds_back_possible_stop_prefix(char_lm):
    model, tok = char_lm
    full = generate_text(model, tok, "quick ", max_new_tokens=30, seed=4)
    # a stop string that starts like the output but never matches: its prefix must be held back
    # while it could still grow into the stop string, and then released
    first = full[8]
    missing = next(c for c in sorted(set(TEXT)) if first + c not in full)
    stop = first + missing
    pieces = list(generate_text(model, tok, "quick ", max_new_tokens=30, seed=4, stop=stop, stream=True))
    assert "".join(pieces) == full


def test_streaming_needs_a_single_prompt(char_lm):
    model, tok = char_lm
    with pytest.raises(DlforgeError, match="one prompt"):
        generate_text(model, tok, ["a", "b"], stream=True)


def test_generate_text_with_eos_token(char_lm):
    model, _ = char_lm
    tok = CharTokenizer.train(TEXT, special_tokens={"eos": "."})
    assert tok.eos_token_id is not None and tok.vocab_size == model.config.vocab_size
    # the model was built for the char vocab; '.' is now id 0 (special) and decoded text skips it
    ids = torch.tensor([tok.encode("the ")])
    free = gen(model, ids, seed=0, max_new_tokens=40)[0, 4:].tolist()
    assert tok.eos_token_id in free[1:], "test setup: the model should produce the eos id"
    k = free.index(tok.eos_token_id)
    text = generate_text(model, tok, "the ", max_new_tokens=40, seed=0)
    assert text == tok.decode(free[:k]) and len(text) == k  # generation stopped at eos


def test_generate_text_validates_options_and_empty_prompt(char_lm):
    model, tok = char_lm
    with pytest.raises(DlforgeError, match="top_p"):
        generate_text(model, tok, "the", top_p=2.0)
    with pytest.raises(DlforgeError, match="empty"):
        generate_text(model, tok, "")
