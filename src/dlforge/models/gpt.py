"""GPT: a decoder-only transformer language model (Radford et al., 2018/2019).

    h_0 = W_te[x] + W_pe[pos]            (or RoPE inside attention, or sinusoidal)
    h_l = Block(h_{l-1})  for l = 1..L   (pre-LN, causal self-attention + MLP)
    logits = LN_f(h_L) W_teᵀ             (output projection tied to the token embedding)

Module names follow the GPT-2 checkpoint keys (`transformer.wte`, `h.N.attn.c_attn`, `ln_f`,
`lm_head`) so `dlforge.models.converters.gpt2` converts Hugging Face checkpoints with a short key mapping.
Residual output projections are initialised with std 0.02/√(2L) as in GPT-2.

The loss takes Hugging Face's `labels` (the sequence itself, shifted inside) or the pre-shifted `targets` that
dlforge's language-model batches hold; both ignore -100.
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
    LearnedPositionalEmbedding,
    Linear,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
    StackOutputs,
    TransformerBlock,
    build_attention_mask,
    make_norm,
)
from ..settings import check_model_config
from .config import ModelConfig
from .outputs import ModelOutput
from .pretrained import PretrainedModel

POSITIONAL_KINDS = ("learned", "sinusoidal", "rotary", "none")


@dataclass
class GPTConfig(ModelConfig):
    vocab_size: int = 50257
    block_size: int = 1024  # longest context the model attends over
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    bias: bool = True  # biases in linears and norms
    positional: str = "learned"
    activation: str = "gelu"  # gelu | gelu_new | relu | swiglu
    norm: str = "layernorm"  # layernorm | rmsnorm
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    rope_base: float = 10000.0

    def __post_init__(self):
        check_model_config(self, at_least_one=("vocab_size", "block_size", "n_layer", "n_head", "n_embd"))
        if self.positional not in POSITIONAL_KINDS:
            raise DlforgeError(f"positional must be one of {', '.join(POSITIONAL_KINDS)}, got {self.positional!r}")
        if self.n_embd % self.n_head:
            raise DlforgeError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")



class GPT(PretrainedModel):
    kind = "gpt"
    config_class = GPTConfig

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = c = config
        head_dim = c.n_embd // c.n_head
        rotary = RotaryEmbedding(head_dim, c.block_size, c.rope_base) if c.positional == "rotary" else None
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(c.vocab_size, c.n_embd),
            drop=nn.Dropout(c.dropout),
            h=nn.ModuleList([
                TransformerBlock(c.n_embd, c.n_head, round(c.mlp_ratio * c.n_embd), c.activation, c.norm,
                                 c.norm_eps, pre_ln=True, bias=c.bias, dropout=c.dropout, rotary=rotary)
                for _ in range(c.n_layer)
            ]),
            ln_f=make_norm(c.norm, c.n_embd, c.norm_eps, c.bias),
        ))
        if c.positional == "learned":
            self.transformer["wpe"] = LearnedPositionalEmbedding(c.block_size, c.n_embd)
        elif c.positional == "sinusoidal":
            self.transformer["wpe"] = SinusoidalPositionalEncoding(c.block_size, c.n_embd)
        self.lm_head = Linear(c.n_embd, c.vocab_size, bias=False)
        if c.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # residual projections: keep the residual stream's variance flat
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * c.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings and "wpe" in self.transformer and self.config.positional == "learned":
            n -= self.transformer.wpe.weight.numel()
        return n

    def new_kv_cache(self, batch_size: int, max_len: int | None = None, dtype=None) -> KVCache:
        c = self.config
        param = self.transformer.wte.weight
        return KVCache(c.n_layer, batch_size, c.n_head, max_len or c.block_size, c.n_embd // c.n_head,
                       dtype=dtype or param.dtype, device=param.device)

    def forward(self, input_ids, targets=None, attention_mask=None, position_ids=None,
                kv_cache: KVCache | None = None, last_only: bool = False, labels=None,
                output_hidden_states: bool = False, output_attentions: bool = False) -> ModelOutput:
        """input_ids: (B, T) token ids.

        labels: (B, T), Hugging Face's meaning: the ids of the sequence itself (usually input_ids), shifted
        inside, so logits[:, i] is scored against labels[:, i + 1]; -100 = ignore. targets: (B, T) the
        low-level form, already shifted: logits[:, i] against targets[:, i] (what `dlforge.data.text` batches
        hold). attention_mask: (B, past + T), 1 on real tokens and 0 on padding (left padding for batched
        prompts). position_ids: (B, T) or (T,); by default counted from the cache length. last_only: compute
        logits for the last position only (generation; ignored with labels or targets).
        output_hidden_states / output_attentions: also return every layer's states / attention probabilities
        (see `ModelOutput`).
        """
        B, T = input_ids.shape
        targets = self._next_token_targets(input_ids, targets, labels)
        past = kv_cache.length if kv_cache is not None else 0
        if past + T > self.config.block_size:
            raise DlforgeError(f"a sequence of {past + T} tokens is longer than the model's context "
                               f"({self.config.block_size} tokens): truncate the input or generate fewer tokens")
        if position_ids is None:
            position_ids = torch.arange(past, past + T, device=input_ids.device)  # (T,)
        x = self.transformer.wte(input_ids)  # (B, T, C)
        if "wpe" in self.transformer:
            x = x + self.transformer.wpe(position_ids)
        x = self.transformer.drop(x)
        mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            mask = build_attention_mask(T, past + T, causal=True, key_padding_mask=attention_mask)
        outputs = StackOutputs(output_hidden_states, output_attentions)
        outputs.add_hidden_state(x)
        for i, block in enumerate(self.transformer.h):
            x = block(x, attn_mask=mask, causal=True, kv_cache=kv_cache, layer_idx=i, positions=position_ids,
                      outputs=outputs)
            outputs.add_hidden_state(x)
        if kv_cache is not None:
            kv_cache.advance(T)
        x = self.transformer.ln_f(x)
        outputs.final_hidden_state(x)
        if last_only and targets is None:
            x = x[:, -1:]  # (B, 1, C): generation needs only the next-token distribution
        logits = self.lm_head(x)  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
        return ModelOutput(loss=loss, logits=logits, **outputs.fields())

    @staticmethod
    def _next_token_targets(input_ids, targets, labels):
        """The pre-shifted targets (B, T) the loss compares logits with: `targets` as given, or `labels` moved
        one step left with -100 (ignored) at the end, as Hugging Face's causal-LM loss shifts them."""
        if labels is None:
            return targets
        if targets is not None:
            raise DlforgeError("give labels (unshifted, as Hugging Face) or targets (already shifted), not both")
        if labels.shape != input_ids.shape:
            raise DlforgeError(f"labels must have the shape of input_ids {tuple(input_ids.shape)}, got "
                               f"{tuple(labels.shape)}")
        ignored = torch.full_like(labels[:, :1], -100)
        return torch.cat([labels[:, 1:], ignored], dim=1)

    @torch.no_grad()
    def generate(self, input_ids, **kwargs):
        """Sample a continuation of `input_ids` (B, T); see `dlforge.text.generation.generate`."""
        from ..text.generation import generate

        return generate(self, input_ids, **kwargs)
