"""The question-answering pipeline: extractive QA, where the answer is a span of the context.

    qa = dlforge.pipeline("question-answering", model="...")
    qa(question="Who won Super Bowl 50?", context="The Denver Broncos defeated the Carolina Panthers ...")
    -> {"score": 0.93, "start": 4, "end": 18, "answer": "Denver Broncos"}   (start/end: characters of context)

Call forms, as Hugging Face's: qa(question=..., context=...), qa(question, context), qa({"question": ...,
"context": ...}), a list of such dicts, or question= a list with context= one string (every question about it)
or a list of the same length. A single input gives one result, a list gives a list (also a list of one, which
Hugging Face unwraps). Options: top_k=1 (above 1: always a list of answers, best first), doc_stride (default min(128,
max_seq_len // 2)), max_answer_len=15 (tokens), max_seq_len (default min(384, the model's positions)),
handle_impossible_answer=False, align_to_words=True. max_question_len=64 is accepted and unused, as by Hugging
Face's pipeline with a fast tokenizer: a question that leaves no room for the context is an error.

How answers are found (Hugging Face's algorithm, so the scores match theirs):
1. "[CLS] question [SEP] context [SEP]" is cut into windows of max_seq_len tokens; a long context is split
   into several windows that share doc_stride tokens (`tokenizer.encode_windows`).
2. Per window, the start and end logits are softmaxed over the context tokens and [CLS] (every other token
   gets -10000): p_start, p_end.
3. Span (s, e) scores p_start[s] * p_end[e], for context tokens s <= e < s + max_answer_len (so never
   [CLS]). The top_k spans of each window, then the top_k of all windows, are kept (a span that two
   overlapping windows both see can come twice, as in Hugging Face's pipeline).
4. With handle_impossible_answer, the empty answer (start = end = 0) competes with the score
   min over windows of p_start[CLS] * p_end[CLS].
5. Characters: from the start of the word holding the first token to the end of the word holding the last
   (align_to_words), else the tokens' own offsets.
`answer_questions` does all of this for lists of questions; the question-answering fine-tuning task evaluates
with it, so the pipeline and the SQuAD scores decode spans the same way.
"""

from __future__ import annotations

import torch

from ..errors import DlforgeError
from .tasks import Pipeline
from .zero_shot import _padded

MASKED = -10000.0  # Hugging Face's fill for logits outside the context (exp underflows to 0 in float32)


def qa_inputs(args: tuple, question=None, context=None) -> tuple[list[tuple[str, str]], bool]:
    """The (question, context) pairs of any Hugging Face call form, and whether a single input was given."""
    if args and (question is not None or context is not None):
        raise DlforgeError("give the inputs either as arguments or as question=/context=, not both")
    if question is not None or context is not None:
        if question is None or context is None:
            raise DlforgeError("question-answering needs both question= and context=")
        if isinstance(question, str) and isinstance(context, str):
            items, single = [{"question": question, "context": context}], True
        elif isinstance(question, (list, tuple)) and isinstance(context, str):
            items, single = [{"question": q, "context": context} for q in question], False
        elif isinstance(question, (list, tuple)) and isinstance(context, (list, tuple)):
            if len(question) != len(context):
                raise DlforgeError(f"got {len(question)} questions but {len(context)} contexts: give one context "
                                   "per question, or a single context string for all of them")
            items, single = [{"question": q, "context": c} for q, c in zip(question, context)], False
        else:
            raise DlforgeError("question= and context= must be strings, or question= a list with context= a string "
                               "or a list of the same length")
    elif len(args) == 2 and all(isinstance(a, str) for a in args):
        items, single = [{"question": args[0], "context": args[1]}], True
    elif len(args) == 1 and isinstance(args[0], dict):
        items, single = [args[0]], True
    elif len(args) == 1 and isinstance(args[0], (list, tuple)):
        items, single = list(args[0]), False
    else:
        raise DlforgeError("question-answering takes question=..., context=... or {'question': ..., 'context': ...} "
                           "(or a list of those dicts)")
    pairs = []
    for item in items:
        if not isinstance(item, dict):
            raise DlforgeError(f"a question-answering input is a dict {{'question': ..., 'context': ...}}, got "
                               f"{type(item).__name__}")
        for key in ("question", "context"):
            value = item.get(key)
            if not isinstance(value, str) or not value.strip():
                raise DlforgeError(f"each input needs a non-empty {key!r} string, got {value!r}")
        pairs.append((item["question"], item["context"]))
    return pairs, single


@torch.no_grad()
def window_logits(model, windows: list[dict], pad_id: int = 0, batch_size: int = 32) -> list[torch.Tensor]:
    """Start/end logits (T, 2), float32 on the CPU, for each encoded window (batched by similar length)."""
    device = next(model.parameters()).device
    order = sorted(range(len(windows)), key=lambda i: len(windows[i]["input_ids"]))  # little padding
    out: list[torch.Tensor] = [None] * len(windows)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        batch = [windows[i] for i in rows]
        logits = model(_padded(batch, "input_ids", pad_id).to(device), _padded(batch, "attention_mask", 0).to(device),
                       _padded(batch, "token_type_ids", 0).to(device)).logits.float().cpu()  # (b, width, 2)
        for row, i in enumerate(rows):
            out[i] = logits[row, :len(windows[i]["input_ids"])]
    return out


