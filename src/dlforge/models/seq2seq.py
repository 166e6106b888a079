"""The encoder–decoder Transformer (Vaswani et al., 2017), with the variants T5 and BART are made of.

    e_0 = s·W_src[x] + P[pos]           s = √d_model when `scale_embedding` (the paper), else 1
    e_l = EncoderBlock(e_{l-1})         bidirectional self-attention + MLP
    d_0 = s·W_tgt[y_<t] + P[pos]
    d_l = DecoderBlock(d_{l-1}, e_L)    causal self-attention + cross-attention over e_L + MLP
    logits = o · d_L W_tgtᵀ (+ b)       output projection tied to the target embedding

One config covers the three families:
- the original Transformer: sinusoidal positions, √d scaling, shared source/target vocabulary
  (or separate ones with `source_vocab_size`), post-LN or (default here, stabler when small) pre-LN;
- T5 (Raffel et al., 2020): no absolute positions but a learned bias per head on the attention scores
  indexed by log-spaced relative-position buckets (`positional="relative"`), RMSNorm, no biases, no
  1/√d score scaling, ReLU or gated-GELU MLP, final norms, output scaled by d^-0.5 when tied;
- BART (Lewis et al., 2020): learned positions counted from 2, a LayerNorm on the embeddings,
  post-LN blocks, GELU, an extra bias on the output logits.
The decoder may have its own depth, heads and feed-forward width (`n_decoder_layers`, `decoder_n_head`,
`decoder_d_ff`; None = the encoder's), as BART and T5 checkpoints may.

Training: `forward(input_ids, attention_mask, labels=...)` shifts the labels right behind
`decoder_start_token_id` (teacher forcing) and returns label-smoothed cross-entropy. Decoding is in
`dlforge.text.seq2seq_generation`: the encoder runs once, cross-attention keys and values are
projected once per source (`project_context`), decoder self-attention uses a `KVCache`.
Module names follow the blocks shared with GPT/BERT; `models.converters.t5` and `.bart` map
Hugging Face keys onto them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DlforgeError
from ..nn import (
    KVCache,
    Linear,
    SinusoidalPositionalEncoding,
    StackOutputs,
    TransformerBlock,
    build_attention_mask,
    make_norm,
)
from ..nn.linear import linear_plus_bias
from ..settings import check_model_config
from .config import ModelConfig
from .outputs import ModelOutput
from .pretrained import PretrainedModel

POSITIONAL_KINDS = ("sinusoidal", "learned", "relative")


@dataclass
class Seq2SeqConfig(ModelConfig):
    vocab_size: int = 8000  # target vocabulary (and the source one when shared)
    source_vocab_size: int | None = None  # None: source and target share one embedding table
    d_model: int = 512
    n_encoder_layers: int = 6
    n_decoder_layers: int = 6
    n_head: int = 8  # attention heads of the encoder (and of the decoder unless decoder_n_head is set)
    d_ff: int = 2048  # feed-forward width of the encoder (and of the decoder unless decoder_d_ff is set)
    decoder_n_head: int | None = None  # the decoder's heads (self- and cross-attention); None = n_head
    decoder_d_ff: int | None = None  # the decoder's feed-forward width; None = d_ff
    attn_inner_dim: int | None = None  # width of all heads together; None = d_model (T5: n_head·d_kv)
    dropout: float = 0.1
    activation: str = "relu"  # relu | gelu | gelu_new | swiglu | geglu
    norm: str = "layernorm"  # layernorm | rmsnorm
    norm_eps: float = 1e-5
    pre_ln: bool = True  # x + f(LN(x)); False: LN(x + f(x)) as in the paper and BART
    final_norm: bool | None = None  # a norm after the last block of each stack; None = pre_ln
    bias: bool = True  # biases in linears and norms
    positional: str = "sinusoidal"  # sinusoidal | learned | relative (T5 buckets)
    max_position: int = 256  # longest source or target (absolute positions)
    position_offset: int = 0  # BART counts positions from 2
    scale_embedding: bool = True  # multiply token embeddings by √d_model
    embedding_norm: bool = False  # LayerNorm on the embeddings (BART)
    attn_scale: float | None = None  # score scale; None = 1/√head_dim (T5: 1.0)
    relative_buckets: int = 32
    relative_max_distance: int = 128
    tie_embeddings: bool = True  # output projection = target embedding
    output_scale: float = 1.0  # multiplies the decoder output before the projection (T5 tied: d^-0.5)
    final_logits_bias: bool = False  # a bias on the logits (BART)
    label_smoothing: float = 0.1
    pad_token_id: int = 0
    bos_token_id: int | None = 1
    eos_token_id: int = 2
    decoder_start_token_id: int = 1  # the first decoder input
    forced_bos_token_id: int | None = None  # BART: the first generated token is always this
    forced_eos_token_id: int | None = None  # BART: the last allowed step must produce this

    def __post_init__(self):
        check_model_config(self, at_least_one=("vocab_size", "d_model", "n_head", "d_ff", "max_position",
                                                "decoder_n_head", "decoder_d_ff"))
        if self.positional not in POSITIONAL_KINDS:
            raise DlforgeError(f"positional must be one of {', '.join(POSITIONAL_KINDS)}, got {self.positional!r}")
        for name, heads in (("n_head", self.n_head), ("decoder_n_head", self.stack_shape(decoder=True)[1])):
            if (self.attn_inner_dim or self.d_model) % heads:
                raise DlforgeError(f"the attention width ({self.attn_inner_dim or self.d_model}) must be divisible "
                                   f"by {name} ({heads})")
        if not 0 <= self.label_smoothing < 1:
            raise DlforgeError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")

    @property
    def shared_vocabulary(self) -> bool:
        return self.source_vocab_size is None

    def stack_shape(self, decoder: bool) -> tuple[int, int, int]:
        """(layers, attention heads, feed-forward width) of the decoder or of the encoder stack."""
        if decoder:
            heads = self.n_head if self.decoder_n_head is None else self.decoder_n_head
            return self.n_decoder_layers, heads, self.d_ff if self.decoder_d_ff is None else self.decoder_d_ff
        return self.n_encoder_layers, self.n_head, self.d_ff


def relative_position_bucket(relative: torch.Tensor, bidirectional: bool, n_buckets: int,
                             max_distance: int) -> torch.Tensor:
    """T5's bucket of each key-minus-query offset: exact below n/2 (n/4 per direction when
    bidirectional), then logarithmically wider up to max_distance, beyond which all share the last."""
    bucket = torch.zeros_like(relative)
    if bidirectional:
        n_buckets //= 2
        bucket = bucket + (relative > 0).long() * n_buckets  # keys after the query use the upper half
        distance = relative.abs()
    else:
        distance = (-relative).clamp(min=0)  # a causal decoder only sees keys at or before the query
    exact = n_buckets // 2
    log_ratio = torch.log(distance.float().clamp(min=1) / exact) / math.log(max_distance / exact)
    far = (exact + (log_ratio * (n_buckets - exact)).long()).clamp(max=n_buckets - 1)
    return bucket + torch.where(distance < exact, distance, far)


class RelativePositionBias(nn.Module):
    """One learned scalar per head and bucket, added to the attention scores of every layer."""

    def __init__(self, n_buckets: int, max_distance: int, n_head: int, bidirectional: bool):
        super().__init__()
        self.n_buckets, self.max_distance, self.bidirectional = n_buckets, max_distance, bidirectional
        self.embedding = nn.Embedding(n_buckets, n_head)

    def forward(self, q_len: int, k_len: int, device=None) -> torch.Tensor:
        """(1, H, q_len, k_len) bias; queries are the last q_len of the k_len positions (decoding with a cache)."""
        q_pos = torch.arange(k_len - q_len, k_len, device=device)[:, None]
        k_pos = torch.arange(k_len, device=device)[None, :]
        buckets = relative_position_bucket(k_pos - q_pos, self.bidirectional, self.n_buckets, self.max_distance)
        return self.embedding(buckets).permute(2, 0, 1).unsqueeze(0)


class Stack(nn.Module):
    """The encoder (`decoder=False`) or the decoder: embeddings, positions, blocks, final norm."""

    def __init__(self, c: Seq2SeqConfig, embed_tokens: nn.Embedding, decoder: bool):
        super().__init__()
        self.config, self.decoder = c, decoder
        self.embed_tokens = embed_tokens
        self.embed_scale = math.sqrt(c.d_model) if c.scale_embedding else 1.0
        n_layers, n_head, d_ff = c.stack_shape(decoder)
        n_positions = c.max_position + c.position_offset
        if c.positional == "learned":
            self.embed_positions = nn.Embedding(n_positions, c.d_model)
        elif c.positional == "sinusoidal":
            self.embed_positions = SinusoidalPositionalEncoding(n_positions, c.d_model)
        else:
            self.relative_bias = RelativePositionBias(c.relative_buckets, c.relative_max_distance, n_head,
                                                      bidirectional=not decoder)
        self.embed_norm = make_norm(c.norm, c.d_model, c.norm_eps, c.bias) if c.embedding_norm else None
        self.drop = nn.Dropout(c.dropout)
        self.layers = nn.ModuleList([
            TransformerBlock(c.d_model, n_head, d_ff, c.activation, c.norm, c.norm_eps, pre_ln=c.pre_ln,
                             bias=c.bias, dropout=c.dropout, cross_attention=decoder,
                             attn_inner_dim=c.attn_inner_dim, attn_scale=c.attn_scale)
            for _ in range(n_layers)])
        use_final = c.pre_ln if c.final_norm is None else c.final_norm
        self.final_norm = make_norm(c.norm, c.d_model, c.norm_eps, c.bias) if use_final else None

    def _self_attention_mask(self, T: int, past: int, padding_mask, device):
        """Self-attention mask of T new positions after `past` cached ones: None (the attention layer applies
        the causal rule itself), a boolean mask (padding), or the relative-position bias with -inf where masked."""
        has_padding = padding_mask is not None and not bool(padding_mask.all())
        relative = self.config.positional == "relative"
        mask = None
        if has_padding or (relative and self.decoder and T > 1):
            mask = build_attention_mask(T, past + T, causal=self.decoder,
                                        key_padding_mask=padding_mask if has_padding else None, device=device)
        if not relative:
            return mask
        bias = self.relative_bias(T, past + T, device)  # (1, H, T, past + T)
        return bias if mask is None else bias.masked_fill(~mask, float("-inf"))

    def forward(self, ids, padding_mask=None, context=None, context_mask=None, kv_cache: KVCache | None = None,
                cross_kv=None, outputs: StackOutputs | None = None):
        """ids: (B, T). padding_mask: (B, past + T), 1 = real token (decoder: None when nothing is padding).
        context: the encoder output (B, S, d); cross_kv: its per-layer `project_context`, to reuse.
        outputs: collects every layer's states and attention probabilities, when asked for."""
        B, T = ids.shape
        past = kv_cache.length if kv_cache is not None else 0
        x = self.embed_tokens(ids) * self.embed_scale  # (B, T, d)
        if self.config.positional != "relative":
            if past + T > self.config.max_position:
                raise DlforgeError(f"a sequence of {past + T} tokens is longer than the model's max_position "
                                   f"({self.config.max_position}): truncate it")
            positions = torch.arange(past, past + T, device=ids.device) + self.config.position_offset
            x = x + self.embed_positions(positions).to(x.dtype)
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        x = self.drop(x)
        mask = self._self_attention_mask(T, past, padding_mask, ids.device)
        if mask is not None and mask.dtype != torch.bool:
            mask = mask.to(x.dtype)
        outputs = outputs if outputs is not None else StackOutputs()  # collects nothing unless asked
        outputs.add_hidden_state(x)
        for i, layer in enumerate(self.layers):
            ctx = cross_kv[i] if cross_kv is not None else context
            x = layer(x, attn_mask=mask, causal=self.decoder and mask is None, kv_cache=kv_cache, layer_idx=i,
                      context=ctx, context_mask=context_mask, outputs=outputs)
            outputs.add_hidden_state(x)
        if kv_cache is not None:
            kv_cache.advance(T)
        if self.final_norm is not None:
            x = self.final_norm(x)
            outputs.final_hidden_state(x)
        return x


