"""Hugging Face T5 checkpoints (v1.0, v1.1, Flan-T5) -> dlforge `Seq2Seq`.

T5 is a pre-LN encoder–decoder with RMSNorm, no biases, unscaled attention scores and a learned
relative-position bias that only the first block of each stack stores (dlforge keeps it on the
stack, `relative_bias`). Separate q/k/v matrices are concatenated into dlforge's fused projections
(`attn.c_attn` = q,k,v rows; `cross_attn.kv_proj` = k,v rows), as are the gate (`wi_0`) and up
(`wi_1`) matrices of the gated-GELU MLP (`mlp.c_fc`). Blocks are numbered by sublayer in HF:
encoder layer.0 = self-attention, layer.1 = MLP; decoder layer.0 = self-attention,
layer.1 = cross-attention, layer.2 = MLP.

Whether the output projection is tied to the embedding is read from the weights (an `lm_head.weight`
that differs from `shared.weight` is untied); T5 v1.0 also scales the decoder output by d^-0.5
before a tied projection, v1.1 does not (`tie_word_embeddings: false`, or `scale_decoder_outputs`
in files written by transformers >= 5).
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import torch

from ...errors import DlforgeError
from ...hub.json_files import read_json_object
from ...hub.weights import load_into, load_state_dict
from ..seq2seq import Seq2Seq, Seq2SeqConfig

# feed_forward_proj -> dlforge MLP activation ("gated-gelu" is T5 v1.1's tanh-approximated GEGLU)
ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "gelu_new": "gelu_new", "gated-gelu": "geglu",
               "gated-silu": "swiglu"}

_SELF = r"(encoder|decoder)\.block\.(\d+)\.layer\.0\."
_CROSS = r"decoder\.block\.(\d+)\.layer\.1\."
# HF key pattern -> dlforge key; "#x" marks part x of a fused matrix (see `fuse_parts`), checked in order
KEY_RULES = [
    (_SELF + r"SelfAttention\.relative_attention_bias\.weight", r"\1.relative_bias.embedding.weight"),
    (_SELF + r"SelfAttention\.([qkv])\.weight", r"\1.layers.\2.attn.c_attn.weight#\3"),
    (_SELF + r"SelfAttention\.o\.weight", r"\1.layers.\2.attn.c_proj.weight"),
    (_SELF + r"layer_norm\.weight", r"\1.layers.\2.ln_1.weight"),
    (_CROSS + r"EncDecAttention\.q\.weight", r"decoder.layers.\1.cross_attn.q_proj.weight"),
    (_CROSS + r"EncDecAttention\.([kv])\.weight", r"decoder.layers.\1.cross_attn.kv_proj.weight#\2"),
    (_CROSS + r"EncDecAttention\.o\.weight", r"decoder.layers.\1.cross_attn.c_proj.weight"),
    (_CROSS + r"layer_norm\.weight", r"decoder.layers.\1.ln_cross.weight"),
    (r"(encoder|decoder)\.final_layer_norm\.weight", r"\1.final_norm.weight"),
]
# the MLP's HF sublayer index depends on the stack, so its rules are written per stack
for _stack, _index in (("encoder", 1), ("decoder", 2)):
    _prefix = rf"({_stack})\.block\.(\d+)\.layer\.{_index}\."
    KEY_RULES += [
        (_prefix + r"DenseReluDense\.wi\.weight", r"\1.layers.\2.mlp.c_fc.weight"),
        (_prefix + r"DenseReluDense\.wi_([01])\.weight", r"\1.layers.\2.mlp.c_fc.weight#\3"),  # gate, up
        (_prefix + r"DenseReluDense\.wo\.weight", r"\1.layers.\2.mlp.c_proj.weight"),
        (_prefix + r"layer_norm\.weight", r"\1.layers.\2.ln_2.weight"),
    ]
# copies of shared.weight, and a cross-attention bias old checkpoints carry that no layer uses
SKIPPED = re.compile(r"^(encoder|decoder)\.embed_tokens\.weight$|EncDecAttention\.relative_attention_bias")
FUSED_ORDER = {"c_attn": "qkv", "kv_proj": "kv", "c_fc": "01"}  # row blocks of each fused matrix, in order


def single_id(hf: dict, name: str, default: int | None) -> int | None:
    """A token id from the config; transformers allows a list (several EOS), dlforge one id."""
    value = hf.get(name, default)
    if isinstance(value, list):
        if len(value) != 1:
            raise DlforgeError(f"{name}={value}: several ids are not supported, dlforge decodes with one")
        value = value[0]
    return value


def config_from_hf(hf: dict) -> Seq2SeqConfig:
    projection = hf.get("feed_forward_proj", "relu")
    if projection not in ACTIVATIONS:
        raise DlforgeError(f"T5 feed_forward_proj {projection!r} is not supported (known: {', '.join(ACTIVATIONS)})")
    d_model, n_head = hf["d_model"], hf["num_heads"]
    inner = n_head * hf["d_kv"]
    tied = hf.get("tie_word_embeddings", True)
    scale_output = hf.get("scale_decoder_outputs", tied)  # transformers 5 writes tie_word_embeddings: true always
    pad = single_id(hf, "pad_token_id", 0)
    return Seq2SeqConfig(
        vocab_size=hf["vocab_size"], d_model=d_model, n_encoder_layers=hf["num_layers"],
        n_decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"], n_head=n_head, d_ff=hf["d_ff"],
        attn_inner_dim=None if inner == d_model else inner, dropout=hf.get("dropout_rate", 0.1),
        activation=ACTIVATIONS[projection], norm="rmsnorm", norm_eps=hf.get("layer_norm_epsilon", 1e-6),
        pre_ln=True, final_norm=True, bias=False, positional="relative", scale_embedding=False,
        embedding_norm=False, attn_scale=1.0, relative_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_max_distance=hf.get("relative_attention_max_distance", 128), tie_embeddings=tied,
        output_scale=d_model ** -0.5 if scale_output else 1.0, final_logits_bias=False, label_smoothing=0.0,
        pad_token_id=pad, bos_token_id=None, eos_token_id=single_id(hf, "eos_token_id", 1),
        decoder_start_token_id=single_id(hf, "decoder_start_token_id", pad),
        forced_bos_token_id=single_id(hf, "forced_bos_token_id", None),
        forced_eos_token_id=single_id(hf, "forced_eos_token_id", None))


def rename(key: str, rules) -> str:
    for pattern, template in rules:
        new, count = re.subn("^" + pattern + "$", template, key)
        if count:
            return new
    return key  # unmapped keys are reported by name by load_into


def fuse_parts(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Concatenate the "name#part" entries of `state` into "name" (rows in `FUSED_ORDER`), the rest as is."""
    out: dict[str, torch.Tensor] = {}
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        if "#" in key:
            name, part = key.split("#")
            parts.setdefault(name, {})[part] = tensor
        else:
            out[key] = tensor
    for name, found in parts.items():
        order = FUSED_ORDER[name.split(".")[-2]]
        missing = [p for p in order if p not in found]
        if missing or len({t.shape for t in found.values()}) != 1:
            shapes = {p: tuple(t.shape) for p, t in found.items()}
            raise DlforgeError(f"checkpoint's parts of {name} are damaged: missing {missing or 'none'}, "
                               f"shapes {shapes}")
        out[name] = torch.cat([found[p] for p in order], dim=0)
    return out


