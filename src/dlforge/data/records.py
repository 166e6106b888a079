"""Reading the user's example files: UTF-8 text, JSON lines, and CSV/TSV/JSONL tables of records.

Shared by the pipeline file inputs and the fine-tuning task readers, so every file problem is the same
one-line `DlforgeError` naming the file and the line.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ..errors import DlforgeError

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

    A CSV/TSV record always has every header column (None where a short row has no value).

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
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if suffix == ".tsv" else ",")
    if not reader.fieldnames:  # quoted newlines inside a value are kept by the csv reader
        raise DlforgeError(f"{path} is empty: it needs a header row naming its columns (e.g. text,label)")
    # a short row holds None in its missing columns: the caller says so for the columns it needs
    return [(reader.line_num, row) for row in reader
            if any(value.strip() for value in row.values() if isinstance(value, str))]
