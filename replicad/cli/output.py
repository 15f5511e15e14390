"""Output formatters of docs/architecture.md §9: ``table`` (default), ``json``, ``tab``.

Pure functions from rows (maps keyed by field name) to text.  Values arrive
already JSON-shaped (numbers, strings, lists of strings; GUIDs as lowercase
hex), so ``json`` prints them as they are and the text formats only join
lists with spaces.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

FORMATS = ("table", "json", "tab")

Row = Mapping[str, Any]


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return " ".join(_text(v) for v in value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def render_rows(rows: Sequence[Row], fields: Sequence[str], fmt: str) -> str:
    """A listing: a JSON array of objects, or a header line plus one line per row."""
    if fmt == "json":
        return json.dumps([{f: row.get(f) for f in fields} for row in rows], ensure_ascii=False)
    cells = [[_text(row.get(f)) for f in fields] for row in rows]
    if fmt == "tab":
        # A tab or newline inside a value would shift columns: make it visible instead.
        lines = ["\t".join(fields)]
        lines += ["\t".join(_escape_tab(c) for c in line) for line in cells]
        return "\n".join(lines)
    widths = [max([len(f), *(len(line[i]) for line in cells)]) for i, f in enumerate(fields)]
    lines = [_table_line(list(fields), widths)]
    lines += [_table_line(line, widths) for line in cells]
    return "\n".join(lines)


def render_document(document: Any) -> str:
    """One JSON document (``-f json`` output of commands that are not listings)."""
    return json.dumps(document, ensure_ascii=False)


def _escape_tab(text: str) -> str:
    # Backslashes stay as they are: system flags start with one.
    return text.replace("\t", "\\t").replace("\n", "\\n")


def _table_line(cells: list[str], widths: list[int]) -> str:
    # The last column is not padded, so lines carry no trailing blanks.
    padded = [c.ljust(w) for c, w in zip(cells[:-1], widths[:-1], strict=True)]
    return "  ".join([*padded, cells[-1]]) if cells else ""