def best_spans(logits: torch.Tensor, window: dict, top_k: int = 1, max_answer_len: int = 15,
               cls_id: int | None = None) -> tuple[list[tuple[float, int, int]], float]:
    """The top_k (score, start token, end token) spans of one window, best first, and its null score.

    `logits` (T, 2) are the window's start/end logits; only context tokens (sequence id 1) can be in a span.
    """
    context = torch.tensor([sid == 1 for sid in window["sequence_ids"]])  # (T,)
    in_softmax = context.clone()
    if cls_id is not None:  # [CLS] takes part in the softmax: it stands for "no answer here"
        in_softmax |= torch.tensor(window["input_ids"]) == cls_id
    probs = logits.masked_fill(~in_softmax[:, None], MASKED).softmax(0)  # (T, 2): p_start, p_end
    null_score = (probs[0, 0] * probs[0, 1]).item()  # [CLS] is never in a span: `valid` below keeps it out
    T = probs.size(0)
    scores = probs[:, None, 0] * probs[None, :, 1]  # (T, T): [start, end]
    length = torch.arange(T)[None, :] - torch.arange(T)[:, None]  # end - start
    valid = context[:, None] & context[None, :] & (length >= 0) & (length < max_answer_len)
    k = min(top_k, int(valid.sum()))
    if k == 0:
        return [], null_score
    values, flat = scores.masked_fill(~valid, -1.0).flatten().topk(k)
    return [(v, i // T, i % T) for v, i in zip(values.tolist(), flat.tolist())], null_score


def char_span(window: dict, start: int, end: int, align_to_words: bool = True) -> tuple[int, int]:
    """Character (start, end) in the context of the tokens start..end; widened to whole words if asked."""
    seqs, words, offsets = window["sequence_ids"], window["word_ids"], window["offsets"]
    if align_to_words and words[start] is not None and words[end] is not None:
        while start > 0 and seqs[start - 1] == 1 and words[start - 1] == words[start]:
            start -= 1
        while end + 1 < len(words) and seqs[end + 1] == 1 and words[end + 1] == words[end]:
            end += 1
    return offsets[start][0], offsets[end][1]


def answer_questions(model, tokenizer, questions: list[str], contexts: list[str], top_k: int = 1,
                     doc_stride: int | None = None, max_answer_len: int = 15, max_seq_len: int | None = None,
                     handle_impossible_answer: bool = False, align_to_words: bool = True,
                     batch_size: int = 32) -> list[list[dict]]:
    """Per (question, context), up to top_k answers {"score", "start", "end", "answer"}, best first."""
    if not hasattr(tokenizer, "encode_windows"):
        raise DlforgeError("question-answering needs a Hugging Face tokenizer (tokenizer.json or vocab.txt): it "
                           "maps answers back to the context through the tokens' character offsets")
    positions = model.config.max_position
    max_seq_len = min(384, positions) if max_seq_len is None else max_seq_len
    doc_stride = min(128, max_seq_len // 2) if doc_stride is None else doc_stride
    for name, value in (("top_k", top_k), ("max_answer_len", max_answer_len), ("max_seq_len", max_seq_len)):
        if not isinstance(value, int) or value < 1:
            raise DlforgeError(f"{name} must be an integer >= 1, got {value!r}")
    if max_seq_len > positions:
        raise DlforgeError(f"max_seq_len {max_seq_len} exceeds the model's {positions} positions: lower it")
    if not 0 <= doc_stride < max_seq_len:
        raise DlforgeError(f"doc_stride ({doc_stride}) must be >= 0 and smaller than max_seq_len ({max_seq_len})")
    windows = tokenizer.encode_windows(questions, contexts, max_length=max_seq_len, stride=doc_stride)
    flat = [w for ws in windows for w in ws]
    logits = iter(window_logits(model, flat, tokenizer.pad_token_id or 0, batch_size))
    results = []
    for context, ws in zip(contexts, windows):
        answers, null_score = [], 1e6
        for window in ws:
            spans, null = best_spans(next(logits), window, top_k, max_answer_len, tokenizer.cls_token_id)
            null_score = min(null_score, null)
            for score, s, e in spans:
                start, end = char_span(window, s, e, align_to_words)
                answers.append({"score": score, "start": start, "end": end, "answer": context[start:end]})
        if handle_impossible_answer:
            answers.append({"score": null_score, "start": 0, "end": 0, "answer": ""})
        results.append(sorted(answers, key=lambda a: -a["score"])[:top_k])
    return results


class QuestionAnswering(Pipeline):
    task_name = "question-answering"
    needs = ("question-answering",)

    def __call__(self, *args, question=None, context=None, top_k: int = 1, doc_stride: int | None = None,
                 max_answer_len: int = 15, max_seq_len: int | None = None, max_question_len: int = 64,
                 handle_impossible_answer: bool = False, align_to_words: bool = True):
        pairs, single = qa_inputs(args, question, context)
        if max_seq_len is None:
            max_seq_len = min(384, self.max_length, self._context())
        results = []
        for start in range(0, len(pairs), self.batch_size):
            chunk = pairs[start:start + self.batch_size]
            answers = answer_questions(self.model, self.tokenizer, [q for q, _ in chunk], [c for _, c in chunk],
                                       top_k=top_k, doc_stride=doc_stride, max_answer_len=max_answer_len,
                                       max_seq_len=max_seq_len, handle_impossible_answer=handle_impossible_answer,
                                       align_to_words=align_to_words, batch_size=self.batch_size)
            for found in answers:  # a context too short for any span answers nothing, with score 0
                found = found or [{"score": 0.0, "start": 0, "end": 0, "answer": ""}]
                results.append(found[0] if top_k == 1 else found)
        return results[0] if single else results
