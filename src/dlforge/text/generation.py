"""Autoregressive decoding for any causal language model in dlforge.

A model qualifies when `model(ids, attention_mask=, position_ids=, kv_cache=, last_only=True)`
returns `.logits` of shape (B, 1, V) and `model.new_kv_cache(batch, max_len)` makes a cache.

Each step turns the last logits into the next token: repetition penalty (Keskar et al., 2019:
a seen token's logit is divided by the penalty when positive, multiplied when negative), then
temperature, then top-k, then nucleus/top-p (Holtzman et al., 2020), then a draw from the
softmax with the caller's `torch.Generator`; temperature 0 means greedy (argmax).

Batched prompts of different lengths are left-padded: `attention_mask` marks real tokens and
position ids count only real tokens, so a padded prompt decodes exactly like the same prompt
alone. With the cache, each step feeds one token; without it, the whole sequence is recomputed.
Both give the same tokens. Past the model's context, both slide a window over the last
`block_size` tokens (recomputed each step, as nanoGPT does).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields

import torch

from ..errors import DlforgeError


@dataclass
class GenerationConfig:
    max_new_tokens: int = 64
    temperature: float = 1.0  # 0 = greedy
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0
    eos_token_id: int | None = None  # a row stops after producing it
    pad_token_id: int | None = None  # fed for rows that already stopped
    use_cache: bool = True

    def __post_init__(self):
        if self.max_new_tokens < 0:
            raise DlforgeError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise DlforgeError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise DlforgeError(f"top_k must be a positive integer, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise DlforgeError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise DlforgeError(f"repetition_penalty must be > 0 (1 = off), got {self.repetition_penalty}")

    @classmethod
    def from_kwargs(cls, **kwargs) -> GenerationConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise DlforgeError(f"unknown generation option(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**kwargs)


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """logits: (B, V); seen: (B, V) bool, True for tokens already in the sequence."""
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    k = min(k, logits.size(-1))
    kth = torch.topk(logits, k, dim=-1).values[:, -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probabilities sum to at least p."""
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # probability of strictly more likely tokens
    remove_sorted = mass_before >= p  # the first token always stays (mass_before = 0)
    remove = torch.zeros_like(remove_sorted).scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def choose_next_token(logits: torch.Tensor, seen: torch.Tensor, config: GenerationConfig,
                      generator: torch.Generator | None) -> torch.Tensor:
    """logits: (B, V) -> next token ids (B,)."""
    logits = logits.float()
    if config.repetition_penalty != 1.0:
        logits = apply_repetition_penalty(logits, seen, config.repetition_penalty)
    if config.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / config.temperature
    if config.top_k is not None:
        logits = top_k_filter(logits, config.top_k)
    if config.top_p is not None and config.top_p < 1:
        logits = top_p_filter(logits, config.top_p)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip left padding: (B, L) mask -> (B, L) positions."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def iter_generate(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                  generator: torch.Generator | None = None,
                  stop_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
                  **options) -> Iterator[torch.Tensor]:
    """Yield the next token of every row, (B,), one step at a time.

    stop_fn(new_tokens) may return a (B,) bool tensor of rows to stop after this step (used for
    stop strings). Iteration ends when every row has stopped or after max_new_tokens steps.
    """
    config = GenerationConfig.from_kwargs(**options)
    block_size = model.config.block_size
    ids = input_ids
    B, T = ids.shape
    if T == 0:
        raise DlforgeError("the prompt is empty: give at least one token")
    if T > block_size:
        raise DlforgeError(f"the prompt is {T} tokens but the model's context is {block_size}: shorten the prompt")
    mask = attention_mask.long() if attention_mask is not None else torch.ones_like(ids)
    padded = not bool(mask.all())
    vocab = model.lm_head.out_features if hasattr(model, "lm_head") else None
    seen = None
    if config.repetition_penalty != 1.0:
        seen = torch.zeros(B, vocab, dtype=torch.bool, device=ids.device)
        rows = torch.arange(B, device=ids.device)[:, None].expand_as(ids)
        real = mask.bool()
        seen[rows[real], ids[real]] = True  # only real tokens count, never left padding
    finished = torch.zeros(B, dtype=torch.bool, device=ids.device)
    filler = config.pad_token_id if config.pad_token_id is not None else (config.eos_token_id or 0)
    cache = model.new_kv_cache(B, block_size) if config.use_cache else None

    for _ in range(config.max_new_tokens):
        if cache is not None and cache.length == 0:  # prefill the cache with the prompt
            logits = model(ids, attention_mask=mask if padded else None,
                           position_ids=_positions(mask) if padded else None,
                           kv_cache=cache, last_only=True).logits
        elif cache is not None and cache.length < block_size:  # one new token against the cache
            logits = model(ids[:, -1:], attention_mask=mask if padded else None,
                           position_ids=_positions(mask)[:, -1:] if padded else None,
                           kv_cache=cache, last_only=True).logits
        else:  # no cache, or the context is full: recompute over the last block_size tokens
            cache = None
            window_ids, window_mask = ids[:, -block_size:], mask[:, -block_size:]
            window_padded = not bool(window_mask.all())
            logits = model(window_ids, attention_mask=window_mask if window_padded else None,
                           position_ids=_positions(window_mask) if window_padded else None,
                           last_only=True).logits
        next_tokens = choose_next_token(logits[:, -1], seen, config, generator)
        next_tokens = torch.where(finished, torch.full_like(next_tokens, filler), next_tokens)
        yield next_tokens
        ids = torch.cat([ids, next_tokens[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(next_tokens)[:, None]], dim=1)
        if seen is not None:
            seen[torch.arange(B, device=ids.device), next_tokens] = True
        if config.eos_token_id is not None:
            finished |= next_tokens == config.eos_token_id
        if stop_fn is not None:
            finished |= stop_fn(next_tokens)
        if bool(finished.all()):
            return


@torch.no_grad()
def generate(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
             generator: torch.Generator | None = None, streamer: Callable[[torch.Tensor], None] | None = None,
             stop_fn=None, **options) -> torch.Tensor:
    """Return (B, T + n) ids: the prompt followed by up to max_new_tokens generated tokens.

    streamer, if given, is called with each step's (B,) new tokens as they are produced.
    """
    was_training = model.training
    model.eval()
    try:
        new = []
        for tokens in iter_generate(model, input_ids, attention_mask, generator, stop_fn=stop_fn, **options):
            if streamer is not None:
                streamer(tokens)
            new.append(tokens)
    finally:
        model.train(was_training)
    if not new:
        return input_ids
    return torch.cat([input_ids, torch.stack(new, dim=1)], dim=1)


class _StopStringWatcher:
    """Follows one row's generated text; reports when it contains a stop string.

    `piece()` returns text that is safe to show: never part of a stop string, and holding back a
    tail that could still become the start of one.
    """

    def __init__(self, tokenizer, stop: list[str]):
        self.decoder = tokenizer.stream_decoder()
        self.stop = [s for s in stop if s]
        self.text = ""  # all decoded text so far
        self.shown = 0  # characters of `text` already handed out
        self.stopped = False

    def put(self, token_id: int) -> None:
        if self.stopped:
            return
        self.text += self.decoder.put(token_id)
        self._cut_at_stop()

    def finish(self) -> None:
        if not self.stopped:
            self.text += self.decoder.flush()
            self._cut_at_stop()

    def _cut_at_stop(self) -> None:
        hits = [self.text.find(s) for s in self.stop if s in self.text]
        if hits:
            self.text, self.stopped = self.text[: min(hits)], True

    def piece(self, final: bool = False) -> str:
        end = len(self.text)
        if not final and not self.stopped:  # hold back a suffix that may grow into a stop string
            for s in self.stop:
                for k in range(min(len(s) - 1, len(self.text)), 0, -1):
                    if self.text.endswith(s[:k]):
                        end = min(end, len(self.text) - k)
                        break
        out, self.shown = self.text[self.shown: end], max(self.shown, end)
        return out


def generate_text(model, tokenizer, prompt: str | list[str], *, stream: bool = False,
                  stop: list[str] | str | None = None, seed: int | None = None,
                  generator: torch.Generator | None = None, **options):
    """Continue a prompt (or a batch of prompts) with text.

    Returns the generated continuation (str, or list[str] for a list of prompts), cut before the
    first stop string. With `stream=True` (one prompt), returns an iterator of text pieces as they
    are produced. `seed` makes sampling reproducible; other options are `GenerationConfig` fields.
    """
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if stream and len(prompts) != 1:
        raise DlforgeError("streaming works with one prompt at a time")
    stop = [stop] if isinstance(stop, str) else list(stop or [])
    if generator is None and seed is not None:
        generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    options.setdefault("eos_token_id", tokenizer.eos_token_id)
    options.setdefault("pad_token_id", tokenizer.pad_token_id)
    GenerationConfig.from_kwargs(**options)  # validate before any work
    encoded = tokenizer.encode_batch(prompts, padding="longest", padding_side="left", return_tensors="pt")
    device = next(model.parameters()).device
    ids, mask = encoded["input_ids"].to(device), encoded["attention_mask"].to(device)
    if (mask.sum(dim=1) == 0).any():
        raise DlforgeError("a prompt is empty: give at least one character of prompt text")
    watchers = [_StopStringWatcher(tokenizer, stop) for _ in prompts]

    def observe(tokens: torch.Tensor) -> torch.Tensor:
        for watcher, token in zip(watchers, tokens.tolist()):
            watcher.put(token)
        return torch.tensor([w.stopped for w in watchers], device=tokens.device)

    steps = iter_generate(model.eval(), ids, mask if not bool(mask.all()) else None, generator,
                          stop_fn=observe, **options)
    if stream:
        def pieces():
            for _ in steps:
                piece = watchers[0].piece()
                if piece:
                    yield piece
            watchers[0].finish()
            rest = watchers[0].piece(final=True)
            if rest:
                yield rest
        return pieces()
    for _ in steps:
        pass
    for watcher in watchers:
        watcher.finish()
    texts = [w.text for w in watchers]
    return texts[0] if isinstance(prompt, str) else texts
