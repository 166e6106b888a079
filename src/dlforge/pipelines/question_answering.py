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

from ..errors import DlforgeError
from ..text.answer_spans import answer_questions
from .base import TextPipeline, given, is_stream


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


class QuestionAnswering(TextPipeline):
    task_name = "question-answering"
    needs = ("question-answering",)

    def __call__(self, *args, question=None, context=None, **options):
        if len(args) == 1 and is_stream(args[0]) and question is None and context is None:
            return super().__call__(args[0], **options)  # a generator of {"question", "context"} dicts
        pairs, single = qa_inputs(args, question, context)
        items = [{"question": q, "context": c} for q, c in pairs]
        return super().__call__(items[0] if single else items, **options)

    def _sanitize_parameters(self, top_k=None, doc_stride=None, max_answer_len=None, max_seq_len=None,
                             max_question_len=None, handle_impossible_answer=None, align_to_words=None,
                             max_length=None):
        # max_question_len: accepted and unused, as by Hugging Face's pipeline with a fast tokenizer
        forward = given(top_k=top_k, doc_stride=doc_stride, max_answer_len=max_answer_len, max_seq_len=max_seq_len,
                        handle_impossible_answer=handle_impossible_answer, align_to_words=align_to_words,
                        max_length=max_length)
        return {}, forward, {} if top_k is None else {"top_k": top_k}

    def preprocess(self, item):
        return qa_inputs((item,))[0][0]  # (question, context), checked

    def _forward(self, pairs, max_length=None, max_seq_len=None, **options):
        if max_seq_len is None:
            max_seq_len = min(384, self.token_limit(max_length))
        return answer_questions(self.model, self.tokenizer, [q for q, _ in pairs], [c for _, c in pairs],
                                max_seq_len=max_seq_len, batch_size=self.batch_size, **options)

    def postprocess(self, found, top_k=1):
        found = found or [{"score": 0.0, "start": 0, "end": 0, "answer": ""}]  # a context too short for any span
        return found[0] if top_k == 1 else found
