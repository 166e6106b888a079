"""Pipeline inputs from a file: `read_inputs(path, column=None)` -> a list of texts (or records).

  .txt          one input per non-empty line
  .csv / .tsv   a header row; the values of `column` (default "text" if there is such a column, else the first);
                .csv quotes values as RFC 4180 does, .tsv is plain tab-separated text (quotes kept as written)
  .jsonl        one JSON object per line; its `column` field (default "text" if the record has one, else the
                whole record as a dict, e.g. {"question": ..., "context": ...} for question-answering)

Blank lines are skipped; so are rows whose value is empty (or null), with one warning on the "dlforge" logger
that says how many and at which lines, so that the outputs can be matched back to the file. Problems (unknown
extension, missing column, a line that is not JSON) are one-line `DlforgeError`s that name the file and the line.
"""

from __future__ import annotations

from pathlib import Path

from ..data.records import parse_json_lines, read_records, read_utf8, report_skipped
from ..errors import DlforgeError

FORMATS = (".txt", ".csv", ".tsv", ".jsonl")


def read_inputs(path: str | Path, column: str | None = None) -> list:
    """The inputs held by a .txt, .csv, .tsv or .jsonl file (see the module docstring)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise DlforgeError(f"{path}: unknown input file type {suffix or '(no extension)'!r}; use one of "
                           f"{', '.join(FORMATS)} (rename the file if it is one of these)")
    if not path.is_file():
        raise DlforgeError(f"{path} does not exist: give a {', '.join(FORMATS)} file of inputs")
    if suffix == ".txt":
        if column is not None:
            raise DlforgeError(f"{path} is a plain text file (one input per line): --column / column= is only "
                               "for .csv, .tsv and .jsonl files")
        return [line for line in read_utf8(path).splitlines() if line.strip()]
    if suffix == ".jsonl":
        return _read_jsonl(path, column)
    return _read_table(path, column)


def _read_table(path: Path, column: str | None) -> list[str]:
    rows = read_records(path)
    if not rows:
        return []
    header = list(rows[0][1])
    name = column if column is not None else ("text" if "text" in header else header[0])
    if name not in header:
        raise DlforgeError(f"{path} has no column {name!r} (columns: {', '.join(header)}): choose one with --column")
    out, skipped = [], []
    for number, row in rows:
        value = row[name]
        if value is None:  # a short row
            raise DlforgeError(f"{path} line {number}: the row has no value in column {name!r}")
        if value.strip():
            out.append(value)
        else:
            skipped.append(number)
    report_skipped(path, skipped, f"with an empty {name!r} value")
    return out


def _read_jsonl(path: Path, column: str | None) -> list:
    out, skipped = [], []
    for number, record in parse_json_lines(path, read_utf8(path)):
        if isinstance(record, str) and column is None:
            value = record
        elif not isinstance(record, dict):
            raise DlforgeError(f"{path} line {number} holds a {type(record).__name__}, not a JSON object: "
                               "give one object per line, e.g. {\"text\": \"...\"}")
        elif column is not None:
            if column not in record:
                raise DlforgeError(f"{path} line {number} has no field {column!r} (fields: "
                                   f"{', '.join(record) or 'none'}): choose one with --column")
            value = record[column]
        else:
            value = record["text"] if "text" in record else record
        if value is None or (isinstance(value, str) and not value.strip()):
            skipped.append(number)
            continue
        out.append(value)
    report_skipped(path, skipped, f"with a null or empty {column or 'text'!r} value")
    return out
