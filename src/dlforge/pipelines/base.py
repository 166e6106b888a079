"""The pipeline base class, with Hugging Face's shape: `_sanitize_parameters` -> `preprocess` -> `_forward` ->
`postprocess`, and the call-time / construction-time keywords its users know.

    pipe = SomeTask(model_dir, batch_size=8, device="cpu", dtype=torch.bfloat16, top_k=2)  # defaults for calls
    pipe("one input")            # one result, nested as Hugging Face nests it
    pipe(["a", "b"])             # a list of results
    pipe(x for x in stream)      # a generator in, a generator out: inputs are read and run batch_size at a time

A task defines
  _sanitize_parameters(**kw) -> (preprocess kw, forward kw, postprocess kw): its keywords, checked. The names of
                       its parameters are the keywords the task accepts; any other keyword is a DlforgeError that
                       names it and lists the accepted ones (at construction and at call time alike).
  preprocess(item, **kw)       one input -> what the model needs for it (token ids, pixels, windows, ...)
  _forward(items, **kw)        a batch of preprocessed inputs -> one model output per input (the model runs here)
  postprocess(output, **kw)    one output -> the result the user sees
Keywords given when the pipeline is built are defaults; the same keyword in a call wins for that call.
Every pipeline also takes `batch_size` (inputs per forward pass; a task that cuts an input into several
windows or pairs runs at most the pipeline's batch_size of them at once) and `num_workers` (accepted for Hugging Face
code; dlforge preprocesses in the calling thread), and, when built, `device` (an int is a CUDA index, -1 the
CPU), `device_map` ("auto" or one device: the model is not split over devices), `torch_dtype` / `dtype` (a
torch dtype, its name, or "auto" for the checkpoint's own).

`TextPipeline` adds what the encoder tasks share: the model-head check, tokenisation with Hugging Face's
`truncation` / `padding` / `max_length`, and batched forward passes over padded token windows.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch

from ..devices import resolve_device
from ..errors import DlforgeError
from ..models import load_pretrained
from ..text.answer_spans import window_outputs

DEFAULT_BATCH_SIZE = 32  # Hugging Face's default is 1; batches of 32 are several times faster on a CPU
CALL_KEYWORDS = ("batch_size", "num_workers")
BUILD_KEYWORDS = ("device", "device_map", "torch_dtype", "dtype")
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}
TRUNCATIONS = (True, False, "longest_first", "only_first", "only_second", "do_not_truncate")
PADDINGS = (True, False, "longest", "max_length", "do_not_pad")

# How to get a model with the head a pipeline needs (appended to the error when a model lacks it).
HEAD_HINTS = {
    "masked-lm": ": give it a masked-LM head with `dlforge train bert --init MODEL --data TEXT`, or use "
                 "feature-extraction / sentence-similarity",
    "sequence-classification": ": fine-tune one with `dlforge finetune --task text-classification`",
    "token-classification": ": fine-tune one with `dlforge finetune --task token-classification`",
    "question-answering": ": fine-tune one with `dlforge finetune --task question-answering`",
}


def is_model_path(model) -> bool:
    return isinstance(model, (str, bytes)) or hasattr(model, "__fspath__")


def device_of(device=None, device_map=None) -> torch.device | None:
    """Hugging Face's `device` / `device_map` as a torch device (None: leave the model where it is)."""
    if device is not None and device_map is not None:
        raise DlforgeError("give device= or device_map=, not both (device_map places the model, device moves it)")
    where = device if device is not None else device_map
    if where is None:
        return None
    if isinstance(where, dict):
        raise DlforgeError("device_map as a dict (layers spread over devices) is not supported: dlforge keeps a "
                           "model on one device; give device_map='auto', 'cpu' or 'cuda:N'")
    if isinstance(where, bool) or not isinstance(where, (int, str, torch.device)):
        raise DlforgeError(f"device must be an int (-1 = CPU), 'cpu', 'cuda', 'cuda:N' or 'auto', got {where!r}")
    if isinstance(where, int):  # as Hugging Face: an int is a CUDA index, -1 the CPU
        where = "cpu" if where < 0 else f"cuda:{where}"
    try:
        return resolve_device(str(where))
    except RuntimeError as e:  # torch's own message for a device string it cannot parse
        raise DlforgeError(f"unknown device {where!r}: use 'cpu', 'cuda', 'cuda:N', 'auto' or an int") from e


def dtype_of(torch_dtype=None, dtype=None) -> torch.dtype | None:
    """Hugging Face's `torch_dtype` / `dtype` (its newer name) as a torch dtype (None or "auto": as loaded)."""
    if torch_dtype is not None and dtype is not None and torch_dtype != dtype:
        raise DlforgeError("give dtype= or torch_dtype= (its older name), not both")
    value = dtype if dtype is not None else torch_dtype
    if value is None or value == "auto":
        return None
    if isinstance(value, torch.dtype) and value in DTYPES.values():
        return value
    if isinstance(value, str) and value.removeprefix("torch.") in DTYPES:
        return DTYPES[value.removeprefix("torch.")]
    raise DlforgeError(f"dtype must be torch.float32, torch.bfloat16, torch.float16 (or their names) or 'auto', "
                       f"got {value!r}")


