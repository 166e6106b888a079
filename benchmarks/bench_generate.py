"""Decoding speed: dlforge GPT.generate vs transformers GPT2LMHeadModel.generate, same weights.

Greedy decoding of 128 new tokens after a 16-token prompt, batch 1 and 8, for the GPT-2 124M shape
and a 6-layer 384-wide shape (random weights, GPT-2 vocabulary), in fp32 and bf16 weights.
Also reports each figure against the memory-bandwidth floor: the time to read every weight once
per token at the read bandwidth measured in this run.

    python benchmarks/bench_generate.py [--shapes gpt2,small] [--new-tokens 128]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from common import emit_json, memory_read_bandwidth, print_table
from transformers import GPT2Config, GPT2LMHeadModel

from dlforge.models import load_pretrained

SHAPES = {"gpt2": dict(n_layer=12, n_head=12, n_embd=768), "small": dict(n_layer=6, n_head=6, n_embd=384)}


def time_generate(fn, new_tokens: int, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best / new_tokens


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", default="gpt2,small")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    bandwidth = memory_read_bandwidth()
    print(f"measured read bandwidth: {bandwidth / 1e9:.1f} GB/s")
    rows, figures = [], {"read_bandwidth_GBps": round(bandwidth / 1e9, 1)}
    for shape in args.shapes.split(","):
        hf_config = GPT2Config(vocab_size=50257, n_positions=1024, **SHAPES[shape])
        hf = GPT2LMHeadModel(hf_config).eval()
        with tempfile.TemporaryDirectory() as d:
            hf.save_pretrained(d)
            ours, _ = load_pretrained(d)
        for dtype_name in args.dtypes.split(","):
            dtype = torch.float32 if dtype_name == "fp32" else torch.bfloat16
            hf_m, ours_m = hf.to(dtype), ours.to(dtype)
            weight_bytes = sum(p.numel() * p.element_size() for p in ours_m.parameters())
            floor = weight_bytes / bandwidth
            for batch in map(int, args.batches.split(",")):
                prompt = torch.randint(0, 50257, (batch, 16), generator=torch.Generator().manual_seed(batch))
                with torch.no_grad():
                    ours_out = ours_m.generate(prompt, max_new_tokens=args.new_tokens, temperature=0)
                    hf_out = hf_m.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                           max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                           pad_token_id=0)
                    def run_ours(model=ours_m, prompt=prompt):
                        return model.generate(prompt, max_new_tokens=args.new_tokens, temperature=0)

                    def run_hf(model=hf_m, prompt=prompt):
                        return model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                              max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                              pad_token_id=0)

                    t_ours = time_generate(run_ours, args.new_tokens, args.repeats)
                    t_hf = time_generate(run_hf, args.new_tokens, args.repeats)
                same = (ours_out == hf_out).float().mean().item()
                key = f"{shape}_{dtype_name}_b{batch}"
                rows.append({"shape": shape, "dtype": dtype_name, "batch": batch,
                             "dlforge ms/step": t_ours * 1e3, "HF ms/step": t_hf * 1e3,
                             "speed-up": t_hf / t_ours, "dlforge tok/s": batch / t_ours,
                             "HF tok/s": batch / t_hf, "floor ms": floor * 1e3,
                             "floor/dlforge": floor / t_ours, "same tokens": f"{same:.0%}"})
                figures[key] = {"dlforge_ms_per_step": round(t_ours * 1e3, 2), "hf_ms_per_step": round(t_hf * 1e3, 2),
                                "speedup": round(t_hf / t_ours, 2), "floor_ms": round(floor * 1e3, 2),
                                "same_tokens": round(same, 3)}
                print_table(rows[-1:], list(rows[-1].keys()))
    print()
    print_table(rows, list(rows[0].keys()))
    emit_json("generate", figures)


if __name__ == "__main__":
    main()
