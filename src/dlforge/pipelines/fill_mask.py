"""The fill-mask pipeline: the likeliest tokens for each [MASK], with Hugging Face's outputs.

    fill = dlforge.pipeline("fill-mask", model="runs/bert-small")
    fill("the king [MASK] the crown", top_k=3)
    -> [{"score": 0.41, "token": 2435, "token_str": "wore", "sequence": "the king wore the crown"}, ...]

One mask: a list of top_k dicts; several masks: one such list per mask (their "sequence" keeps the special
tokens, as Hugging Face's does). A list of inputs gives a list of those (a list of one input: unwrapped, as
Hugging Face does). `targets` (a word or a list) scores only those tokens (a word not in the vocabulary stands
for its first token); top_k is then at most the number of targets. Tokenizer keywords: truncation, padding,
max_length, tokenizer_kwargs.
"""

from __future__ import annotations

import torch

from ..errors import DlforgeError
from .base import TextPipeline, check_positive


class FillMask(TextPipeline):
    task_name = "fill-mask"
    needs = ("masked-lm",)

    def _check_model(self) -> None:
        super()._check_model()
        if self.tokenizer.mask_token_id is None:
            raise DlforgeError("fill-mask needs a tokenizer with a mask token ([MASK]); this one has none")

    def _sanitize_parameters(self, top_k=None, targets=None, truncation=None, padding=None, max_length=None,
                             tokenizer_kwargs=None):
        post = {}
        if top_k is not None:
            post["top_k"] = check_positive("top_k", top_k)
        if targets is not None:
            post["target_ids"] = self._target_ids([targets] if isinstance(targets, str) else list(targets))
        return self._tokenizer_options(truncation, padding, max_length, tokenizer_kwargs), {}, post

    def _target_ids(self, targets: list[str]) -> list[int]:
        """Token ids of the targets: the token itself, else the first token of its encoding (as Hugging Face)."""
        ids = []
        for target in targets:
            token_id = self.tokenizer.token_to_id(target)
            if token_id is None:
                encoded = self.tokenizer.encode(target)
                if not encoded:
                    raise DlforgeError(f"target {target!r} encodes to no token: give words of the vocabulary")
                token_id = encoded[0]
            ids.append(token_id)
        if not ids:
            raise DlforgeError("targets is empty: give at least one word, or leave targets out")
        return sorted(set(ids))

    def preprocess(self, text, **tokenizer_options):
        window = self.encode(text, **tokenizer_options)
        if self.tokenizer.mask_token_id not in window["input_ids"]:
            mask = self.tokenizer.id_to_token(self.tokenizer.mask_token_id)
            raise DlforgeError(f"no {mask} token in {text!r}: put {mask} where a word is missing")
        return window

    def _forward(self, windows):
        logits = self.run_windows(windows, lambda *inputs: self.model(*inputs).logits)  # per text (T, vocab)
        return list(zip(windows, logits))

    def postprocess(self, output, top_k=5, target_ids=None):
        window, logits = output
        ids = torch.tensor(window["input_ids"])  # (T,)
        positions = (ids == self.tokenizer.mask_token_id).nonzero().flatten()
        probs = logits[positions].softmax(-1)  # (masks, vocab)
        candidates = torch.arange(probs.size(-1)) if target_ids is None else torch.tensor(target_ids)
        values, order = probs[:, candidates].topk(min(top_k, len(candidates)))  # (masks, k)
        single = len(positions) == 1
        kept = ids[torch.tensor(window["attention_mask"]).bool()]
        result = []
        for position, row_values, row_order in zip(positions.tolist(), values.tolist(), order.tolist()):
            row = []
            for value, index in zip(row_values, row_order):
                token_id = int(candidates[index])
                filled = kept.clone()
                filled[position] = token_id
                row.append({"score": value, "token": token_id, "token_str": self.tokenizer.decode([token_id]),
                            "sequence": self.tokenizer.decode(filled.tolist(), skip_special_tokens=single)})
            result.append(row)
        return result[0] if single else result

    def _nest(self, results, inputs, single, options):
        if isinstance(inputs, list) and len(inputs) == 1:
            return results[0]  # as Hugging Face: a list of one input is unwrapped
        return super()._nest(results, inputs, single, options)
