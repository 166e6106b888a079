"""Reading the user's example files: UTF-8 text, JSON lines, and CSV/TSV/JSONL tables of records.

Shared by the pipeline file inputs and the fine-tuning task readers, so every file problem is the same
one-line `DlforgeError` naming the file and the line.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

from ..errors import DlforgeError

log = logging.getLogger("dlforge")

TABLE_FORMATS = (".csv", ".tsv", ".jsonl")


def read_utf8(path: str | Path) -> str:
    """The file's text; a byte-order mark is dropped (spreadsheet exports often start with one)."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as e:
        raise DlforgeError(f"{path} does not exist: check the path") from e
    except UnicodeDecodeError as e:
        raise DlforgeError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}): save it as UTF-8") from e


def parse_json_lines(path: str | Path, text: str) -> list[tuple[int, object]]:
    """(line number, value) for each non-blank line of a JSON-lines text."""
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((number, json.loads(line)))
        except json.JSONDecodeError as e:
            raise DlforgeError(f"{path} line {number} is not valid JSON ({e.msg} at column {e.colno}): "
                               "give one JSON object per line") from e
    return out


def read_records(path: str | Path, example: str = '{"text": "...", "label": "..."}') -> list[tuple[int, dict]]:
    """(line number, record) for each row of a .csv/.tsv (header row) or .jsonl file; blank rows skipped.

    .csv is RFC 4180: a value holding a comma, a quote or a newline is quoted whole ("say ""hi"", then go");
    malformed quoting is an error, not rows silently merged. .tsv is plain tab-separated text, as GLUE and most
    corpora write it: one line is one row and quotes are kept as written (a review may start with `"`).
    A row with no value in any column is blank. A row with more values than the header is an error; a short
    row holds None in its missing columns (the caller says so for the columns it needs). The line number is
    the row's last line (a quoted CSV value may span several).

    `example` shows, in the error for a JSON line that is not an object, what a record should look like.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TABLE_FORMATS:
        raise DlforgeError(f"{path}: unknown file type {suffix or '(no extension)'!r}; use .csv or .tsv (with a "
                           "header row) or .jsonl (one JSON object per line)")
    text = read_utf8(path)
    if suffix == ".jsonl":
        records = parse_json_lines(path, text)
        for number, record in records:
            if not isinstance(record, dict):
                raise DlforgeError(f"{path} line {number} holds a {type(record).__name__}, not a JSON object "
                                   f"like {example}")
        return records
    rows = [(number, row) for number, row in _table_rows(path, text, tsv=suffix == ".tsv")
            if any(value.strip() for value in row)]  # blank lines and rows of empty cells hold nothing
    if not rows:
        raise DlforgeError(f"{path} is empty: it needs a header row naming its columns (e.g. text,label)")
    header = rows[0][1]
    records = []
    for number, row in rows[1:]:
        if any(value.strip() for value in row[len(header):]):  # empty trailing cells (spreadsheets) are harmless
            fix = ("a value must not contain a tab (in a .tsv every tab separates two columns)" if suffix == ".tsv"
                   else 'quote a value that holds a comma: "like, this"')
            raise DlforgeError(f"{path} line {number} has {len(row)} values but the header has {len(header)} "
                               f"columns ({', '.join(header)}): {fix}")
        records.append((number, {name: row[i] if i < len(row) else None for i, name in enumerate(header)}))
    return records


def _table_rows(path: Path, text: str, tsv: bool) -> list[tuple[int, list[str]]]:
    """(last line number, values) of every row of a CSV or TSV text, blank lines included (as [])."""
    if tsv:  # QUOTE_NONE: quotes are ordinary characters, so one line is always one row
        reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    else:  # strict: an unclosed quote is an error instead of swallowing the rest of the file into one value
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows, end = [], 0
    try:
        for row in reader:
            end = reader.line_num
            rows.append((end, row))
    except csv.Error as e:
        if "field limit" in str(e):
            raise DlforgeError(f"{path} line {end + 1}: the row that starts here holds a value over "
                               f"{csv.field_size_limit()} characters: check for a quote that is never closed, "
                               "or split the text") from e
        if "end of data" in str(e):
            raise DlforgeError(f"{path} line {end + 1}: a quoted value that starts on this line is never closed: "
                               'end it with a " (and write a " inside a quoted value as "")') from e
        raise DlforgeError(f"{path} line {reader.line_num}: bad quoting ({e}): quote a value whole and double each "
                           '" inside it ("say ""hi"""), or leave the value unquoted') from e
    return rows


def report_skipped(path: str | Path, lines: list[int], why: str) -> None:
    """Warn, in one line, that the rows at `lines` of `path` were left out, and why ("with an empty 'text' value").

    Readers call this for every row they drop that is not a blank line, so that no data goes missing unsaid.
    """
    if not lines:
        return
    shown = ", ".join(str(n) for n in lines[:10]) + (", ..." if len(lines) > 10 else "")
    log.warning("%s: skipped %d %s %s (line%s %s)", path, len(lines), "row" if len(lines) == 1 else "rows", why,
                "" if len(lines) == 1 else "s", shown)
