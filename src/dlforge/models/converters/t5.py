"""Hugging Face T5 checkpoints (v1.0, v1.1, Flan-T5) <-> dlforge `Seq2Seq`.

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

`save_hf_t5` writes a T5-shaped `Seq2Seq` back (`inverse_rules` turns the loading table round); its helpers
(splitting fused matrices, checking that HF has every setting, writing the folder) serve BART's exporter too.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, replace
from pathlib import Path

import torch

from ...errors import DlforgeError
from ...hub.json_files import read_json_object
from ...hub.weights import load_into, load_state_dict, save_state_dict
from ...io import atomic_directory, atomic_write_json
from ..seq2seq import Seq2Seq, Seq2SeqConfig

# feed_forward_proj -> dlforge MLP activation ("gated-gelu" is T5 v1.1's tanh-approximated GEGLU)
ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "gelu_new": "gelu_new", "gated-gelu": "geglu",
               "gated-silu": "swiglu"}

_SELF = r"(encoder|decoder)\.block\.(\d+)\.layer\.0\."
_CROSS = r"decoder\.block\.(\d+)\.layer\.1\."
# HF key pattern -> dlforge key; "#x" marks part x of a fused matrix (see `fuse_parts`), checked in order
KEY_RULES = [
    # only the first block of each stack stores the relative-position bias
    (r"(encoder|decoder)\.block\.0\.layer\.0\.SelfAttention\.relative_attention_bias\.weight",
     r"\1.relative_bias.embedding.weight"),
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
# the token ids generation_config.json holds (and `generate` prefers to config.json's)
GENERATION_IDS = ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id", "forced_bos_token_id",
                  "forced_eos_token_id")


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
    return {**hf, **{k: generation[k] for k in GENERATION_IDS if generation.get(k) is not None}}


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


# ------------------------------------------------------------------ saving back to the HF format
_GROUP = re.compile(r"\(([^()]*)\)")  # a rule pattern's groups: plain alternatives or classes, never nested
_REFERENCE = re.compile(r"\\(\d+)")


def inverse_rules(rules) -> list[tuple[str, str]]:
    """`rules` the other way round (dlforge key -> HF key), for `rename`: each template becomes a pattern (its
    references replaced by the groups they name) and each pattern a template, so one table names both ways."""
    inverse = []
    for pattern, template in rules:
        groups = _GROUP.findall(pattern)
        pieces = _REFERENCE.split(template)  # literal, group number, literal, ...
        order = [int(n) for n in pieces[1::2]]  # the HF groups in the order the dlforge key holds them
        if sorted(order) != list(range(1, len(groups) + 1)):
            raise ValueError(f"rule {pattern!r} -> {template!r} does not keep every group once")  # a bug in a table
        new_pattern = "".join(f"({groups[int(p) - 1]})" if i % 2 else re.escape(p) for i, p in enumerate(pieces))
        literals = _GROUP.split(pattern)[::2]  # the text around the groups, regex-escaped
        new_template = re.sub(r"\\(.)", r"\1", literals[0])
        for index, literal in enumerate(literals[1:], start=1):
            new_template += rf"\g<{order.index(index) + 1}>" + re.sub(r"\\(.)", r"\1", literal)
        inverse.append((new_pattern, new_template))
    return inverse


def split_parts(state: dict[str, torch.Tensor], fused: dict[str, str]) -> dict[str, torch.Tensor]:
    """The inverse of `fuse_parts`: each matrix of a module named in `fused` becomes its "name#part" row blocks."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        order = fused.get(key.split(".")[-2]) if "." in key else None
        if order is None:
            out[key] = tensor
            continue
        for part, block in zip(order, tensor.chunk(len(order), dim=0)):
            out[f"{key}#{part}"] = block.clone()  # its own storage: safetensors refuses views of one tensor
    return out


def hf_settings(c: Seq2SeqConfig) -> dict:
    """The config's fields with the defaults that stand for another field resolved (None = the encoder's)."""
    _, decoder_n_head, decoder_d_ff = c.stack_shape(decoder=True)
    return {**asdict(c), "final_norm": c.pre_ln if c.final_norm is None else c.final_norm,
            "decoder_n_head": decoder_n_head, "decoder_d_ff": decoder_d_ff,
            "attn_inner_dim": c.attn_inner_dim or c.d_model}


def check_representable(c: Seq2SeqConfig, family: str, required: dict[str, tuple]) -> None:
    """One line naming the first setting Hugging Face's `family` has no equivalent of (field -> allowed values)."""
    settings = hf_settings(c)
    for name, allowed in required.items():
        value = settings[name]
        if not any(value == a or (isinstance(value, float) and isinstance(a, float) and math.isclose(value, a))
                   for a in allowed):
            wanted = " or ".join(repr(a) for a in allowed)
            raise DlforgeError(f"this Seq2Seq has {name}={value!r}, which Hugging Face {family} cannot represent "
                               f"(it needs {wanted}): save it with format='dlforge'")


