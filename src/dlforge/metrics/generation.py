"""Scores for generated text: BLEU and chrF (sacrebleu), ROUGE-1/2/L (Google's rouge-score).

All take detokenized outputs and references, as the published figures do (sacrebleu's default 13a
tokenization for BLEU; ROUGE with the Porter stemmer, as the SciTLDR and CNN/DM papers report it).
Several references per item are allowed: BLEU/chrF use them all, ROUGE takes the best-matching one
per item (SciTLDR's rule). Both packages are the optional `seq2seq` extra.
"""

from __future__ import annotations

from ..errors import DlforgeError


def _require(module: str, package: str):
    try:
        return __import__(module)
    except ImportError:
        raise DlforgeError(f"this needs the {package} package: pip install 'dlforge[seq2seq]' "
                           f"(or pip install {package})") from None


def _as_reference_lists(references: list[str] | list[list[str]]) -> list[list[str]]:
    return [[r] if isinstance(r, str) else list(r) for r in references]


def bleu_chrf(hypotheses: list[str], references: list[str] | list[list[str]]) -> dict:
    """Corpus BLEU and chrF (0–100) of detokenized hypotheses against one or more references each."""
    sacrebleu = _require("sacrebleu", "sacrebleu")
    refs = _as_reference_lists(references)
    if len(refs) != len(hypotheses):
        raise DlforgeError(f"{len(hypotheses)} outputs but {len(refs)} references: give one reference set per output")
    n_refs = max(len(r) for r in refs)
    streams = [[r[i] if i < len(r) else "" for r in refs] for i in range(n_refs)]  # sacrebleu: one stream per rank
    bleu = sacrebleu.corpus_bleu(hypotheses, streams)
    chrf = sacrebleu.corpus_chrf(hypotheses, streams)
    return {"bleu": bleu.score, "chrf": chrf.score}


def rouge(predictions: list[str], references: list[str] | list[list[str]]) -> dict:
    """Mean ROUGE-1/2/L F1 (0–100); with several references, each item scores against its best one."""
    _require("rouge_score", "rouge-score")
    from rouge_score import rouge_scorer

    refs = _as_reference_lists(references)
    if len(refs) != len(predictions):
        raise DlforgeError(f"{len(predictions)} outputs but {len(refs)} references: give one reference set per output")
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for prediction, options in zip(predictions, refs):
        scores = [scorer.score(reference, prediction) for reference in options]
        for key in totals:
            totals[key] += max(s[key].fmeasure for s in scores)
    return {key: 100 * value / max(1, len(predictions)) for key, value in totals.items()}
