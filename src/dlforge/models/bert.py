"""BERT-style encoders (Devlin et al., 2019) and their task heads; RoBERTa and DistilBERT are configs.

    h_0 = LN(W_word[x] + W_pos[pos] + W_type[segment])      (token types optional)
    h_l = Block(h_{l-1}),  l = 1..L                          (post-LN, bidirectional attention)

Every token attends to every real (non-padding) token. The families differ only in details the
config names: RoBERTa counts positions from `pad_token_id + 1` (`position_offset`) and has one
token type; DistilBERT has no token types and may use sinusoidal positions.

Heads, chosen by `task`:
- `masked-lm`: dense → act → LN → tied decoder + bias (the pretraining objective);
- `sequence-classification`: pooled vector → dense → tanh/ReLU → linear (single-label softmax CE,
  multi-label sigmoid BCE, or regression MSE with num_labels=1); the vector is [CLS] as in BERT, or, with
  `classifier_pooling`, the mean / max / mean·sqrt(T) over the real tokens, as a sentence-transformers model
  pools (a head trained on such vectors by `dlforge finetune --method features` then reads them again);
- `token-classification`: a linear layer per token (NER);
- `question-answering`: start/end logits per token (extractive QA);
- `none`: the encoder alone: forward returns `last_hidden_state` (as Hugging Face's BertModel, without a
  pooler: BERT's pooler belongs to the sequence-classification head here); `embed()` gives sentence embeddings
  pooled the same ways.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DlforgeError
from ..nn import Linear, SinusoidalPositionalEncoding, StackOutputs, TransformerBlock, build_attention_mask
from ..nn.linear import ACTIVATION_FUNCTIONS
from ..settings import check_model_config
from .config import ModelConfig
from .outputs import ModelOutput
from .pretrained import PretrainedModel

TASKS = ("none", "masked-lm", "sequence-classification", "token-classification", "question-answering")
PROBLEM_TYPES = ("single_label", "multi_label", "regression")
# how token states become one sentence vector: sentence-transformers' Pooling modes of the same names
POOLINGS = ("cls", "mean", "max", "mean_sqrt_len")


@dataclass
class BertConfig(ModelConfig):
    vocab_size: int = 30522
    hidden_size: int = 768
    n_layer: int = 12
    n_head: int = 12
    intermediate_size: int = 3072
    activation: str = "gelu"  # gelu | gelu_new | relu
    max_position: int = 512
    positional: str = "learned"  # learned | sinusoidal
    position_offset: int = 0  # RoBERTa: pad_token_id + 1
    type_vocab_size: int = 2  # 0 = no token-type embeddings (DistilBERT)
    norm_eps: float = 1e-12
    dropout: float = 0.1
    pad_token_id: int = 0
    pooler: bool = True  # BERT's dense+tanh over [CLS], used by its classification head
    classifier_activation: str = "tanh"  # tanh (BERT, RoBERTa) | relu (DistilBERT)
    mlm_activation: str | None = None  # masked-LM head activation; None = `activation` (RoBERTa: gelu)
    task: str = "none"
    num_labels: int = 2
    problem_type: str = "single_label"
    labels: list[str] | None = None  # names for the label ids
    classifier_pooling: str = "cls"  # what the sequence-classification head reads: one of POOLINGS

    def __post_init__(self):
        check_model_config(self, at_least_one=("vocab_size", "hidden_size", "n_head", "intermediate_size",
                                                "max_position"))
        if self.task not in TASKS:
            raise DlforgeError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.problem_type not in PROBLEM_TYPES:
            raise DlforgeError(f"problem_type must be one of {', '.join(PROBLEM_TYPES)}, got {self.problem_type!r}")
        if self.hidden_size % self.n_head:
            raise DlforgeError(f"hidden_size ({self.hidden_size}) must be divisible by n_head ({self.n_head})")
        if self.positional not in ("learned", "sinusoidal"):
            raise DlforgeError(f"positional must be 'learned' or 'sinusoidal', got {self.positional!r}")
        check_pooling(self.classifier_pooling)


def check_pooling(pooling: str) -> str:
    if pooling not in POOLINGS:
        raise DlforgeError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    return pooling


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """One vector per sequence (B, C) from token states (B, T, C); padding (attention_mask 0) never counts."""
    if pooling == "cls":
        return hidden[:, 0]
    check_pooling(pooling)
    if attention_mask is None:
        attention_mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
    real = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    if pooling == "max":  # padding set to the dtype's lowest value so it never wins
        return hidden.masked_fill(real == 0, torch.finfo(hidden.dtype).min).amax(1)
    summed, count = (hidden * real).sum(1), real.sum(1).clamp(min=1)  # (B, C), (B, 1)
    return summed / (count if pooling == "mean" else count.sqrt())


def _activation(name: str):
    return {**ACTIVATION_FUNCTIONS, "tanh": torch.tanh}[name]


class BertEmbeddings(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size, padding_idx=c.pad_token_id)
        n_positions = c.max_position + c.position_offset
        self.position_embeddings = (nn.Embedding(n_positions, c.hidden_size) if c.positional == "learned"
                                    else SinusoidalPositionalEncoding(n_positions, c.hidden_size))
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.hidden_size) if c.type_vocab_size else None
        self.norm = nn.LayerNorm(c.hidden_size, eps=c.norm_eps)
        self.dropout = nn.Dropout(c.dropout)
        self.position_offset, self.pad_token_id = c.position_offset, c.pad_token_id

    def forward(self, input_ids, token_type_ids=None):
        if self.position_offset:  # RoBERTa: real tokens count from offset, padding sits at offset - 1
            real = (input_ids != self.pad_token_id).long()
            positions = real.cumsum(-1) * real + (self.position_offset - 1)  # (B, T)
        else:
            positions = torch.arange(input_ids.size(1), device=input_ids.device)  # (T,)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        if self.token_type_embeddings is not None:
            types = token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids)
            x = x + self.token_type_embeddings(types)
        return self.dropout(self.norm(x))


class ClassificationHead(nn.Module):
    """pooled vector ([CLS] or `classifier_pooling`) → dense → tanh/ReLU → dropout → linear."""

    def __init__(self, c: BertConfig, n_out: int):
        super().__init__()
        self.dense = Linear(c.hidden_size, c.hidden_size)
        self.act = _activation(c.classifier_activation)
        self.dropout = nn.Dropout(c.dropout)
        self.out_proj = Linear(c.hidden_size, n_out)

    def forward(self, pooled):
        return self.out_proj(self.dropout(self.act(self.dense(pooled))))


class MaskedLMHead(nn.Module):
    def __init__(self, c: BertConfig, word_embeddings: nn.Embedding):
        super().__init__()
        self.dense = Linear(c.hidden_size, c.hidden_size)
        self.act = _activation(c.mlm_activation or c.activation)
        self.norm = nn.LayerNorm(c.hidden_size, eps=c.norm_eps)
        self.decoder = Linear(c.hidden_size, c.vocab_size, bias=False)
        self.decoder.weight = word_embeddings.weight  # tied to the input embedding
        self.bias = nn.Parameter(torch.zeros(c.vocab_size))

    def forward(self, hidden):
        return self.decoder(self.norm(self.act(self.dense(hidden)))) + self.bias


class Bert(PretrainedModel):
    """Encoder + the head of `config.task`. forward(**batch) returns loss (given labels) and logits, or a bare
    encoder's last_hidden_state."""

    kind = "bert"
    config_class = BertConfig

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = c = config
        self.embeddings = BertEmbeddings(c)
        self.layers = nn.ModuleList([
            TransformerBlock(c.hidden_size, c.n_head, c.intermediate_size, c.activation, "layernorm", c.norm_eps,
                             pre_ln=False, dropout=c.dropout) for _ in range(c.n_layer)])
        self.head = None
        if c.task == "masked-lm":
            self.head = MaskedLMHead(c, self.embeddings.word_embeddings)
        elif c.task == "sequence-classification":
            self.head = ClassificationHead(c, c.num_labels)
        elif c.task in ("token-classification", "question-answering"):
            self.dropout = nn.Dropout(c.dropout)
            self.head = Linear(c.hidden_size, c.num_labels if c.task == "token-classification" else 2)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def encode(self, input_ids, attention_mask=None, token_type_ids=None,
               outputs: StackOutputs | None = None) -> torch.Tensor:
        """Final hidden states (B, T, hidden_size); `outputs` collects every layer's, when asked for."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        attention_mask = attention_mask.long()
        x = self.embeddings(input_ids, token_type_ids)
        T = input_ids.size(1)
        mask = None if bool(attention_mask.all()) else build_attention_mask(T, T, False, attention_mask)
        outputs = outputs if outputs is not None else StackOutputs()  # collects nothing unless asked
        outputs.add_hidden_state(x)
        for layer in self.layers:
            x = layer(x, attn_mask=mask, outputs=outputs)
            outputs.add_hidden_state(x)
        return x

    def embed(self, input_ids, attention_mask=None, token_type_ids=None, pooling: str = "mean",
              normalize: bool = True) -> torch.Tensor:
        """Sentence embeddings (B, hidden_size): the [CLS] vector, or the mean / max / mean·sqrt(T) over real
        tokens (`pooling`, one of POOLINGS)."""
        pooled = pool(self.encode(input_ids, attention_mask, token_type_ids), attention_mask, pooling)
        return F.normalize(pooled, dim=-1) if normalize else pooled

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None,
                start_positions=None, end_positions=None, output_hidden_states: bool = False,
                output_attentions: bool = False) -> ModelOutput:
        """input_ids, attention_mask, token_type_ids: (B, T). labels as Hugging Face's heads take them: masked-LM
        token ids (B, T) with -100 where nothing is masked, class ids (B,) (floats for regression or multi-label),
        token-classification ids (B, T) with -100 off the scored tokens. start_positions / end_positions (B,)
        for question answering; positions beyond the sequence are ignored, as in Hugging Face.

        A bare encoder (task "none") returns `last_hidden_state` (B, T, C) and no logits; a head returns logits
        and, with labels, the loss. output_hidden_states / output_attentions add every layer's states /
        attention probabilities."""
        task = self.config.task
        if task == "none" and (labels is not None or start_positions is not None):
            raise DlforgeError("this encoder has no task head to score labels with: load or build it with a task "
                               "(e.g. task='sequence-classification') to train it")
        outputs = StackOutputs(output_hidden_states, output_attentions)
        hidden = self.encode(input_ids, attention_mask, token_type_ids, outputs)  # (B, T, C)
        recorded = outputs.fields()
        if task == "none":
            return ModelOutput(last_hidden_state=hidden, **recorded)
        if task == "masked-lm":
            logits = self.head(hidden)  # (B, T, V); labels -100 where not masked
            loss = None if labels is None else F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())
            return ModelOutput(loss=loss, logits=logits, **recorded)
        if task == "sequence-classification":
            logits = self.head(pool(hidden, attention_mask, self.config.classifier_pooling))  # (B, num_labels)
            return ModelOutput(loss=None if labels is None else self._classification_loss(logits, labels),
                               logits=logits, **recorded)
        logits = self.head(self.dropout(hidden))
        if task == "token-classification":  # (B, T, num_labels)
            loss = None if labels is None else F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())
            return ModelOutput(loss=loss, logits=logits, **recorded)
        start, end = logits.float().unbind(-1)  # question-answering: (B, T) each
        loss = None
        if start_positions is not None:
            if end_positions is None:
                raise DlforgeError("question answering needs end_positions with start_positions")
            beyond = start.size(1)  # a position past the end (an answer cut off by truncation) is ignored, as HF
            loss = (F.cross_entropy(start, start_positions.clamp(0, beyond), ignore_index=beyond)
                    + F.cross_entropy(end, end_positions.clamp(0, beyond), ignore_index=beyond)) / 2
        return ModelOutput(loss=loss, logits=torch.stack([start, end], dim=-1), **recorded)

    def _classification_loss(self, logits, labels):
        kind = self.config.problem_type
        if kind == "regression":
            return F.mse_loss(logits.squeeze(-1).float(), labels.float())
        if kind == "multi_label":
            return F.binary_cross_entropy_with_logits(logits.float(), labels.float())
        return F.cross_entropy(logits.float(), labels)
