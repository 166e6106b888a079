"""The text-generation pipeline: continue prompts with a GPT (dlforge's, or a Hugging Face GPT-2 folder).

    gen = dlforge.pipeline("text-generation", model="runs/shakespeare")
    gen("ROMEO:", max_new_tokens=40, seed=0)       # [{"generated_text": "ROMEO: ..."}]
    gen(["a", "b"], do_sample=False)               # [[{...}], [{...}]]: one list per prompt
    gen("a", num_return_sequences=3, seed=1)       # [{...}, {...}, {...}]

Keywords (Hugging Face's names): max_new_tokens (default 50), max_length (prompt + new tokens; max_new_tokens
wins when both are given), do_sample (default True: dlforge samples unless told otherwise), temperature, top_k,
top_p, repetition_penalty, num_return_sequences (needs do_sample), return_full_text (default True: the prompt
and its continuation; False: the continuation only), return_text (True), prefix (put before each prompt, left
out of the result), stop_sequence / stop (text at which generation stops, cut off), and dlforge's `seed` (the
same seed gives the same samples; Hugging Face users call `transformers.set_seed` instead).
"""

from __future__ import annotations

from ..errors import DlforgeError
from ..text.generation import generate_text
from .base import Pipeline, check_positive, given


class TextGeneration(Pipeline):
    task_name = "text-generation"

    def _check_model(self) -> None:
        if self.model.kind != "gpt":
            raise DlforgeError(f"text-generation needs a gpt model, but this one is a {self.model.kind} model")
        if self.tokenizer is None:
            raise DlforgeError("this model folder has no tokenizer (tokenizer.json): pass tokenizer=...")

    def _sanitize_parameters(self, max_new_tokens=None, max_length=None, do_sample=None, temperature=None,
                             top_k=None, top_p=None, repetition_penalty=None, num_return_sequences=None,
                             return_full_text=None, return_text=None, prefix=None, stop_sequence=None, stop=None,
                             seed=None):
        if stop_sequence is not None and stop is not None:
            raise DlforgeError("give stop_sequence= or stop= (its dlforge name), not both")
        if return_text is False:
            raise DlforgeError("return_text=False asks for token ids, which dlforge's text-generation does not "
                               "return: leave it out")
        if num_return_sequences is not None:
            check_positive("num_return_sequences", num_return_sequences)
        stop = stop_sequence if stop_sequence is not None else stop
        forward = given(max_new_tokens=max_new_tokens, max_length=max_length, do_sample=do_sample,
                        temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty,
                        num_return_sequences=num_return_sequences, seed=seed,
                        stop=[stop] if isinstance(stop, str) else stop)
        post = given(return_full_text=return_full_text)
        return ({} if prefix is None else {"prefix": prefix}), forward, post

    def preprocess(self, text, prefix=""):
        if not isinstance(text, str):
            raise DlforgeError(f"text-generation takes prompts (strings), got {type(text).__name__}")
        return text, prefix

    def _forward(self, prompts, max_new_tokens=None, max_length=None, do_sample=True, temperature=1.0,
                 num_return_sequences=1, seed=None, stop=None, **options):
        if num_return_sequences > 1 and not do_sample:
            raise DlforgeError("num_return_sequences > 1 needs do_sample=True (greedy decoding gives one sequence)")
        full = [prefix + text for text, prefix in prompts for _ in range(num_return_sequences)]
        if max_new_tokens is None:  # max_length counts the prompt's tokens too (the longest prompt's)
            longest = max(len(self.tokenizer.encode(p)) for p in full)
            max_new_tokens = 50 if max_length is None else max(0, max_length - longest)
        generated = generate_text(self.model, self.tokenizer, full, max_new_tokens=max_new_tokens, seed=seed,
                                  temperature=temperature if do_sample else 0.0, stop=stop, **options)
        n = num_return_sequences
        return [(text, generated[i * n:(i + 1) * n]) for i, (text, _) in enumerate(prompts)]

    def postprocess(self, output, return_full_text=True):
        text, continuations = output
        return [{"generated_text": text + c if return_full_text else c} for c in continuations]
