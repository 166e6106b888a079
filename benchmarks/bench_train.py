"""Training throughput: dlforge's Trainer step vs the same loop on transformers' GPT2LMHeadModel.

Same GPT shape, same weights, same batch of token ids, AdamW, gradient clipping; fp32 and bf16
autocast. dlforge's step is `Trainer._train_step` itself (fused AdamW, its loss and autocast);
the reference is the loop a Hugging Face user writes (torch AdamW defaults). MFU is achieved
model FLOP/s (6·N per token + 12·L·T·d for attention, PaLM's accounting) over the matmul peak of
this machine measured in the same run, for that dtype.

    python benchmarks/bench_train.py [--shapes small,gpt2] [--steps 6]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from common import emit_json, matmul_peak, print_table
from transformers import GPT2Config, GPT2LMHeadModel

from dlforge.models import load_pretrained
from dlforge.training import TrainConfig, Trainer

SHAPES = {"small": dict(n_layer=6, n_head=6, n_embd=384, block=256, batch=8),
          "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block=256, batch=4)}


class FixedBatches:
    """Random token batches, one per step (the same ids for both libraries)."""

    def __init__(self, vocab: int, batch: int, block: int):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, vocab, (batch, block + 1), generator=g)

    def train_batch(self, step, micro_step=0, rank=0, world_size=1):
        return {"input_ids": self.ids[:, :-1], "targets": self.ids[:, 1:]}

    def eval_batches(self, rank=0, world_size=1):
        return []


def time_steps(step_fn, steps: int) -> float:
    for _ in range(2):
        step_fn()
    start = time.perf_counter()
    for _ in range(steps):
        step_fn()
    return (time.perf_counter() - start) / steps


def hf_step_fn(model, ids, dtype):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", default="small,gpt2")
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    torch.manual_seed(0)
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print(f"matmul peak: fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s")
    rows, figures = [], {"peak_fp32_GFLOPs": round(peaks["fp32"] / 1e9), "peak_bf16_GFLOPs": round(peaks["bf16"] / 1e9)}
    for shape in args.shapes.split(","):
        s = SHAPES[shape]
        hf_config = GPT2Config(vocab_size=50257, n_positions=1024, n_layer=s["n_layer"], n_head=s["n_head"],
                               n_embd=s["n_embd"])
        for dtype in args.dtypes.split(","):
            torch.manual_seed(0)
            hf = GPT2LMHeadModel(hf_config).train()
            with tempfile.TemporaryDirectory() as d:
                hf.save_pretrained(d)
                ours, _ = load_pretrained(d)
            ours.train()
            data = FixedBatches(50257, s["batch"], s["block"])
            with tempfile.TemporaryDirectory() as run:
                trainer = Trainer(ours, TrainConfig(lr=1e-4, warmup_steps=1, precision=dtype, batch_size=s["batch"]),
                                  data, run, progress=False)
                t_ours = time_steps(trainer._train_step, args.steps)
            t_hf = time_steps(hf_step_fn(hf, data.ids[:, :-1], dtype), args.steps)
            tokens = s["batch"] * s["block"]
            n_params = sum(p.numel() for p in ours.parameters()) - ours.transformer.wpe.weight.numel()
            flops_per_token = 6 * n_params + 12 * s["n_layer"] * s["block"] * s["n_embd"]
            mfu_ours = flops_per_token * tokens / t_ours / peaks[dtype]
            mfu_hf = flops_per_token * tokens / t_hf / peaks[dtype]
            rows.append({"shape": shape, "dtype": dtype, "batch x T": f"{s['batch']}x{s['block']}",
                         "dlforge tok/s": tokens / t_ours, "HF tok/s": tokens / t_hf, "speed-up": t_hf / t_ours,
                         "dlforge MFU": f"{mfu_ours:.1%}", "HF MFU": f"{mfu_hf:.1%}"})
            figures[f"{shape}_{dtype}"] = {"dlforge_tok_s": round(tokens / t_ours), "hf_tok_s": round(tokens / t_hf),
                                           "speedup": round(t_hf / t_ours, 2), "dlforge_mfu": round(mfu_ours, 3),
                                           "hf_mfu": round(mfu_hf, 3)}
            print_table(rows[-1:], list(rows[-1].keys()))
    print()
    print_table(rows, list(rows[0].keys()))
    emit_json("train", figures)


if __name__ == "__main__":
    main()
