"""Capture triggers: triggers.json -> TableSpec -> one SQL script -> installed atomically.

Durable mode (the default) gives each table one function, `skor.capture_<slug>_<hash>()`,
and one AFTER ... FOR EACH ROW trigger per captured operation (`skor_capture_insert`,
`skor_capture_update`, `skor_capture_delete`). The function appends the change to
skor.outbox inside the writer's transaction, so a change is captured exactly when it
commits. It neither notifies nor limits sizes, so it cannot fail a write because a row is
large; it has no EXCEPTION block either, since that costs a subtransaction per row.

Notify mode installs Skor's own triggers: `<schema>.notify_skor_<table>_<op>()` sending
`pg_notify('skor', json_build_object('table', ..., 'schema', ..., 'op', ..., 'data', ...))`.
That payload is limited to 8000 bytes, and a larger row makes the write fail (as in Skor).

Every script first drops what either mode installed before, so running `install` again
replaces the previous configuration, and tables dropped from triggers.json stop being
captured. Names from the config reach SQL only as quoted identifiers or string literals.

The functions run with the writer's privileges, as Skor's did: a role that writes a
captured table needs USAGE on schema skor and INSERT on skor.outbox. Primary keys are
read when the script runs, so install again after changing a table's primary key.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import psycopg2

from skor_bridge.capture.schema import _DDL_LOCK, DDL, ensure_schema
from skor_bridge.config import MODES, Mode
from skor_bridge.db import connect, describe
from skor_bridge.errors import ConfigError, DatabaseError, StartupError, TriggerError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from psycopg2.extensions import connection

__all__ = [
    "OPS",
    "TableSpec",
    "ensure_schema",
    "generate_sql",
    "install",
    "load_config",
    "parse_config",
    "uninstall",
]

Op = Literal["insert", "update", "delete"]
OPS: tuple[Op, ...] = ("insert", "update", "delete")

#: PostgreSQL silently truncates longer names (NAMEDATALEN - 1), so we refuse them.
MAX_NAME_BYTES = 63

#: Keys a triggers.json entry may have; "update_columns" and "when" are ours, not Skor's.
ENTRY_KEYS = ("table", "schema", "columns", "update_columns", "when")

#: Name of the durable trigger for each operation; trigger names are per table.
DURABLE_TRIGGER = {op: f"skor_capture_{op}" for op in OPS}

_COLUMNS_SHAPE = '"columns" must be "*", a list of column names or a map of insert/update/delete'


# -- configuration -------------------------------------------------------------------------


@dataclass(frozen=True)
class TableSpec:
    """One table to capture, as one triggers.json entry describes it.

    `columns` holds the captured operations in insert, update, delete order, each with the
    columns its events carry; None carries every column (Skor's "*"). With
    `update_columns`, an UPDATE is captured only when one of those columns changed; `when`
    is an SQL condition added to every trigger's WHEN clause.
    """

    table: str
    schema: str = "public"
    columns: tuple[tuple[Op, tuple[str, ...] | None], ...] = tuple((op, None) for op in OPS)
    update_columns: tuple[str, ...] = ()
    when: str | None = None

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
        return f"{quote_ident(self.schema)}.{quote_ident(self.table)}"

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
            raise ConfigError(
                f"unknown key {json.dumps(key)} (expected {', '.join(ENTRY_KEYS)})"
            )
    if "table" not in entry:
        raise ConfigError('"table" is required')
    when = entry.get("when")
    if "when" in entry and not isinstance(when, str):
        raise ConfigError('"when" must be a string holding an SQL condition')
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
    if "\x00" in name:
        return "contains a NUL character"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid Unicode"
    if size > MAX_NAME_BYTES:
        return f"is longer than {MAX_NAME_BYTES} bytes, PostgreSQL's limit for a name"
    return None


def _json_type(value: object) -> str:
    for kind, name in ((bool, "a boolean"), (str, "a string"), ((int, float), "a number"),
                       (list, "a list"), (dict, "an object")):
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
    if "\x00" in sql:
        return "contains a NUL character"
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
            escapes = char == "'" and after_word and sql[i - 1] in "eE" and (
                i < 2 or not _IDENT_CHAR.match(sql[i - 2])
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


# -- SQL text ------------------------------------------------------------------------------


def quote_ident(name: str) -> str:
    """Always-quoted identifier: exact case, any character but NUL."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    """A string literal that reads the same whatever standard_conforming_strings is."""
    body = text.replace("'", "''")
    if "\\" in text:
        return "E'" + body.replace("\\", "\\\\") + "'"
    return "'" + body + "'"


def dollar_quote(body: str, tag: str = "skor") -> str:
    """`body` dollar-quoted with a tag that does not occur in it ($skor$, $skor1$, ...)."""
    number = 0
    while True:
        delimiter = f"${tag}{number or ''}$"
        # The string ends at the first delimiter, which must be the one we append.
        if (body + delimiter).find(delimiter) == len(body):
            return f"{delimiter}\n{body}\n{delimiter}"
        number += 1


def _comment(text: str) -> str:
    """`text` made safe for an SQL `--` comment: a line break would end the comment."""
    return re.sub(r"[\x00-\x1f\x7f\x85\u2028\u2029]", lambda m: f"\\x{ord(m[0]):02x}", text)


def _short_hash(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()[:8]


def capture_function_name(schema: str, table: str) -> str:
    """Durable function name: readable slug plus a hash of the exact names, <= 63 bytes."""
    slug = re.sub(r"[^a-z0-9_]", "_", f"{schema}_{table}".lower())
    return f"capture_{slug[:46]}_{_short_hash(schema, table)}"


def notify_name(schema: str, table: str, op: Op) -> str:
    """Skor's function and trigger name, `notify_skor_<table>_<op>`, shortened past 63 bytes."""
    name = f"notify_skor_{table}_{op}"
    if len(name.encode("utf-8")) <= MAX_NAME_BYTES:
        return name
    suffix = f"_{_short_hash(schema, table)}_{op}"
    room = MAX_NAME_BYTES - len("notify_skor_") - len(suffix)
    prefix = table.encode("utf-8")[:room].decode("utf-8", "ignore")
    return f"notify_skor_{prefix}{suffix}"


def _data_expr(record: str, columns: tuple[str, ...] | None) -> str:
    """Skor's data expression with quoted names: the row, or only `columns` of it."""
    if columns is None:
        return f"row_to_json({record})"
    # The alias must not equal a selected column: PostgreSQL would pick the column.
    alias, number = "r", 0
    while alias in columns:
        number += 1
        alias = f"r{number}"
    picked = ", ".join(f"{record}.{quote_ident(col)}" for col in columns)
    return f"row_to_json((SELECT {alias} FROM (SELECT {picked}) AS {alias}))"


def _record(op: Op) -> str:
    return "OLD" if op == "delete" else "NEW"


def _when_clause(spec: TableSpec, op: Op) -> str:
    conditions = []
    if op == "update" and spec.update_columns:
        changed = " OR ".join(
            f"OLD.{quote_ident(col)} IS DISTINCT FROM NEW.{quote_ident(col)}"
            for col in spec.update_columns
        )
        conditions.append(f"({changed})")
    if spec.when is not None:
        # Own lines, so that a trailing -- comment in the condition cannot hide our ")".
        conditions.append(f"(\n    {spec.when}\n)")
    return f"\n    WHEN ({' AND '.join(conditions)})" if conditions else ""


# Fixed settings make the script read the same in any session (the literals are UTF-8 and
# written for standard strings), and the lock serialises it with the bridge's own
# ensure_schema and with a concurrent install.
_PREAMBLE = f"""\
SET LOCAL client_encoding = 'UTF8';
SET LOCAL standard_conforming_strings = on;
SET LOCAL client_min_messages = warning;
DO $skor$ BEGIN PERFORM pg_advisory_xact_lock({_DDL_LOCK}); END $skor$;
"""

#: Trigger functions either mode installed: ours in schema skor, Skor's anywhere.
_INSTALLED_FUNCTIONS = """
    SELECT p.oid::regprocedure
    FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
    WHERE p.prorettype = 'trigger'::regtype
      AND ((n.nspname = 'skor' AND starts_with(p.proname, 'capture_'))
           OR starts_with(p.proname, 'notify_skor_'))"""

_DROP_INSTALLED = f"""\
-- Drop the capture functions either mode installed before, and with them their triggers:
-- tables no longer configured stop being captured.
DO $skor$
DECLARE
    fn regprocedure;
BEGIN
    FOR fn IN {_INSTALLED_FUNCTIONS.strip()}
    LOOP
        EXECUTE format('DROP FUNCTION %s CASCADE', fn);
    END LOOP;
END
$skor$;
"""


def _checks(spec: TableSpec) -> str:
    """plpgsql that raises unless the table and every configured column exist.

    It runs in the script itself, so `psql` on generated output checks as much as install.
    """
    table = spec.qualified
    columns: list[str] = []
    for _, cols in spec.columns:
        columns.extend(col for col in cols or () if col not in columns)
    columns.extend(col for col in spec.update_columns if col not in columns)
    text = f"""\
    IF target IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'undefined_table',
            MESSAGE = {quote_literal(f"table {table} does not exist")};
    END IF;
    IF (SELECT relkind FROM pg_class WHERE oid = target) NOT IN ('r', 'p') THEN
        RAISE EXCEPTION USING ERRCODE = 'wrong_object_type',
            MESSAGE = {quote_literal(f"{table} is not a table")};
    END IF;
"""
    if columns:
        text += f"""\
    FOREACH col IN ARRAY ARRAY[{", ".join(map(quote_literal, columns))}]::text[] LOOP
        IF NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = target AND attname = col
                       AND attnum > 0 AND NOT attisdropped) THEN
            RAISE EXCEPTION USING ERRCODE = 'undefined_column',
                MESSAGE = format('column %s of table %s does not exist',
                                 '"' || replace(col, '"', '""') || '"', {quote_literal(table)});
        END IF;
    END LOOP;
"""
    return text


# The row key is the primary key as compact JSON ({"id":42}, {"a":1,"b":"x"}), built by
# concatenating JSON-escaped names (to_json of the name, as json.dumps would write them)
# with to_json(NEW.col)::text. The primary key is read from pg_index by the script itself,
# while it runs, rather than by Python beforehand: `triggers generate` needs no database,
# and the psql-applied output is exactly what `install` runs. Only the key is dynamic; the
# rest of the function body is fixed text from Python, passed in as string literals.
_KEY_LOOP = """\
    FOR col IN
        SELECT a.attname
        FROM pg_index i
        CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
        WHERE i.indrelid = target AND i.indisprimary
        ORDER BY k.n
    LOOP
        sep := CASE WHEN new_key IS NULL THEN '{' ELSE ',' END || to_json(col)::text || ':';
        new_key := concat_ws(' || ', new_key, quote_literal(sep),
                             format('to_json(NEW.%I)::text', col));
        old_key := concat_ws(' || ', old_key, quote_literal(sep),
                             format('to_json(OLD.%I)::text', col));
    END LOOP;
    new_key := coalesce(new_key || ' || ''}''', 'NULL');
    old_key := coalesce(old_key || ' || ''}''', 'NULL');
"""

# Markers where the DO block splices in the key expressions; no name can hold a NUL.
_NEW_KEY, _OLD_KEY = "\x00NEW\x00", "\x00OLD\x00"


def _durable_body(spec: TableSpec) -> str:
    lines = ["BEGIN"]
    for index, (op, cols) in enumerate(spec.columns):
        record = _record(op)
        key = _OLD_KEY if op == "delete" else _NEW_KEY
        lines += [
            f"    {'IF' if index == 0 else 'ELSIF'} TG_OP = '{op.upper()}' THEN",
            "        INSERT INTO skor.outbox (schema_name, table_name, op, row_key, data)",
            f"        VALUES (TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_OP, {key},",
            f"                {_data_expr(record, cols)}::text);",
        ]
    lines += ["    END IF;", "    RETURN NULL;", "END"]
    return "\n".join(lines)


def _durable_table(spec: TableSpec) -> str:
    function = f"skor.{quote_ident(capture_function_name(spec.schema, spec.table))}"
    pieces = re.split(f"({_NEW_KEY}|{_OLD_KEY})", _durable_body(spec))
    body_expr = "\n        || ".join(
        {_NEW_KEY: "new_key", _OLD_KEY: "old_key"}.get(piece) or quote_literal(piece)
        for piece in pieces
        if piece
    )
    block = f"""\
DECLARE
    target regclass := to_regclass({quote_literal(spec.qualified)});
    col text;
    sep text;
    new_key text;
    old_key text;
BEGIN
{_checks(spec)}{_KEY_LOOP}    EXECUTE format(
        'CREATE FUNCTION %s() RETURNS trigger LANGUAGE plpgsql AS %L',
        {quote_literal(function)},
        {body_expr});
END"""
    triggers = "".join(
        f"CREATE TRIGGER {DURABLE_TRIGGER[op]} AFTER {op.upper()} ON {spec.qualified}\n"
        f"    FOR EACH ROW{_when_clause(spec, op)}\n"
        f"    EXECUTE FUNCTION {function}();\n"
        for op in spec.ops
    )
    return f"DO {dollar_quote(block)};\n{triggers}"


def _notify_table(spec: TableSpec) -> str:
    checks = f"""\
DECLARE
    target regclass := to_regclass({quote_literal(spec.qualified)});
    col text;
BEGIN
{_checks(spec)}END"""
    parts = [f"DO {dollar_quote(checks)};\n"]
    for op, cols in spec.columns:
        name = notify_name(spec.schema, spec.table, op)
        function = f"{quote_ident(spec.schema)}.{quote_ident(name)}"
        body = f"""\
BEGIN
    PERFORM pg_notify('skor', json_build_object(
        'table', TG_TABLE_NAME,
        'schema', TG_TABLE_SCHEMA,
        'op', TG_OP,
        'data', {_data_expr(_record(op), cols)}
    )::text);
    RETURN NULL;
END"""
        parts.append(
            f"CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS "
            f"{dollar_quote(body)};\n"
            f"CREATE TRIGGER {quote_ident(name)} AFTER {op.upper()} ON {spec.qualified}\n"
            f"    FOR EACH ROW{_when_clause(spec, op)}\n"
            f"    EXECUTE FUNCTION {function}();\n"
        )
    return "".join(parts)


def describe_spec(spec: TableSpec) -> str:
    """One summary line, `public.orders: insert, update, delete`."""
    return f"{spec}: {', '.join(spec.ops)}"


def _steps(specs: Sequence[TableSpec], mode: Mode) -> list[tuple[TableSpec | None, str]]:
    """The script in pieces, each with the table its errors are about (if any)."""
    if mode not in MODES:
        raise ConfigError(f"mode: must be one of {', '.join(MODES)}, got {mode!r}")
    seen: set[tuple[str, str]] = set()
    for spec in specs:
        if (spec.schema, spec.table) in seen:
            raise ConfigError(f"table {spec} is configured twice")
        seen.add((spec.schema, spec.table))
    render = _durable_table if mode == "durable" else _notify_table
    steps: list[tuple[TableSpec | None, str]] = [(None, _DROP_INSTALLED)]
    steps += [(spec, f"\n-- {_comment(describe_spec(spec))}\n{render(spec)}") for spec in specs]
    return steps


def generate_sql(specs: Sequence[TableSpec], mode: Mode = "durable") -> str:
    """The whole installation as one script, for `psql --single-transaction`.

    It creates the skor schema if needed (notify mode too: dead letters live there), drops
    every capture trigger installed before, checks that each table and column exists, then
    creates the functions and triggers. Applied outside one transaction, a failure would
    leave a partial installation; `install()` always runs it in one.
    """
    header = (
        f"-- skor-bridge capture triggers, {mode} mode, {len(specs)} table(s).\n"
        '-- Apply with: psql "$DSN" --single-transaction -v ON_ERROR_STOP=1 -f FILE\n'
    )
    steps = "".join(sql for _, sql in _steps(specs, mode))
    return f"{header}{_PREAMBLE}{DDL.strip()}\n\n{steps}"


# -- database ------------------------------------------------------------------------------


def _connect(dsn: str) -> connection:
    try:
        conn = connect(dsn, "triggers", autocommit=False)
    except DatabaseError as exc:
        raise StartupError(str(exc)) from None
    conn.set_client_encoding("UTF8")
    return conn


def _failure(exc: psycopg2.Error, spec: TableSpec | None) -> DatabaseError | TriggerError:
    if exc.pgcode is None:  # no server answer: the connection itself failed
        return DatabaseError(f"PostgreSQL connection failed: {describe(exc)}")
    message = exc.diag.message_primary or describe(exc)
    message = " ".join(message.split())
    if spec is not None and spec.qualified not in message:
        message = f"{spec.qualified}: {message}"
    return TriggerError(message)


def install(dsn: str, specs: Sequence[TableSpec], mode: Mode = "durable") -> None:
    """Replace the installed capture triggers with `specs`, in one transaction.

    Raises TriggerError when a table or column is missing or PostgreSQL rejects a `when`
    condition, StartupError when the database cannot be reached. On any error nothing
    changes.
    """
    steps = _steps(specs, mode)
    conn = _connect(dsn)
    try:
        with conn.cursor() as cur:
            try:
                cur.execute(_PREAMBLE)
                ensure_schema(cur)
            except psycopg2.Error as exc:
                raise _failure(exc, None) from None
            for spec, sql in steps:
                try:
                    cur.execute(sql)
                except psycopg2.Error as exc:
                    raise _failure(exc, spec) from None
        conn.commit()
    finally:
        conn.close()  # without a commit, PostgreSQL rolls everything back


def uninstall(dsn: str, purge: bool = False) -> int:
    """Drop every capture trigger and function of both modes (Skor's included).

    With `purge`, also drop schema skor and everything in it: outbox, log, dead letters.
    Returns how many trigger functions were dropped.
    """
    conn = _connect(dsn)
    try:
        with conn.cursor() as cur:
            try:
                cur.execute(_PREAMBLE)
                cur.execute(f"SELECT count(*) FROM ({_INSTALLED_FUNCTIONS}) AS installed")
                row = cur.fetchone()
                cur.execute(_DROP_INSTALLED)
                if purge:
                    cur.execute("DROP SCHEMA IF EXISTS skor CASCADE")
            except psycopg2.Error as exc:
                raise _failure(exc, None) from None
        conn.commit()
    finally:
        conn.close()
    return int(row[0]) if row else 0
