"""SST-2 sentiment from frozen all-MiniLM-L6-v2 features + logistic regression (issue 3, features row).

Reference computed in the same run: sentence-transformers embeddings of the same training
sentences + the same scikit-learn logistic regression. Accuracy on the SST-2 dev set (872).

    python benchmarks/bench_sst2_features.py [--train 20000]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from common import emit_json, minilm_dir, print_table, shared_data_dir  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402

from dlforge.models import load_pretrained  # noqa: E402
from dlforge.transfer import extract_features, fit_classifier  # noqa: E402


def read_tsv(path):
    rows = [line.rsplit("\t", 1) for line in path.read_text(encoding="utf-8").splitlines()[1:]]
    return [r[0] for r in rows], np.array([int(r[1]) for r in rows])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--train", type=int, default=20000)
    args = parser.parse_args()
    data = shared_data_dir()
    if data is None or not (data / "sst2" / "train.tsv").is_file():
        print("skipped: SST-2 not found (set DLFORGE_DATA or put shared/data beside the repo)")
        sys.exit(0)
    train_x, train_y = read_tsv(data / "sst2" / "train.tsv")
    dev_x, dev_y = read_tsv(data / "sst2" / "dev.tsv")
    rng = np.random.default_rng(0)
    pick = rng.permutation(len(train_x))[: args.train]
    train_x, train_y = [train_x[i] for i in pick], train_y[pick]

    model_dir = minilm_dir()
    model, tokenizer = load_pretrained(model_dir)
    start = time.perf_counter()
    f_train = extract_features(model, tokenizer, train_x, normalize=True)
    f_dev = extract_features(model, tokenizer, dev_x, normalize=True)
    t_ours = time.perf_counter() - start
    ours = (fit_classifier(f_train, train_y).predict(f_dev) == dev_y).mean()

    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(model_dir, device="cpu")
    start = time.perf_counter()
    r_train, r_dev = st.encode(train_x, batch_size=64), st.encode(dev_x, batch_size=64)
    t_ref = time.perf_counter() - start
    ref = (LogisticRegression(max_iter=2000).fit(r_train, train_y).predict(r_dev) == dev_y).mean()
    rows = [{"features": "dlforge", "train sentences": len(train_x), "embed s": t_ours, "dev accuracy": ours},
            {"features": "sentence-transformers", "train sentences": len(train_x), "embed s": t_ref,
             "dev accuracy": ref}]
    print_table(rows, list(rows[0].keys()))
    emit_json("sst2_features", {"train_sentences": len(train_x), "dlforge_accuracy": round(float(ours), 4),
                                "reference_accuracy": round(float(ref), 4), "dlforge_embed_s": round(t_ours, 1),
                                "reference_embed_s": round(t_ref, 1)})


if __name__ == "__main__":
    main()
