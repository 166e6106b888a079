"""Model ids from the Hugging Face Hub (`bert-base-uncased`, `org/name@revision`) as local folders.

`dlforge.models.load_pretrained` (through `resolve_model_dir`) calls `hub_snapshot` when its argument is not an
existing path, does not look like a local one (`looks_local`) and reads like a hub id. Only the files dlforge
reads are fetched (config, tokenizer files and the weights: safetensors, single or sharded; `pytorch_model.bin`
only when a repository has no safetensors), into the standard Hugging Face cache, so transformers and dlforge
share downloads.

The environment is read at call time (HF_HUB_CACHE / HF_HOME, HF_ENDPOINT, HF_HUB_OFFLINE), so setting it
after `huggingface_hub` was imported still counts (except that huggingface_hub itself stays offline when
HF_HUB_OFFLINE was set at its import). With HF_HUB_OFFLINE=1 only the cache is used.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import DlforgeError
from ..paths import resolve_inside
from .weights import find_weight_file

CONFIG_FILES = ["config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                "vocab.json", "merges.txt"]
SAFETENSORS_FILES = ["model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors"]
BIN_FILES = ["pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*-of-*.bin"]

# The Hub's repo-name rules: letters, digits, "-", "_", "."; at most one "/" (org/name); no "--" or "..";
# no leading or trailing "-" / "."; 96 characters at most. An optional "@revision" (branch, tag or commit).
_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?"
_HUB_ID = re.compile(rf"(?P<repo>{_PART}(?:/{_PART})?)(?:@(?P<revision>[A-Za-z0-9_.\-/]+))?")
_TRUE = {"1", "ON", "YES", "TRUE"}


def parse_hub_id(text: str) -> tuple[str, str | None] | None:
    """("org/name", revision or None) when `text` reads like a hub model id, else None.

    A revision becomes a path in the cache (`refs/<revision>`), so one that could climb out of it (`..`, a
    leading `/`, empty or dot-led parts, none of which a git branch or tag may have) is a DlforgeError.
    """
    match = _HUB_ID.fullmatch(text)
    if not match or "--" in match["repo"] or ".." in match["repo"] or len(match["repo"]) > 96:
        return None
    revision = match["revision"]
    if revision is not None and (".." in revision or any(not part or part.startswith(".")
                                                         for part in revision.split("/"))):
        raise DlforgeError(f"{text!r} asks for revision {revision!r}, which is not a branch, tag or commit name "
                           "(those have no '..', no leading '/' and no empty or dot-led parts): give one such as "
                           "main, v1.0 or a commit id")
    return match["repo"], revision


def looks_local(text: str) -> bool:
    """Whether a path that does not exist was meant as a local one, so that a typo is reported as a missing
    folder rather than looked up on the Hub: it starts with `.`, `/`, `~` or a drive, uses a backslash, sits in
    `runs/` (where dlforge writes its runs), or its parent folder exists (`existing_folder/typo`)."""
    path = Path(text)
    return (text.startswith((".", "~")) or "\\" in text or path.is_absolute() or bool(path.drive)
            or path.parts[:1] == ("runs",) or (len(path.parts) > 1 and path.parent.is_dir()))


def _offline(constants) -> bool:
    # huggingface_hub fixes its own flag at import (its HTTP layer then refuses requests): either one counts
    flags = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    return bool(constants.HF_HUB_OFFLINE) or any((v or "").upper() in _TRUE for v in flags)


def _cache_dir(constants) -> str:
    env = os.environ
    if env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE"):
        return env.get("HF_HUB_CACHE") or env["HUGGINGFACE_HUB_CACHE"]
    if env.get("HF_HOME"):
        return str(Path(env["HF_HOME"]) / "hub")
    return constants.HF_HUB_CACHE


def hub_snapshot(model_id: str) -> Path:
    """The local folder of hub id `model_id` (`name`, `org/name`, optional `@revision`), downloading if needed."""
    parsed = parse_hub_id(model_id)
    if parsed is None:
        raise DlforgeError(f"{model_id!r} is not a Hugging Face Hub model id (org/name or org/name@revision)")
    repo_id, revision = parsed
    try:
        from huggingface_hub import constants, snapshot_download
        from huggingface_hub import utils as hf  # its error classes
    except ImportError as e:
        raise DlforgeError(f"{model_id} is not a local folder, and fetching it from the Hugging Face Hub needs "
                           "huggingface_hub: pip install 'dlforge[hub]'") from e
    offline, cache = _offline(constants), _cache_dir(constants)

    def fetch(patterns: list[str]) -> Path:
        folder = snapshot_download(repo_id, revision=revision, allow_patterns=CONFIG_FILES + patterns,
                                   cache_dir=cache, local_files_only=offline,
                                   endpoint=os.environ.get("HF_ENDPOINT") or None)
        # the snapshot's name comes from a refs/ file or from the server's commit id: either could lead out of
        # the cache, which is refused before anything in the folder is looked at
        resolve_inside(cache, os.path.relpath(folder, cache), f"the snapshot folder of {model_id}")
        return Path(folder)

    try:
        folder = fetch(SAFETENSORS_FILES)
        if find_weight_file(folder) is None:  # an older repository with PyTorch pickles only
            folder = fetch(BIN_FILES)
    except hf.GatedRepoError as e:  # (a subclass of RepositoryNotFoundError: test it first)
        raise DlforgeError(f"{repo_id} is a gated repository: accept its terms on the Hub, then log in "
                           "(`hf auth login` or HF_TOKEN)") from e
    except hf.RevisionNotFoundError as e:
        raise DlforgeError(f"{repo_id} has no revision {revision!r} on the Hugging Face Hub: give a branch, "
                           "tag or commit that exists") from e
    except hf.RepositoryNotFoundError as e:
        raise DlforgeError(f"{model_id} is not a local folder, and the Hugging Face Hub has no model {repo_id} "
                           "(repository not found; private ones need `hf auth login` or HF_TOKEN)") from e
    except hf.LocalEntryNotFoundError as e:
        reason = "HF_HUB_OFFLINE is set" if offline else "the hub cannot be reached"
        raise DlforgeError(f"{model_id} is neither a local folder nor in the local Hugging Face cache "
                           f"(HF_HUB_CACHE={cache}), and {reason}: download it once with network, "
                           "or pass a local folder") from e
    except hf.HFValidationError as e:
        raise DlforgeError(f"{model_id} does not exist: give a dlforge run folder, a model directory or a "
                           "Hugging Face Hub id") from e
    except hf.HfHubHTTPError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DlforgeError(f"cannot download {repo_id} from the Hugging Face Hub ({first}): try again later, "
                           "or pass a local folder") from e
    if not (folder / "config.json").is_file():
        raise DlforgeError(f"the Hugging Face Hub repository {repo_id} has no config.json: it is not a model in "
                           "the transformers format that dlforge loads")
    return folder
