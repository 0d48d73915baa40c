"""Texts: one per line of a .txt file, or a column of a CSV, TSV, JSONL or JSON table."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from .._interface import advice
from ._common import PathLike, _check_allocation, _existing, _sorted_unique, describe_bytes
from .dataset import Dataset

logger = logging.getLogger(__name__)


def _read_text(p: Path, memory_limit: int | None = None) -> str:
    # A str takes up to 4 bytes per character, plus the bytes read: bound both up front.
    _check_allocation(5 * os.stat(p).st_size, f"text file {p}", memory_limit)
    raw = p.read_bytes()
    looks = describe_bytes(raw[:64])
    if looks not in ("UTF-8 text", "JSON text", "UTF-16 text") and not looks.startswith("a file starting"):
        raise ValueError(f"{p} is not a text file: it looks like {looks}; pass a UTF-8 text file "
                         "(one text per line, or a CSV / JSON-lines table)")
    nul = raw.find(b"\0")
    if nul >= 0:
        line = raw[:nul].count(b"\n") + 1
        raise ValueError(f"{p} holds a NUL byte (byte {nul}, line {line}): "
                         "it is binary, or UTF-16 / UTF-32 text; save it as UTF-8 text")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ValueError(f"{p} is not valid UTF-8 (byte {e.start}, line {line}: {e.reason}); "
                         f"re-encode it, e.g. `iconv -f latin1 -t utf-8 {p.name}`") from e


def _empty_records(p: Path, empty: list[int], column: str | None, word: str) -> ValueError:
    first = ", ".join(str(i) for i in empty[:5]) + (" ..." if len(empty) > 5 else "")
    where = f" in column {column!r}" if column else ""
    return ValueError(f"{p}: {len(empty)} {word}{'s' if len(empty) > 1 else ''} ({first}) "
                      f"{'have' if len(empty) > 1 else 'has'} an empty text{where}; an empty "
                      "text has no meaning to embed: fill them in or remove those rows")


def load_texts(path: PathLike) -> Dataset:
    """Load a UTF-8 text file with one text per line (blank lines skipped, whitespace stripped).

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    Dataset
        ``kind="texts"``, ``y=None``.

    Raises
    ------
    ValueError
        For a file that is not UTF-8 (naming the line) or that holds no text at all.
    """
    p = _existing(path, "text file")
    texts = [line.strip() for line in _read_text(p).splitlines()]
    texts = [t for t in texts if t]
    if not texts:
        raise ValueError(f"{p} holds no text (every line is empty); write one text per line")
    logger.info("loaded %d texts from %s", len(texts), p)
    return Dataset(X=None, kind="texts", texts=texts, source=str(p))


def _json_value(p: Path, text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{p} {where} is not valid JSON: {e}") from e
    except (ValueError, RecursionError) as e:  # integers too long, nesting too deep
        raise ValueError(f"{p} {where} is not usable JSON ({type(e).__name__}: "
                         f"{str(e)[:200]})") from e


def _table_rows(p: Path) -> tuple[list[tuple[str, dict]], list[str]]:
    """Rows (``(where, dict)``, where names the line or record) and column names of a CSV/TSV
    or JSON-lines / JSON-array file."""
    ext = p.suffix.lower()
    if ext in (".csv", ".tsv"):
        text = _read_text(p)
        # newline="" keeps line breaks inside quoted fields, as the csv module expects.
        reader = csv.DictReader(io.StringIO(text, newline=""),
                                delimiter="\t" if ext == ".tsv" else ",", strict=True)
        rows: list = []
        try:
            columns = list(reader.fieldnames or [])
            for r in reader:
                rows.append((f"line {reader.line_num}", r))
        except csv.Error as e:
            hint = ("split the text or store the table as JSON lines (.jsonl)"
                    if "field limit" in str(e) or "larger than" in str(e) else
                    "check the quoting (a field with commas, quotes or line breaks must be "
                    "quoted, and quotes inside it doubled)")
            raise ValueError(f"{p} line {reader.line_num} is not valid "
                             f"{'TSV' if ext == '.tsv' else 'CSV'}: {e}; {hint}") from e
        if len(set(columns)) != len(columns):
            dup = sorted({c for c in columns if columns.count(c) > 1})
            raise ValueError(f"{p}: the header row names column(s) {dup} more than once; give "
                             "every column its own name")
        for where, r in rows:
            if None in r:  # more fields than header columns
                raise ValueError(f"{p} {where} has {len(columns) + len(r[None])} fields but the "
                                 f"header has {len(columns)}; quote fields that hold the "
                                 "delimiter")
        return rows, columns
    if ext in (".jsonl", ".json"):
        text = _read_text(p)
        rows = []
        if ext == ".json" and text.lstrip().startswith("["):
            values = _json_value(p, text, "")
            rows = [(f"record {i}", r) for i, r in enumerate(values, 1)]
        else:
            for lineno, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                rows.append((f"line {lineno}", _json_value(p, line, f"line {lineno}")))
        for where, r in rows:
            if not isinstance(r, dict):
                raise ValueError(f"{p} {where} is a JSON {type(r).__name__}; each record must be "
                                 "a JSON object such as {\"text\": ..., \"label\": ...}")
        columns = list(dict.fromkeys(k for _, r in rows for k in r))
        return rows, columns
    raise ValueError(f"{p}: unknown table extension {ext!r}; use .csv, .tsv, .jsonl or .json")


def _likely_text_column(rows: list, columns: list[str]) -> str | None:
    """The column whose values are longest on average over the first rows (the texts, most
    likely), for the message about a missing text column."""
    best, best_len = None, 0.0
    sample = rows[:200]
    for col in columns:
        values = [r.get(col) for _, r in sample]
        if not values or not all(isinstance(v, str) for v in values):
            continue
        mean = sum(len(v) for v in values) / len(values)
        if mean > best_len:
            best, best_len = col, mean
    return best


def table_columns(path: PathLike) -> list[str]:
    """The column names of a CSV / TSV / JSON-lines / JSON table, in their order (for a CSV or
    TSV file only its header row is read)."""
    p = _existing(path, "table file")
    if p.suffix.lower() in (".csv", ".tsv"):
        with open(p, encoding="utf-8-sig", newline="") as f:
            return next(csv.reader(f, delimiter="\t" if p.suffix.lower() == ".tsv" else ","), [])
    return _table_rows(p)[1]


def load_table(path: PathLike, text_column: str = "text",
               label_column: str | None = "auto") -> Dataset:
    """Load texts (and optional labels) from a CSV, TSV, JSON-lines or JSON file.

    The format follows the extension: ``.csv`` / ``.tsv`` (read with :mod:`csv`, header row
    required), ``.jsonl`` (one JSON object per line) or ``.json`` (JSON lines, or one array
    of objects).

    Parameters
    ----------
    path : str or Path
    text_column : str, default "text"
        Column holding the texts (required in every row).
    label_column : str, "auto" or None, default "auto"
        Column holding class labels; they map to ints in the order of
        ``class_names`` = the sorted unique labels (numeric order when all are integers).
        "auto" uses a column named ``label`` when there is one; None reads no labels.

    Returns
    -------
    Dataset
        ``kind="texts"``.
    """
    p = _existing(path, "table file")
    rows, columns = _table_rows(p)
    if label_column == "auto":
        label_column = "label" if "label" in columns else None
        if label_column is None:
            logger.info("%s has no column 'label', so no labels were read (columns: %s); %s", p, ", ".join(columns),
                        advice("pass label_column= to read one", "pass --label-column NAME to read one"))
    for col, what, flag in ((text_column, "text_column", "--text-column"),
                            (label_column, "label_column", "--label-column")):
        if col is not None and col not in columns:
            guess = _likely_text_column(rows, columns) if what == "text_column" else None
            hint = f" (the texts look to be in {guess!r})" if guess else ""
            raise ValueError(advice(f"{what}={col!r} is not a column of {p}; available columns: {columns}{hint}; "
                                    f"pass {what}= one of them",
                                    f"{p} has no column {col!r}; its columns are {', '.join(map(repr, columns))}"
                                    f"{hint}: choose one with {flag} NAME"))
    texts: list[str] = []
    raw_labels: list = []
    empty: list[int] = []
    for i, (where, r) in enumerate(rows, 1):
        t = r.get(text_column)
        if t is None:
            raise ValueError(f"{p} record {i} ({where}) has no value in column {text_column!r}")
        if isinstance(t, (list, dict, bool)):
            raise ValueError(f"{p} record {i} ({where}): the text in column {text_column!r} is "
                             f"a JSON {type(t).__name__}; it must be a string")
        t = str(t)
        if not t.strip():
            empty.append(i)
        texts.append(t)
        if label_column is not None:
            lab = r.get(label_column)
            if lab is None or (isinstance(lab, str) and not lab.strip()):
                raise ValueError(f"{p} record {i} ({where}) has no label in column "
                                 f"{label_column!r}")
            if isinstance(lab, (list, dict)):
                raise ValueError(f"{p} record {i} ({where}): label {str(lab)[:80]!r} must be a "
                                 "string or number")
            raw_labels.append(lab.strip() if isinstance(lab, str) else lab)
    if empty:
        raise _empty_records(p, empty, text_column, "record")
    if not texts:
        raise ValueError(f"{p} holds no records; a table needs a header row and one row per text")
    y = names = None
    if label_column is not None:
        order = _sorted_unique(raw_labels)
        lookup = {v: k for k, v in enumerate(order)}
        y = np.array([lookup[v] for v in raw_labels], dtype=np.int64)
        names = [str(v) for v in order]
    logger.info("loaded %d texts from %s%s", len(texts), p,
                f" with {len(names)} classes" if names else "")
    return Dataset(X=None, y=y, kind="texts", texts=texts, class_names=names, source=str(p))
