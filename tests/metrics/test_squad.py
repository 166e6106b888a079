"""SQuAD v1.1 scoring: the official normalisation, EM and token F1, worked out by hand."""

from __future__ import annotations

import pytest

from dlforge.metrics.squad import exact_match_score, f1_score, normalize_answer, squad_scores


@pytest.mark.parametrize("text, normalized", [
    ("The Denver Broncos!", "denver broncos"),
    ("  an apple,  a   day ", "apple day"),
    ("the theater", "theater"),  # articles are whole words only
    ("the-end", "theend"),  # punctuation goes first, so "the" is no longer a word here
    ("Saint-Étienne's 1,000 fans.", "saintétiennes 1000 fans"),  # only ASCII punctuation is removed
    ("A", ""),
])
def test_normalize_answer(text, normalized):
    assert normalize_answer(text) == normalized


def test_exact_match_and_f1_by_hand():
    assert exact_match_score("the Denver Broncos", "Denver Broncos.") == 1.0
    assert exact_match_score("Broncos", "Denver Broncos") == 0.0
    assert f1_score("Denver Broncos", "the Denver Broncos") == 1.0
    assert f1_score("Broncos", "Denver Broncos") == pytest.approx(2 / 3)  # P = 1, R = 1/2
    assert f1_score("Denver Broncos won", "Denver Broncos") == pytest.approx(0.8)  # P = 2/3, R = 1
    assert f1_score("x y y", "y y z") == pytest.approx(2 / 3)  # tokens count with multiplicity: P = R = 2/3
    assert f1_score("x y y y", "y z") == pytest.approx(2 * 0.25 * 0.5 / 0.75)  # one shared y: P = 1/4, R = 1/2
    assert f1_score("the", "Denver") == 0.0  # a prediction that normalises to nothing
    assert f1_score("Panthers", "Denver Broncos") == 0.0


def test_squad_scores_take_the_best_gold_answer_and_count_unanswered_questions():
    gold = {"q1": ["Denver Broncos", "Broncos"], "q2": ["Carolina", "the Carolina Panthers"], "q3": ["Santa Clara"]}
    predictions = {"q1": "Broncos", "q2": "Carolina Panthers team", "unknown": "ignored"}
    scores = squad_scores(predictions, gold)
    # q1: exact with the 2nd answer; q2: F1 max(2*(1/3)*1/(4/3) = 0.5, 2*(2/3)*1/(5/3) = 0.8) = 0.8; q3: 0
    assert scores["exact_match"] == pytest.approx(100 / 3)
    assert scores["f1"] == pytest.approx(100 * (1 + 0.8 + 0) / 3)
    assert (scores["questions"], scores["unanswered"]) == (3, 1)
    assert squad_scores({}, {}) == {"exact_match": 0.0, "f1": 0.0, "questions": 0, "unanswered": 0}