class Seq2Seq(PretrainedModel):
    kind = "seq2seq"
    config_class = Seq2SeqConfig

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        self.config = c = config
        self.shared = nn.Embedding(c.vocab_size, c.d_model)  # target (and shared source) embedding
        source_embed = self.shared if c.shared_vocabulary else nn.Embedding(c.source_vocab_size, c.d_model)
        self.encoder = Stack(c, source_embed, decoder=False)
        self.decoder = Stack(c, self.shared, decoder=True)
        self.lm_head = Linear(c.d_model, c.vocab_size, bias=False)
        if c.final_logits_bias:
            self.register_buffer("final_logits_bias", torch.zeros(c.vocab_size))
        self.apply(self._init_weights)
        if c.tie_embeddings:
            self.lm_head.weight = self.shared.weight

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)  # the paper's (and fairseq's) initialisation
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            # N(0, d^-1/2): with the √d scaling the embedded tokens start at unit variance
            nn.init.normal_(module.weight, mean=0.0, std=self.config.d_model ** -0.5)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               outputs: StackOutputs | None = None) -> torch.Tensor:
        """input_ids (B, S), attention_mask (B, S) 1 = real token -> encoder output (B, S, d); `outputs`
        collects every layer's states and attentions, when asked for."""
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None
        return self.encoder(input_ids, padding_mask=attention_mask, outputs=outputs)

    def cross_attention_mask(self, attention_mask: torch.Tensor | None):
        """(B, 1, 1, S) boolean mask over the source's real tokens, or None without padding."""
        if attention_mask is None or bool(attention_mask.all()):
            return None
        return attention_mask.bool()[:, None, None, :]

    def project_context(self, encoder_out: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every decoder layer's cross-attention keys and values, computed once per source. They are read at every
        decoding step, so they are stored contiguous (B, H, S, D) rather than as views of the projection."""
        return [tuple(t.contiguous() for t in layer.cross_attn.project_context(encoder_out))
                for layer in self.decoder.layers]

    def new_kv_cache(self, batch_size: int, max_len: int) -> KVCache:
        c, param = self.config, self.shared.weight
        n_layers, n_head, _ = c.stack_shape(decoder=True)
        inner = c.attn_inner_dim or c.d_model
        return KVCache(n_layers, batch_size, n_head, max_len, inner // n_head,
                       dtype=param.dtype, device=param.device)

    def decode(self, decoder_input_ids, encoder_out=None, encoder_mask=None, kv_cache: KVCache | None = None,
               cross_kv=None, decoder_attention_mask=None, last_only: bool = False,
               outputs: StackOutputs | None = None) -> torch.Tensor:
        """Logits (B, T, V) (or (B, 1, V) with last_only) for decoder inputs (B, T) given the encoder output
        (or its `project_context`) and the source mask from `cross_attention_mask`; `outputs` collects the
        decoder's states and attentions, when asked for."""
        x = self.decoder(decoder_input_ids, padding_mask=decoder_attention_mask, context=encoder_out,
                         context_mask=encoder_mask, kv_cache=kv_cache, cross_kv=cross_kv, outputs=outputs)
        if last_only:
            x = x[:, -1:]
        if self.config.output_scale != 1.0:
            x = x * self.config.output_scale
        if self.config.final_logits_bias:
            return linear_plus_bias(x, self.lm_head, self.final_logits_bias)
        return self.lm_head(x)

    def shift_right(self, labels: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: decoder inputs are the labels delayed one step behind the start token."""
        start = torch.full_like(labels[:, :1], self.config.decoder_start_token_id)
        shifted = torch.cat([start, labels[:, :-1]], dim=1)
        return shifted.masked_fill(shifted == -100, self.config.pad_token_id)

    def forward(self, input_ids, attention_mask=None, decoder_input_ids=None, labels=None,
                decoder_attention_mask=None, output_hidden_states: bool = False,
                output_attentions: bool = False) -> ModelOutput:
        """input_ids (B, S) source tokens; labels (B, T) target tokens ending in EOS, -100 on padding.

        Returns the label-smoothed cross-entropy over non-padding label positions, the logits (B, T, V) and
        encoder_last_hidden_state (B, S, d); output_hidden_states / output_attentions add each stack's states
        and attention probabilities (encoder_*, decoder_*, cross_attentions), as Hugging Face's seq2seq models.
        """
        if decoder_input_ids is None:
            if labels is None:
                raise DlforgeError("give labels (for training) or decoder_input_ids")
            decoder_input_ids = self.shift_right(labels)
        encoder_outputs = StackOutputs(output_hidden_states, output_attentions)
        encoder_out = self.encode(input_ids, attention_mask, encoder_outputs)
        decoder_outputs = StackOutputs(output_hidden_states, output_attentions, cross_attentions=output_attentions)
        logits = self.decode(decoder_input_ids, encoder_out, self.cross_attention_mask(attention_mask),
                             decoder_attention_mask=decoder_attention_mask, outputs=decoder_outputs)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100,
                                   label_smoothing=self.config.label_smoothing)
        return ModelOutput(loss=loss, logits=logits, encoder_last_hidden_state=encoder_out,
                           **decoder_outputs.fields("decoder_"), **encoder_outputs.fields("encoder_"))

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, **options) -> torch.Tensor:
        """Decode outputs for sources (B, S); see `dlforge.text.seq2seq_generation.generate_seq2seq`."""
        from ..text.seq2seq_generation import generate_seq2seq

        return generate_seq2seq(self, input_ids, attention_mask, **options)
