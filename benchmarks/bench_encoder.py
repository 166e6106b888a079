"""Encoder forward speed: all-MiniLM-L6-v2 sentence embeddings, dlforge vs transformers, same weights.

Batch 32 × 128 tokens (runs of real SST-2 dev sentences cut to exactly 128 tokens) and batch 1 (one short
sentence), fp32 and bf16. HF runs `AutoModel` (SDPA attention) under bf16 autocast; dlforge keeps
bf16 weights. Outputs are compared as mean-pooled, normalised sentence embeddings (cosine).

    python benchmarks/bench_encoder.py
"""

from __future__ import annotations

import os

import torch
from common import best_time, emit_json, minilm_dir, print_table, shared_data_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def mean_pool(hidden, mask):
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return torch.nn.functional.normalize(((hidden * m).sum(1) / m.sum(1)).float(), dim=-1)


def matmul_floor(model, tokens: int, dtype, repeats: int) -> float:
    """Seconds that the model's linear layers alone take on `tokens` rows, timed here, in this run.

    No encoder forward can be faster than its matrix products; comparing both libraries with this
    floor shows how much there is left to gain on this machine (its GEMM rate drifts with load).
    """
    total = 0.0
    for layer in model.modules():
        if isinstance(layer, torch.nn.Linear) and layer.in_features * layer.out_features > 10_000:
            x = torch.randn(tokens, layer.in_features, dtype=dtype)
            w = layer.weight.detach().to(dtype)
            total += best_time(lambda x=x, w=w: torch.nn.functional.linear(x, w), repeats)
    return total


def main():
    from transformers import AutoModel

    from dlforge.models import load_pretrained

    model_dir = minilm_dir()
    ours, tokenizer = load_pretrained(model_dir)
    hf = AutoModel.from_pretrained(model_dir).eval()
    data = shared_data_dir()
    if data is not None and (data / "sst2" / "dev.tsv").is_file():
        sentences = [line.split("\t")[0] for line in (data / "sst2" / "dev.tsv").read_text().splitlines()[1:]]
    else:
        sentences = ["a placeholder sentence about a film that is long enough to matter"] * 400
    # 32 rows of real text, each a run of consecutive sentences cut to exactly 128 tokens (no padding)
    texts = [" ".join(sentences[i * 12:(i + 1) * 12]) for i in range(32)]
    big = tokenizer.encode_batch(texts, padding="max_length", truncation=True, max_length=128,
                                 add_special_tokens=True)
    assert bool(big["attention_mask"].all()), "every row should fill 128 tokens"
    small = tokenizer.encode_batch(["a gripping, beautifully acted film."], add_special_tokens=True)
    rows, figures = [], {}
    for dtype_name in ("fp32", "bf16"):
        ours_m = ours.to(torch.float32 if dtype_name == "fp32" else torch.bfloat16)
        for label, enc in (("32x128", big), ("1xshort", small)):
            ids, mask = enc["input_ids"], enc["attention_mask"]

            def run_hf(ids=ids, mask=mask, bf16=dtype_name == "bf16"):
                with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    return hf(input_ids=ids, attention_mask=mask).last_hidden_state

            def run_ours(ids=ids, mask=mask, model=ours_m):
                with torch.no_grad():
                    return model.encode(ids, mask)

            repeats = 5 if label == "32x128" else 30
            t_hf, t_ours = best_time(run_hf, repeats), best_time(run_ours, repeats)
            t_floor = matmul_floor(ours_m, ids.numel(), next(ours_m.parameters()).dtype, repeats)
            cos = torch.nn.functional.cosine_similarity(mean_pool(run_ours(), mask), mean_pool(run_hf(), mask))
            rows.append({"dtype": dtype_name, "batch": label, "dlforge ms": t_ours * 1e3, "HF ms": t_hf * 1e3,
                         "speed-up": t_hf / t_ours, "matmul floor ms": t_floor * 1e3,
                         "HF/floor": t_hf / t_floor, "min cosine": f"{cos.min().item():.6f}"})
            figures[f"{dtype_name}_{label}"] = {
                "dlforge_ms": round(t_ours * 1e3, 2), "hf_ms": round(t_hf * 1e3, 2),
                "speedup": round(t_hf / t_ours, 2),
                "matmul_floor_ms": round(t_floor * 1e3, 2), "min_cosine": round(cos.min().item(), 6)}
            print_table(rows[-1:], list(rows[-1].keys()))
    print()
    print_table(rows, list(rows[0].keys()))
    emit_json("encoder", figures)


if __name__ == "__main__":
    main()