def tied_in_checkpoint(state: dict[str, torch.Tensor], head: str = "lm_head.weight",
                       embedding: str = "shared.weight") -> bool:
    """Tied unless the checkpoint has its own, different output projection (transformers' rule too)."""
    return head not in state or embedding not in state or torch.equal(state[head], state[embedding])


def read_generation_ids(directory: Path, hf: dict) -> dict:
    """config.json with the token ids of generation_config.json (which `generate` prefers) laid over it."""
    path = directory / "generation_config.json"
    if not path.is_file():
        return hf
    generation = read_json_object(path, damaged="re-download or delete it")
    names = ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id", "forced_bos_token_id",
             "forced_eos_token_id")
    return {**hf, **{k: generation[k] for k in names if generation.get(k) is not None}}


def load_seq2seq_weights(config: Seq2SeqConfig, state: dict[str, torch.Tensor], directory: Path,
                         also_missing: tuple[str, ...] = ()) -> Seq2Seq:
    """Build `Seq2Seq(config)` and load dlforge-named weights (fp32), naming any that do not fit."""
    model = Seq2Seq(config)
    # each stack's embed_tokens (and a tied lm_head) is shared.weight under another name
    allowed = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight") + also_missing
    if config.tie_embeddings:
        allowed += ("lm_head.weight",)
    load_into(model, {k: v.float() for k, v in state.items()}, str(directory), allowed_missing=allowed)
    return model


def load_hf_t5(directory: str | Path, raw_config: dict) -> Seq2Seq:
    """T5ForConditionalGeneration (or T5Model: no lm_head, tied) weights -> `Seq2Seq`."""
    directory = Path(directory)
    config = config_from_hf(read_generation_ids(directory, raw_config))
    hf_state = load_state_dict(directory)
    tied = tied_in_checkpoint(hf_state)
    config = replace(config, tie_embeddings=tied)
    state = {rename(k, KEY_RULES): v for k, v in hf_state.items() if not SKIPPED.search(k)}
    if tied:
        state.pop("lm_head.weight", None)
    return load_seq2seq_weights(config, fuse_parts(state), directory)