def generation_ids(c: Seq2SeqConfig, keep_none: tuple[str, ...] = ()) -> dict:
    """The token ids for generation_config.json; `keep_none` are written as null to override an HF default."""
    return {name: getattr(c, name) for name in GENERATION_IDS
            if getattr(c, name) is not None or name in keep_none}


def state_for_hf(model: Seq2Seq, rules, fused: dict[str, str]) -> dict[str, torch.Tensor]:
    """dlforge's weights under HF names (`rules` from `inverse_rules`), fused matrices split into `fused`'s parts;
    the embeddings' copies (each stack's embed_tokens, a tied lm_head) are left to transformers to tie."""
    state = {k: v for k, v in model.state_dict().items() if not SKIPPED.search(k)}
    if model.config.tie_embeddings:
        state.pop("lm_head.weight")
    return {rename(k, rules): v for k, v in split_parts(state, fused).items()}


def write_hf_seq2seq(directory: str | Path, state: dict[str, torch.Tensor], hf_config: dict, generation: dict,
                     tokenizer=None) -> Path:
    """config.json, generation_config.json, model.safetensors (and the tokenizer), replacing the folder atomically."""
    directory = Path(directory)
    with atomic_directory(directory) as tmp:
        save_state_dict(state, tmp / "model.safetensors")
        atomic_write_json(tmp / "config.json", hf_config)
        atomic_write_json(tmp / "generation_config.json", generation)
        if tokenizer is not None:
            tokenizer.save(tmp)
    return directory


EXPORT_RULES = inverse_rules(KEY_RULES)
FEED_FORWARD_NAMES = {ours: theirs for theirs, ours in ACTIVATIONS.items()}  # dlforge activation -> feed_forward_proj


def config_to_hf(c: Seq2SeqConfig) -> dict:
    """The T5Config of a T5-shaped `Seq2Seq` (a one-line DlforgeError for any setting T5 lacks)."""
    check_representable(c, "T5", {
        "positional": ("relative",), "source_vocab_size": (None,), "norm": ("rmsnorm",), "pre_ln": (True,),
        "final_norm": (True,), "bias": (False,), "scale_embedding": (False,), "embedding_norm": (False,),
        "attn_scale": (1.0,), "final_logits_bias": (False,), "activation": tuple(FEED_FORWARD_NAMES),
        "decoder_n_head": (c.n_head,), "decoder_d_ff": (c.d_ff,), "output_scale": (1.0, c.d_model ** -0.5)})
    scaled = c.output_scale != 1.0
    return {"architectures": ["T5ForConditionalGeneration"], "model_type": "t5", "vocab_size": c.vocab_size,
            "d_model": c.d_model, "d_kv": (c.attn_inner_dim or c.d_model) // c.n_head, "d_ff": c.d_ff,
            "num_layers": c.n_encoder_layers, "num_decoder_layers": c.n_decoder_layers, "num_heads": c.n_head,
            "relative_attention_num_buckets": c.relative_buckets,
            "relative_attention_max_distance": c.relative_max_distance, "dropout_rate": c.dropout,
            "layer_norm_epsilon": c.norm_eps, "feed_forward_proj": FEED_FORWARD_NAMES[c.activation],
            "is_encoder_decoder": True,
            # transformers < 5 reads both from tie_word_embeddings (v1.0 tied and scaled, v1.1 neither);
            # transformers >= 5 reads the scaling from scale_decoder_outputs and the tying from the weights
            "tie_word_embeddings": c.tie_embeddings, "scale_decoder_outputs": scaled,
            "pad_token_id": c.pad_token_id, "eos_token_id": c.eos_token_id,
            "decoder_start_token_id": c.decoder_start_token_id, "dtype": "float32"}


def save_hf_t5(model: Seq2Seq, directory: str | Path, tokenizer=None) -> Path:
    """Write a folder `transformers.T5ForConditionalGeneration` loads: config.json, generation_config.json,
    model.safetensors with HF's names (q/k/v and a gated MLP's wi_0/wi_1 split again), and the tokenizer."""
    hf_config = config_to_hf(model.config)
    gated = model.config.activation in ("geglu", "swiglu")
    fused = FUSED_ORDER if gated else {k: v for k, v in FUSED_ORDER.items() if k != "c_fc"}
    state = state_for_hf(model, EXPORT_RULES, fused)
    return write_hf_seq2seq(directory, state, hf_config, generation_ids(model.config), tokenizer)