def check_positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DlforgeError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def option_name(value) -> str:
    """A string option given as a string or as one of transformers' enums (its `.value`), lower-cased."""
    return str(getattr(value, "value", value)).lower()


def given(**options) -> dict:
    """The options that were given (not None): Hugging Face passes only those on, so defaults stay the task's."""
    return {name: value for name, value in options.items() if value is not None}


def is_stream(inputs) -> bool:
    """A generator, dataset or other iterable of inputs (streamed), not one input or a list of them."""
    one_input = (str, bytes, dict, list, tuple, Path, torch.Tensor)
    return hasattr(inputs, "__iter__") and not isinstance(inputs, one_input) and not hasattr(inputs, "__array__")


class Pipeline:
    """See the module docstring. Subclasses set `task_name` and define the four stages."""

    task_name = "pipeline"
    extra_keywords: tuple[str, ...] = ()  # keywords that `_sanitize_parameters` takes through its **options

    def __init__(self, model, tokenizer=None, *, device=None, device_map=None, torch_dtype=None, dtype=None,
                 batch_size: int | None = None, num_workers: int | None = None, **options):
        self.model, self.tokenizer = self._load(model, tokenizer)
        target, precision = device_of(device, device_map), dtype_of(torch_dtype, dtype)
        if target is not None or precision is not None:
            self.model = self.model.to(device=target, dtype=precision)
        self.model.eval()
        self._check_model()
        self.batch_size = DEFAULT_BATCH_SIZE if batch_size is None else check_positive("batch_size", batch_size)
        self._defaults = self._checked_parameters(options, at_build=True)

    def _load(self, model, tokenizer):
        """(model, tokenizer) from a folder, hub id or a model object (with tokenizer=)."""
        if is_model_path(model):
            model, loaded = load_pretrained(model)
            tokenizer = tokenizer or loaded
        return model, tokenizer

    def _check_model(self) -> None:
        """Raise a DlforgeError if the model cannot do this task."""

    # ---- the four stages ----
    def _sanitize_parameters(self) -> tuple[dict, dict, dict]:
        """The task's keywords split by stage (see the module docstring); the base task takes none."""
        return {}, {}, {}

    def preprocess(self, item, **options):
        return item

    def _forward(self, items: list, **options) -> list:
        raise TypeError(f"{type(self).__name__} defines no _forward")  # abstract

    def postprocess(self, output, **options):
        return output

    # ---- calling ----
    def _checked_parameters(self, options: dict, at_build: bool = False) -> tuple[dict, dict, dict]:
        signature = inspect.signature(self._sanitize_parameters).parameters
        accepted = [*(name for name, p in signature.items() if p.kind is not inspect.Parameter.VAR_KEYWORD),
                    *self.extra_keywords]
        unknown = [name for name in options if name not in accepted]
        if unknown:
            everything = sorted({*accepted, *CALL_KEYWORDS, *(BUILD_KEYWORDS if at_build else ())})
            raise DlforgeError(f"{self.task_name} got an unknown keyword {unknown[0]!r}: it accepts "
                               f"{', '.join(everything)}")
        return self._sanitize_parameters(**options)

    def __call__(self, inputs, *, batch_size: int | None = None, num_workers: int | None = None, **options):
        pre, forward, post = (dict(default, **call) for default, call in
                              zip(self._defaults, self._checked_parameters(options)))
        size = self.batch_size if batch_size is None else check_positive("batch_size", batch_size)
        if is_stream(inputs):
            return self._results(inputs, size, pre, forward, post)
        single = not isinstance(inputs, (list, tuple))
        results = list(self._results([inputs] if single else inputs, size, pre, forward, post))
        return self._nest(results, inputs, single, options)

    def _nest(self, results: list, inputs, single: bool, options: dict):
        """The call's result from the per-input results: Hugging Face's nesting (some tasks have quirks)."""
        return results[0] if single else results

    def _results(self, items, batch_size: int, pre: dict, forward: dict, post: dict):
        """Per input, its result: inputs are preprocessed and run `batch_size` at a time (a generator)."""
        batch = []
        for item in items:
            batch.append(self.preprocess(item, **pre))
            if len(batch) == batch_size:
                yield from self._run_batch(batch, forward, post)
                batch = []
        if batch:
            yield from self._run_batch(batch, forward, post)

    def _run_batch(self, batch: list, forward: dict, post: dict) -> list:
        return [self.postprocess(out, **post) for out in self._forward(batch, **forward)]

    def _on_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """An input tensor moved to the model's device (floats also to its dtype)."""
        weight = next(self.model.parameters())
        return tensor.to(weight.device, dtype=weight.dtype if tensor.is_floating_point() else None)


