"""CUDA paths: the same code on a GPU gives what it gives on the CPU (skipped without a GPU).

CI has no GPU; these run on a lent GPU machine to check that nothing in the models, generation,
the Trainer or the transfer tools assumes the CPU.
"""

from __future__ import annotations

import pytest
import torch

from dlforge.models import GPT, Bert, BertConfig, GPTConfig
from dlforge.text.generation import generate
from dlforge.training.trainer import TrainConfig, Trainer
from dlforge.transfer import apply_lora, merge_lora

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _bert(task="sequence-classification"):
    torch.manual_seed(0)
    return Bert(BertConfig(vocab_size=64, hidden_size=32, n_layer=2, n_head=4, intermediate_size=64,
                           max_position=32, dropout=0.0, task=task, num_labels=2)).eval()


def test_bert_forward_matches_cpu():
    model = _bert()
    ids = torch.randint(0, 64, (3, 16))
    mask = torch.ones_like(ids)
    mask[0, 10:] = 0
    cpu = model(ids, mask).logits
    gpu = model.cuda()(ids.cuda(), mask.cuda()).logits.cpu()
    torch.testing.assert_close(gpu, cpu, atol=1e-4, rtol=1e-4)


def test_gpt_cached_generation_matches_cpu():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=64, n_layer=2, n_head=2, n_embd=32, dropout=0.0)).eval()
    prompt = torch.randint(0, 50, (2, 5))
    cpu = generate(model, prompt, max_new_tokens=20, temperature=0.0)
    gpu = generate(model.cuda(), prompt.cuda(), max_new_tokens=20, temperature=0.0)
    assert torch.equal(gpu.cpu(), cpu)


class _Batches:
    def train_batch(self, step, micro_step=0, rank=0, world_size=1):
        g = torch.Generator().manual_seed(step)
        labels = torch.randint(0, 2, (16,), generator=g)
        ids = torch.randint(0, 30, (16, 12), generator=g) + 2 + 30 * labels[:, None]
        return {"input_ids": ids, "labels": labels}

    def eval_batches(self, rank=0, world_size=1):
        return [self.train_batch(10_000 + i) for i in range(2)]


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_trainer_learns_on_cuda_and_resumes(tmp_path, precision):
    model = _bert().train()
    cfg = TrainConfig(max_steps=40, lr=3e-3, warmup_steps=2, eval_interval=20, precision=precision, device="cuda")
    result = Trainer(model, cfg, _Batches(), tmp_path / "run", progress=False).fit()
    assert result["best_val_loss"] < 0.3
    # resuming the finished run loads the last checkpoint onto the GPU: same weights, nothing left to do
    again = Trainer(_bert().train(), cfg, _Batches(), tmp_path / "run", progress=False)
    assert again.fit(resume=True)["step"] == 40
    for (name, a), b in zip(model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_lora_merge_on_cuda():
    model = _bert().cuda()
    apply_lora(model, targets=r"(c_attn|c_proj|c_fc)$", r=4)
    ids = torch.randint(0, 64, (2, 10), device="cuda")
    for layer in model.modules():
        if hasattr(layer, "lora_B"):
            torch.nn.init.normal_(layer.lora_B, std=0.1)
    before = model(ids).logits
    merge_lora(model)
    torch.testing.assert_close(model(ids).logits, before, atol=1e-4, rtol=1e-4)
