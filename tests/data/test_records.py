"""read_records: .tsv is plain tab-separated text (quotes kept), .csv is RFC 4180; no row goes missing unsaid."""

from __future__ import annotations

import logging

import pytest

from dlforge.data.records import read_records, report_skipped
from dlforge.errors import DlforgeError

# reviews as SST-2 and scraped corpora hold them: quotes anywhere, unbalanced, at the start of a sentence
REVIEWS = ['"the emperor\'s new clothes" is a fine film',
           'a "rare" treat',
           '" it\'s a charming journey',
           'the title says it all : "bleak',
           'yes , "it is"',
           '""double"" trouble',
           "plain and simple"]


def write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


def test_tsv_keeps_quotes_one_line_one_row(tmp_path):
    lines = ["sentence\tlabel", *(f"{review}\t{i % 2}" for i, review in enumerate(REVIEWS))]
    f = write(tmp_path / "reviews.tsv", "\n".join(lines) + "\n")
    records = read_records(f)
    assert len(records) == len(lines) - 1
    assert [r["sentence"] for _, r in records] == REVIEWS
    assert [n for n, _ in records] == list(range(2, len(lines) + 1))


def test_tsv_row_with_more_values_than_the_header_is_refused(tmp_path):
    f = write(tmp_path / "extra.tsv", 'sentence\tlabel\nfine\t1\n"a\ttab"\t0\n')
    with pytest.raises(DlforgeError, match=r"extra\.tsv line 3 has 3 values but the header has 2 columns "
                                           r"\(sentence, label\): a value must not contain a tab"):
        read_records(f)


def test_short_rows_hold_none_and_empty_trailing_cells_are_harmless(tmp_path):
    f = write(tmp_path / "short.tsv", "sentence\tlabel\nonly a sentence\ngood\t1\t\t\n")
    assert read_records(f) == [(2, {"sentence": "only a sentence", "label": None}),
                               (3, {"sentence": "good", "label": "1"})]


def test_csv_quoting_commas_newlines_and_doubled_quotes(tmp_path):
    f = write(tmp_path / "in.csv", 'text,label\n"a film, long and slow",0,\n"quoted ""word""\nover two lines",1\n'
                                   'say "hi" there,1\n\n,\n')  # a spreadsheet's empty trailing cell; a blank row
    assert read_records(f) == [(2, {"text": "a film, long and slow", "label": "0"}),
                               (4, {"text": 'quoted "word"\nover two lines', "label": "1"}),
                               (5, {"text": 'say "hi" there', "label": "1"})]


@pytest.mark.parametrize("content, fragments", [
    ('text,label\ngood,1\n"never closed,0\nbad,1\nworse,0\n',
     ["line 3: a quoted value that starts on this line is never closed"]),
    ('text,label\n"quoted" then more,1\n', ["line 2: bad quoting", '""']),
    ("text,label\ngreat, fun movie,1\n",
     ["line 2 has 3 values but the header has 2 columns (text, label)", 'quote a value that holds a comma']),
])
def test_csv_malformed_rows_are_errors_not_merged_or_cut(tmp_path, content, fragments):
    with pytest.raises(DlforgeError) as info:
        read_records(write(tmp_path / "bad.csv", content))
    message = str(info.value)
    assert "\n" not in message and "bad.csv" in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_report_skipped_is_one_warning_with_count_and_lines(caplog):
    with caplog.at_level(logging.WARNING, logger="dlforge"):
        report_skipped("reviews.tsv", [], "with an empty 'text' value")
        assert caplog.records == []
        report_skipped("reviews.tsv", [4, 9, 12], "with an empty 'text' value")
        report_skipped("big.tsv", list(range(2, 20)), "with an empty 'text' value")
        report_skipped("one.tsv", [7], "with an empty 'text' value")
    assert [r.name for r in caplog.records] == ["dlforge"] * 3
    assert [r.getMessage() for r in caplog.records] == [
        "reviews.tsv: skipped 3 rows with an empty 'text' value (lines 4, 9, 12)",
        "big.tsv: skipped 18 rows with an empty 'text' value (lines 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, ...)",
        "one.tsv: skipped 1 row with an empty 'text' value (line 7)"]
