"""The task pipelines behind `dlforge.pipeline` (see the package docstring)."""

from __future__ import annotations

import torch

from ..devices import resolve_device
from ..errors import DlforgeError
from ..models import load_pretrained

# How to get a model with the head a pipeline needs (appended to the error when a model lacks it).
HEAD_HINTS = {
    "masked-lm": ": give it a masked-LM head with `dlforge train bert --init MODEL --data TEXT`, or use "
                 "feature-extraction / sentence-similarity",
    "sequence-classification": ": fine-tune one with `dlforge finetune --task text-classification`",
    "token-classification": ": fine-tune one with `dlforge finetune --task token-classification`",
    "question-answering": ": fine-tune one with `dlforge finetune --task question-answering`",
}


class Pipeline:
    """Loads (model, tokenizer) once; `__call__` takes a string or a list of strings."""

    needs: tuple[str, ...] = ()  # accepted model tasks (Bert.config.task) or kinds

    def __init__(self, model, tokenizer=None, batch_size: int = 32, max_length: int = 512,
                 device: str | int | torch.device | None = None):
        if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
            model, loaded_tokenizer = load_pretrained(model)
            tokenizer = tokenizer or loaded_tokenizer
        if tokenizer is None:
            raise DlforgeError("this model folder has no tokenizer (tokenizer.json): pass tokenizer=...")
        if device is not None:  # as Hugging Face: an int is a CUDA index, -1 the CPU

            name = ("cpu" if device < 0 else f"cuda:{device}") if isinstance(device, int) else str(device)
            model = model.to(resolve_device(name))
        self.model, self.tokenizer = model.eval(), tokenizer
        self.batch_size, self.max_length = batch_size, max_length
        self._check_model()

    def _check_model(self) -> None:
        task = getattr(self.model.config, "task", self.model.kind)
        if self.needs and task not in self.needs and self.model.kind not in self.needs:
            what = "a bare encoder with no task head" if task == "none" else f"a {task} model"
            hint = HEAD_HINTS.get(self.needs[0], "")
            raise DlforgeError(f"{type(self).task_name} needs a {' or '.join(self.needs)} model, but this one is "
                               f"{what}{hint}")

    def __call__(self, inputs, **options):
        single = isinstance(inputs, str)
        texts = [inputs] if single else list(inputs)
        results = []
        for start in range(0, len(texts), self.batch_size):
            results.extend(self._run(texts[start:start + self.batch_size], **options))
        return results[0] if single else results

    def _encode(self, texts: list[str]) -> dict:
        return self.tokenizer.encode_batch(texts, padding="longest", truncation=True,
                                           max_length=min(self.max_length, self._context()), add_special_tokens=True)

    def _on_device(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        """The (CPU-built) input tensors moved to the model's device."""
        device = next(self.model.parameters()).device
        return [t.to(device) for t in tensors]

    def _context(self) -> int:
        return getattr(self.model.config, "max_position", getattr(self.model.config, "block_size", 512))

    def _run(self, texts: list[str], **options) -> list:  # each task overrides this
        raise TypeError(f"{type(self).__name__} does not implement _run")


class TextClassification(Pipeline):
    task_name = "text-classification"
    needs = ("sequence-classification",)

    @torch.no_grad()
    def _run(self, texts, top_k: int | None = 1, function_to_apply: str | None = None):
        enc = self._encode(texts)
        logits = self.model(*self._on_device(enc["input_ids"], enc["attention_mask"])).logits.float().cpu()  # (B, L)
        kind = function_to_apply or ("sigmoid" if self.model.config.problem_type == "multi_label"
                                     or logits.size(-1) == 1 else "softmax")
        if kind not in ("softmax", "sigmoid", "none"):
            raise DlforgeError(f"function_to_apply must be softmax, sigmoid or none, got {kind!r}")
        scores = logits.softmax(-1) if kind == "softmax" else logits.sigmoid() if kind == "sigmoid" else logits
        names = self.model.config.labels or [f"LABEL_{i}" for i in range(logits.size(-1))]
        out = []
        for row in scores.tolist():
            ranked = sorted(zip(names, row), key=lambda p: -p[1])
            ranked = [{"label": n, "score": s} for n, s in ranked]
            out.append(ranked[0] if top_k == 1 else ranked[:top_k] if top_k else ranked)
        return out


class FeatureExtraction(Pipeline):
    """Per-token hidden states, [1, T, hidden] nested lists per text (HF's layout)."""

    task_name = "feature-extraction"
    needs = ("none", "masked-lm", "sequence-classification", "token-classification", "question-answering")

    @torch.no_grad()
    def _run(self, texts):
        out = []
        for text in texts:  # one text at a time: HF returns the unpadded states of each
            enc = self._encode([text])
            out.append(self.model.encode(*self._on_device(enc["input_ids"], enc["attention_mask"])).cpu().tolist())
        return out


class SentenceSimilarity(Pipeline):
    """Pooled, normalised sentence embeddings; with `others`, cosine similarities to them."""

    task_name = "sentence-similarity"
    needs = FeatureExtraction.needs

    @torch.no_grad()
    def embed(self, texts: list[str]) -> torch.Tensor:
        enc = self._encode(texts)
        return self.model.embed(*self._on_device(enc["input_ids"], enc["attention_mask"])).cpu()

    def _run(self, texts, others: list[str] | None = None):
        vectors = self.embed(texts)
        if others is None:
            return vectors.tolist()
        return (vectors @ self.embed(list(others)).t()).tolist()


class FillMask(Pipeline):
    task_name = "fill-mask"
    needs = ("masked-lm",)

    @torch.no_grad()
    def _run(self, texts, top_k: int = 5, targets: list[str] | str | None = None):
        mask_id = self.tokenizer.mask_token_id
        mask_token = self.tokenizer.id_to_token(mask_id) if mask_id is not None else "[MASK]"
        enc = self._encode(texts)
        logits = self.model(*self._on_device(enc["input_ids"], enc["attention_mask"])).logits.float().cpu()  # (B,T,V)
        target_ids = None
        if targets is not None:
            targets = [targets] if isinstance(targets, str) else targets
            target_ids = []
            for t in targets:
                ids = self.tokenizer.encode(t)
                if not ids:
                    raise DlforgeError(f"target {t!r} encodes to no token")
                target_ids.append(ids[0])  # as HF: the first token of a multi-token target
        out = []
        for b, text in enumerate(texts):
            positions = (enc["input_ids"][b] == mask_id).nonzero().flatten().tolist()
            if not positions:
                raise DlforgeError(f"no {mask_token} token in {text!r}: put {mask_token} where a word is missing")
            per_mask = []
            for pos in positions:
                probs = logits[b, pos].softmax(-1)
                if target_ids is not None:
                    candidates = sorted(((probs[i].item(), i) for i in target_ids), reverse=True)[:top_k]
                else:
                    values, indices = probs.topk(top_k)
                    candidates = list(zip(values.tolist(), indices.tolist()))
                entries = []
                for score, token_id in candidates:
                    filled = enc["input_ids"][b][enc["attention_mask"][b].bool()].clone()
                    filled[pos] = token_id
                    entries.append({"score": score, "token": token_id,
                                    "token_str": self.tokenizer.decode([token_id]).strip(),
                                    "sequence": self.tokenizer.decode(filled.tolist())})
                per_mask.append(entries)
            out.append(per_mask[0] if len(per_mask) == 1 else per_mask)
        return out


class TextGeneration(Pipeline):
    task_name = "text-generation"
    needs = ("gpt",)

    def _run(self, texts, max_new_tokens: int = 50, do_sample: bool = True, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, repetition_penalty: float = 1.0,
             return_full_text: bool = True, seed: int | None = None, stop: list[str] | None = None):
        from ..text.generation import generate_text

        generated = generate_text(self.model, self.tokenizer, texts, max_new_tokens=max_new_tokens,
                                  temperature=temperature if do_sample else 0.0, top_k=top_k, top_p=top_p,
                                  repetition_penalty=repetition_penalty, seed=seed, stop=stop)
        return [[{"generated_text": (t + g) if return_full_text else g}] for t, g in zip(texts, generated)]


# these build on the classes above
from .image_generation import ImageGeneration  # noqa: E402
from .question_answering import QuestionAnswering  # noqa: E402
from .text2text import TRANSLATION_TASK, Summarization, Text2TextGeneration, Translation  # noqa: E402
from .token_classification import TokenClassification  # noqa: E402
from .vision import ImageClassification, ImageFeatureExtraction  # noqa: E402
from .zero_shot import ZeroShotClassification  # noqa: E402

PIPELINES = {p.task_name: p for p in (TextClassification, FeatureExtraction, SentenceSimilarity, FillMask,
                                      TextGeneration, ZeroShotClassification, TokenClassification,
                                      QuestionAnswering, Text2TextGeneration, Translation, Summarization,
                                      ImageGeneration, ImageClassification, ImageFeatureExtraction)}
ALIASES = {"sentiment-analysis": "text-classification", "ner": "token-classification"}


def pipeline(task: str, model, tokenizer=None, **kwargs) -> Pipeline:
    """Build the pipeline for `task` from a model folder (or a (model, tokenizer) pair via `tokenizer=`)."""
    name = ALIASES.get(task, task)
    if TRANSLATION_TASK.match(name):  # translation_en_to_de: the language pair picks a T5 task prefix
        return Translation(model, tokenizer, task=name, **kwargs)
    if name not in PIPELINES:
        raise DlforgeError(f"unknown task {task!r}: choose one of {', '.join(sorted([*PIPELINES, *ALIASES]))}")
    return PIPELINES[name](model, tokenizer, **kwargs)
