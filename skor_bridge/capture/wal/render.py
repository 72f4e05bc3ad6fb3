"""Column values from the WAL (text form + type OID) rendered as `row_to_json` renders them.

pgoutput sends each value in its type's text output, produced by the walsender under the
settings in `SESSION_SETTINGS`. PostgreSQL's JSON functions start from the same output
but treat a few type categories specially (json.c, `json_categorize_type`), and so do we:

    bool                         true / false
    int2..int8, float, numeric   unchanged, or quoted when not a JSON number (NaN, Infinity)
    date, timestamp, timestamptz ISO 8601 with a `T` and a `+hh:mm` offset (XSD style)
    json, jsonb                  embedded as they are
    arrays                       JSON arrays, elements rendered by their own category
    domains                      as their base type
    composite types, and user types with their own cast to json
                                 asked of the server, in one batched query per type
    everything else              the text form as a JSON string (enums, bytea as \\x..., ...)

timestamptz: trigger mode renders it in the writing session's TimeZone; WAL mode has no
writer session, so the walsender's TimeZone is set to UTC and every timestamptz reads
`...+00:00`: the same instant, always the same offset.
"""

from __future__ import annotations

import json
import json.encoder
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from collections.abc import Iterable

#: GUCs of the replication session: they fix the text form pgoutput sends.
SESSION_SETTINGS = {
    "DateStyle": "ISO, MDY",
    "IntervalStyle": "postgres",
    "extra_float_digits": "3",
    "TimeZone": "UTC",
    "bytea_output": "hex",
    "client_encoding": "UTF8",
}

Category = Literal[
    "bool", "number", "date", "timestamp", "timestamptz", "json", "array", "text", "server"
]

#: PostgreSQL's first OID for user objects; only those may bring their own json cast.
FIRST_NORMAL_OID = 16384

_BUILTIN: dict[int, Category] = {
    16: "bool",
    20: "number",
    21: "number",
    23: "number",
    700: "number",
    701: "number",
    1700: "number",
    1082: "date",
    1114: "timestamp",
    1184: "timestamptz",
    114: "json",
    3802: "json",
    2249: "server",  # record
}


@dataclass(frozen=True, slots=True)
class PgType:
    oid: int
    category: Category
    #: The element type of an array.
    element: PgType | None = None
    #: Array element delimiter (',' for all but box).
    delimiter: str = ","
    #: SQL name for the server fallback, as format_type writes it.
    name: str = ""


#: Catalog facts about types, for `TypeCatalog` to categorise.
TYPE_QUERY = """
SELECT t.oid, t.typtype, t.typelem, t.typlen, t.typdelim, t.typbasetype,
       format_type(t.oid, NULL),
       EXISTS (SELECT FROM pg_cast c WHERE c.castsource = t.oid
               AND c.casttarget = 'json'::regtype AND c.castmethod = 'f')
FROM pg_type t WHERE t.oid = ANY(%s::oid[])
"""

TypeRow = tuple[int, str, int, int, str, int, str, bool]


class TypeCatalog:
    """Type OID -> PgType, asking the database (through `lookup`) once per unknown OID."""

    def __init__(self, lookup: Callable[[list[int]], list[TypeRow]]) -> None:
        self._lookup = lookup
        self._types: dict[int, PgType] = {}

    def get(self, oid: int) -> PgType:
        known = self._types.get(oid)
        if known is None:
            self.load([oid])
            known = self._types[oid]
        return known

    def load(self, oids: Iterable[int]) -> None:
        """Resolve every OID in `oids` (and the types they depend on) at once."""
        rows: dict[int, TypeRow] = {}
        wanted = {oid for oid in oids if oid not in self._types}
        while wanted:
            found = {row[0]: row for row in self._lookup(sorted(wanted))}
            for oid in wanted - found.keys():
                # Dropped since it was written: its text is all we have.
                found[oid] = (oid, "b", 0, 0, ",", 0, "text", False)
            rows.update(found)
            wanted = {
                dep
                for row in found.values()
                for dep in (row[2], row[5])
                if dep and dep not in rows and dep not in self._types
            }
        for oid in rows:
            self._resolve(oid, rows)

    def _resolve(self, oid: int, rows: dict[int, TypeRow]) -> PgType:
        known = self._types.get(oid)
        if known is not None:
            return known
        _, typtype, elem, typlen, delim, base, name, json_cast = rows[oid]
        if typtype == "d":
            resolved = self._resolve(base, rows)
        elif oid in _BUILTIN:
            resolved = PgType(oid, _BUILTIN[oid], name=name)
        elif elem and typlen == -1:
            element = self._resolve(elem, rows)
            category: Category = "server" if element.category == "server" else "array"
            resolved = PgType(oid, category, element, rows[elem][4], name)
        elif typtype == "c" or (oid >= FIRST_NORMAL_OID and json_cast):
            resolved = PgType(oid, "server", name=name)
        else:
            resolved = PgType(oid, "text", name=name)
        self._types[oid] = resolved
        return resolved


# -- scalars -------------------------------------------------------------------------------

