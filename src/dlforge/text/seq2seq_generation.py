"""Decoding for encoder–decoder models: greedy, sampling and beam search, under Hugging Face's option names.

A model qualifies when it has `encode`, `cross_attention_mask`, `project_context`, `new_kv_cache` and
`decode` as `dlforge.models.Seq2Seq` does. The encoder runs once; each decoder layer's cross-attention
keys and values are projected once; decoder self-attention keeps a `KVCache` (or, with
`use_cache=False`, recomputes the whole prefix every step — same tokens, slower).

Every step turns the last logits into log-probabilities and applies, in this order: the n-gram
block (`no_repeat_ngram_size`: a token that would repeat an n-gram already in the output is banned),
the minimum length (`min_new_tokens`: EOS banned before), and the forced first/last token (BART's
`forced_bos_token_id`, `forced_eos_token_id`). Then:
- greedy (`num_beams=1`, `do_sample=False`): the most likely token;
- sampling (`do_sample=True`): repetition penalty, temperature, top-k, top-p as in
  `dlforge.text.generation`, drawn with the caller's generator;
- beam search (`num_beams=K`): the K best partial outputs by summed log-probability. Each step
  ranks the 2K best one-token extensions; those ending in EOS (or reaching max_new_tokens) among the
  top K become finished hypotheses scored sum / length**length_penalty (length counts generated
  tokens with the EOS), the best K unfinished ones run on. A source is done when K hypotheses are
  finished and (`early_stopping=False`) the best running beam, scored at its current length, cannot
  beat the worst of them; `early_stopping=True` stops at K finished; `"never"` scores the running beam
  at the longest length it could reach when length_penalty > 0. These are Hugging Face's rules, so
  the same model gives the same outputs (tests/text/test_seq2seq_generation.py, tests/hub).

Outputs are (B · num_return_sequences, 1 + n) ids starting with the decoder start token and padded
after EOS, as `transformers` returns them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from ..errors import DlforgeError
from .generation import GenerationConfig, choose_next_token

FAR = -1.0e9  # the score of an empty slot: below any real summed log-probability


@dataclass
class Seq2SeqGenerationConfig:
    max_new_tokens: int = 64
    min_new_tokens: int = 0
    num_beams: int = 1
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0
    length_penalty: float = 1.0
    early_stopping: bool | str = False  # True | False | "never"
    no_repeat_ngram_size: int = 0
    num_return_sequences: int = 1
    use_cache: bool = True
    # None: taken from the model's config
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    decoder_start_token_id: int | None = None
    forced_bos_token_id: int | None = None
    forced_eos_token_id: int | None = None

    def __post_init__(self):
        for name in ("max_new_tokens", "min_new_tokens", "no_repeat_ngram_size"):
            if getattr(self, name) < 0:
                raise DlforgeError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("num_beams", "num_return_sequences"):
            if getattr(self, name) < 1:
                raise DlforgeError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.early_stopping not in (True, False, "never"):
            raise DlforgeError(f"early_stopping must be True, False or 'never', got {self.early_stopping!r}")
        if self.do_sample and self.num_beams > 1:
            raise DlforgeError("beam sampling (do_sample with num_beams > 1) is not supported: use one of them")
        if not self.do_sample and self.num_return_sequences > self.num_beams:
            raise DlforgeError(f"num_return_sequences ({self.num_return_sequences}) cannot exceed num_beams "
                               f"({self.num_beams}) without sampling")
        # the sampling options are checked by the decoder-only config they share
        GenerationConfig(temperature=self.temperature if self.do_sample else 1.0, top_k=self.top_k,
                         top_p=self.top_p, repetition_penalty=self.repetition_penalty)

    @classmethod
    def from_kwargs(cls, model_config=None, **kwargs) -> Seq2SeqGenerationConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise DlforgeError(f"unknown generation option(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        config = cls(**kwargs)
        if model_config is not None:  # fill the token ids the caller left out from the model
            for name in ("eos_token_id", "pad_token_id", "decoder_start_token_id", "forced_bos_token_id",
                         "forced_eos_token_id"):
                if getattr(config, name) is None:
                    setattr(config, name, getattr(model_config, name, None))
        return config


def banned_ngram_tokens(sequences: torch.Tensor, n: int) -> list[list[int]]:
    """For each row of (N, L) ids, the tokens that would complete an n-gram the row already contains."""
    N, L = sequences.shape
    if n == 0 or L + 1 < n:
        return [[] for _ in range(N)]
    banned = []
    for row in sequences.tolist():
        prefix = tuple(row[L - n + 1:]) if n > 1 else ()
        banned.append([row[i + n - 1] for i in range(L - n + 1) if tuple(row[i:i + n - 1]) == prefix])
    return banned


def process_log_probs(log_probs: torch.Tensor, sequences: torch.Tensor, step: int,
                      config: Seq2SeqGenerationConfig) -> torch.Tensor:
    """log_probs (N, V) of the next token after `sequences` (N, 1 + step) -> with the length and n-gram rules."""
    if config.no_repeat_ngram_size:
        for row, tokens in enumerate(banned_ngram_tokens(sequences, config.no_repeat_ngram_size)):
            log_probs[row, tokens] = float("-inf")
    if step < config.min_new_tokens and config.eos_token_id is not None:
        log_probs[:, config.eos_token_id] = float("-inf")
    forced = None
    if step == 0 and config.forced_bos_token_id is not None:
        forced = config.forced_bos_token_id
    elif step == config.max_new_tokens - 1 and config.forced_eos_token_id is not None:
        forced = config.forced_eos_token_id
    if forced is not None:
        log_probs.fill_(float("-inf"))
        log_probs[:, forced] = 0.0
    return log_probs


class _Decoder:
    """One batch of sources being decoded: encoder output, cross-attention K/V and the self-attention cache."""

    def __init__(self, model, input_ids, attention_mask, copies: int, config: Seq2SeqGenerationConfig):
        self.model, self.use_cache = model, config.use_cache
        encoder_out = model.encode(input_ids, attention_mask)  # (B, S, d), once
        mask = model.cross_attention_mask(attention_mask)  # (B, 1, 1, S) or None
        # every source is decoded `copies` times (beams or samples); with the cache its cross-attention keys stay
        # one per source (the attention folds the copies' queries together), without it the output is repeated
        if self.use_cache:
            self.encoder_mask = mask
            self.cross_kv = model.project_context(encoder_out)
            self.cache = model.new_kv_cache(input_ids.size(0) * copies, config.max_new_tokens + 1)
        else:
            self.encoder_mask = None if mask is None else mask.repeat_interleave(copies, dim=0)
            self.encoder_out = encoder_out.repeat_interleave(copies, dim=0)

    def next_log_probs(self, sequences: torch.Tensor) -> torch.Tensor:
        """sequences (N, t) decoded so far -> log-probabilities (N, V) of the next token, in fp32."""
        if self.use_cache:
            logits = self.model.decode(sequences[:, -1:], encoder_mask=self.encoder_mask, kv_cache=self.cache,
                                       cross_kv=self.cross_kv, last_only=True)
        else:
            logits = self.model.decode(sequences, self.encoder_out, self.encoder_mask, last_only=True)
        return F.log_softmax(logits[:, -1].float(), dim=-1)

    def reorder(self, rows: torch.Tensor) -> None:
        if self.use_cache:
            self.cache.reorder(rows)


def _start(n: int, config, device) -> torch.Tensor:
    return torch.full((n, 1), config.decoder_start_token_id, dtype=torch.long, device=device)


def greedy_or_sample(model, input_ids, attention_mask, config: Seq2SeqGenerationConfig,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    copies = config.num_return_sequences if config.do_sample else 1
    decoder = _Decoder(model, input_ids, attention_mask, copies, config)
    N = input_ids.size(0) * copies
    sequences = _start(N, config, input_ids.device)
    finished = torch.zeros(N, dtype=torch.bool, device=input_ids.device)
    pad = config.pad_token_id if config.pad_token_id is not None else config.eos_token_id
    sampling = GenerationConfig(temperature=config.temperature, top_k=config.top_k, top_p=config.top_p,
                                repetition_penalty=config.repetition_penalty)
    for step in range(config.max_new_tokens):
        log_probs = process_log_probs(decoder.next_log_probs(sequences), sequences, step, config)
        if config.do_sample:
            seen = None
            if config.repetition_penalty != 1.0:
                seen = torch.zeros_like(log_probs, dtype=torch.bool).scatter_(1, sequences[:, 1:], True)
            tokens = choose_next_token(log_probs, seen, sampling, generator)
        else:
            tokens = log_probs.argmax(dim=-1)
        tokens = torch.where(finished, torch.full_like(tokens, pad), tokens)
        sequences = torch.cat([sequences, tokens[:, None]], dim=1)
        if config.eos_token_id is not None:
            finished |= tokens == config.eos_token_id
        if bool(finished.all()):
            break
    return sequences


def beam_search(model, input_ids, attention_mask, config: Seq2SeqGenerationConfig) -> torch.Tensor:
    B, K, device = input_ids.size(0), config.num_beams, input_ids.device
    max_new, lp = config.max_new_tokens, config.length_penalty
    # Hugging Face fills beam outputs after EOS with `pad_token_id or eos_token_id`: a pad id of 0 (T5's) gives EOS
    pad = config.pad_token_id or config.eos_token_id or 0
    decoder = _Decoder(model, input_ids, attention_mask, K, config)
    # running beams: (B, K, 1 + max_new) ids, scores = summed log-probs; at first only beam 0 is real
    running = torch.full((B, K, 1 + max_new), pad, dtype=torch.long, device=device)
    running[:, :, 0] = config.decoder_start_token_id
    running_scores = torch.zeros(B, K, device=device)
    running_scores[:, 1:] = FAR
    # finished hypotheses: the best K per source so far, with length-normalised scores
    finished = running.clone()
    finished_scores = torch.full((B, K), FAR, device=device)
    finished_real = torch.zeros(B, K, dtype=torch.bool, device=device)
    finished_lengths = torch.zeros(B, K, dtype=torch.long, device=device)
    can_improve = torch.ones(B, dtype=torch.bool, device=device)  # False once a source is settled
    rank_in_top_k = torch.arange(2 * K, device=device) < K
    source_offset = torch.arange(B, device=device)[:, None] * K
    for step in range(max_new):
        length = step + 1  # ids per beam so far, start token included
        log_probs = decoder.next_log_probs(running[:, :, :length].reshape(B * K, length))
        log_probs = process_log_probs(log_probs, running[:, :, :length].reshape(B * K, length), step, config)
        # the 2K best extensions of a source are among the 2K best of each of its beams: ranking those (B, K·2K)
        # instead of all (B, K·V) saves adding the scores to every token of the vocabulary
        per_beam = min(2 * K, log_probs.size(-1))
        beam_best, beam_tokens = log_probs.view(B, K, -1).topk(per_beam, dim=-1)  # (B, K, per_beam)
        totals = (beam_best + running_scores[:, :, None]).view(B, K * per_beam)
        top_scores, top_index = totals.topk(2 * K, dim=-1)  # (B, 2K), best first
        origin = top_index // per_beam  # which beam each extends, with which token
        tokens = beam_tokens.view(B, K * per_beam).gather(1, top_index)
        candidates = running.gather(1, origin[:, :, None].expand(B, 2 * K, running.size(2))).clone()
        candidates[:, :, length] = tokens
        ends = tokens == (config.eos_token_id if config.eos_token_id is not None else -1)
        if step == max_new - 1:
            ends = torch.ones_like(ends)  # the length limit finishes every candidate
        # 1. candidates that end here, ranked in the top K, become hypotheses of sources still open
        full = finished_real.all(dim=1) & (config.early_stopping is True)
        accepted = ends & rank_in_top_k & (can_improve & ~full)[:, None]
        new_scores = torch.where(accepted, top_scores / (length ** lp), torch.full_like(top_scores, 2 * FAR))
        merged_scores = torch.cat([finished_scores, new_scores], dim=1)  # (B, 3K)
        keep = merged_scores.topk(K, dim=1).indices  # (B, K)
        finished_scores = merged_scores.gather(1, keep)
        finished_real = torch.cat([finished_real, accepted], dim=1).gather(1, keep)
        merged_lengths = torch.cat([finished_lengths, torch.full_like(tokens, length)], dim=1)
        finished_lengths = merged_lengths.gather(1, keep)
        finished = torch.cat([finished, candidates], dim=1).gather(1, keep[:, :, None].expand(B, K, running.size(2)))
        # 2. the K best candidates that did not end run on
        alive_scores = top_scores + ends.float() * FAR
        chosen = alive_scores.topk(K, dim=1).indices  # (B, K)
        running = candidates.gather(1, chosen[:, :, None].expand(B, K, running.size(2)))
        running_scores = alive_scores.gather(1, chosen)
        # 3. a source is settled once its worst kept hypothesis beats what its best running beam could reach
        hoped_length = max_new if (config.early_stopping == "never" and lp > 0) else length
        best_possible = running_scores[:, 0] / (hoped_length ** lp)
        worst_kept = torch.where(finished_real.all(dim=1), finished_scores.min(dim=1).values,
                                 torch.full_like(best_possible, FAR))
        can_improve &= best_possible > worst_kept
        all_full = bool(finished_real.all()) and config.early_stopping is True
        if not bool(can_improve.any()) or all_full or bool(ends.all()):
            break
        decoder.reorder((source_offset + origin.gather(1, chosen)).view(-1))
    n = config.num_return_sequences
    out = finished[:, :n].reshape(B * n, -1)
    return out[:, :1 + int(finished_lengths[:, :n].max())]


@torch.no_grad()
def generate_seq2seq(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                     generator: torch.Generator | None = None, **options) -> torch.Tensor:
    """Output ids (B · num_return_sequences, 1 + n) for sources (B, S); options are
    `Seq2SeqGenerationConfig` fields (Hugging Face `generate()` names)."""
    config = Seq2SeqGenerationConfig.from_kwargs(model.config, **options)
    if config.decoder_start_token_id is None:
        raise DlforgeError("the model has no decoder_start_token_id: pass decoder_start_token_id=")
    was_training = model.training
    model.eval()
    try:
        if config.max_new_tokens == 0:
            return _start(input_ids.size(0) * config.num_return_sequences, config, input_ids.device)
        if config.num_beams > 1:
            return beam_search(model, input_ids, attention_mask, config)
        return greedy_or_sample(model, input_ids, attention_mask, config, generator)
    finally:
        model.train(was_training)


def generate_text2text(model, tokenizer, texts: str | list[str], *, max_source_length: int | None = None,
                       seed: int | None = None, batch_size: int = 32, **options) -> list[str] | list[list[str]]:
    """Sources as text -> outputs as text (one per source, or a list of num_return_sequences per source).

    Sources longer than the model's positions (or `max_source_length`) are truncated.
    """
    single = isinstance(texts, str)
    texts = [texts] if single else list(texts)
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    limit = max_source_length or (model.config.max_position if model.config.positional != "relative" else 512)
    n = options.get("num_return_sequences", 1)
    outputs = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start:start + batch_size]
        encoded = tokenizer.encode_batch(chunk, padding="longest", truncation=True, max_length=limit,
                                         add_special_tokens=True, return_tensors="pt")
        ids = generate_seq2seq(model, encoded["input_ids"].to(device), encoded["attention_mask"].to(device),
                               generator=generator, **options)
        decoded = [tokenizer.decode(row, skip_special_tokens=True).strip() for row in ids.tolist()]
        outputs.extend(decoded[i:i + n] if n > 1 else decoded[i] for i in range(0, len(decoded), n))
    return outputs
