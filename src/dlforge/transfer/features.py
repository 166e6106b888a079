"""Feature extraction: a frozen encoder turns texts into fixed vectors for a small classifier.

`extract_features` embeds texts in batches ([CLS], mean, max or mean·sqrt(T) pooling; fp32, or bf16
autocast when asked) without gradients, with a progress bar, and can cache the result as a .npy file keyed by
the texts, the settings and the encoder's weights, so trying several classifiers (or resuming a run) does not
re-run the encoder. `fit_classifier` trains any scikit-learn estimator on the features (logistic
regression by default; scikit-learn is the optional extra `dlforge[eval]`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import DlforgeError
from ..io import atomic_path
from ..models.bert import check_pooling


def _cache_key(texts: list[str], settings: dict, model) -> str:
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for name, p in model.named_parameters():  # the encoder's weights: another checkpoint, other vectors
        if not name.startswith("head."):  # the head never touches the vectors
            digest.update(name.encode())
            digest.update(p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass") + b"\0")
    return digest.hexdigest()[:16]


@torch.no_grad()
def extract_features(model, tokenizer, texts: list[str], batch_size: int = 64, max_length: int = 256,
                     pooling: str = "mean", normalize: bool = False, cache_dir: str | Path | None = None,
                     dtype: torch.dtype | None = None, progress: bool = True) -> np.ndarray:
    """(N, hidden) float32 features of `texts` from `model.embed` (a dlforge encoder), on the model's device.

    `dtype`: None computes in fp32; torch.bfloat16 under autocast (faster on CPUs with bf16 units, vectors
    slightly off). `progress`: a tqdm bar over the texts (nothing is shown when they come from the cache).
    """
    check_pooling(pooling)
    settings = {"pooling": pooling, "normalize": normalize, "max_length": max_length, "dtype": str(dtype),
                "model": type(model).__name__, "config": repr(model.config)}
    cache_file = Path(cache_dir) / f"features-{_cache_key(texts, settings, model)}.npy" if cache_dir else None
    if cache_file is not None and cache_file.is_file():
        return np.load(cache_file)
    model.eval()
    device = next(model.parameters()).device
    # sort by length so each batch pads little; results go back to the input order
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.empty((len(texts), model.config.hidden_size), dtype=np.float32)
    with tqdm(total=len(texts), desc=f"features ({pooling} pooling)", unit="text", disable=not progress) as bar:
        for start in range(0, len(texts), batch_size):
            rows = order[start:start + batch_size]
            enc = tokenizer.encode_batch([texts[i] for i in rows], padding="longest", truncation=True,
                                         max_length=max_length, add_special_tokens=True)
            with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                vectors = model.embed(enc["input_ids"].to(device), enc["attention_mask"].to(device),
                                      pooling=pooling, normalize=normalize)  # (B, hidden)
            out[rows] = vectors.float().cpu().numpy()
            bar.update(len(rows))
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache_file) as tmp, open(tmp, "wb") as f:
            np.save(f, out)
    return out


def fit_classifier(features: np.ndarray, labels, estimator=None):
    """Fit `estimator` (default: logistic regression) on features; returns the fitted estimator."""
    if estimator is None:
        try:
            from sklearn.linear_model import LogisticRegression
        except ImportError as e:
            raise DlforgeError("feature classifiers need scikit-learn: pip install 'dlforge[eval]'") from e
        estimator = LogisticRegression(max_iter=2000)
    return estimator.fit(features, np.asarray(labels))
