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


# ------------------------------------------------------------------ finetune and pipelines on the GPU
def _keyword_task(root):
    """A tiny random-init BERT + WordPiece and a 2-class keyword task (train.csv, dev.csv) in `root`."""
    import random

    from dlforge.models import save_pretrained
    from dlforge.text.tokenizers import WordPieceTokenizer

    clues = {"pos": ["great", "superb", "lovely"], "neg": ["awful", "dull", "boring"]}
    filler = ["the", "film", "was", "a", "story", "plot", "and", "with", "its"]
    rng = random.Random(0)

    def rows(n):
        out = []
        for _ in range(n):
            label = rng.choice(sorted(clues))
            words = [rng.choice(clues[label])] + [rng.choice(filler) for _ in range(rng.randint(3, 6))]
            rng.shuffle(words)
            out.append(f"{' '.join(words)},{label}")
        return "text,label\n" + "\n".join(out) + "\n"

    (root / "train.csv").write_text(rows(300))
    (root / "dev.csv").write_text(rows(60))
    tok = WordPieceTokenizer.train([" ".join(w for ws in clues.values() for w in ws) + " " + " ".join(filler)] * 3,
                                   vocab_size=80)
    torch.manual_seed(0)
    save_pretrained(Bert(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, n_layer=2, n_head=2,
                                    intermediate_size=64, max_position=64)), root / "tiny", tok)
    return root


@pytest.mark.parametrize("method, lr", [("full", 3e-3), ("lora", 1e-2)])
def test_finetune_on_cuda_learns_and_exports(tmp_path, method, lr):
    import dlforge
    from dlforge.transfer import finetune

    root = _keyword_task(tmp_path)
    report = finetune(root / "tiny", "text-classification", root / "train.csv", root / "dev.csv",
                      out=root / method, method=method, lr=lr, epochs=6, batch_size=16, device="cuda",
                      progress=False, seed=0)
    assert report["accuracy"] >= 0.85, report  # majority class: 0.62
    texts = [line.split(",")[0] for line in (root / "dev.csv").read_text().splitlines()[1:]]
    on_cpu = dlforge.pipeline("text-classification", model=root / method / "model")(texts, top_k=None)
    on_gpu = dlforge.pipeline("text-classification", model=root / method / "model", device="cuda")(texts, top_k=None)
    assert [r[0]["label"] for r in on_gpu] == [r[0]["label"] for r in on_cpu]
    for a, b in zip(on_gpu, on_cpu):
        assert [x["score"] for x in a] == pytest.approx([x["score"] for x in b], abs=1e-4)


@pytest.mark.parametrize("task, head, call", [
    ("feature-extraction", "none", lambda p: p("the film was great")),
    ("sentence-similarity", "none", lambda p: p(["the film was great"], others=["a dull plot", "lovely"])),
    ("zero-shot-classification", "none", lambda p: p("the film was great", candidate_labels=["dull", "lovely"])),
    ("fill-mask", "masked-lm", lambda p: p("the film was [MASK]", top_k=3)),
    ("ner", "token-classification", lambda p: p("the film was great", aggregation_strategy="simple")),
    ("question-answering", "question-answering",
     lambda p: p(question="what was the film?", context="the film was great and its plot lovely", top_k=2)),
])
def test_pipelines_on_cuda_match_cpu(tmp_path, task, head, call):
    import dlforge
    from dlforge.models import load_pretrained, save_pretrained

    root = _keyword_task(tmp_path)
    torch.manual_seed(1)
    labels = ["O", "B-X", "I-X"] if head == "token-classification" else None
    model, tok = load_pretrained(root / "tiny", task=None if head == "none" else head, labels=labels)
    folder = save_pretrained(model, root / head, tok)
    cpu, gpu = call(dlforge.pipeline(task, model=folder)), call(dlforge.pipeline(task, model=folder, device=0))

    def numbers(x):  # every float in a nested result, in order
        if isinstance(x, float):
            return [x]
        if isinstance(x, dict):
            return [v for k in sorted(x) for v in numbers(x[k])]
        return [v for item in x for v in numbers(item)] if isinstance(x, list) else []

    def rest(x):  # the result with its floats blanked: labels, words and offsets must be equal
        if isinstance(x, float):
            return None
        if isinstance(x, dict):
            return {k: rest(v) for k, v in x.items()}
        return [rest(v) for v in x] if isinstance(x, list) else x

    assert rest(gpu) == rest(cpu)
    assert numbers(gpu) == pytest.approx(numbers(cpu), abs=1e-3)


@pytest.mark.parametrize("positional", ["sinusoidal", "relative"])
def test_seq2seq_beam_search_on_cuda_matches_cpu(positional):
    from dlforge.models import Seq2Seq, Seq2SeqConfig

    torch.manual_seed(0)
    model = Seq2Seq(Seq2SeqConfig(vocab_size=40, d_model=32, n_encoder_layers=2, n_decoder_layers=2, n_head=4,
                                  d_ff=64, dropout=0.0, positional=positional, tie_embeddings=False)).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(4.0)  # peaked distributions: no near-ties for the two devices to break apart
    ids = torch.randint(3, 40, (3, 9))
    mask = torch.ones_like(ids)
    mask[2, 6:] = 0
    options = dict(num_beams=3, max_new_tokens=12, no_repeat_ngram_size=2)
    cpu = model.generate(ids, mask, **options)
    gpu = model.cuda().generate(ids.cuda(), mask.cuda(), **options).cpu()
    assert torch.equal(gpu, cpu)
