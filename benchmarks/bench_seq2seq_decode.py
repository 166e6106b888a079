"""Encoder–decoder decoding speed: beam search 4, dlforge vs transformers `generate()` on the same weights.

Two shapes, each a random-init Hugging Face model saved locally and loaded by both libraries:
- `multi30k`: a BART-architecture model with the shape of the Multi30k recipe (d=256, 3+3 layers, 4 heads, FFN 1024,
  vocab 8,000), 32 Multi30k test sources per batch;
- `t5-small`: T5 v1.0 small (d=512, 6+6 layers, 8 heads, FFN 2048, vocab 32,128), 8 sources per batch.
Every beam is forced to the same length (min_new_tokens = max_new_tokens), so both do the same work, and the
outputs are compared (in bf16 the two round differently, so they may differ). Tokens/s counts new tokens of the
returned sequences (batch × max_new_tokens). fp32, and bf16 (HF under autocast, dlforge with bf16 weights); 2 threads.
If the trained Multi30k run exists (runs/bench-multi30k), its test-set beam-4 speed is reported too.

    python benchmarks/bench_seq2seq_decode.py
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch
from common import best_time, emit_json, print_table, shared_data_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MAX_NEW = 32


def sources(n: int) -> list[str]:
    data = shared_data_dir()
    path = None if data is None else data / "multi30k" / "test_2016_flickr.de.gz"
    if path is not None and path.is_file():
        from dlforge.data.parallel import read_lines

        return read_lines(path)[:n]
    return ["Ein Mann fährt mit einem Fahrrad eine Straße entlang."] * n


def random_ids(n: int, length: int, vocab: int) -> torch.Tensor:
    return torch.randint(4, vocab, (n, length), generator=torch.Generator().manual_seed(0))


def compare(name: str, hf_model, folder: Path, input_ids, attention_mask, rows: list, figures: dict) -> None:
    """fp32: both libraries as loaded; bf16: HF under bf16 autocast, dlforge with bf16 weights."""
    from dlforge.models import load_pretrained

    ours, _ = load_pretrained(folder)
    options = dict(num_beams=4, max_new_tokens=MAX_NEW, min_new_tokens=MAX_NEW, early_stopping=False)
    for dtype in ("fp32", "bf16"):
        bf16 = dtype == "bf16"
        model = ours.to(torch.bfloat16 if bf16 else torch.float32)

        def run_hf(bf16=bf16):
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return hf_model.generate(input_ids=input_ids, attention_mask=attention_mask, do_sample=False,
                                         **options)

        def run_ours(model=model):
            return model.generate(input_ids, attention_mask, **options)

        same = torch.equal(run_hf(), run_ours())
        t_hf, t_ours = best_time(run_hf, repeats=3), best_time(run_ours, repeats=3)
        tokens = input_ids.size(0) * MAX_NEW
        rows.append({"model": name, "dtype": dtype, "batch": input_ids.size(0), "dlforge tok/s": tokens / t_ours,
                     "HF tok/s": tokens / t_hf, "speed-up": t_hf / t_ours, "same output": same})
        figures[f"{name} {dtype}"] = {"dlforge_tok_s": round(tokens / t_ours, 1), "hf_tok_s": round(tokens / t_hf, 1),
                                      "speedup": round(t_hf / t_ours, 2), "same_output": same}


def main():
    from transformers import BartConfig, BartForConditionalGeneration, T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    rows, figures = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        bart = BartForConditionalGeneration(BartConfig(
            vocab_size=8000, d_model=256, encoder_layers=3, decoder_layers=3, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=1024, decoder_ffn_dim=1024, max_position_embeddings=128,
            forced_eos_token_id=None)).eval()
        bart.save_pretrained(Path(tmp) / "bart")
        # Multi30k-length sources (about 16 tokens) as random ids of the same length
        ids = random_ids(32, 16, 8000)
        compare("multi30k-shaped BART", bart, Path(tmp) / "bart", ids, torch.ones_like(ids), rows, figures)
        t5 = T5ForConditionalGeneration(T5Config(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6,
                                                 num_heads=8, feed_forward_proj="relu", decoder_start_token_id=0,
                                                 pad_token_id=0, eos_token_id=1)).eval()
        t5.save_pretrained(Path(tmp) / "t5")
        ids = random_ids(8, 40, 32128)
        compare("t5-small-shaped", t5, Path(tmp) / "t5", ids, torch.ones_like(ids), rows, figures)
    run = Path("runs/bench-multi30k")
    if (run / "checkpoints").is_dir():
        from dlforge.models import load_pretrained
        from dlforge.text.seq2seq_generation import generate_text2text

        model, tokenizer = load_pretrained(run)
        texts = sources(200)
        start = time.perf_counter()
        outputs = generate_text2text(model, tokenizer, texts, num_beams=4, max_new_tokens=80, batch_size=50)
        seconds = time.perf_counter() - start
        n_tokens = sum(len(tokenizer.encode(o)) + 1 for o in outputs)  # + EOS
        figures["trained_multi30k_beam4_tok_s"] = round(n_tokens / seconds, 1)
        print(f"trained Multi30k model, beam 4, 200 test sentences: {n_tokens / seconds:,.0f} tokens/s "
              f"({seconds:.1f} s)")
    print_table(rows, ["model", "dtype", "batch", "dlforge tok/s", "HF tok/s", "speed-up", "same output"])
    emit_json("seq2seq_decode", figures)


if __name__ == "__main__":
    main()
