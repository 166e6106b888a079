"""Hugging Face GPT-2 checkpoints <-> dlforge `GPT`.

GPT-2 stores its linear layers as `Conv1D` with weights shaped (in, out); dlforge uses
`nn.Linear` with (out, in), so those four matrices per block are transposed. Everything else
maps name for name (dlforge's module names follow GPT-2's). The attention-mask buffers older
checkpoints carry (`attn.bias`, `attn.masked_bias`) are not weights and are skipped.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import DlforgeError
from ...hub.weights import load_into, load_state_dict, save_state_dict
from ...io import atomic_directory, atomic_write_json
from ..gpt import GPT, GPTConfig

CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
UNSUPPORTED_FLAGS = {"scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
                     "scale_attn_weights": True}
ACTIVATIONS = {"gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}


def config_from_hf(hf: dict) -> GPTConfig:
    for flag, default in UNSUPPORTED_FLAGS.items():
        if hf.get(flag, default) != default:
            raise DlforgeError(f"GPT-2 option {flag}={hf[flag]} is not supported by dlforge's GPT")
    activation = hf.get("activation_function", "gelu_new")
    if activation not in ACTIVATIONS:
        raise DlforgeError(f"GPT-2 activation {activation!r} is not supported (known: {', '.join(ACTIVATIONS)})")
    n_embd = hf["n_embd"]
    return GPTConfig(
        vocab_size=hf["vocab_size"], block_size=hf.get("n_positions", hf.get("n_ctx", 1024)),
        n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=n_embd,
        mlp_ratio=(hf.get("n_inner") or 4 * n_embd) / n_embd, dropout=0.0, bias=True, positional="learned",
        activation=ACTIVATIONS[activation], norm="layernorm", norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        tie_embeddings=hf.get("tie_word_embeddings", True))


def config_to_hf(c: GPTConfig, tokenizer=None) -> dict:
    if c.positional != "learned" or c.norm != "layernorm" or not c.bias or c.activation == "swiglu":
        raise DlforgeError("only GPT-2-shaped models (learned positions, LayerNorm, biases, no SwiGLU) "
                           "can be saved in the Hugging Face GPT-2 format")
    activation = {"gelu_new": "gelu_new", "gelu": "gelu", "relu": "relu"}[c.activation]
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": c.vocab_size,
            "n_positions": c.block_size, "n_ctx": c.block_size, "n_embd": c.n_embd, "n_layer": c.n_layer,
            "n_head": c.n_head, "n_inner": round(c.mlp_ratio * c.n_embd), "activation_function": activation,
            "layer_norm_epsilon": c.norm_eps, "tie_word_embeddings": c.tie_embeddings,
            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
            # special-token ids come from the tokenizer; GPT-2's own vocabulary ends with <|endoftext|>
            "bos_token_id": _special_id(tokenizer, "bos_token_id", c.vocab_size),
            "eos_token_id": _special_id(tokenizer, "eos_token_id", c.vocab_size), "dtype": "float32"}


def _special_id(tokenizer, attribute: str, vocab_size: int) -> int | None:
    if tokenizer is not None:
        return getattr(tokenizer, attribute)
    return 50256 if vocab_size == 50257 else None


def load_hf_gpt2(directory: str | Path, hf_config: dict) -> GPT:
    directory = Path(directory)
    model = GPT(config_from_hf(hf_config))
    state = {}
    for key, tensor in load_state_dict(directory).items():
        if key.endswith((".attn.bias", ".attn.masked_bias")):
            continue
        if not key.startswith(("transformer.", "lm_head.")):
            key = "transformer." + key  # saved from GPT2Model rather than GPT2LMHeadModel
        if key.endswith(CONV1D_SUFFIXES):
            tensor = tensor.t()
        state[key] = tensor.float().contiguous()
    allowed = ("lm_head.weight",) if model.config.tie_embeddings else ()
    load_into(model, state, str(directory), allowed_missing=allowed)
    return model


def save_hf_gpt2(model: GPT, directory: str | Path, tokenizer=None) -> Path:
    """Write config.json + model.safetensors that `transformers.GPT2LMHeadModel` loads."""
    directory = Path(directory)
    hf_config = config_to_hf(model.config, tokenizer)
    state = {}
    for key, tensor in model.state_dict().items():
        if key == "lm_head.weight" and model.config.tie_embeddings:
            continue
        state[key] = tensor.t() if key.endswith(CONV1D_SUFFIXES) else tensor
    with atomic_directory(directory) as tmp:
        save_state_dict(state, tmp / "model.safetensors")
        atomic_write_json(tmp / "config.json", hf_config)
        if tokenizer is not None:
            tokenizer.save(tmp)
    return directory