class TextPipeline(Pipeline):
    """A pipeline over text for an encoder (BERT-like) model with a Hugging Face tokenizer."""

    needs: tuple[str, ...] = ()  # accepted model tasks (Bert.config.task) or kinds

    def _load(self, model, tokenizer):
        model, tokenizer = super()._load(model, tokenizer)
        if tokenizer is None:
            raise DlforgeError("this model folder has no tokenizer (tokenizer.json): pass tokenizer=...")
        return model, tokenizer

    def _check_model(self) -> None:
        task = getattr(self.model.config, "task", self.model.kind)
        if self.needs and task not in self.needs and self.model.kind not in self.needs:
            what = "a bare encoder with no task head" if task == "none" else f"a {task} model"
            hint = HEAD_HINTS.get(self.needs[0], "")
            raise DlforgeError(f"{self.task_name} needs a {' or '.join(self.needs)} model, but this one is "
                               f"{what}{hint}")

    def _context(self) -> int:
        """The most tokens the model reads at once."""
        return getattr(self.model.config, "max_position", getattr(self.model.config, "block_size", 512))

    def token_limit(self, max_length: int | None = None) -> int:
        """Tokens per input (or window): `max_length`, at most (and by default) the model's positions."""
        return min(max_length or self._context(), self._context())

    @staticmethod
    def _tokenizer_options(truncation=None, padding=None, max_length=None, tokenizer_kwargs=None) -> dict:
        """Hugging Face's tokenizer keywords (direct, or in a `tokenizer_kwargs` dict) for `encode`, checked."""
        options = dict(tokenizer_kwargs or {})
        unknown = sorted(set(options) - {"truncation", "padding", "max_length"})
        if unknown:
            raise DlforgeError(f"tokenizer_kwargs has {unknown[0]!r}: dlforge takes truncation, padding and "
                               "max_length there")
        options.update(given(truncation=truncation, padding=padding, max_length=max_length))
        if options.get("truncation", True) not in TRUNCATIONS:
            raise DlforgeError(f"truncation must be one of {', '.join(map(repr, TRUNCATIONS))}, got "
                               f"{options['truncation']!r}")
        if options.get("padding", True) not in PADDINGS:
            raise DlforgeError(f"padding must be one of {', '.join(map(repr, PADDINGS))}, got {options['padding']!r}")
        if "max_length" in options:
            check_positive("max_length", options["max_length"])
        return options

    def encode(self, text, pair=None, truncation=None, padding=None, max_length: int | None = None) -> dict:
        """One text (or text pair) -> a window {"input_ids", "attention_mask", "token_type_ids", ...} of lists.

        Truncation: dlforge cuts an over-long input to the model's length (or `max_length`) by default, where
        Hugging Face's default would fail on it; `truncation=False` makes an over-long input an error instead.
        `padding="max_length"` pads to `max_length` (what feature-extraction then returns for the pads too).
        """
        if not isinstance(text, str) or (pair is not None and not isinstance(pair, str)):
            raise DlforgeError(f"{self.task_name} takes texts (strings), got {type(text).__name__}"
                               + (f" and {type(pair).__name__}" if pair is not None else ""))
        if not hasattr(self.tokenizer, "encode_windows"):
            raise DlforgeError(f"{self.task_name} needs a Hugging Face tokenizer (tokenizer.json or vocab.txt)")
        limit = self.token_limit(max_length)
        cut = truncation not in (False, "do_not_truncate")
        strategy = truncation if isinstance(truncation, str) and cut else None
        window = self.tokenizer.encode_windows([text], None if pair is None else [pair],
                                               max_length=limit if cut else None,
                                               truncation=strategy or ("longest_first" if pair is not None else None)
                                               )[0][0]
        if len(window["input_ids"]) > limit:
            raise DlforgeError(f"an input has {len(window['input_ids'])} tokens, more than the {limit} this model "
                               "reads: pass truncation=True (or shorten the text)")
        if padding == "max_length" and max_length is not None:
            fill = max_length - len(window["input_ids"])
            pad_id = self.tokenizer.pad_token_id or 0
            window = {**window, "input_ids": window["input_ids"] + [pad_id] * fill,
                      "attention_mask": window["attention_mask"] + [0] * fill,
                      "token_type_ids": window["token_type_ids"] + [0] * fill}
        return window

    def run_windows(self, windows: list[dict], run, per_token: bool = True) -> list[torch.Tensor]:
        """`run(input_ids, attention_mask, token_type_ids)` over padded batches of windows: per window its
        output rows (T_window, ...) if `per_token`, else its one row; float32 on the CPU."""
        return window_outputs(run, windows, self.tokenizer.pad_token_id or 0, self.batch_size,
                              next(self.model.parameters()).device, per_token=per_token)
