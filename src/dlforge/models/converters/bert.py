"""Hugging Face BERT, RoBERTa and DistilBERT checkpoints -> dlforge `Bert`.

The three families share dlforge's post-LN encoder; only key names, the position rule and the
classification head differ. Separate query/key/value matrices are concatenated into the fused
`c_attn` projection. The task head is chosen from `architectures` in config.json
(`*ForMaskedLM`, `*ForSequenceClassification`, `*ForTokenClassification`,
`*ForQuestionAnswering`, or the bare `*Model`).

`sentence_transformers_pooling(folder)` reads how a sentence-transformers folder pools its token states
(modules.json → the Pooling module's config.json), which the bare BERT weights themselves do not say.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import torch

from ...errors import DlforgeError
from ...hub.json_files import read_json_object
from ...hub.weights import fuse_qkv, load_into, load_state_dict, save_state_dict
from ...io import atomic_directory, atomic_write_json
from ...paths import resolve_inside
from ..bert import Bert, BertConfig

FAMILIES = ("bert", "roberta", "distilbert")
TASK_SUFFIXES = {"ForMaskedLM": "masked-lm", "ForSequenceClassification": "sequence-classification",
                 "ForTokenClassification": "token-classification", "ForQuestionAnswering": "question-answering"}
PROBLEM_TYPES = {"single_label_classification": "single_label", "multi_label_classification": "multi_label",
                 "regression": "regression", None: "single_label"}

# (family, HF key pattern) -> dlforge key template; checked in order, first match wins
LAYER_RULES = {
    "bert": [
        (r"encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.(weight|bias)", r"layers.\1.attn.\2.\3"),
        (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"layers.\1.attn.c_proj."),
        (r"encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.", r"layers.\1.ln_1."),
        (r"encoder\.layer\.(\d+)\.intermediate\.dense\.", r"layers.\1.mlp.c_fc."),
        (r"encoder\.layer\.(\d+)\.output\.dense\.", r"layers.\1.mlp.c_proj."),
        (r"encoder\.layer\.(\d+)\.output\.LayerNorm\.", r"layers.\1.ln_2."),
        (r"embeddings\.LayerNorm\.", "embeddings.norm."),
        (r"embeddings\.(word|position|token_type)_embeddings\.", r"embeddings.\1_embeddings."),
        (r"pooler\.dense\.", "head.dense."),
        (r"cls\.predictions\.transform\.dense\.", "head.dense."),
        (r"cls\.predictions\.transform\.LayerNorm\.", "head.norm."),
        (r"cls\.predictions\.bias", "head.bias"),
        (r"lm_head\.dense\.", "head.dense."),
        (r"lm_head\.layer_norm\.", "head.norm."),
        (r"lm_head\.bias", "head.bias"),
        (r"classifier\.dense\.", "head.dense."),
        (r"classifier\.out_proj\.", "head.out_proj."),
    ],
    "distilbert": [
        (r"transformer\.layer\.(\d+)\.attention\.(q|k|v)_lin\.(weight|bias)", r"layers.\1.attn.\2.\3"),
        (r"transformer\.layer\.(\d+)\.attention\.out_lin\.", r"layers.\1.attn.c_proj."),
        (r"transformer\.layer\.(\d+)\.sa_layer_norm\.", r"layers.\1.ln_1."),
        (r"transformer\.layer\.(\d+)\.ffn\.lin1\.", r"layers.\1.mlp.c_fc."),
        (r"transformer\.layer\.(\d+)\.ffn\.lin2\.", r"layers.\1.mlp.c_proj."),
        (r"transformer\.layer\.(\d+)\.output_layer_norm\.", r"layers.\1.ln_2."),
        (r"embeddings\.LayerNorm\.", "embeddings.norm."),
        (r"embeddings\.(word|position)_embeddings\.", r"embeddings.\1_embeddings."),
        (r"vocab_transform\.", "head.dense."),
        (r"vocab_layer_norm\.", "head.norm."),
        (r"vocab_projector\.bias", "head.bias"),
        (r"pre_classifier\.", "head.dense."),
    ],
}
LAYER_RULES["roberta"] = LAYER_RULES["bert"]
# sentence-transformers' Pooling modes (the older boolean keys and the newer `pooling_mode` names) -> dlforge's
# POOLINGS; None: a mode dlforge's classifier does not implement
ST_POOLING_MODES = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean",
                    "pooling_mode_max_tokens": "max", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
                    "pooling_mode_weightedmean_tokens": None, "pooling_mode_lasttoken": None}
ST_POOLING_NAMES = {"cls": "cls", "mean": "mean", "max": "max", "mean_sqrt_len_tokens": "mean_sqrt_len",
                    "weightedmean": None, "lasttoken": None}
SKIPPED = re.compile(r"(position_ids|decoder\.weight|decoder\.bias|vocab_projector\.weight)$")


def config_from_hf(hf: dict) -> BertConfig:
    family = hf.get("model_type")
    architecture = (hf.get("architectures") or [""])[0]
    task = next((t for suffix, t in TASK_SUFFIXES.items() if architecture.endswith(suffix)), "none")
    labels = hf.get("id2label")
    common = dict(task=task, num_labels=len(labels) if labels else hf.get("num_labels", 2),
                  labels=[labels[k] for k in sorted(labels, key=int)] if labels else None,
                  problem_type=_problem_type(hf, labels),
                  pad_token_id=hf.get("pad_token_id", 0) or 0)
    if family == "distilbert":
        return BertConfig(vocab_size=hf["vocab_size"], hidden_size=hf["dim"], n_layer=hf["n_layers"],
                          n_head=hf["n_heads"], intermediate_size=hf["hidden_dim"],
                          activation=_activation(hf.get("activation", "gelu")),
                          max_position=hf["max_position_embeddings"], type_vocab_size=0, norm_eps=1e-12,
                          dropout=hf.get("dropout", 0.1), pooler=False, classifier_activation="relu", **common)
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise DlforgeError(f"position_embedding_type={hf['position_embedding_type']!r} is not supported "
                           "(only 'absolute')")
    offset = (common["pad_token_id"] + 1) if family == "roberta" else 0
    return BertConfig(vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], n_layer=hf["num_hidden_layers"],
                      n_head=hf["num_attention_heads"], intermediate_size=hf["intermediate_size"],
                      activation=_activation(hf.get("hidden_act", "gelu")),
                      max_position=hf["max_position_embeddings"] - offset, position_offset=offset,
                      type_vocab_size=hf.get("type_vocab_size", 2), norm_eps=hf.get("layer_norm_eps", 1e-12),
                      dropout=hf.get("hidden_dropout_prob", 0.1), pooler=family == "bert",
                      mlm_activation="gelu" if family == "roberta" else None,  # RobertaLMHead: always erf GELU
                      classifier_activation="tanh", **common)


def sentence_transformers_pooling(directory: str | Path) -> str | None:
    """The pooling (one of `models.bert.POOLINGS`) a sentence-transformers folder declares, or None when the
    folder has no modules.json or no Pooling module in it (a plain Hugging Face or dlforge folder)."""
    directory = Path(directory)
    if not (directory / "modules.json").is_file():
        return None
    modules = read_json_object(directory / "modules.json", "the model folder is damaged", expected=list)
    poolers = [m for m in modules if isinstance(m, dict) and str(m.get("type", "")).rsplit(".", 1)[-1] == "Pooling"]
    if not poolers:
        return None
    if len(poolers) > 1:
        raise DlforgeError(f"{directory / 'modules.json'} lists {len(poolers)} Pooling modules: give the pooling "
                           "explicitly (e.g. --option pooling=mean)")
    folder = resolve_inside(directory, poolers[0].get("path", ""), "the Pooling module's path")
    if not (folder / "config.json").is_file():
        raise DlforgeError(f"{folder} has no config.json: the sentence-transformers folder is incomplete; "
                           "give the pooling explicitly (e.g. --option pooling=mean)")
    config = read_json_object(folder / "config.json", "the model folder is damaged")
    if "pooling_mode" in config:  # sentence-transformers >= 5: one name or a list of names
        named = config["pooling_mode"]
        names = [str(n) for n in named] if isinstance(named, list) else [str(named)]
        modes = [(name, ST_POOLING_NAMES.get(name)) for name in names]
    else:  # older folders: one boolean per mode; with none set, sentence-transformers means the mean
        modes = [(key, ours) for key, ours in ST_POOLING_MODES.items() if config.get(key)] or [("mean", "mean")]
    if len(modes) != 1 or modes[0][1] is None:
        raise DlforgeError(f"{folder / 'config.json'} pools by {' + '.join(name for name, _ in modes)}, which "
                           "dlforge's classifier does not read: give one of cls, mean, max, mean_sqrt_len "
                           "explicitly (e.g. --option pooling=mean)")
    return modes[0][1]


def _problem_type(hf: dict, labels) -> str:
    if hf.get("problem_type") is None:  # transformers' rule: one label means regression
        n_labels = len(labels) if labels else hf.get("num_labels", 2)
        return "regression" if n_labels == 1 else "single_label"
    return PROBLEM_TYPES.get(hf["problem_type"], "single_label")


def _activation(name: str) -> str:
    mapping = {"gelu": "gelu", "gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new", "relu": "relu"}
    if name not in mapping:
        raise DlforgeError(f"activation {name!r} is not supported (known: {', '.join(mapping)})")
    return mapping[name]


def convert_state_dict(hf_state: dict[str, torch.Tensor], family: str, task: str) -> dict[str, torch.Tensor]:
    prefix = f"{family}."
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in hf_state.items():
        key = key[len(prefix):] if key.startswith(prefix) else key
        if SKIPPED.search(key) or (task != "sequence-classification" and key.startswith("pooler.")):
            continue
        if task in ("token-classification", "question-answering") and key.split(".")[0] in ("classifier",
                                                                                             "qa_outputs"):
            out["head." + key.split(".", 1)[1]] = tensor
            continue
        if family == "distilbert" and task == "sequence-classification" and key.startswith("classifier."):
            out["head.out_proj." + key.split(".", 1)[1]] = tensor
            continue
        if family == "bert" and task == "sequence-classification" and key.startswith("classifier."):
            out["head.out_proj." + key.split(".", 1)[1]] = tensor
            continue
        new = _rename(key, LAYER_RULES[family])
        match = re.match(r"layers\.(\d+)\.attn\.(query|key|value|q|k|v)\.(weight|bias)$", new)
        if match:  # gather q, k, v to fuse them below
            qkv.setdefault(f"layers.{match[1]}.attn.c_attn.{match[3]}", {})[match[2][0]] = tensor
            continue
        out[new] = tensor
    return {**out, **fuse_qkv(qkv)}


def _rename(key: str, rules) -> str:
    for pattern, template in rules:
        new, count = re.subn("^" + pattern, template, key)
        if count:
            return new
    return key  # unmapped keys are reported by name by load_into


def load_hf_bert(directory: str | Path, hf_config: dict, task: str | None = None, num_labels: int | None = None,
                 labels: list[str] | None = None) -> Bert:
    """Load a BERT-family checkpoint; `task` swaps in a new head (e.g. a classifier on a base encoder).

    A new head starts from fresh weights, except that BERT's pretrained pooler initialises the
    classifier's dense layer, as in the original fine-tuning recipe.
    """
    family = hf_config.get("model_type")
    if family not in FAMILIES:
        raise DlforgeError(f"{directory}: model_type {family!r} is not a BERT-family model ({', '.join(FAMILIES)})")
    config, new_head = with_task(config_from_hf(hf_config), task, num_labels, labels)
    state = convert_state_dict(load_state_dict(directory), family, config.task)
    return load_bert_weights(config, state, directory, new_head)


def with_task(config: BertConfig, task: str | None, num_labels: int | None = None,
              labels: list[str] | None = None) -> tuple[BertConfig, bool]:
    """The config with the head of `task` (None: the checkpoint's, with num_labels / labels if given), and whether
    that head is new."""
    if task is None and (num_labels is not None or labels is not None):
        if config.task not in ("sequence-classification", "token-classification"):
            raise DlforgeError(f"this {config.task} checkpoint has no labels to change: give task= with num_labels "
                               "or labels (e.g. task='sequence-classification')")
        task = config.task
    if num_labels is None and labels is not None:
        num_labels = len(labels)
    new_head = task is not None and (task != config.task or num_labels not in (None, config.num_labels))
    if new_head:
        n = 2 if num_labels is None else num_labels
        if n < 1 and task in ("sequence-classification", "token-classification"):
            raise DlforgeError(f"a {task} head needs num_labels >= 1 (or labels), got {n}")
        config = replace(config, task=task, num_labels=n, labels=labels,
                         problem_type="regression" if n == 1 else "single_label")
    return config, new_head


def load_bert_weights(config: BertConfig, state: dict[str, torch.Tensor], directory: str | Path,
                      new_head: bool) -> Bert:
    """Build `Bert(config)` and load dlforge-named weights; a new head keeps only same-shaped head weights."""
    model = Bert(config)
    allowed = ["head.decoder.weight"] if config.task == "masked-lm" else []
    if new_head:
        own = model.state_dict()
        state = {k: v for k, v in state.items()
                 if not k.startswith("head.") or (k in own and own[k].shape == v.shape)}
        allowed += [k for k in own if k.startswith("head.") and k not in state]
    load_into(model, {k: v.float() for k, v in state.items()}, str(directory), allowed_missing=tuple(allowed))
    return model


# ------------------------------------------------------------------ saving back to the HF format
HF_BLOCK_NAMES = {
    "bert": {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
             "attn.c_proj": "attention.output.dense", "ln_1": "attention.output.LayerNorm",
             "mlp.c_fc": "intermediate.dense", "mlp.c_proj": "output.dense", "ln_2": "output.LayerNorm",
             "layers": "encoder.layer"},
    "distilbert": {"q": "attention.q_lin", "k": "attention.k_lin", "v": "attention.v_lin",
                   "attn.c_proj": "attention.out_lin", "ln_1": "sa_layer_norm", "mlp.c_fc": "ffn.lin1",
                   "mlp.c_proj": "ffn.lin2", "ln_2": "output_layer_norm", "layers": "transformer.layer"},
}
HF_BLOCK_NAMES["roberta"] = HF_BLOCK_NAMES["bert"]
HF_HEAD_NAMES = {  # (family, task) -> dlforge head prefix -> HF name (None: encoder prefix + name)
    ("bert", "masked-lm"): {"head.dense.": "cls.predictions.transform.dense.",
                            "head.norm.": "cls.predictions.transform.LayerNorm.", "head.bias": "cls.predictions.bias"},
    ("roberta", "masked-lm"): {"head.dense.": "lm_head.dense.", "head.norm.": "lm_head.layer_norm.",
                               "head.bias": "lm_head.bias"},
    ("distilbert", "masked-lm"): {"head.dense.": "vocab_transform.", "head.norm.": "vocab_layer_norm.",
                                  "head.bias": "vocab_projector.bias"},
    ("bert", "sequence-classification"): {"head.dense.": "bert.pooler.dense.", "head.out_proj.": "classifier."},
    ("roberta", "sequence-classification"): {"head.dense.": "classifier.dense.",
                                             "head.out_proj.": "classifier.out_proj."},
    ("distilbert", "sequence-classification"): {"head.dense.": "pre_classifier.", "head.out_proj.": "classifier."},
}
ARCHITECTURES = {"none": "Model", "masked-lm": "ForMaskedLM", "sequence-classification": "ForSequenceClassification",
                 "token-classification": "ForTokenClassification", "question-answering": "ForQuestionAnswering"}
CLASS_PREFIX = {"bert": "Bert", "roberta": "Roberta", "distilbert": "DistilBert"}
PROBLEM_NAMES = {"single_label": "single_label_classification", "multi_label": "multi_label_classification",
                 "regression": "regression"}


def family_of(config: BertConfig) -> str:
    if config.type_vocab_size == 0:
        return "distilbert"
    return "roberta" if config.position_offset else "bert"


def config_to_hf(c: BertConfig) -> dict:
    family = family_of(c)
    if c.positional != "learned":
        raise DlforgeError("only encoders with learned positions can be saved in the Hugging Face format")
    if c.task == "sequence-classification" and c.classifier_pooling != "cls":
        raise DlforgeError(f"this classifier reads {c.classifier_pooling}-pooled vectors, but Hugging Face's "
                           "*ForSequenceClassification reads [CLS]: keep it in dlforge's format (save_pretrained)")
    hf = {"model_type": family, "architectures": [CLASS_PREFIX[family] + ARCHITECTURES[c.task]],
          "vocab_size": c.vocab_size, "max_position_embeddings": c.max_position + c.position_offset,
          "pad_token_id": c.pad_token_id}
    if c.task in ("sequence-classification", "token-classification"):
        names = c.labels or [f"LABEL_{i}" for i in range(c.num_labels)]
        hf["id2label"] = {str(i): n for i, n in enumerate(names)}
        hf["label2id"] = {n: i for i, n in enumerate(names)}
        if c.task == "sequence-classification":
            hf["problem_type"] = PROBLEM_NAMES[c.problem_type]
    if family == "distilbert":
        hf.update(dim=c.hidden_size, n_layers=c.n_layer, n_heads=c.n_head, hidden_dim=c.intermediate_size,
                  activation=c.activation, dropout=c.dropout, sinusoidal_pos_embds=False)
    else:
        hf.update(hidden_size=c.hidden_size, num_hidden_layers=c.n_layer, num_attention_heads=c.n_head,
                  intermediate_size=c.intermediate_size, hidden_act=c.activation, type_vocab_size=c.type_vocab_size,
                  layer_norm_eps=c.norm_eps, hidden_dropout_prob=c.dropout, attention_probs_dropout_prob=c.dropout,
                  position_embedding_type="absolute")
    return hf


def state_dict_to_hf(model: Bert) -> dict[str, torch.Tensor]:
    c = model.config
    family = family_of(c)
    prefix = "" if c.task == "none" else f"{family}."
    blocks, heads = HF_BLOCK_NAMES[family], HF_HEAD_NAMES.get((family, c.task), {})
    out = {}
    for key, tensor in model.state_dict().items():
        if key == "head.decoder.weight":
            continue  # tied to the word embeddings
        if key.startswith("embeddings."):
            name = key.replace("embeddings.norm.", "embeddings.LayerNorm.")
            out[prefix + name] = tensor
        elif key.startswith("layers."):
            _, index, rest = key.split(".", 2)
            base = f"{prefix}{blocks['layers']}.{index}."
            if rest.startswith("attn.c_attn."):
                for part, chunk in zip("qkv", tensor.chunk(3, dim=0)):
                    out[base + blocks[part] + "." + rest.rsplit(".", 1)[1]] = chunk.clone()
            else:
                module, param = rest.rsplit(".", 1)
                out[base + blocks[module] + "." + param] = tensor
        else:  # the task head
            mapped = next(((hf + key[len(ours):]) for ours, hf in heads.items() if key.startswith(ours)), None)
            if mapped is None:  # token classification and QA: one linear layer
                mapped = ("classifier." if c.task == "token-classification" else "qa_outputs.") + key.split(".", 1)[1]
            out[mapped] = tensor
    return out


def save_hf_bert(model: Bert, directory: str | Path, tokenizer=None) -> Path:
    """Write config.json + model.safetensors that transformers' Auto classes load."""
    directory = Path(directory)
    with atomic_directory(directory) as tmp:
        save_state_dict(state_dict_to_hf(model), tmp / "model.safetensors")
        atomic_write_json(tmp / "config.json", config_to_hf(model.config))
        if tokenizer is not None:
            tokenizer.save(tmp)
    return directory
