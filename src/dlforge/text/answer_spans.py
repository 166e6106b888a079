"""Extractive question answering: decoding answer spans from a QA model's start/end logits.

Shared by the question-answering pipeline (`dlforge.pipeline("question-answering")`) and the question-answering
fine-tuning task (its SQuAD evaluation), so both decode spans the same way. The algorithm (Hugging Face's, so the
scores match theirs) is described in `dlforge.pipelines.question_answering`.
"""

from __future__ import annotations

import torch

from ..errors import DlforgeError


def pad_windows(windows: list[dict], key: str, fill: int) -> torch.Tensor:
    """The `key` lists of encoded windows, right-padded with `fill` to the longest: (b, width)."""
    width = max(len(w[key]) for w in windows)
    return torch.tensor([w[key] + [fill] * (width - len(w[key])) for w in windows])


MASKED = -10000.0  # Hugging Face's fill for logits outside the context (exp underflows to 0 in float32)


@torch.no_grad()
def window_outputs(run, windows: list[dict], pad_id: int = 0, batch_size: int = 32, device=None,
                   per_token: bool = True) -> list[torch.Tensor]:
    """`run(input_ids, attention_mask, token_type_ids)` on right-padded batches of encoded windows (batched by
    similar length, so little padding): per window, float32 on the CPU, the rows of its own tokens (T, ...) of
    a per-token output (b, width, ...), or its row of a per-sequence output (b, ...)."""
    order = sorted(range(len(windows)), key=lambda i: len(windows[i]["input_ids"]))
    out: list[torch.Tensor] = [None] * len(windows)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        batch = [windows[i] for i in rows]
        inputs = [pad_windows(batch, key, fill).to(device)
                  for key, fill in (("input_ids", pad_id), ("attention_mask", 0), ("token_type_ids", 0))]
        outputs = run(*inputs).float().cpu()
        for row, i in enumerate(rows):
            out[i] = outputs[row, :len(windows[i]["input_ids"])] if per_token else outputs[row]
    return out


def window_logits(model, windows: list[dict], pad_id: int = 0, batch_size: int = 32) -> list[torch.Tensor]:
    """Start/end logits (T, 2), float32 on the CPU, for each encoded window."""
    return window_outputs(lambda *inputs: model(*inputs).logits, windows, pad_id, batch_size,
                          next(model.parameters()).device)


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
