"""Skor's notify payloads taken apart without re-encoding: the row's JSON text exactly as
PostgreSQL sent it, and the row's key from the table's primary key.

Why not `json.dumps(json.loads(payload)["data"])`: that goes through Python floats, so a
dead letter or a parked event stored from it, and later retried, carried `19.99` for
`19.990000000000000000001`. The text between the `"data":` value's first and last byte is
kept instead, and only the key columns are decoded.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

_DECODER = json.JSONDecoder()
_WHITESPACE = " \t\n\r"


def top_level_texts(payload: str) -> dict[str, str]:
    """The raw JSON text of each top-level member of a JSON object, by key.

    Raises ValueError when `payload` is not a JSON object."""
    texts: dict[str, str] = {}
    i = _skip(payload, 0)
    if payload[i : i + 1] != "{":
        raise ValueError("not a JSON object")
    i = _skip(payload, i + 1)
    if payload[i : i + 1] == "}":
        return texts
    while True:
        key, i = _DECODER.raw_decode(payload, i)
        i = _skip(payload, i)
        if payload[i : i + 1] != ":" or not isinstance(key, str):
            raise ValueError("not a JSON object")
        start = _skip(payload, i + 1)
        _, end = _DECODER.raw_decode(payload, start)
        texts[key] = payload[start:end]
        i = _skip(payload, end)
        if payload[i : i + 1] == "}":
            return texts
        if payload[i : i + 1] != ",":
            raise ValueError("not a JSON object")
        i = _skip(payload, i + 1)


def row_key(data_text: str, key_columns: tuple[str, ...]) -> str | None:
    """The row's key as compact JSON of its primary key columns ({"id":42}), numerics kept
    exact; None when the table has no primary key or the row lacks a key column."""
    if not key_columns:
        return None
    row = json.loads(data_text, parse_float=Decimal)
    if not isinstance(row, dict) or any(column not in row for column in key_columns):
        return None
    return json.dumps(
        {column: row[column] for column in key_columns},
        separators=(",", ":"),
        ensure_ascii=False,
        default=_exact,
    )


def _exact(value: Any) -> Any:
    # A Decimal key value becomes its exact digits, as a string: one row, one key.
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"not JSON: {value!r}")


def _skip(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WHITESPACE:
        i += 1
    return i
