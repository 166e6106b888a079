"""read_inputs: pipeline inputs from .txt, .csv, .tsv and .jsonl files, and its one-line errors."""

from __future__ import annotations

import json
import logging

import pytest

from dlforge.errors import DlforgeError
from dlforge.pipelines import read_inputs


def write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


def test_txt_one_input_per_non_empty_line(tmp_path):
    f = write(tmp_path / "in.txt", "first line\n\n   \nsecond, with a comma\n")
    assert read_inputs(f) == ["first line", "second, with a comma"]
    with pytest.raises(DlforgeError, match="only for .csv, .tsv and .jsonl"):
        read_inputs(f, column="text")


def test_csv_and_tsv_columns(tmp_path):
    f = write(tmp_path / "in.csv", 'id,text,label\n1,"a film, long and slow",0\n2,"quoted ""word""\nover two lines",1\n'
                                   "3,,1\n")
    assert read_inputs(f) == ["a film, long and slow", 'quoted "word"\nover two lines']  # "text" by default
    assert read_inputs(f, column="label") == ["0", "1", "1"]
    g = write(tmp_path / "in.tsv", "sentence\tlabel\nit 's a charming journey . \t1\nbleak \t0\n")
    assert read_inputs(g) == ["it 's a charming journey . ", "bleak "]  # no "text" column: the first one
    bom = tmp_path / "excel.csv"
    bom.write_bytes("\ufefftext\nhéllo\n".encode())  # a spreadsheet export with a byte-order mark
    assert read_inputs(bom) == ["héllo"]


def test_tsv_quotes_are_text_every_line_is_an_input(tmp_path):
    reviews = ['" it \'s a charming journey', 'the "rare" treat', '"bleak', 'a "fine" film"', "plain"]
    f = write(tmp_path / "reviews.tsv", "sentence\tlabel\n" + "".join(f"{r}\t1\n" for r in reviews))
    assert read_inputs(f) == reviews  # 5 of 6 lines, as written


def test_skipped_rows_are_one_warning_with_count_and_lines(tmp_path, caplog):
    f = write(tmp_path / "in.tsv", "text\tlabel\none\t1\n\n\t0\ntwo\t1\n  \t1\nthree\t\n")
    g = write(tmp_path / "in.jsonl", '{"text": "one"}\n{"text": null}\n\n{"text": " "}\n{"text": "two"}\n')
    h = write(tmp_path / "blank.csv", "text,label\n\none,1\n,\n\ntwo,0\n")
    with caplog.at_level(logging.WARNING, logger="dlforge"):
        assert read_inputs(f) == ["one", "two", "three"]
        assert read_inputs(f, column="label") == ["1", "0", "1", "1"]
        assert read_inputs(g) == ["one", "two"]
        assert read_inputs(h) == ["one", "two"]  # blank lines and a row of empty cells hold nothing: no warning
    assert [(r.name, r.levelno) for r in caplog.records] == [("dlforge", logging.WARNING)] * 3
    assert [r.getMessage() for r in caplog.records] == [
        f"{f}: skipped 2 rows with an empty 'text' value (lines 4, 6)",
        f"{f}: skipped 1 row with an empty 'label' value (line 7)",
        f"{g}: skipped 2 rows with a null or empty 'text' value (lines 2, 4)"]


def test_jsonl_fields_and_whole_records(tmp_path):
    f = write(tmp_path / "in.jsonl", '{"text": "one", "id": 1}\n\n{"text": "two", "id": 2}\n')
    assert read_inputs(f) == ["one", "two"]
    assert read_inputs(f, column="id") == [1, 2]
    qa = [{"question": "Who?", "context": "Ann did."}, {"question": "Where?", "context": "In Oslo."}]
    g = write(tmp_path / "qa.jsonl", "".join(json.dumps(r) + "\n" for r in qa))
    assert read_inputs(g) == qa  # no "text" field: whole records (e.g. for question-answering)
    assert read_inputs(g, column="question") == ["Who?", "Where?"]
    h = write(tmp_path / "strings.jsonl", '"just a string"\n')
    assert read_inputs(h) == ["just a string"]


@pytest.mark.parametrize("name, content, column, fragments", [
    ("in.json", "[]", None, ["unknown input file type '.json'", ".txt, .csv, .tsv, .jsonl"]),
    ("inputs", "x", None, ["(no extension)"]),
    ("in.csv", "id,text\n1,a\n", "sentence", ["no column 'sentence'", "columns: id, text", "--column"]),
    ("in.csv", "", None, ["is empty", "header row"]),
    ("in.csv", "id,text\n1\n", None, ["line 2", "no value in column 'text'"]),
    ("in.jsonl", '{"text": "a"}\n{"text": "b",}\n', None, ["line 2 is not valid JSON"]),
    ("in.jsonl", '{"text": "a"}\n\n[1, 2]\n', None, ["line 3 holds a list"]),
    ("in.jsonl", '{"text": "a"}\n{"body": "b"}\n', "text", ["line 2 has no field 'text'", "fields: body"]),
])
def test_errors_are_one_line_and_name_the_problem(tmp_path, name, content, column, fragments):
    with pytest.raises(DlforgeError) as info:
        read_inputs(write(tmp_path / name, content), column=column)
    message = str(info.value)
    assert "\n" not in message and name in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_missing_and_non_utf8_files(tmp_path):
    with pytest.raises(DlforgeError, match="does not exist"):
        read_inputs(tmp_path / "missing.txt")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(DlforgeError, match="not UTF-8"):
        read_inputs(bad)
