"""Skor's triggers.json, validated into TableSpec before any SQL is written.

The file is Skor's format plus three keys of ours ("update_columns", "when", "old"). Everything is
checked here, up front, so a bad file fails as one ConfigError naming the entry and key,
instead of as a PostgreSQL error halfway through an install. What only the database can
know (does the table exist, is `when` valid SQL) is checked by the generated script.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any, Literal

from skor_bridge.errors import ConfigError
from skor_bridge.sqlquote import CONTROL_CHARS, MAX_NAME_BYTES, qualified

Op = Literal["insert", "update", "delete"]
#: The operations a table can capture, in the order specs and scripts list them.
OPS: tuple[Op, ...] = ("insert", "update", "delete")

#: Keys a triggers.json entry may have; "update_columns", "when" and "old" are ours, not
#: Skor's.
ENTRY_KEYS = ("table", "schema", "columns", "update_columns", "when", "old")

_COLUMNS_SHAPE = '"columns" must be "*", a list of column names or a map of insert/update/delete'


@dataclass(frozen=True)
class TableSpec:
    """One table to capture, as one triggers.json entry describes it.

    `columns` holds the captured operations in insert, update, delete order, each with the
    columns its events carry; None carries every column (Skor's "*"). With
    `update_columns`, an UPDATE is captured only when one of those columns changed; `when`
    is an SQL condition added to every trigger's WHEN clause. With `old`, an UPDATE also
    records the row before it (the envelope format's "old"); off by default because it
    adds to every captured UPDATE's cost (README, "The row before an UPDATE").
    """

    table: str
    schema: str = "public"
    columns: tuple[tuple[Op, tuple[str, ...] | None], ...] = tuple((op, None) for op in OPS)
    update_columns: tuple[str, ...] = ()
    when: str | None = None
    old: bool = False

    def __post_init__(self) -> None:
        _check_name("table", self.table)
        _check_name("schema", self.schema)
        ops = [op for op, _ in self.columns]
        if not ops or any(op not in OPS for op in ops) or len(set(ops)) != len(ops):
            raise ConfigError('"columns" must capture each of insert, update, delete at most once')
        for op, cols in self.columns:
            if cols is not None:
                _check_columns(f"columns.{op}", cols)
        if self.update_columns:
            _check_columns("update_columns", self.update_columns)
            if "update" not in ops:
                raise ConfigError('"update_columns" needs the update operation to be captured')
        if self.old and "update" not in ops:
            raise ConfigError('"old" needs the update operation to be captured')
        if self.when is not None:
            problem = _condition_problem(self.when)
            if problem:
                raise ConfigError(f'"when" must be one SQL condition: it {problem}')

    @property
    def ops(self) -> tuple[Op, ...]:
        return tuple(op for op, _ in self.columns)

    @property
    def qualified(self) -> str:
        """The table as a quoted SQL name, `"public"."orders"`."""
        return qualified(self.schema, self.table)

    def __str__(self) -> str:
        return f"{self.schema}.{self.table}"


def load_config(path: str | os.PathLike[str]) -> list[TableSpec]:
    """Read a triggers.json file; any problem is a one-line ConfigError."""
    name = os.fspath(path)
    try:
        with open(path, encoding="utf-8-sig") as file:
            text = file.read()
    except OSError as exc:
        raise ConfigError(f"{name}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{name}: not UTF-8 text") from None
    try:
        obj = json.loads(text, object_pairs_hook=_Object)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{name}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    return parse_config(obj, source=name)


def parse_config(obj: object, source: str = "triggers.json") -> list[TableSpec]:
    """Validate Skor's triggers.json structure. Entries are numbered from 1 in errors."""
    if not isinstance(obj, list):
        raise ConfigError(f"{source}: expected a list of tables, got {_json_type(obj)}")
    specs: list[TableSpec] = []
    seen: dict[tuple[str, str], int] = {}
    for number, entry in enumerate(obj, start=1):
        try:
            spec = _parse_entry(entry)
        except ConfigError as exc:
            raise ConfigError(f"{source} entry {number}: {exc}") from None
        first = seen.setdefault((spec.schema, spec.table), number)
        if first != number:
            raise ConfigError(
                f"{source} entry {number}: table {spec} is already configured by entry {first}"
            )
        specs.append(spec)
    return specs


class _Object(dict[str, Any]):
    """A JSON object that remembers a key given twice (json.loads keeps only the last)."""

    duplicate: str | None = None

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__(pairs)
        if len(self) != len(pairs):
            keys = [key for key, _ in pairs]
            self.duplicate = next(key for key in keys if keys.count(key) > 1)


def _parse_entry(entry: object) -> TableSpec:
    if not isinstance(entry, dict):
        raise ConfigError(f'expected an object with a "table" key, got {_json_type(entry)}')
    duplicate = getattr(entry, "duplicate", None)
    if duplicate is not None:
        raise ConfigError(f"key {json.dumps(duplicate)} is given twice")
    for key in entry:
        if key not in ENTRY_KEYS:
            raise ConfigError(f"unknown key {json.dumps(key)} (expected {', '.join(ENTRY_KEYS)})")
    if "table" not in entry:
        raise ConfigError('"table" is required')
    when = entry.get("when")
    if "when" in entry and not isinstance(when, str):
        raise ConfigError('"when" must be a string holding an SQL condition')
    old = entry.get("old", False)
    if not isinstance(old, bool):
        raise ConfigError(f'"old" must be true or false, got {_json_type(old)}')
    return TableSpec(
        table=_check_name("table", entry["table"]),
        schema=_check_name("schema", entry.get("schema", "public")),
        columns=_parse_columns(entry.get("columns", "*")),
        update_columns=(
            _check_columns("update_columns", entry["update_columns"])
            if "update_columns" in entry
            else ()
        ),
        when=when,
        old=old,
    )


def _parse_columns(value: object) -> tuple[tuple[Op, tuple[str, ...] | None], ...]:
    if value == "*":
        return tuple((op, None) for op in OPS)
    if isinstance(value, list):
        names = _check_columns("columns", value)
        return tuple((op, names) for op in OPS)
    if not isinstance(value, dict):
        raise ConfigError(_COLUMNS_SHAPE)
    if not value:
        raise ConfigError('"columns" must capture at least one of insert, update, delete')
    by_op: dict[str, tuple[str, ...] | None] = {}
    for key, cols in value.items():
        # Skor lower-cased the operation names, so "INSERT" keeps working.
        op = key.lower()
        if op not in OPS:
            raise ConfigError(
                f'"columns" has unknown operation {json.dumps(key)} (use insert, update, delete)'
            )
        if op in by_op:
            raise ConfigError(f'"columns" gives operation "{op}" twice')
        if cols == "*":
            by_op[op] = None
        elif isinstance(cols, list):
            by_op[op] = _check_columns(f"columns.{op}", cols)
        else:
            raise ConfigError(f'"columns.{op}" must be "*" or a list of column names')
    return tuple((op, by_op[op]) for op in OPS if op in by_op)


def _check_name(field: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(f'"{field}" must be a string, got {_json_type(value)}')
    problem = _name_problem(value)
    if problem:
        raise ConfigError(f'"{field}" {problem}')
    return value


def _check_columns(field: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise ConfigError(f'"{field}" must be a list of column names')
    if not value:
        raise ConfigError(f'"{field}" must not be an empty list')
    for item in value:
        if not isinstance(item, str):
            raise ConfigError(f'"{field}" must hold column names (strings), got {_json_type(item)}')
        problem = _name_problem(item)
        if problem:
            raise ConfigError(f'"{field}": column name {json.dumps(item)} {problem}')
        if value.count(item) > 1:
            raise ConfigError(f'"{field}" lists column {json.dumps(item)} twice')
    return tuple(value)


def _name_problem(name: str) -> str | None:
    if not name:
        return "is empty"
    if (control := CONTROL_CHARS.search(name)) is not None:
        return f"contains the control character {ord(control[0]):#04x}"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid Unicode"
    if size > MAX_NAME_BYTES:
        return f"is longer than {MAX_NAME_BYTES} bytes, PostgreSQL's limit for a name"
    return None


def _json_type(value: object) -> str:
    for kind, name in (
        (bool, "a boolean"),
        (str, "a string"),
        ((int, float), "a number"),
        (list, "a list"),
        (dict, "an object"),
    ):
        if isinstance(value, kind):
            return name
    return "null" if value is None else type(value).__name__


_IDENT_CHAR = re.compile(r"[\w$\x80-\U0010ffff]")
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\x80-\U0010ffff][\w\x80-\U0010ffff]*)?\$")


def _condition_problem(sql: str) -> str | None:
    """Why `sql` is not one self-contained condition, or None.

    `when` is SQL on purpose, but it must stay inside the WHEN (...) we wrap it in. So we
    scan it as PostgreSQL's lexer does (strings, E-strings, quoted names, dollar quotes,
    comments) and refuse a ';' or a parenthesis that would close ours.
    """
    if not sql.strip():
        return "is empty"
    # Tab and line feed are plain white space; \r would end a -- comment early for
    # PostgreSQL but not for this scanner, and the rest have no business in a condition.
    if control := CONTROL_CHARS.search(sql.replace("\t", " ").replace("\n", " ")):
        return f"contains the control character {ord(control[0]):#04x}"
    try:
        sql.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid Unicode"
    depth, i, n = 0, 0, len(sql)
    while i < n:
        char = sql[i]
        after_word = i > 0 and _IDENT_CHAR.match(sql[i - 1]) is not None
        if char in "'\"":
            # E'...' takes backslash escapes when the E starts a token; other quotes don't.
            escapes = (
                char == "'"
                and after_word
                and sql[i - 1] in "eE"
                and (i < 2 or not _IDENT_CHAR.match(sql[i - 2]))
            )
            i = _closing_quote(sql, i, escapes)
            if i < 0:
                return "has an unterminated quoted string or name"
        elif sql.startswith("--", i):
            newline = sql.find("\n", i)
            i = n if newline < 0 else newline
        elif sql.startswith("/*", i):
            i = _comment_end(sql, i)
            if i < 0:
                return "has an unterminated /* comment"
        elif char == "$" and not after_word and (tag := _DOLLAR_TAG.match(sql, i)):
            end = sql.find(tag[0], tag.end())
            if end < 0:
                return "has an unterminated dollar-quoted string"
            i = end + len(tag[0]) - 1
        elif char == ";":
            return "contains ';'"
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                return "has a ')' without a matching '('"
        i += 1
    return "has a '(' without a matching ')'" if depth else None


def _closing_quote(sql: str, start: int, escapes: bool) -> int:
    quote, i = sql[start], start + 1
    while i < len(sql):
        if escapes and sql[i] == "\\":
            i += 2
            continue
        if sql[i] == quote:
            if sql.startswith(quote, i + 1):  # a doubled quote stands for itself
                i += 2
                continue
            return i
        i += 1
    return -1


def _comment_end(sql: str, start: int) -> int:
    depth, i = 0, start
    while i < len(sql):
        if sql.startswith("/*", i):
            depth, i = depth + 1, i + 2
        elif sql.startswith("*/", i):
            depth, i = depth - 1, i + 2
            if depth == 0:
                return i - 1
        else:
            i += 1
    return -1
