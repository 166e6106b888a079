"""SQuAD v1.1 scoring, by the rules of the official `evaluate-v1.1.py` (Rajpurkar et al., 2016).

Answers are compared after normalisation: lower-case, punctuation removed, the articles a/an/the removed,
whitespace collapsed. Exact match (EM) is 1 when the normalised prediction equals a normalised gold answer;
F1 is the harmonic mean of token precision and recall (tokens counted with multiplicity). Each question takes
the best score over its gold answers; a question without a prediction scores 0. Both are averaged x100.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Mapping

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """The official normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match_score(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    predicted, wanted = normalize_answer(prediction).split(), normalize_answer(gold).split()
    same = sum((Counter(predicted) & Counter(wanted)).values())
    if same == 0:  # also when either side normalises to nothing
        return 0.0
    precision, recall = same / len(predicted), same / len(wanted)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: Mapping[str, str], gold: Mapping[str, Iterable[str]]) -> dict:
    """{"exact_match", "f1"} (x100) of predictions {id: answer} against gold {id: [answers]}, and the counts.

    Every gold question counts; one without a prediction scores 0 ("unanswered"). Predictions for ids that
    are not in `gold` are ignored, as by the official script.
    """
    em = f1 = 0.0
    for qid, answers in gold.items():
        answers = list(answers)
        if qid not in predictions or not answers:
            continue
        em += max(exact_match_score(predictions[qid], a) for a in answers)
        f1 += max(f1_score(predictions[qid], a) for a in answers)
    total = len(gold)
    return {"exact_match": 100.0 * em / total if total else 0.0, "f1": 100.0 * f1 / total if total else 0.0,
            "questions": total, "unanswered": sum(1 for qid in gold if qid not in predictions)}
