"""Hugging Face BART checkpoints <-> dlforge `Seq2Seq`.

BART is a post-LN encoder–decoder with biases everywhere, learned positions counted from 2
(`embed_positions` has max_position_embeddings + 2 rows), a LayerNorm on the embeddings of each
stack, no final norm, and a bias buffer on the logits. The encoder and the decoder may differ in depth, heads
and feed-forward width (`encoder_*` / `decoder_*` sizes). Weights sit under `model.`
(BartForConditionalGeneration) or at the top (BartModel). Separate q/k/v projections are
concatenated into dlforge's fused ones (`attn.c_attn` = q,k,v rows; `cross_attn.kv_proj` = k,v rows).
`save_hf_bart` writes a BART-shaped `Seq2Seq` back with the same table turned round.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from ...errors import DlforgeError
from ...hub.weights import load_state_dict
from ..seq2seq import Seq2Seq, Seq2SeqConfig
from .t5 import (
    check_representable,
    fuse_parts,
    generation_ids,
    inverse_rules,
    load_seq2seq_weights,
    read_generation_ids,
    rename,
    single_id,
    state_for_hf,
    tied_in_checkpoint,
    write_hf_seq2seq,
)

ACTIVATIONS = {"gelu": "gelu", "relu": "relu", "gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new"}

_LAYER = r"(encoder|decoder)\.layers\.(\d+)\."
# HF key pattern (without "model.") -> dlforge key; "#x" marks part x of a fused matrix, checked in order
KEY_RULES = [
    (_LAYER + r"self_attn\.([qkv])_proj\.(weight|bias)", r"\1.layers.\2.attn.c_attn.\4#\3"),
    (_LAYER + r"self_attn\.out_proj\.(weight|bias)", r"\1.layers.\2.attn.c_proj.\3"),
    (_LAYER + r"self_attn_layer_norm\.(weight|bias)", r"\1.layers.\2.ln_1.\3"),
    (_LAYER + r"encoder_attn\.q_proj\.(weight|bias)", r"\1.layers.\2.cross_attn.q_proj.\3"),
    (_LAYER + r"encoder_attn\.([kv])_proj\.(weight|bias)", r"\1.layers.\2.cross_attn.kv_proj.\4#\3"),
    (_LAYER + r"encoder_attn\.out_proj\.(weight|bias)", r"\1.layers.\2.cross_attn.c_proj.\3"),
    (_LAYER + r"encoder_attn_layer_norm\.(weight|bias)", r"\1.layers.\2.ln_cross.\3"),
    (_LAYER + r"fc1\.(weight|bias)", r"\1.layers.\2.mlp.c_fc.\3"),
    (_LAYER + r"fc2\.(weight|bias)", r"\1.layers.\2.mlp.c_proj.\3"),
    (_LAYER + r"final_layer_norm\.(weight|bias)", r"\1.layers.\2.ln_2.\3"),
    (r"(encoder|decoder)\.layernorm_embedding\.(weight|bias)", r"\1.embed_norm.\2"),
]
SKIPPED = re.compile(r"^(encoder|decoder)\.embed_tokens\.weight$")  # copies of shared.weight


def config_from_hf(hf: dict) -> Seq2SeqConfig:
    activation = hf.get("activation_function", "gelu")
    if activation not in ACTIVATIONS:
        raise DlforgeError(f"BART activation {activation!r} is not supported (known: {', '.join(ACTIVATIONS)})")
    return Seq2SeqConfig(
        vocab_size=hf["vocab_size"], d_model=hf["d_model"], n_encoder_layers=hf["encoder_layers"],
        n_decoder_layers=hf["decoder_layers"], n_head=hf["encoder_attention_heads"], d_ff=hf["encoder_ffn_dim"],
        decoder_n_head=hf["decoder_attention_heads"], decoder_d_ff=hf["decoder_ffn_dim"],
        dropout=hf.get("dropout", 0.1), activation=ACTIVATIONS[activation], norm="layernorm", norm_eps=1e-5,
        pre_ln=False, final_norm=False, bias=True, positional="learned",
        max_position=hf["max_position_embeddings"], position_offset=2,
        scale_embedding=bool(hf.get("scale_embedding", False)), embedding_norm=True,
        tie_embeddings=hf.get("tie_word_embeddings", True), final_logits_bias=True, label_smoothing=0.0,
        pad_token_id=single_id(hf, "pad_token_id", 1), bos_token_id=single_id(hf, "bos_token_id", 0),
        eos_token_id=single_id(hf, "eos_token_id", 2),
        decoder_start_token_id=single_id(hf, "decoder_start_token_id", 2),
        forced_bos_token_id=single_id(hf, "forced_bos_token_id", None),
        forced_eos_token_id=single_id(hf, "forced_eos_token_id", 2))


def load_hf_bart(directory: str | Path, raw_config: dict) -> Seq2Seq:
    """BartForConditionalGeneration (or BartModel: no logits bias, tied) weights -> `Seq2Seq`."""
    directory = Path(directory)
    config = config_from_hf(read_generation_ids(directory, raw_config))
    state = {}
    for key, tensor in load_state_dict(directory).items():
        key = key.removeprefix("model.")
        if SKIPPED.search(key):
            continue
        if key == "final_logits_bias":
            tensor = tensor.reshape(-1)  # (1, V) -> (V,)
        state[rename(key, KEY_RULES)] = tensor
    tied = tied_in_checkpoint(state)
    config = replace(config, tie_embeddings=tied)
    if tied:
        state.pop("lm_head.weight", None)
    # a BartModel has no logits bias (transformers also accepts it missing): it stays zero
    return load_seq2seq_weights(config, fuse_parts(state), directory, also_missing=("final_logits_bias",))


# ------------------------------------------------------------------ saving back to the HF format
EXPORT_RULES = inverse_rules(KEY_RULES)
# dlforge activation -> activation_function; reversed, so that the first HF name of each wins (gelu_new)
ACTIVATION_NAMES = {ours: theirs for theirs, ours in reversed(ACTIVATIONS.items())}
OUTSIDE_MODEL = ("lm_head.weight", "final_logits_bias")  # the only weights not under "model."


def config_to_hf(c: Seq2SeqConfig) -> dict:
    """The BartConfig of a BART-shaped `Seq2Seq` (a one-line DlforgeError for any setting BART lacks)."""
    check_representable(c, "BART", {
        "positional": ("learned",), "position_offset": (2,), "source_vocab_size": (None,), "norm": ("layernorm",),
        "norm_eps": (1e-5,), "pre_ln": (False,), "final_norm": (False,), "bias": (True,), "embedding_norm": (True,),
        "attn_scale": (None,), "attn_inner_dim": (c.d_model,), "output_scale": (1.0,),
        "activation": tuple(ACTIVATION_NAMES)})
    n_layers, n_head, d_ff = c.stack_shape(decoder=False)
    decoder_layers, decoder_n_head, decoder_d_ff = c.stack_shape(decoder=True)
    return {"architectures": ["BartForConditionalGeneration"], "model_type": "bart", "vocab_size": c.vocab_size,
            "d_model": c.d_model, "encoder_layers": n_layers, "encoder_attention_heads": n_head,
            "encoder_ffn_dim": d_ff, "decoder_layers": decoder_layers, "decoder_attention_heads": decoder_n_head,
            "decoder_ffn_dim": decoder_d_ff, "max_position_embeddings": c.max_position,
            "activation_function": ACTIVATION_NAMES[c.activation], "scale_embedding": c.scale_embedding,
            "dropout": c.dropout, "attention_dropout": c.dropout, "activation_dropout": 0.0,
            "is_encoder_decoder": True, "tie_word_embeddings": c.tie_embeddings,
            "pad_token_id": c.pad_token_id, "bos_token_id": c.bos_token_id, "eos_token_id": c.eos_token_id,
            "decoder_start_token_id": c.decoder_start_token_id,
            "forced_eos_token_id": c.forced_eos_token_id,  # null when unset: BartConfig's default is 2
            "dtype": "float32"}


def save_hf_bart(model: Seq2Seq, directory: str | Path, tokenizer=None) -> Path:
    """Write a folder `transformers.BartForConditionalGeneration` loads: config.json, generation_config.json,
    model.safetensors with HF's names (q/k/v split again, under "model."), and the tokenizer."""
    hf_config = config_to_hf(model.config)
    state = {}
    for key, tensor in state_for_hf(model, EXPORT_RULES, {"c_attn": "qkv", "kv_proj": "kv"}).items():
        if key == "final_logits_bias":
            tensor = tensor.reshape(1, -1)  # (V,) -> (1, V)
        state[key if key in OUTSIDE_MODEL else "model." + key] = tensor
    if not model.config.tie_embeddings:  # transformers then ties nothing, not even each stack's embed_tokens
        for stack in ("encoder", "decoder"):
            state[f"model.{stack}.embed_tokens.weight"] = model.shared.weight.detach().clone()
    generation = generation_ids(model.config, keep_none=("forced_eos_token_id",))
    return write_hf_seq2seq(directory, state, hf_config, generation, tokenizer)
