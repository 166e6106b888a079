"""Tests for dlforge.models.pretrained (model directories, run folders) and dlforge.hub.weights (weight files)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dlforge.errors import DlforgeError
from dlforge.hub import load_state_dict
from dlforge.models import GPT, GPTConfig, load_pretrained, resolve_model_dir, save_pretrained
from dlforge.text import CharTokenizer


def tiny_gpt(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    cfg = dict(vocab_size=29, block_size=12, n_layer=2, n_head=2, n_embd=8)
    cfg.update(overrides)
    model = GPT(GPTConfig(**cfg)).eval()
    with torch.no_grad():  # LN affine and biases away from their init values
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


IDS = torch.tensor([[1, 5, 9, 2, 28, 0, 3], [4, 4, 7, 8, 11, 20, 6]])


def safetensor_keys(path: Path) -> list[str]:
    with safe_open(str(path), framework="pt") as f:
        return list(f.keys())


@pytest.fixture
def saved(tmp_path) -> tuple[GPT, Path]:
    model = tiny_gpt()
    return model, save_pretrained(model, tmp_path / "model")


def _edit_config(directory: Path, edit) -> None:
    path = directory / "config.json"
    cfg = json.loads(path.read_text())
    edit(cfg)
    path.write_text(json.dumps(cfg))


# ----------------------------------------------------------------------------- round trips


def test_round_trip_tied_embeddings(saved):
    model, directory = saved
    assert sorted(p.name for p in directory.iterdir()) == ["config.json", "model.safetensors"]
    keys = safetensor_keys(directory / "model.safetensors")
    assert "transformer.wte.weight" in keys and "lm_head.weight" not in keys  # tied tensor stored once
    assert len(keys) == len(set(keys))
    assert set(keys) | {"lm_head.weight"} == set(model.state_dict())
    cfg = json.loads((directory / "config.json").read_text())
    assert cfg["dlforge_kind"] == "gpt" and cfg["config"]["n_embd"] == 8 and "dlforge_version" in cfg

    loaded, tokenizer = load_pretrained(directory)
    assert tokenizer is None and isinstance(loaded, GPT) and not loaded.training
    assert loaded.config == model.config
    assert loaded.lm_head.weight is loaded.transformer.wte.weight  # still tied after loading
    assert torch.equal(loaded(IDS).logits, model(IDS).logits)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


@pytest.mark.parametrize("overrides", [dict(tie_embeddings=False), dict(positional="rotary", norm="rmsnorm"),
                                       dict(positional="sinusoidal", activation="swiglu", bias=False)])
def test_round_trip_other_configs(tmp_path, overrides):
    model = tiny_gpt(**overrides)
    save_pretrained(model, tmp_path / "m")
    keys = safetensor_keys(tmp_path / "m" / "model.safetensors")
    assert ("lm_head.weight" in keys) == (not model.config.tie_embeddings)
    assert not any(k.endswith(("rotary.cos", "rotary.sin", "wpe.table")) for k in keys)  # non-persistent
    loaded, _ = load_pretrained(tmp_path / "m")
    assert loaded.config == model.config
    assert torch.equal(loaded(IDS).logits, model(IDS).logits)


def test_round_trip_with_tokenizer(tmp_path):
    tok = CharTokenizer.train("hello world, abc xyz!")
    model = tiny_gpt(vocab_size=tok.vocab_size)
    save_pretrained(model, tmp_path / "m", tokenizer=tok)
    assert (tmp_path / "m" / "tokenizer.json").is_file()
    loaded, loaded_tok = load_pretrained(tmp_path / "m")
    assert loaded_tok is not None
    assert loaded_tok.encode("hello xyz") == tok.encode("hello xyz")
    assert loaded_tok.decode(tok.encode("abc!")) == "abc!"


def test_save_pretrained_replaces_existing_directory(tmp_path):
    first, second = tiny_gpt(seed=0), tiny_gpt(seed=1)
    save_pretrained(first, tmp_path / "m")
    (tmp_path / "m" / "stale.txt").write_text("old")
    save_pretrained(second, tmp_path / "m")
    assert not (tmp_path / "m" / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary leftovers
    loaded, _ = load_pretrained(tmp_path / "m")
    assert torch.equal(loaded(IDS).logits, second(IDS).logits)
    assert not torch.equal(loaded(IDS).logits, first(IDS).logits)


def test_run_folder_resolves_best_then_latest(tmp_path):
    run = tmp_path / "run"
    best, latest = tiny_gpt(seed=0), tiny_gpt(seed=1)
    save_pretrained(latest, run / "checkpoints" / "step_20")
    (run / "checkpoints" / "LATEST").write_text("step_20\n")
    assert resolve_model_dir(run) == run / "checkpoints" / "step_20"
    loaded, _ = load_pretrained(run)
    assert torch.equal(loaded(IDS).logits, latest(IDS).logits)
    save_pretrained(best, run / "checkpoints" / "best")
    assert resolve_model_dir(run) == run / "checkpoints" / "best"
    loaded, _ = load_pretrained(run)
    assert torch.equal(loaded(IDS).logits, best(IDS).logits)


def test_run_folder_without_finished_checkpoint(tmp_path):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(DlforgeError, match="no finished checkpoint"):
        load_pretrained(tmp_path / "run")
    (tmp_path / "run" / "checkpoints" / "LATEST").write_text("step_5")  # points at nothing
    with pytest.raises(DlforgeError, match="no finished checkpoint"):
        load_pretrained(tmp_path / "run")


# ----------------------------------------------------------------------------- errors


def test_truncated_safetensors(saved):
    _, directory = saved
    path = directory / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DlforgeError, match="corrupt or truncated") as err:
        load_pretrained(directory)
    assert "model.safetensors" in str(err.value)
    with pytest.raises(DlforgeError, match="corrupt or truncated"):
        load_state_dict(directory)


def test_truncated_pytorch_model_bin(tmp_path):
    model = tiny_gpt()
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    assert set(load_state_dict(tmp_path)) == set(model.state_dict())
    data = (tmp_path / "pytorch_model.bin").read_bytes()
    (tmp_path / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(DlforgeError, match="corrupt or truncated"):
        load_state_dict(tmp_path)


def test_garbage_config_json(saved):
    _, directory = saved
    (directory / "config.json").write_text("{this is not json")
    with pytest.raises(DlforgeError, match="not valid JSON"):
        load_pretrained(directory)
    (directory / "config.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DlforgeError, match="config.json"):
        load_pretrained(directory)


def test_unknown_dlforge_kind(saved):
    _, directory = saved
    _edit_config(directory, lambda c: c.update(dlforge_kind="mamba"))
    with pytest.raises(DlforgeError, match="'mamba'"):
        load_pretrained(directory)


def test_invalid_model_config(saved):
    _, directory = saved
    _edit_config(directory, lambda c: c["config"].update(n_heads_typo=3))
    with pytest.raises(DlforgeError, match="invalid model config.*n_heads_typo"):
        load_pretrained(directory)
    _edit_config(directory, lambda c: c.update(config={"n_embd": 10, "n_head": 3}))
    with pytest.raises(DlforgeError, match="invalid model config"):
        load_pretrained(directory)


def test_unsupported_foreign_config(saved):
    _, directory = saved
    (directory / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(DlforgeError, match="llama"):
        load_pretrained(directory)
    (directory / "config.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(DlforgeError, match="not a model dlforge can load"):
        load_pretrained(directory)


def _rewrite_weights(directory: Path, edit) -> None:
    state = load_file(str(directory / "model.safetensors"))
    edit(state)
    save_file(state, str(directory / "model.safetensors"))


def test_shape_mismatch_names_the_key(saved):
    _, directory = saved
    _rewrite_weights(directory, lambda s: s.update({"transformer.ln_f.weight": torch.ones(9)}))
    with pytest.raises(DlforgeError, match=r"shape mismatch.*transformer\.ln_f\.weight \(9,\) vs \(8,\)"):
        load_pretrained(directory)


def test_unexpected_key_names_the_key(saved):
    _, directory = saved
    _rewrite_weights(directory, lambda s: s.update({"transformer.h.7.extra.weight": torch.ones(2)}))
    with pytest.raises(DlforgeError, match=r"unexpected 1 weight\(s\): transformer\.h\.7\.extra\.weight"):
        load_pretrained(directory)


def test_missing_key_names_the_key(saved):
    _, directory = saved
    _rewrite_weights(directory, lambda s: s.pop("transformer.h.1.mlp.c_fc.bias"))
    with pytest.raises(DlforgeError, match=r"missing 1 weight\(s\): transformer\.h\.1\.mlp\.c_fc\.bias"):
        load_pretrained(directory)


def test_missing_lm_head_of_untied_model_is_an_error(tmp_path):
    model = tiny_gpt(tie_embeddings=False)
    save_pretrained(model, tmp_path / "m")
    _rewrite_weights(tmp_path / "m", lambda s: s.pop("lm_head.weight"))
    with pytest.raises(DlforgeError, match="lm_head.weight"):
        load_pretrained(tmp_path / "m")


def test_missing_directory_and_file_paths(tmp_path):
    with pytest.raises(DlforgeError, match="does not exist"):
        load_pretrained(tmp_path / "nope")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DlforgeError, match="is a file"):
        load_pretrained(tmp_path / "file.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DlforgeError, match="no config.json"):
        load_pretrained(tmp_path / "empty")


def test_missing_weights(saved):
    _, directory = saved
    (directory / "model.safetensors").unlink()
    with pytest.raises(DlforgeError, match="no weights"):
        load_pretrained(directory)


def test_expected_kind(saved):
    model, directory = saved
    with pytest.raises(DlforgeError, match="needs a bert model"):
        load_pretrained(directory, expected_kind="bert")
    loaded, _ = load_pretrained(directory, expected_kind="gpt")
    assert torch.equal(loaded(IDS).logits, model(IDS).logits)


def test_expected_kind_for_hf_gpt2(tmp_path):
    from dlforge.models.converters import save_hf_gpt2

    save_hf_gpt2(tiny_gpt(), tmp_path / "hf")
    with pytest.raises(DlforgeError, match="GPT-2 model, but this command needs a bert model"):
        load_pretrained(tmp_path / "hf", expected_kind="bert")
    model, _ = load_pretrained(tmp_path / "hf", expected_kind="gpt")
    assert isinstance(model, GPT)


# ----------------------------------------------------------------------------- sharded checkpoints


def _write_shards(directory: Path, state: dict[str, torch.Tensor]) -> dict[str, str]:
    directory.mkdir(parents=True, exist_ok=True)
    names = sorted(state)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    weight_map = {}
    for shard, keys in shards.items():
        save_file({k: state[k].contiguous() for k in keys}, str(directory / shard))
        weight_map.update({k: shard for k in keys})
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    return weight_map


def test_sharded_safetensors_load_state_dict(tmp_path):
    torch.manual_seed(0)
    state = {f"layer.{i}.weight": torch.randn(3, i + 1) for i in range(6)}
    weight_map = _write_shards(tmp_path / "sharded", state)
    assert len(set(weight_map.values())) == 2
    loaded = load_state_dict(tmp_path / "sharded")
    assert set(loaded) == set(state)
    for k, v in state.items():
        assert torch.equal(loaded[k], v), k


def test_sharded_dlforge_model_loads(tmp_path, saved):
    model, directory = saved
    state = load_file(str(directory / "model.safetensors"))
    sharded = tmp_path / "sharded"
    _write_shards(sharded, state)
    (sharded / "config.json").write_text((directory / "config.json").read_text())
    loaded, _ = load_pretrained(sharded)
    assert torch.equal(loaded(IDS).logits, model(IDS).logits)


def test_sharded_missing_shard_or_bad_index(tmp_path):
    state = {"a": torch.ones(2), "b": torch.zeros(3)}
    _write_shards(tmp_path / "s", state)
    (tmp_path / "s" / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(DlforgeError, match="model-00002-of-00002.safetensors.*missing"):
        load_state_dict(tmp_path / "s")
    (tmp_path / "s" / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}}))
    with pytest.raises(DlforgeError, match="weight_map"):
        load_state_dict(tmp_path / "s")
    (tmp_path / "s" / "model.safetensors.index.json").write_text("{broken")
    with pytest.raises(DlforgeError, match="not a valid shard index"):
        load_state_dict(tmp_path / "s")


def test_single_file_preferred_over_index(tmp_path):
    _write_shards(tmp_path / "d", {"a": torch.ones(2), "b": torch.zeros(3)})
    save_file({"only": torch.full((2,), 7.0)}, str(tmp_path / "d" / "model.safetensors"))
    assert set(load_state_dict(tmp_path / "d")) == {"only"}


# ----------------------------------------------------------------------------- nothing escapes the folder


def _write_index(directory: Path, weight_map) -> None:
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def test_shard_names_that_leave_the_folder_are_refused(tmp_path):
    _write_shards(tmp_path / "s", {"a": torch.ones(2), "b": torch.zeros(3)})
    save_file({"a": torch.full((2,), 9.0)}, str(tmp_path / "elsewhere.safetensors"))  # a loadable file outside
    for shard, fragment in (("../elsewhere.safetensors", "points outside that folder"),
                            ("model-00001-of-00002.safetensors/../../elsewhere.safetensors", "points outside"),
                            (str(tmp_path / "elsewhere.safetensors"), "is not a path inside that folder")):
        _write_index(tmp_path / "s", {"a": shard})
        with pytest.raises(DlforgeError, match=fragment) as info:
            load_state_dict(tmp_path / "s")
        assert "\n" not in str(info.value) and "model.safetensors.index.json" in str(info.value)
    # a link inside the folder that points outside is refused too
    (tmp_path / "s" / "link.safetensors").symlink_to(tmp_path / "elsewhere.safetensors")
    _write_index(tmp_path / "s", {"a": "link.safetensors"})
    with pytest.raises(DlforgeError, match="points outside"):
        load_state_dict(tmp_path / "s")


def test_refusal_does_not_tell_whether_the_outside_file_exists(tmp_path):
    _write_shards(tmp_path / "s", {"a": torch.ones(2)})
    save_file({"a": torch.ones(2)}, str(tmp_path / "exists.safetensors"))
    messages = []
    for name in ("exists", "absent"):
        _write_index(tmp_path / "s", {"a": f"../{name}.safetensors"})
        with pytest.raises(DlforgeError) as info:
            load_state_dict(tmp_path / "s")
        messages.append(str(info.value).replace(name, "NAME"))
    assert messages[0] == messages[1] and "missing" not in messages[0]


@pytest.mark.parametrize("index", [
    "[1, 2]",
    '"model-00001-of-00002.safetensors"',
    json.dumps({"weight_map": ["model-00001-of-00002.safetensors"]}),
    json.dumps({"weight_map": {"a": 1}}),
    json.dumps({"weight_map": {"a": ["model-00001-of-00002.safetensors"]}}),
    json.dumps({"weight_map": {"a": None}}),
    json.dumps({"weight_map": {}}),
])
def test_malformed_shard_index_is_one_line(tmp_path, index):
    _write_shards(tmp_path / "s", {"a": torch.ones(2), "b": torch.zeros(3)})
    (tmp_path / "s" / "model.safetensors.index.json").write_text(index)
    with pytest.raises(DlforgeError, match="is not a valid shard index") as info:
        load_state_dict(tmp_path / "s")
    assert "\n" not in str(info.value)


def _code_pickle(target: Path) -> bytes:
    """A protocol-0 pickle that, unpickled without weights_only, calls open(target, "w"): it creates the file."""
    return f"cbuiltins\nopen\n(V{target}\nVw\ntR.".encode()


def test_pickle_that_would_run_code_is_refused(tmp_path):
    target = tmp_path / "created-by-the-pickle"
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "pytorch_model.bin").write_bytes(_code_pickle(target))
    with pytest.raises(DlforgeError, match="holds something other than plain tensors") as info:
        load_state_dict(tmp_path / "m")
    message = str(info.value)
    assert "will not run code from a model folder" in message and "safetensors" in message
    assert "weights_only" not in message and "\n" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__  # torch's advice stays hidden
    assert not target.exists()


def test_pickled_objects_beside_the_tensors_are_refused(tmp_path):
    import argparse

    (tmp_path / "m").mkdir()
    torch.save({"w": torch.ones(2), "args": argparse.Namespace(lr=0.1)}, tmp_path / "m" / "pytorch_model.bin")
    with pytest.raises(DlforgeError, match="other than plain tensors.*re-save the weights as safetensors"):
        load_state_dict(tmp_path / "m")


@pytest.mark.parametrize("content, fragment", [
    ([torch.ones(2)], "a value of type list, not a dict of named tensors"),
    (torch.ones(2), "a value of type Tensor, not a dict of named tensors"),
    ({"w": torch.ones(2), "step": 3}, "entries other than named tensors"),
    ({1: torch.ones(2)}, "entries other than named tensors"),
])
def test_pytorch_bin_must_hold_named_tensors(tmp_path, content, fragment):
    (tmp_path / "m").mkdir()
    torch.save(content, tmp_path / "m" / "pytorch_model.bin")
    with pytest.raises(DlforgeError, match=fragment):
        load_state_dict(tmp_path / "m")


def test_latest_pointing_outside_the_run_is_refused(tmp_path):
    save_pretrained(tiny_gpt(), tmp_path / "other")  # a complete model outside the run folder
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    for pointer in ("../../other", str(tmp_path / "other")):
        (tmp_path / "run" / "checkpoints" / "LATEST").write_text(pointer + "\n")
        with pytest.raises(DlforgeError, match="the checkpoint named in LATEST") as info:
            resolve_model_dir(tmp_path / "run")
        assert "\n" not in str(info.value)
    (tmp_path / "run" / "checkpoints" / "LATEST").write_bytes(b"\xff\xfe")  # not text: no finished checkpoint
    with pytest.raises(DlforgeError, match="no finished checkpoint"):
        resolve_model_dir(tmp_path / "run")


GPT_FIELDS = dict(vocab_size=29, block_size=12, n_layer=2, n_head=2, n_embd=8)


@pytest.mark.parametrize("config, fragment", [
    ("[1, 2]", "holds an array, not a JSON object"),
    ("null", "holds null, not a JSON object"),
    ('"gpt"', "holds a string, not a JSON object"),
    ({"dlforge_kind": ["gpt"], "config": GPT_FIELDS}, "of kind ['gpt']"),
    ({"dlforge_kind": "gpt", "config": [1, 2]}, "'config' must be an object"),
    ({"dlforge_kind": "gpt", "config": {**GPT_FIELDS, "n_embd": "8"}}, "n_embd='8' is not of type int"),
    ({"dlforge_kind": "gpt", "config": {**GPT_FIELDS, "n_layer": [2]}}, "n_layer=[2] is not of type int"),
    ({"dlforge_kind": "gpt", "config": {**GPT_FIELDS, "n_head": True}}, "n_head=True is not of type int"),
    ({"model_type": "gpt2", "n_embd": 8}, "invalid model config (no 'vocab_size')"),
    ({"model_type": "gpt2", "vocab_size": 29, "n_layer": 1, "n_head": 2, "n_embd": "8"}, "invalid model config"),
    ({"model_type": "bert", "vocab_size": 10, "hidden_size": 8}, "invalid model config (no 'num_hidden_layers')"),
    ({"model_type": "vit", "hidden_size": [8]}, "invalid model config"),
])
def test_malformed_config_json_is_one_line_naming_the_file(saved, config, fragment):
    _, directory = saved
    (directory / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    with pytest.raises(DlforgeError) as info:
        load_pretrained(directory)
    message = str(info.value)
    assert fragment in message and "\n" not in message
    assert str(directory) in message


def test_tokenizer_settings_that_are_not_an_object(tmp_path):
    tok = CharTokenizer.train("hello world")
    save_pretrained(tiny_gpt(vocab_size=tok.vocab_size), tmp_path / "m", tokenizer=tok)
    (tmp_path / "m" / "special_tokens_map.json").write_text('["<unk>"]')
    with pytest.raises(DlforgeError, match="special_tokens_map.json holds a JSON list, not an object"):
        load_pretrained(tmp_path / "m")