_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_IS_NUMBER = _NUMBER.fullmatch
_OFFSET = re.compile(r"([+-]\d\d)((?::\d\d){0,2})((?: BC)?)$")


#: A JSON string as PostgreSQL's escape_json writes it: quotes, backslashes and control
#: characters escaped, everything else (astral characters too) as it is. (json's C
#: encoder, as `json.dumps(text, ensure_ascii=False)` uses it, without the call's cost.)
quote: Callable[[str], str] = json.encoder.encode_basestring


def _timestamptz(text: str) -> str:
    text = text.replace(" ", "T", 1)
    match = _OFFSET.search(text)
    if match is not None and not match[2]:
        text = f"{text[: match.start()]}{match[1]}:00{match[3]}"
    return text


def _number(text: str) -> str:
    # numeric and float output is a JSON number but for NaN and [-]Infinity: a text that
    # starts and ends with a digit needs no closer look.
    if "0" <= text[-1] <= "9" and ("0" <= text[0] <= "9" or text[0] == "-"):
        return text
    return text if _IS_NUMBER(text) else quote(text)


def _integer(text: str) -> str:
    return text


def _bool(text: str) -> str:
    return "true" if text == "t" else "false"


def _raw(text: str) -> str:
    return text


def _stamp(text: str) -> str:
    if text[10:11] == " " and text[4:5] == "-":  # a 4-digit year: nothing to escape
        return '"' + text[:10] + "T" + text[11:] + '"'
    return quote(text.replace(" ", "T", 1))


def _stamptz(text: str) -> str:
    # The walsender's TimeZone is UTC: `2026-01-02 03:04:05.123456+00`, a 4-digit year
    # AD, is by far the most common form, and needs no escaping.
    if text[-3:] == "+00" and text[10:11] == " " and text[4:5] == "-":
        return '"' + text[:10] + "T" + text[11:] + ':00"'
    return quote(_timestamptz(text))


#: int2, int4, int8 and oid-free integer types always print as JSON numbers.
_INTEGERS = {20, 21, 23}

_SIMPLE: dict[str, Callable[[str], str]] = {
    "text": quote,
    "date": quote,
    "number": _number,
    "json": _raw,
    "bool": _bool,
    "timestamp": _stamp,
    "timestamptz": _stamptz,
}


#: Renderers that return the text unchanged (so a caller may skip calling them).
PASS_THROUGH: frozenset[Callable[[str], str]] = frozenset({_integer, _raw})


def renderer(pg_type: PgType, server: Callable[[PgType, str], str]) -> Callable[[str], str]:
    """`render` for one type, decided once: the function a column's values go through."""
    if pg_type.oid in _INTEGERS:
        return _integer
    simple = _SIMPLE.get(pg_type.category)
    if simple is not None:
        return simple
    return lambda text: render(pg_type, text, server)


def render(pg_type: PgType, text: str, server: Callable[[PgType, str], str]) -> str:
    """One non-NULL value's JSON. `server` renders what only the server can."""
    category = pg_type.category
    if category == "text" or category == "date":
        return quote(text)
    if category == "number":
        return _number(text)
    if category == "json":
        return text
    if category == "bool":
        return "true" if text == "t" else "false"
    if category == "timestamptz":
        return quote(_timestamptz(text))
    if category == "timestamp":
        return quote(text.replace(" ", "T", 1))
    if category == "array":
        assert pg_type.element is not None
        return _render_array(parse_array(text, pg_type.delimiter), pg_type.element, server)
    return server(pg_type, text)


# -- arrays --------------------------------------------------------------------------------

Nested = list["Nested | str | None"]


def parse_array(text: str, delimiter: str = ",") -> Nested:
    """array_out's text (`{1,"a b",NULL}`, `[0:1]={...}`) as nested lists of element texts."""
    if text.startswith("["):  # non-default bounds: row_to_json ignores them
        text = text[text.index("=") + 1 :]
    result, end = _parse_level(text, 0, delimiter)
    return result


def _parse_level(text: str, pos: int, delimiter: str) -> tuple[Nested, int]:
    assert text[pos] == "{"
    pos += 1
    items: Nested = []
    if text[pos] == "}":
        return items, pos + 1
    while True:
        char = text[pos]
        if char == "{":
            sub, pos = _parse_level(text, pos, delimiter)
            items.append(sub)
        elif char == '"':
            pos += 1
            chars = []
            while text[pos] != '"':
                if text[pos] == "\\":
                    pos += 1
                chars.append(text[pos])
                pos += 1
            items.append("".join(chars))
            pos += 1
        else:
            start = pos
            while text[pos] != delimiter and text[pos] != "}":
                pos += 1
            word = text[start:pos]
            items.append(None if word.upper() == "NULL" else word)
        if text[pos] == "}":
            return items, pos + 1
        pos += 1  # the delimiter


def _render_array(items: Nested, element: PgType, server: Callable[[PgType, str], str]) -> str:
    parts = []
    for item in items:
        if item is None:
            parts.append("null")
        elif isinstance(item, list):
            parts.append(_render_array(item, element, server))
        else:
            parts.append(render(element, item, server))
    return "[" + ",".join(parts) + "]"
